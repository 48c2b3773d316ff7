"""Forecast-verification diagnostics for ensemble data assimilation.

Array conventions (every function states its shapes):

- truth: (T, d), the true state at each of T times;
- ensemble: (T, N, d), N members on axis 1;
- estimate / mean: (T, d).

Leading batch axes are allowed wherever the docstring writes ``...``. The scores
(``rmse``, ``spread``, ``crps_ensemble``, ``rank_histogram``, ``innovation_chi2``)
are pure ``jax.numpy`` and run under ``jit`` / ``vmap`` (``spin_up`` static).
``ensemble_health`` / ``check_ensemble`` and the plots are host-side (NumPy,
matplotlib): they turn the scores into flags, messages and figures.

Non-finite values are never dropped silently: a NaN in an ensemble makes its
RMSE, spread, CRPS and rank histogram NaN, and ``ensemble_health`` flags it.
Only *missing* reference values are masked (NaN truth in ``rank_histogram``, NaN
innovations in ``innovation_chi2``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammainc, gammaincc

__all__ = ["rmse", "spread", "time_average", "spread_skill_ratio", "rank_histogram", "rank_histogram_chi2",
           "crps_ensemble", "innovation_chi2", "innovation_consistency", "ensemble_health", "check_ensemble",
           "EnsembleHealth", "EnsembleWarning", "FlatnessTest", "InnovationConsistency", "plot_rmse_spread",
           "plot_rank_histogram"]


# ---------------------------------------------------------------------------- scores


@jax.jit
def rmse(estimate, truth):
    """Root mean squared error over components, per time.

    estimate, truth: (..., d) (typically (T, d)). Returns (...,):
    ``sqrt(mean_j (estimate_j - truth_j)^2)``.
    """
    err = jnp.asarray(estimate) - jnp.asarray(truth)
    return jnp.sqrt(jnp.mean(err**2, axis=-1))


@jax.jit
def spread(ensemble):
    """Ensemble spread: the root of the mean over components of the unbiased
    (``N - 1``) member variance, per time (the RMS spread, DAPPER's convention).

    ensemble: (..., N, d) with N >= 2 (typically (T, N, d)). Returns (...,).
    With N = 1 the variance is 0/0 = NaN.
    """
    return jnp.sqrt(jnp.mean(jnp.var(jnp.asarray(ensemble), axis=-2, ddof=1), axis=-1))


def time_average(x, spin_up=0):
    """Mean over time after discarding the first ``spin_up`` steps.

    x: (T, ...) ; spin_up: a static int, 0 <= spin_up < T. Returns x[spin_up:].mean(0),
    a 0-d array for x of shape (T,). NaNs propagate (a diverged run stays visible).
    """
    x = jnp.asarray(x)
    if not 0 <= spin_up < x.shape[0]:
        raise ValueError(f"spin_up must be in [0, T) = [0, {x.shape[0]}), got {spin_up}")
    return jnp.mean(x[spin_up:], axis=0)


@functools.partial(jax.jit, static_argnames=("spin_up", "corrected"))
def spread_skill_ratio(ensemble, truth, spin_up=0, corrected=False):
    """Time-averaged spread over time-averaged RMSE of the ensemble mean.

    ensemble: (T, N, d); truth: (T, d). Returns a 0-d array:
    ``time_average(spread(ensemble)) / time_average(rmse(ensemble.mean(1), truth))``.

    Expected value. If the truth is exchangeable with the members (a calibrated
    ensemble: truth and members i.i.d. given the past), the mean's error has
    variance ``(1 + 1/N) sigma^2`` while the unbiased member variance estimates
    ``sigma^2``, so the ratio of mean squares is ``N / (N + 1)`` and the ratio is
    about ``sqrt(N / (N + 1))``, not 1 (0.95 at N = 10). (With the biased, 1/N
    variance it would be ``sqrt((N - 1) / (N + 1))``.) Averaging the per-time
    square roots adds a small Jensen term of relative order ``1 / (4 d)``; for
    i.i.d. Gaussian components the exact expectation is
    ``sqrt(N/(N+1)) * c(d (N-1)) / c(d)`` with ``c(k) = E[sqrt(chi2_k / k)]``.

    ``corrected=True`` multiplies by ``sqrt((N + 1) / N)`` so that a calibrated
    ensemble scores about 1; below 1 means under-dispersed (overconfident),
    above 1 over-dispersed.
    """
    ensemble = jnp.asarray(ensemble)
    n = ensemble.shape[-2]
    ratio = time_average(spread(ensemble), spin_up) / time_average(rmse(ensemble.mean(-2), truth), spin_up)
    return ratio * math.sqrt((n + 1) / n) if corrected else ratio


class FlatnessTest(NamedTuple):
    """Chi-square test of a rank histogram's flatness: ``statistic`` ~ chi2(``dof``)
    under flatness if the counts were independent; ``p_value`` = P(chi2 >= statistic)."""

    statistic: jax.Array
    dof: int
    p_value: jax.Array


@jax.jit
def rank_histogram(ensemble, truth, key=None):
    """Histogram of the rank of the truth among the members, pooled over all times
    and components.

    ensemble: (..., N, d); truth: (..., d). Returns (N + 1,) float counts: bin k
    counts the (time, component) pairs with exactly k members below the truth.
    A calibrated ensemble gives a flat histogram; U-shaped = under-dispersed,
    dome-shaped = over-dispersed, sloped = biased.

    Ties (members equal to the truth, e.g. clipped or discrete variables): with a
    ``key`` each tie is broken at random (uniform among the tied positions, integer
    counts); without a key each pair spreads weight 1/(E+1) over its E+1 possible
    ranks, the expected histogram of random tie-breaking (fractional counts).
    Pairs whose truth is NaN (missing) are skipped. A non-finite member in a used
    pair makes every count NaN: ranks against NaN mean nothing, so the histogram
    says so rather than hiding it.
    """
    ens = jnp.asarray(ensemble)
    y = jnp.asarray(truth)[..., None, :]
    n = ens.shape[-2]
    below = jnp.sum(ens < y, axis=-2).reshape(-1)
    ties = jnp.sum(ens == y, axis=-2).reshape(-1)
    used = jnp.isfinite(y[..., 0, :]).reshape(-1)
    bad = jnp.any(used & ~jnp.all(jnp.isfinite(ens), axis=-2).reshape(-1))
    weight = used.astype(ens.dtype)
    if key is not None:
        u = jax.random.uniform(key, below.shape, dtype=ens.dtype)
        rank = below + jnp.minimum(jnp.floor(u * (ties + 1)).astype(below.dtype), ties)
        counts = jnp.zeros(n + 1, ens.dtype).at[rank].add(weight)
    else:
        # weight/(E+1) on each of ranks below..below+E: a difference array, then cumsum
        w = weight / (ties + 1)
        diff = jnp.zeros(n + 2, ens.dtype).at[below].add(w).at[below + ties + 1].add(-w)
        counts = jnp.cumsum(diff)[: n + 1]
    return jnp.where(bad, jnp.nan, counts)


def rank_histogram_chi2(counts):
    """Pearson chi-square statistic of a rank histogram against the flat one.

    counts: (N + 1,). Returns ``FlatnessTest(statistic, dof=N, p_value)``.
    The p-value assumes independent ranks; ranks pooled over consecutive times and
    neighbouring components are correlated, which inflates the statistic, so read
    a small p-value on such pooled counts as a hint, not a verdict (thin the times
    and components for a formal test).
    """
    c = jnp.asarray(counts)
    dof = c.shape[0] - 1
    expected = jnp.sum(c) / c.shape[0]
    stat = jnp.sum((c - expected) ** 2) / expected
    return FlatnessTest(stat, dof, gammaincc(dof / 2, stat / 2))


@functools.partial(jax.jit, static_argnames="fair")
def crps_ensemble(ensemble, truth, fair=False):
    """Continuous ranked probability score of the ensemble, per time, averaged
    over components (lower is better; it has the units of the state).

    ensemble: (..., N, d); truth: (..., d). Returns (...,).

    Per component, with members x_1..x_N and truth y,
    ``CRPS = mean_i |x_i - y| - 1/(2 N^2) sum_{i,j} |x_i - x_j|``
    (the CRPS of the ensemble's empirical distribution). The pair sum uses the
    sorted members, ``sum_{i,j} |x_i - x_j| = 2 sum_k (2k - N - 1) x_(k)``, so
    time O(N log N) and memory O(N) per component. ``fair=True`` divides the pair
    sum by ``2 N (N - 1)`` instead: the unbiased estimate of the CRPS of the
    distribution the members are drawn from (the "fair" CRPS).
    """
    ens = jnp.asarray(ensemble)
    y = jnp.asarray(truth)
    n = ens.shape[-2]
    skill = jnp.mean(jnp.abs(ens - y[..., None, :]), axis=-2)
    k = jnp.arange(1, n + 1, dtype=ens.dtype)
    weights = (2 * k - n - 1)[:, None]
    pair_half = jnp.sum(weights * jnp.sort(ens, axis=-2), axis=-2)  # = (1/4) sum_{i,j} |x_i - x_j|
    denom = n * (n - 1) if fair else n * n
    return jnp.mean(skill - pair_half / denom, axis=-1)


# ---------------------------------------------------------------------------- innovations


def _observed_block(innovations, covariances, mask):
    """Zero the missing components of d and replace their rows/columns of S by the
    identity: S becomes block-diagonal (S_oo, I), so d^T S^-1 d = d_o^T S_oo^-1 d_o."""
    d = jnp.asarray(innovations)
    S = jnp.asarray(covariances)
    obs = jnp.isfinite(d)
    if mask is not None:
        obs = obs & jnp.asarray(mask, bool)
    d = jnp.where(obs, d, 0.0)
    both = obs[..., :, None] & obs[..., None, :]
    S = jnp.where(both, S, 0.0) + jnp.where(obs, 0.0, 1.0)[..., None] * jnp.eye(S.shape[-1], dtype=S.dtype)
    return d, S, obs


@jax.jit
def innovation_chi2(innovations, covariances, mask=None):
    """Normalised innovation squared per step, ``d_t^T S_t^{-1} d_t``.

    innovations: (T, dy) with d_t = y_t - E[y_t | y_{1:t-1}], NaN where y_t is
    missing; covariances: (T, dy, dy), the predicted S_t = H P^f H^T + R
    (positive definite on the observed components); mask: optional (T, dy) bool,
    True = observed (combined with the NaN pattern). Returns (T,).

    Missing components are dropped exactly, for any S (not only diagonal): the
    statistic uses the observed block S_oo of S_t. Under a consistent filter,
    step t's value is chi2 with as many degrees of freedom as observed components
    (``jnp.sum(observed, -1)``); a step with nothing observed gives 0.
    """
    d, S, _ = _observed_block(innovations, covariances, mask)
    chol = jnp.linalg.cholesky(S)
    white = jax.scipy.linalg.solve_triangular(chol, d[..., None], lower=True)[..., 0]
    return jnp.sum(white**2, axis=-1)


class InnovationConsistency(NamedTuple):
    """Pooled innovation chi2 test: ``normalized`` = sum chi2 / dof (expected 1);
    ``z_score`` = (sum chi2 - dof) / sqrt(2 dof); ``p_value`` two-sided, from the
    chi2(dof) law of the sum; ``dof`` = number of observed components used."""

    normalized: jax.Array
    z_score: jax.Array
    p_value: jax.Array
    dof: jax.Array


@jax.jit
def innovation_consistency(innovations, covariances, mask=None, spin_up=0):
    """Time-averaged normalised innovation chi2 and its test against 1.

    innovations: (T, dy); covariances: (T, dy, dy); mask: optional (T, dy) bool
    (see ``innovation_chi2``); steps before ``spin_up`` are discarded.
    Returns ``InnovationConsistency(normalized, z_score, p_value, dof)``.

    ``normalized = sum_t chi2_t / sum_t dy_t`` with dy_t the observed count at
    step t (with everything observed: the time average of chi2_t / dy). The
    innovations of a consistent filter are independent over time, so the sum is
    chi2 with ``dof = sum_t dy_t`` degrees of freedom; ``z_score`` standardises it
    with that law's variance 2 dof, ``p_value`` = 2 min(P(X <= s), P(X >= s)).
    normalized > 1: the filter is overconfident (S too small, e.g. too little
    inflation); < 1: underconfident. Finite-ensemble estimates of S bias the
    statistic upwards slightly.
    """
    chi2 = innovation_chi2(innovations, covariances, mask)
    _, _, obs = _observed_block(innovations, covariances, mask)
    # a mask rather than a slice: spin_up may be traced, one compilation serves all
    kept = jnp.arange(chi2.shape[0]) >= spin_up
    total = jnp.sum(jnp.where(kept, chi2, 0.0))
    dof = jnp.sum(jnp.where(kept[:, None], obs, False)).astype(chi2.dtype)
    lower = gammainc(dof / 2, total / 2)
    p = jnp.minimum(1.0, 2 * jnp.minimum(lower, 1 - lower))
    return InnovationConsistency(total / dof, (total - dof) / jnp.sqrt(2 * dof), p, dof)


# ---------------------------------------------------------------------------- health flags


class EnsembleWarning(UserWarning):
    """An ensemble collapsed (no spread left) or diverged (non-finite, or worse than climatology)."""


@dataclasses.dataclass(frozen=True)
class EnsembleHealth:
    """Result of ``ensemble_health``. Times are indices on the ensemble's time axis
    (None when the condition never occurs); ``rmse`` (T,) is None without truth."""

    collapsed: bool
    collapse_time: Optional[int]
    diverged: bool
    divergence_time: Optional[int]
    nonfinite_time: Optional[int]
    message: str
    spread: np.ndarray
    rmse: Optional[np.ndarray]

    @property
    def healthy(self):
        return not (self.collapsed or self.diverged)


def _first_sustained(flag, patience, start):
    """First index t >= start with flag[t : t + patience] all True (patience clipped
    to the steps left); None if there is none. flag: (T,) bool."""
    flag = np.asarray(flag, bool).copy()
    flag[:start] = False
    T = flag.shape[0]
    for t in np.flatnonzero(flag):
        if flag[t: min(T, t + patience)].all():
            return int(t)
    return None


def ensemble_health(ensemble, truth=None, collapse_tol=1e-3, collapse_ratio=0.1, divergence_factor=1.0,
                    patience=5, spin_up=0):
    """Flag a collapsed or diverged ensemble.

    ensemble: (T, N, d); truth: optional (T, d). Host-side (NumPy); returns an
    ``EnsembleHealth``.

    Scale: the climatological sd of the truth, ``sqrt(mean_j var_t truth[:, j])``,
    or without truth the ensemble's own pooled sd over times and members.

    - Non-finite: the first step with a NaN or inf in any member (diverged at once).
    - Collapse: ``spread_t <= collapse_tol * scale`` or, with truth,
      ``spread_t < collapse_ratio * rmse_t`` (the ensemble claims an accuracy it
      does not have), held for ``patience`` consecutive steps.
    - Divergence (needs truth): ``rmse_t > divergence_factor * scale`` for
      ``patience`` consecutive steps, i.e. with the default factor 1 the mean is
      further from the truth than the climatological mean typically is.

    Steps before ``spin_up`` are not checked for collapse or RMSE divergence
    (non-finite values are always flagged). The time reported is the first step
    of the sustained run.
    """
    ens = np.asarray(ensemble, dtype=float)
    T = ens.shape[0]
    finite = np.isfinite(ens).reshape(T, -1).all(axis=1)
    nonfinite_time = None if finite.all() else int(np.argmin(finite))
    with np.errstate(invalid="ignore", divide="ignore"):
        sprd = np.sqrt(np.mean(np.var(ens, axis=1, ddof=1), axis=-1))
        if truth is not None:
            y = np.asarray(truth, dtype=float)
            err = np.sqrt(np.mean((ens.mean(axis=1) - y) ** 2, axis=-1))
            scale = float(np.sqrt(np.nanmean(np.nanvar(y, axis=0))))
        else:
            err = None
            good = ens[finite]
            scale = float(np.sqrt(np.mean(np.var(good.reshape(-1, ens.shape[-1]), axis=0)))) if good.size else np.nan

    collapse_flag = sprd <= collapse_tol * scale
    if err is not None:
        collapse_flag |= sprd < collapse_ratio * err
    collapse_time = _first_sustained(collapse_flag, patience, spin_up)
    rmse_time = None if err is None else _first_sustained(err > divergence_factor * scale, patience, spin_up)
    candidates = [t for t in (nonfinite_time, rmse_time) if t is not None]
    divergence_time = min(candidates) if candidates else None

    parts = []
    if nonfinite_time is not None:
        parts.append(f"diverged: non-finite ensemble values from step {nonfinite_time}")
    if rmse_time is not None:
        parts.append(f"diverged: RMSE {err[rmse_time]:.3g} exceeds {divergence_factor:g} x the climatological sd "
                     f"{scale:.3g} from step {rmse_time} (for {patience}+ steps)")
    if collapse_time is not None:
        detail = f"spread {sprd[collapse_time]:.3g}"
        if err is not None:
            detail += f" vs RMSE {err[collapse_time]:.3g}"
        parts.append(f"collapsed: {detail} (scale {scale:.3g}) from step {collapse_time} (for {patience}+ steps); "
                     "more inflation or members may help")
    message = "; ".join(parts) if parts else "healthy: no collapse or divergence detected"
    return EnsembleHealth(collapse_time is not None, collapse_time, divergence_time is not None, divergence_time,
                          nonfinite_time, message, sprd, err)


def check_ensemble(ensemble, truth=None, **kwargs):
    """``ensemble_health(ensemble, truth, **kwargs)``, emitting an ``EnsembleWarning``
    with its message when the ensemble collapsed or diverged. Returns the
    ``EnsembleHealth``."""
    health = ensemble_health(ensemble, truth, **kwargs)
    if not health.healthy:
        warnings.warn(health.message, EnsembleWarning, stacklevel=2)
    return health


# ---------------------------------------------------------------------------- plots


def plot_rmse_spread(times, rmse, spread=None, ax=None, labels=("RMSE", "spread"), logy=False, spin_up=0,
                     title=None):
    """RMSE (solid) and spread (dashed, same colour) against time.

    times: (T,) or None (0..T-1); rmse, spread: (T,) each, or (K, T) for K runs
    (``labels``: K run names, or K (RMSE name, spread name) pairs; for one run a
    name or a pair). The legend
    shows each curve's mean after ``spin_up`` steps, and a dotted vertical line
    marks the end of the spin-up when ``spin_up > 0``. Returns the matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    r = np.atleast_2d(np.asarray(rmse, dtype=float))
    s = None if spread is None else np.atleast_2d(np.asarray(spread, dtype=float))
    K, T = r.shape
    t = np.arange(T) if times is None else np.asarray(times)
    if isinstance(labels, str):
        labels = [labels]
    elif K == 1 and len(labels) == 2 and all(isinstance(n, str) for n in labels):
        labels = [tuple(labels)]  # one run: (RMSE name, spread name)
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 3.5))
    for k in range(K):
        name = labels[k]
        r_name, s_name = (f"{name} RMSE", f"{name} spread") if isinstance(name, str) else name
        line = ax.plot(t, r[k], lw=1.0, label=f"{r_name} (mean {np.mean(r[k, spin_up:]):.3g})")[0]
        if s is not None:
            ax.plot(t, s[k], lw=1.0, ls="--", color=line.get_color(),
                    label=f"{s_name} (mean {np.mean(s[k, spin_up:]):.3g})")
    if spin_up > 0:
        ax.axvline(t[spin_up], color="black", ls=":", lw=1.0)
    if logy:
        ax.set_yscale("log")
    ax.set_xlim(t[0], t[-1])
    ax.set_xlabel("time")
    ax.set_ylabel("RMSE / spread")
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(True)
    if title:
        ax.set_title(title)
    return ax


def plot_rank_histogram(counts, ax=None, title=None, band=True):
    """Rank histogram as relative frequencies, with the flat expectation 1/(N+1)
    as a horizontal line and, when ``band``, its +-2 sd band for independent
    ranks (multinomial). counts: (N + 1,). Returns the matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    c = np.asarray(counts, dtype=float)
    bins = c.shape[0]
    total = c.sum()
    freq = c / total
    p = 1.0 / bins
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(np.arange(bins), freq, width=0.9, color="C0", alpha=0.8)
    ax.axhline(p, color="black", lw=1.2, label="flat (calibrated)")
    if band:
        sd = math.sqrt(p * (1 - p) / total)
        ax.axhspan(p - 2 * sd, p + 2 * sd, color="grey", alpha=0.25, label="±2 sd")
    stat = rank_histogram_chi2(c)
    ax.set_xlabel(f"rank of truth among {bins - 1} members")
    ax.set_ylabel("frequency")
    ax.set_xlim(-0.5, bins - 0.5)
    ax.legend(loc="best", fontsize="small", title=f"χ² = {float(stat.statistic):.3g}, dof {stat.dof}")
    if title:
        ax.set_title(title)
    return ax
