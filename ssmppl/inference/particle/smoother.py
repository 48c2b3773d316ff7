"""Particle smoothers: paths from p(z_{0:T} | y_{1:T}) out of a particle filter's output.

FFBSi (forward filtering, backward simulation; Godsill, Doucet & West 2004):
draw z_T from the final weights, then for t = T-1, ..., 0 draw z_t among the
filter's particles at t with weights W_t^i f(z_{t+1} | z_t^i). Each of M paths
costs O(N) per step, so O(N M T) in all, vectorised over paths and particles.
The paths are exact draws from the particle approximation of the smoothing
distribution, and do not degenerate at early times as lineages do.

Genealogy tracing: follow each final particle's ancestors back. O(N T) and
free once the ancestry is stored, but all lineages coalesce a few resampling
steps back, so early-time moments rest on very few distinct particles.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ...results import SmoothResult
from .results import ParticleSmoothExtras


def _with_initial(problem, filtered):
    """Particles (T+1, N, dz) and normalised log-weights (T+1, N), z_0 first (uniform weights)."""
    N = filtered.initial_particles.shape[0]
    lw0 = jnp.full((1, N), -jnp.log(N), filtered.log_weights.dtype)
    return (jnp.concatenate([filtered.initial_particles[None], filtered.particles]),
            jnp.concatenate([lw0, filtered.log_weights]))


def ffbsi(problem, filtered, key, num_paths: int):
    """(M, T+1, dz) backward-simulated paths z_{0:T}; needs ``keep_particles`` output."""
    X, LW = _with_initial(problem, filtered)
    shape = problem.state_shape
    key_last, key_back = jax.random.split(key)
    last = X[-1][jax.random.categorical(key_last, LW[-1], shape=(num_paths,))]

    def log_f(z_prev, xs_t, z_next):
        return jnp.sum(problem.transition(z_prev, xs_t).log_prob(z_next.reshape(shape)))

    def back(z_next, inputs):
        k, particles, log_w, xs_t = inputs
        # (M, N): weight of particle i at t as the parent of path m's state at t+1
        lf = jax.vmap(lambda zn: jax.vmap(lambda zp: log_f(zp, xs_t, zn))(particles))(z_next)
        idx = jax.random.categorical(k, log_w[None, :] + lf, axis=-1)
        z = particles[idx]
        return z, z

    T = problem.length
    keys = jax.random.split(key_back, T)
    # step t (0-based, xs[t]) moves z_t to z_{t+1}: pair X[t] with xs[t]
    _, paths = lax.scan(back, last, (keys, X[:-1], LW[:-1], problem.xs), reverse=True)
    return jnp.concatenate([jnp.swapaxes(paths, 0, 1), last[:, None]], axis=1)


def lineages(filtered):
    """(N, T+1, dz) the ancestral line of every final particle, z_0 first."""
    N = filtered.particles.shape[1]

    def back(idx, inputs):
        particles, ancestors = inputs
        return ancestors[idx], particles[idx]

    last = jnp.arange(N, dtype=filtered.ancestors.dtype)
    idx0, path = lax.scan(back, last, (filtered.particles, filtered.ancestors), reverse=True)
    return jnp.concatenate([filtered.initial_particles[idx0][:, None], jnp.swapaxes(path, 0, 1)], axis=1)


def backward_trajectories(problem, filtered, key, num_paths: int, method: str):
    """(M, T, dz) smoothed paths z_{1:T} by ``method`` ("ffbsi" or "genealogy")."""
    if method == "ffbsi":
        return ffbsi(problem, filtered, key, num_paths)[:, 1:]
    return _draw_lineages(lineages(filtered), filtered, key, num_paths)


def _draw_lineages(all_paths, filtered, key, num_paths: int):
    """(M, T, dz): M of the N lineages (N, T+1, dz), drawn by their final weights, without z_0."""
    pick = jax.random.categorical(key, filtered.log_weights[-1], shape=(num_paths,))
    return all_paths[pick, 1:]


def _path_moments(paths, w):
    """Weighted means (T+1, dz), covariances (T+1, dz, dz), lag-one cross-covariances (T, dz, dz)."""
    mean = jnp.einsum("m,mtd->td", w, paths)
    dev = paths - mean
    cov = jnp.einsum("m,mti,mtj->tij", w, dev, dev)
    cross = jnp.einsum("m,mti,mtj->tij", w, dev[:, :-1], dev[:, 1:])
    return mean, cov, cross


def particle_smooth(problem, filtered, key, method: str, num_paths: int, keep_particles: bool):
    """A ``SmoothResult`` from a filter run with its particles kept."""

    if method == "ffbsi":
        paths = ffbsi(problem, filtered, key, num_paths)
        mean, cov, cross = _path_moments(paths, jnp.full(num_paths, 1.0 / num_paths, paths.dtype))
        # the paths are i.i.d. given the particles: unbiased (M - 1) sample covariances
        unbias = num_paths / max(num_paths - 1, 1)
        cov, cross = unbias * cov, unbias * cross
        trajectories = paths[:, 1:]
    else:
        all_paths = lineages(filtered)
        mean, cov, cross = _path_moments(all_paths, jax.nn.softmax(filtered.log_weights[-1]))
        trajectories = _draw_lineages(all_paths, filtered, key, num_paths)
    # the filter's fields; the stored particles only when the user asked for them
    if not keep_particles:
        filtered = filtered.replace(extras=filtered.extras.replace(particles=None, log_weights=None, ancestors=None,
                                                                   initial_particles=None))
    return SmoothResult(filtered=filtered, smoothed_means=mean[1:], smoothed_covariances=cov[1:],
                        smoothed_cross_covariances=cross[1:], initial_smoothed_mean=mean[0],
                        initial_smoothed_covariance=cov[0], initial_cross_covariance=cross[0],
                        extras=ParticleSmoothExtras(trajectories=trajectories))
