"""Ensemble Kalman smoother (EnKS; Evensen & van Leeuwen 2000), full or fixed-lag.

A global ensemble analysis is a transform in ensemble space: the analysis members
are G_t (N x N) times the forecast members, for every column of the state. Past
states, carried along unchanged by the forecast, take the same transform, so

    X_{s | t} = G_t G_{t-1} ... G_{s+1} X_s^a      (members at time s given y_{1:t}),

with X_0^a the initial ensemble. The filter returns its G_t (read off by running
the analysis on the identity matrix appended to the state), and the smoother
multiplies them backwards: O(T N^2 (N + d)) time and the (T, N, d) ensembles in
memory. A fixed lag L conditions state s on y_{1:s+L} only.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from .ensemble import EnsembleSmoothExtras, ensemble_filter, smoothable
from .results import SmoothResult


def _sample_moments(X, covariances=True):
    """Means (T, d), covariances (T, d, d) or None, and the centred members (T, N, d)."""
    mean = X.mean(1)
    A = X - mean[:, None]
    N = X.shape[1]
    cov = jnp.einsum("tni,tnj->tij", A, A) / (N - 1) if covariances else None
    return mean, cov, A


def smoothing_products(G, lag=None):
    """(T+1, N, N) products P_s with X_{s|.} = P_s X_s^a, s = 0..T, from the transforms G (T, N, N)
    (G[t-1] is G_t): all of G_{s+1..T} (lag None) or G_{s+1..s+lag}."""
    T, N, _ = G.shape
    eye = jnp.eye(N, dtype=G.dtype)
    if lag is None:
        def back(P, G_s):
            return P @ G_s, P

        first, P = lax.scan(back, eye, G, reverse=True)  # P[s-1] = G_T ... G_{s+1} for s = 1..T
        return jnp.concatenate([first[None], P])
    G_pad = jnp.concatenate([G, jnp.broadcast_to(eye, (lag, N, N))])

    def forward(P, l):  # P_s <- G_{s+l} P_s for all s at once
        return jnp.einsum("sij,sjk->sik", lax.dynamic_slice_in_dim(G_pad, l, T + 1), P), None

    P, _ = lax.scan(forward, jnp.broadcast_to(eye, (T + 1, N, N)), jnp.arange(lag))
    return P


def ensemble_smooth(problem, key, settings) -> SmoothResult:
    why = smoothable(settings)
    if why is not None:
        raise ValueError(f"EnKF smoother (EnKS): {why}. Smooth with a global variant (etkf, ensrf, stochastic, "
                         "serial) without localisation and with Multiplicative, RTPP or Adaptive inflation")
    cov = settings.store_covariances
    filtered, G = ensemble_filter(problem, key, settings, keep_ensembles=True, covariances=cov, transforms=True)
    if settings.lag == 0:
        P = jnp.broadcast_to(jnp.eye(settings.num_members, dtype=G.dtype), (G.shape[0] + 1,) + G.shape[1:])
    else:
        P = smoothing_products(G, settings.lag)
    states = jnp.concatenate([filtered.initial_ensemble[None], filtered.filtered_ensembles])
    smoothed = jnp.einsum("sij,sjd->sid", P, states)  # (T+1, N, d)
    mean, covariance, A = _sample_moments(smoothed, cov)
    N = settings.num_members
    cross = jnp.einsum("tni,tnj->tij", A[:-1], A[1:]) / (N - 1) if cov else None
    if not settings.keep_ensembles:
        filtered = filtered.replace(extras=filtered.extras.replace(filtered_ensembles=None, predicted_ensembles=None))
    return SmoothResult(
        filtered=filtered, smoothed_means=mean[1:], smoothed_covariances=None if covariance is None else covariance[1:],
        smoothed_cross_covariances=None if cross is None else cross[1:],
        initial_smoothed_mean=mean[0], initial_smoothed_covariance=None if covariance is None else covariance[0],
        initial_cross_covariance=None if cross is None else cross[0],
        extras=EnsembleSmoothExtras(smoothed_ensembles=smoothed[1:], initial_smoothed_ensemble=smoothed[0]))
