"""Ensemble Kalman filters: stochastic, ETKF, EnSRF (batch and serial) and LETKF.

Notation: N members, d state components, m observed components. Each cycle
  1. forecast: every member moves by the model's transition, sampled (process
     noise included when the model has it; a ``Delta`` transition is deterministic);
  2. the members' predicted observations h(x_i) come from the emission site's
     mean, R from its scale (evaluated at the forecast mean), and everything in
     observation space is *whitened* by R^{-1/2}: S (N, m) the predicted-obs
     anomalies, d (m,) the innovation y - mean h(x_i). Missing observations (NaN)
     get zero rows, which removes them exactly;
  3. analysis (below), then inflation (``ssmppl.inference.inflation``) and, with
     ``rotate=True``, a random rotation of the anomalies that keeps their mean
     and covariance.

Variants (A (N, d) the forecast anomalies, M = (N-1) I + S S^T, N x N):
  stochastic  perturbed observations (Burgers et al. 1998): member i gets
              x_i + A^T M^{-1} S (d - S_i - e_i), e_i ~ N(0, I) re-centred over members;
  etkf        symmetric square root (Hunt et al. 2007): mean + w A with
              w = M^{-1} S d, anomalies T A with T = sqrt(N-1) M^{-1/2};
  ensrf       batch square root in observation space (Whitaker & Hamill 2002):
              C = I + S^T S / (N-1) (m x m), gain A^T S C^{-1} / (N-1), anomalies
              (I - S (C + C^{1/2})^{-1} S^T / (N-1)) A;
  serial      the same square root one scalar observation at a time (diagonal R),
              the predicted observations updated along with the state;
  letkf       the ETKF solved per state component with the observations within its
              localisation radius, their R^{-1} scaled by the taper (R-localisation),
              vectorised over components.
For a linear model the deterministic variants give the Kalman analysis of the
ensemble's own mean and covariance exactly.

Localisation (``ssmppl.inference.localization``): LETKF needs it; ``serial``,
``stochastic`` and ``ensrf`` accept it and taper the covariances (serial: the
gain of each observation; the batch variants: P H^T and H P H^T, which costs a
dense (d, m) taper); ``etkf`` cannot localise (use ``letkf``).

Likelihood: the ensemble's Gaussian approximation of each one-step predictive
density, p(y_t | y_{1:t-1}) ~ N(y_t; mean h(x_i^f), cov h(x_i^f) + R) with the
(N-1) sample covariance of the forecast members, evaluated through M (N x N) by
the matrix determinant lemma and Woodbury's identity, and summed over t. It is
neither unbiased nor consistent for nonlinear models, but it is a smooth function
of the parameters for a fixed key: with the deterministic variants (etkf, ensrf,
serial, letkf) ``jax.grad`` flows through it, so ``fit_sgd`` and NUTS
(``sample_posterior`` holds the key fixed: common random numbers) can estimate
parameters. The square roots are differentiated by a custom rule that stays
finite when eigenvalues coincide (M always has the eigenvalue N-1 repeated).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ...diagnostics import EnsembleWarning, ensemble_health
from ...results import FilterResult, SmoothResult
from ..base import ALL_CAPABILITIES, Backend
from ..samples import forecast_samples, mixture_predictive
from .filter import VARIANTS, emission_density_refusal, ensemble_filter
from .inflation import as_inflation
from .localization import Localization
from .smoother import ensemble_smooth


# -- results ---------------------------------------------------------------------------------------


# -- symmetric matrix functions with a gradient that survives repeated eigenvalues ---------------


# -- observation space -----------------------------------------------------------------------------


# -- analysis steps: (forecast members X (N, c), S, d, ...) -> analysis members --------------------
# X may carry extra columns (the smoother appends the identity to read off the transform).


# -- the filter ------------------------------------------------------------------------------------


# -- divergence without a truth -------------------------------------------------------------------

# A consistent filter's innovation chi2 per observed component averages 1 (sd sqrt(2 / dof)); finite
# ensembles bias it up a little (stable Lorenz-96 set-ups: 1.0-1.4 after spin-up). A diverged ensemble
# is far more confident than its errors: 22 for an ETKF(20) on a 40-variable Lorenz-96 (RMSE 4.5).
# Warn above DIVERGENCE_RATIO (the innovations' spread twice what the ensemble predicts) when the chi2
# law also rejects consistency at DIVERGENCE_P, over the second half of the steps (the first half is
# spin-up: an initial ensemble far from the data is the model's prior, not a failing filter).
DIVERGENCE_RATIO = 4.0
DIVERGENCE_P = 1e-6


def innovation_divergence(chi2, num_observed, name):
    """A message if the innovations of the second half of the steps are far larger than the ensemble
    predicts (filter divergence), else None. chi2, num_observed: (T,) (``EnsembleFilterExtras``)."""
    chi2, m = np.asarray(chi2, np.float64), np.asarray(num_observed, np.float64)
    start = chi2.shape[0] // 2
    total, dof = float(chi2[start:].sum()), float(m[start:].sum())
    if not dof > 0 or not np.isfinite(total):
        return None
    ratio = total / dof
    p_value = float(jax.scipy.special.gammaincc(dof / 2, total / 2))  # P(chi2_dof >= total)
    if not (ratio > DIVERGENCE_RATIO and p_value < DIVERGENCE_P):
        return None
    return (f"{name} diverged: from step {start + 1} on its innovations y_t - E[y_t | y_1:t-1] are "
            f"{ratio:.3g} times larger (in variance) than the ensemble predicts (normalised innovation chi2 per "
            f"observed component; a consistent filter gives about 1; p = {p_value:.1e}), so its filtered means "
            "are not to be trusted. More inflation (inflation=1.1, or RTPS/Adaptive), localisation "
            "(variant='letkf'), or more members; with a truth, ssmppl.diagnostics.ensemble_health(ensembles, "
            "truth) shows the RMSE and spread over time (keep_ensembles=True)")


# -- the backend -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EnKF(Backend):
    """Ensemble Kalman filter and smoother (EnKS) on any model with a Gaussian emission.

    num_members: N >= 2.
    variant: "etkf" (default), "stochastic", "ensrf", "serial" or "letkf" (module docstring).
    inflation: a factor >= 1 (multiplicative on the anomalies: the covariance scales by its
        square), or ``Multiplicative``/``Additive``/``RTPS``/``RTPP``/``Adaptive`` from
        ``ssmppl.inference.inflation``, or a tuple of them, applied after each analysis.
    localization: a ``Localization`` (required by "letkf"; not available for "etkf").
    rotate: a random mean-preserving rotation of the analysis anomalies each cycle.
    lag: the smoother's fixed lag (None: condition every state on all observations).
    keep_ensembles: store the (T, N, d) forecast and analysis members in the result.
    store_covariances: False leaves the (T, d, d) covariance and (T, d) variance fields None
        (large d: memory O(T + N d) then, plus the (T, d) means).

    Needs a ``key``; the same key gives the same result. ``log_likelihood`` is the
    Gaussian-approximation estimate described in the module docstring.
    """

    num_members: int = 20
    variant: str = "etkf"
    inflation: Any = 1.0
    localization: Optional[Localization] = None
    rotate: bool = False
    lag: Optional[int] = None
    keep_ensembles: bool = False
    store_covariances: bool = True

    capabilities = ALL_CAPABILITIES
    requires_key = True

    def __post_init__(self):
        n = self.num_members
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
            raise ValueError(f"EnKF(num_members=...) must be an int >= 2 (an ensemble of one member has no "
                             f"covariance), got {n!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"EnKF(variant=...) must be one of {VARIANTS}, got {self.variant!r}")
        as_inflation(self.inflation, "EnKF")
        if self.localization is not None and not isinstance(self.localization, Localization):
            raise TypeError(f"EnKF(localization=...) must be an ssmppl Localization, got {self.localization!r}")
        if self.variant == "letkf" and self.localization is None:
            raise ValueError("EnKF(variant='letkf') needs localization=Localization(radius, state_coords, "
                             "obs_coords) (e.g. Localization.on_ring(4, dim) for Lorenz-96)")
        if self.variant == "etkf" and self.localization is not None:
            raise ValueError("EnKF(variant='etkf') works in ensemble space and cannot localise: use "
                             "variant='letkf' (or 'serial', 'stochastic', 'ensrf' with covariance tapering)")
        if self.lag is not None and (isinstance(self.lag, bool) or not isinstance(self.lag, int) or self.lag < 0):
            raise ValueError(f"EnKF(lag=...) must be None or an int >= 0, got {self.lag!r}")

    def filter(self, problem, key=None) -> FilterResult:
        return ensemble_filter(problem, self._key(key), self, self.keep_ensembles, self.store_covariances)

    def log_likelihood(self, problem, key=None):
        return ensemble_filter(problem, self._key(key), self, False, False).marginal_loglik

    def log_predictive(self, problem, key=None):
        return ensemble_filter(problem, self._key(key), self, False, False).log_predictive

    def smooth(self, problem, key=None) -> SmoothResult:
        return ensemble_smooth(problem, self._key(key), self)

    def sample_states(self, problem, key):
        """One smoothed member's path (T, d), the member drawn uniformly."""
        k_smooth, k_pick = jax.random.split(key)
        smoothed = self.smooth(problem, k_smooth)
        return smoothed.smoothed_ensembles[:, jax.random.randint(k_pick, (), 0, self.num_members)]

    def forecast(self, problem, filtered, num_steps, key=None):
        return forecast_samples(problem, filtered.extras.final_ensemble, num_steps, self._key(key))

    def posterior_predictive(self, problem, smoothed):
        """E[y_t | y_{1:T}] and sd[y_t | y_{1:T}] (T, dy), mixing p(y_t | z_t) over the smoothed members."""
        return mixture_predictive(problem, jnp.swapaxes(smoothed.extras.smoothed_ensembles, 0, 1))

    def result_warnings(self, result, problem):
        """An ``EnsembleWarning`` when the ensemble diverged without a truth to compare with:
        ``innovation_divergence`` on the innovations, and with ``keep_ensembles`` also
        ``ssmppl.diagnostics.ensemble_health``'s truth-free checks (collapse)."""
        extras = getattr(result, "extras", None)
        if extras is None or not hasattr(extras, "innovation_chi2"):
            return ()
        name = f"EnKF({self.num_members}, {self.variant!r})"
        found = []
        message = innovation_divergence(extras.innovation_chi2, extras.num_observed, name)
        if message:
            found.append(EnsembleWarning(message))
        if hasattr(extras, "filtered_ensembles"):
            health = ensemble_health(extras.filtered_ensembles)
            if not health.healthy:
                found.append(EnsembleWarning(f"{name}: the analysis ensemble {health.message} "
                                             "(ssmppl.diagnostics.ensemble_health)"))
        return tuple(found)

    def explain(self, problem, result, step) -> str:
        # a zero observation-error variance given as a parameter value is concrete only here
        refusal = emission_density_refusal(problem, f"EnKF({self.variant!r})")
        if refusal is not None:
            return refusal
        return (f"EnKF({self.variant!r}): the ensemble diverged: its mean is not finite from step {step} on. "
                "Check the data near that step; more inflation, localisation, more members or a smaller model "
                "time step may help (ssmppl.diagnostics.ensemble_health shows the RMSE and spread over time)")


