"""The EM objective for any model: E_q[log p(z_{0:T}, y_{1:T} | theta)] by cubature.

q is the smoother's Gaussian posterior: marginals of z_0 and z_t, and the joint
of each consecutive pair (z_{t-1}, z_t). Expectations use the third-degree
spherical cubature rule (2n points m +- sqrt(n) A e_i, A A^T = covariance),
which integrates polynomials of degree <= 3 exactly. A Gaussian log density
with a mean affine in the state and state-independent noise is quadratic in
the state, so for linear Gaussian structure the objective is exact and the
generalised M-step has the closed form's fixed point; otherwise it is the
usual sigma-point approximation.

The points depend only on q, so they are computed once per E-step
(``cubature_points``) and the objective is then a cheap function of theta.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..inference.distributions import masked_log_prob
from ..maths.gaussian import psd_factor
from ..results import SmoothResult, lagged_moments


def _points(mean, cov):
    """(2n, n) cubature points of N(mean, cov); equal weights 1/(2n)."""
    n = mean.shape[-1]
    A = psd_factor(cov) * jnp.sqrt(n)
    return jnp.concatenate([mean + A.T, mean - A.T])


def cubature_points(smoothed: SmoothResult, has_initial: bool):
    """Points of q: z_0 (2dz, dz) or None, pairs (T, 4dz, 2dz), marginals (T, 2dz, dz)."""
    m, P = smoothed.smoothed_means, smoothed.smoothed_covariances
    m_prev, P_prev, cross = lagged_moments(smoothed)
    pair_mean = jnp.concatenate([m_prev, m], axis=1)
    pair_cov = jnp.concatenate([
        jnp.concatenate([P_prev, cross], axis=2),
        jnp.concatenate([jnp.swapaxes(cross, 1, 2), P], axis=2),
    ], axis=1)
    pairs = jax.vmap(_points)(pair_mean, pair_cov)
    marginals = jax.vmap(_points)(m, P)
    initial = _points(smoothed.initial_smoothed_mean, smoothed.initial_smoothed_covariance) if has_initial else None
    return initial, pairs, marginals


def expected_log_joint(problem, points):
    """E_q[log p(z_0) + sum_t log p(z_t | z_{t-1}) + log p(y_t | z_t)], scalar."""
    initial, pairs, marginals = points
    dz = problem.state_dim
    state_shape, obs_shape = problem.state_shape, problem.obs_shape
    total = 0.0
    if problem.initial is not None:
        total = total + jnp.mean(jax.vmap(lambda z: problem.initial.log_prob(z.reshape(state_shape)).sum())(initial))

    def step_terms(pair_points, z_points, x, y):
        trans = jax.vmap(lambda zz: problem.transition(zz[:dz], x).log_prob(zz[dz:].reshape(state_shape)).sum())(pair_points)
        emis = jax.vmap(lambda z: masked_log_prob(problem.emission(z, x), y, obs_shape))(z_points)
        return trans.mean() + emis.mean()

    xs = problem.xs
    terms = jax.vmap(step_terms, in_axes=(0, 0, 0 if xs is not None else None, 0))(pairs, marginals, xs, problem.observations)
    return total + terms.sum()

