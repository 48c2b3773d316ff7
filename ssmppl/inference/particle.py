"""Particle filters: the backends that run any model, whatever its distributions.

``BootstrapPF`` propagates particles through the model's own transition (each
particle draws z_t from ``transition(z_{t-1}, xs_t).sample``) and weights them by
the emission's log-density of y_t (NaN entries of y are missing and skipped).
Resampling is adaptive: before propagating, particles are resampled when the
effective sample size falls below ``ess_threshold * N``.

The marginal likelihood estimate is the product over steps of
p_hat(y_t | y_{1:t-1}) = sum_i W_{t-1}^i g_t(z_t^i), with W the normalised
weights carried into step t (uniform after a resampling). It is unbiased for
p(y_{1:T}) with or without adaptive resampling; its log, ``marginal_loglik``,
is biased downwards by about Var/2.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from ..learning.expected_log_joint import masked_log_prob
from .base import Backend
from .resampling import RESAMPLERS, effective_sample_size, resampler
from .results import FilterResult, _pytree_dataclass


@_pytree_dataclass
class ParticleFilterResult(FilterResult):
    """``FilterResult`` of a particle filter, plus ``ess`` (T,): the effective sample size
    of the weights after each update, and ``resampled`` (T,): whether the particles were
    resampled before step t's propagation. Means and covariances are the weighted
    particle moments; ``marginal_loglik`` is the log of the unbiased estimate."""

    ess: jax.Array = None
    resampled: jax.Array = None


def _weighted_moments(particles, log_weights):
    w = jax.nn.softmax(log_weights)
    mean = w @ particles
    dev = particles - mean
    return mean, (dev.T * w) @ dev


def bootstrap_filter(problem, key, num_particles: int, scheme: str, ess_threshold: float) -> ParticleFilterResult:
    """The bootstrap particle filter over a ``StateSpace``; see the module docstring."""
    resample = resampler(scheme)
    N = num_particles
    dtype = jnp.result_type(problem.observations, float)
    dz = problem.state_dim
    key_init, key_steps = jax.random.split(key)
    if problem.initial is None:
        particles = jnp.broadcast_to(problem.initial_value.astype(dtype), (N, dz))
    else:
        particles = problem.initial.sample(key_init, (N,)).reshape(N, dz).astype(dtype)
    log_w = jnp.full(N, -jnp.log(N), dtype)

    def propagate(k, z, xs_t):
        return problem.transition(z, xs_t).sample(k).reshape(-1).astype(dtype)

    def log_g(z, xs_t, y):
        return masked_log_prob(problem.emission(z, xs_t), y, problem.obs_shape)

    def step(carry, inputs):
        particles, log_w = carry
        k, y, xs_t = inputs
        k_resample, k_move = jax.random.split(k)
        do_resample = effective_sample_size(log_w) < ess_threshold * N
        ancestors = lax.cond(do_resample, lambda: resample(k_resample, log_w, N).astype(jnp.int32),
                             lambda: jnp.arange(N, dtype=jnp.int32))
        particles = particles[ancestors]
        log_w = jnp.where(do_resample, -jnp.log(N).astype(dtype), log_w)
        particles = jax.vmap(propagate, (0, 0, None))(jax.random.split(k_move, N), particles, xs_t)
        pred_mean, pred_cov = _weighted_moments(particles, log_w)
        log_w = log_w + jax.vmap(log_g, (0, None, None))(particles, xs_t, y)
        ll = jax.nn.logsumexp(log_w)  # log sum_i W_i g_i: the carried log_w were normalised
        log_w = log_w - ll
        mean, cov = _weighted_moments(particles, log_w)
        return (particles, log_w), (mean, cov, pred_mean, pred_cov, ll, effective_sample_size(log_w), do_resample)

    keys = jax.random.split(key_steps, problem.length)
    _, (mf, Pf, mp, Pp, lls, ess, resampled) = lax.scan(step, (particles, log_w),
                                                       (keys, problem.observations.astype(dtype), problem.xs))
    base = FilterResult.from_steps(lls, mf, Pf, mp, Pp)
    return ParticleFilterResult(**vars(base), ess=ess, resampled=resampled)


@dataclasses.dataclass(frozen=True)
class BootstrapPF(Backend):
    """Bootstrap particle filter with adaptive resampling.

    num_particles: N. resampling: "systematic" (default), "stratified",
    "residual" or "multinomial" (``ssmppl.inference.resampling``).
    ess_threshold: resample when ESS < ess_threshold * N (1.0: every step;
    0.0: never). Needs a key: ``ssm.filter(params, y, method=BootstrapPF(1000), key=key)``.
    """

    num_particles: int = 1000
    resampling: str = "systematic"
    ess_threshold: float = 0.5

    requires_key = True
    noisy_likelihood = True

    def __post_init__(self):
        if isinstance(self.num_particles, bool) or not isinstance(self.num_particles, int) or self.num_particles < 1:
            raise ValueError(f"BootstrapPF(num_particles=...) must be a positive int, got {self.num_particles!r}")
        if self.resampling not in RESAMPLERS:
            resampler(self.resampling)  # raises with the list of schemes
        if not 0.0 <= self.ess_threshold <= 1.0:
            raise ValueError(f"BootstrapPF(ess_threshold=...) must be in [0, 1], got {self.ess_threshold!r}")

    def filter(self, problem, key=None):
        if key is None:
            raise ValueError("BootstrapPF samples: pass key=jax.random.PRNGKey(...)")
        return bootstrap_filter(problem, key, self.num_particles, self.resampling, self.ess_threshold)
