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

import jax
import jax.numpy as jnp

from ...maths.ensemble import anomaly_moments, centre, smoothing_products
from ...results import SmoothResult
from .filter import ensemble_filter
from .inflation import Adaptive, Multiplicative, RTPP, as_inflation
from .results import EnsembleSmoothExtras


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
    mean, A = jax.vmap(centre)(smoothed)
    covariance = jax.vmap(lambda a: anomaly_moments(a)[1])(A) if cov else None
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


def smoothable(settings) -> "str | None":
    """None if the EnKS can reuse the filter's ensemble transforms, else why not."""
    if settings.localization is not None:
        return ("a localised analysis updates each component with its own transform, so the past states "
                "cannot be updated by one ensemble transform")
    kinds = as_inflation(settings.inflation, "EnKF")
    other = [type(k).__name__ for k in kinds if not isinstance(k, (Multiplicative, RTPP, Adaptive))]
    if other:
        return f"{other} inflation acts per component or adds noise, not as an ensemble transform"
    return None
