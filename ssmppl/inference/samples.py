"""Sample-based steps shared by the particle, ensemble and score filters: drawing the
initial state, moving samples through the transition, and forecasts and predictive
moments from weighted samples of a ``StateSpace``. Shapes: N samples of a flat
state (N, dz); paths (M, T, dz).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ..maths.resampling import weighted_moments
from ..models.tracing import StateSpace
from ..results import Forecast
from .base import check_forecastable
from .distributions import conditional_moments


def flat_sample(d, key, dz, dtype):
    """One draw of the distribution ``d`` as a flat (dz,) vector."""
    return d.sample(key).reshape(dz).astype(dtype)


def initial_draws(problem: StateSpace, key, N: int, dtype):
    """(N, dz) draws of z_0 (copies of the known value when z_0 is not a sample site)."""
    dz = problem.state_dim
    if problem.initial is None:
        return jnp.broadcast_to(problem.initial_value.astype(dtype), (N, dz))
    return problem.initial.sample(key, (N,)).reshape(N, dz).astype(dtype)


def propagate(problem: StateSpace, Z, xs_t, key):
    """Each sample (N, dz) moved by the transition at inputs xs_t (vectorised over samples)."""
    keys = jax.random.split(key, Z.shape[0])
    return jax.vmap(lambda k, z: flat_sample(problem.transition(z, xs_t), k, Z.shape[1], Z.dtype))(keys, Z)


def weighted_forecast(problem, particles, log_weights, xs_t, num_steps: int, key) -> Forecast:
    """Moments of the next ``num_steps`` states and emissions: the weighted particles move by
    the transition; emission moments mix each particle's conditional mean and covariance."""
    dz, dtype = problem.state_dim, particles.dtype
    w = jax.nn.softmax(log_weights)

    def step(z, k):
        z = jax.vmap(lambda k_, zp: flat_sample(problem.transition(zp, xs_t), k_, dz, dtype))(
            jax.random.split(k, z.shape[0]), z)
        _, m, P, _, _ = weighted_moments(z, log_weights)
        y_means, y_covs = jax.vmap(lambda z_: conditional_moments(problem.emission(z_, xs_t)))(z)
        y_mean = w @ y_means
        dev = y_means - y_mean
        S = jnp.einsum("n,nij->ij", w, y_covs) + (dev.T * w) @ dev
        return z, (m, P, y_mean, S)

    _, (ms, Ps, ym, yS) = lax.scan(step, particles, jax.random.split(key, num_steps))
    return Forecast(state_means=ms, state_covariances=Ps, emission_means=ym, emission_covariances=yS)


def forecast_samples(problem: StateSpace, Z, num_steps: int, key, log_weights=None) -> Forecast:
    """``weighted_forecast`` from the final samples Z (N, dz) (equally weighted when
    ``log_weights`` is None), after checking the model can be run past the data."""
    check_forecastable(problem)
    x_last = None if problem.xs is None else problem.xs_at(problem.length - 1)
    if log_weights is None:
        log_weights = jnp.full(Z.shape[0], -jnp.log(Z.shape[0]), Z.dtype)
    return weighted_forecast(problem, Z, log_weights, x_last, num_steps, key)


def mixture_predictive(problem, paths):
    """Means and standard deviations (T, dy) of y_t under an equally weighted set of latent paths
    (M, T, dz): the mixture of p(y_t | z_t) over the paths."""

    def at(z, xs_t):
        mean, cov = conditional_moments(problem.emission(z, xs_t))
        return mean, jnp.diagonal(cov)

    per_path = jax.vmap(lambda path: jax.vmap(at)(path, problem.xs))  # xs may be None
    means, variances = per_path(paths)  # (M, T, dy) each
    return means.mean(axis=0), jnp.sqrt(variances.mean(axis=0) + means.var(axis=0))
