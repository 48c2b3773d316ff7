"""The ensemble score filter's analysis (pure JAX): the noising schedule, prior scores of an
ensemble, and the Euler-Maruyama reverse SDE. The scheme and its equations are in
``ssmppl.inference.score_filter.ensf``'s docstring. Shapes: samples Z (N, d), forecast
members X (N, d); scores (N, d).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def schedule(t, eps_alpha, eps_beta):
    """(alpha_t, beta_t^2, b(t), sigma^2(t)) of the linear schedule (``ssmppl.inference.score_filter.ensf``)."""
    alpha = 1.0 - (1.0 - eps_alpha) * t
    beta2 = eps_beta + (1.0 - eps_beta) * t
    b = -(1.0 - eps_alpha) / alpha
    sigma2 = (1.0 - eps_beta) - 2.0 * b * beta2
    return alpha, beta2, b, sigma2


def paired_score(Z, X, alpha, beta2):
    """-(z_j - alpha x_j) / beta^2: sample j sees member j only."""
    return -(Z - alpha * X) / beta2


def mixture_weights(Z, X, alpha, beta2):
    """(N_z, N_x) softmax weights w_ij of member j for sample i, without (N, N, d) intermediates.

    |z_i - alpha x_j|^2 = |u_i|^2 - 2 alpha u_i.a_j + alpha^2 |a_j|^2 with u_i = z_i - alpha m,
    a_j = x_j - m (m the ensemble mean); |u_i|^2 is constant in j and drops out of the softmax.
    """
    m = X.mean(0)
    A = X - m
    U = Z - alpha * m
    logits = (2.0 * alpha * (U @ A.T) - alpha ** 2 * jnp.sum(A * A, axis=1)) / (2.0 * beta2)
    return jax.nn.softmax(logits, axis=1)


def mixture_score(Z, X, alpha, beta2):
    """Score of (1/N) sum_j N(alpha x_j, beta^2 I) at each row of Z: -(z - alpha sum_j w_j x_j) / beta^2."""
    W = mixture_weights(Z, X, alpha, beta2)
    return -(Z - alpha * (W @ X)) / beta2


PRIOR_SCORES = {"paired": paired_score, "mixture": mixture_score}
SCORES = tuple(PRIOR_SCORES)


def default_damping(t):
    """The likelihood score's damping h(t) = 1 - t at pseudo-time t in [0, 1] (full weight at t = 0)."""
    return 1.0 - t


def reverse_sde(key, X, lik_score: Callable, num_steps: int, eps_alpha: float, eps_beta: float,
                score: str = "paired", damping: Optional[Callable] = None, clip: Optional[float] = None):
    """Analysis ensemble (N, d): Euler-Maruyama for the reverse SDE from t = 1 to 0, started at N(0, I).

    X: the forecast members (N, d); lik_score(Z) -> (N, d) the likelihood score at samples Z.
    Memory: Z, X and one score array, O(N d) (plus (N, N) weights for the mixture score).
    """
    prior_score = PRIOR_SCORES[score]
    h = default_damping if damping is None else damping
    dtype = X.dtype
    dt = 1.0 / num_steps
    k_init, k_steps = jax.random.split(key)
    Z0 = jax.random.normal(k_init, X.shape, dtype)

    def step(i, Z):
        t = jnp.asarray(1.0 - i * dt, dtype)
        alpha, beta2, b, sigma2 = schedule(t, eps_alpha, eps_beta)
        s = prior_score(Z, X, alpha, beta2) + jnp.asarray(h(t), dtype) * lik_score(Z)
        if clip is not None:
            s = jnp.clip(s, -clip, clip)
        noise = jax.random.normal(jax.random.fold_in(k_steps, i), Z.shape, dtype)
        return Z - dt * (b * Z - sigma2 * s) + jnp.sqrt(dt * sigma2) * noise

    return lax.fori_loop(0, num_steps, step, Z0)


# -- stability of the Euler-Maruyama scheme ---------------------------------------------------------
# Locally the posterior score is linear, s(z) ~ -(1 / beta_t^2 + h(t) L) z with L >= 0 the curvature of
# -log p(y | z) (paired prior score: exactly 1 / beta_t^2; the mixture score's curvature is at most that),
# so a step multiplies a perturbation by 1 - dt c(t), c(t) = b(t) + sigma^2(t) (1 / beta_t^2 + h(t) L).
# |1 - dt c| > 1 (dt c > 2, near t = 0 where beta_t^2 -> eps_beta and h -> 1) makes each step amplify
# the previous one's noise: the analysis blows up (tests/test_score_filter.py, seed 003 model: means of
# 1e6 at 50 steps, Kalman-like at 100).


def likelihood_curvature(log_lik: Callable, z, num_iters: int = 20):
    """L >= 0, the largest eigenvalue of the Hessian of -log_lik at z (d,), by power iteration on
    Hessian-vector products (forward over reverse; ``num_iters`` of them, O(d) memory). A dominant
    eigenvalue of the wrong sign (log_lik locally convex) gives 0."""
    grad = jax.grad(log_lik)
    hvp = lambda v: -jax.jvp(grad, (z,), (v,))[1]  # noqa: E731
    v0 = jax.random.normal(jax.random.PRNGKey(0), z.shape, z.dtype)
    v0 = v0 / jnp.linalg.norm(v0)

    def body(_, v):
        w = hvp(v)
        norm = jnp.linalg.norm(w)
        return jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1.0), v)

    v = lax.fori_loop(0, num_iters, body, v0)
    return jnp.maximum(v @ hvp(v), 0.0)


def reverse_amplification(num_steps: int, eps_alpha: float, eps_beta: float, curvature: float,
                          damping: Optional[Callable] = None):
    """Host-side: (max_i |1 - dt c(t_i)|, the pseudo-time t_i where it is reached) over the reverse
    steps t_i = 1 - i / num_steps, for a likelihood of curvature L = ``curvature`` (see above)."""
    h = default_damping if damping is None else damping
    t = 1.0 - np.arange(num_steps) / num_steps
    alpha, beta2, b, sigma2 = schedule(t, eps_alpha, eps_beta)
    hv = np.asarray(jax.vmap(h)(jnp.asarray(t)), np.float64) * np.ones_like(t)
    factor = np.abs(1.0 - (b + sigma2 * (1.0 / beta2 + hv * curvature)) / num_steps)
    i = int(np.argmax(factor))
    return float(factor[i]), float(t[i])


def stable_num_steps(num_steps: int, eps_alpha: float, eps_beta: float, curvature: float,
                     damping: Optional[Callable] = None, limit: int = 1 << 24):
    """Host-side: the fewest reverse steps >= ``num_steps`` whose amplification is at most 1 (None
    beyond ``limit``)."""
    stable = lambda n: reverse_amplification(n, eps_alpha, eps_beta, curvature, damping)[0] <= 1.0  # noqa: E731
    low, high = num_steps, num_steps
    while not stable(high):
        low, high = high, 2 * high
        if high > limit:
            return None
    while high - low > 1:  # stable(high), and low unstable unless low == num_steps == high
        mid = (low + high) // 2
        low, high = (low, mid) if stable(mid) else (mid, high)
    return high
