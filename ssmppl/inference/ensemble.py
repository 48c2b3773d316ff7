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
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import cho_solve, solve_triangular

from ..errors import ModelStructureError
from .base import Backend, check_forecastable
from .gaussian import family_name, gaussian_parts, is_gaussian, require_density, require_samplable
from .inflation import Adaptive, Multiplicative, RTPP, adaptive_of, as_inflation, inflate, update_adaptive
from .localization import Localization
from .results import FilterResult, SmoothResult, _pytree_dataclass

VARIANTS = ("stochastic", "etkf", "ensrf", "serial", "letkf")
DIAGONAL_R = ("serial", "letkf")


# -- results ---------------------------------------------------------------------------------------

@_pytree_dataclass
class EnsembleFilterResult(FilterResult):
    """``FilterResult`` of an ensemble filter: means and covariances are the members' sample
    moments ((N-1) denominator; the covariance fields are None with ``store_covariances=False``).

      filtered_spread, predicted_spread: (T,)  RMS ensemble spread sqrt(mean_j var_j) after / before
                                               each analysis (the spread DAPPER reports)
      filtered_variances: (T, d)               per-component analysis variances (None with
                                               ``store_covariances=False``)
      innovation_chi2: (T,)                    d_t^T (H P^f H^T + R)^{-1} d_t, chi^2 with
                                               ``num_observed`` dof for a consistent filter
      num_observed: (T,)                       observed components at each step
      inflation_factors: (T,)                  adaptive multiplicative factor used (1 without)
      final_ensemble, initial_ensemble: (N, d)
      filtered_ensembles, predicted_ensembles: (T, N, d) with ``keep_ensembles=True``, else None
    """

    filtered_spread: jax.Array = None
    predicted_spread: jax.Array = None
    filtered_variances: jax.Array = None
    innovation_chi2: jax.Array = None
    num_observed: jax.Array = None
    inflation_factors: jax.Array = None
    final_ensemble: jax.Array = None
    initial_ensemble: jax.Array = None
    filtered_ensembles: Optional[jax.Array] = None
    predicted_ensembles: Optional[jax.Array] = None


@_pytree_dataclass
class EnsembleSmoothResult(SmoothResult, EnsembleFilterResult):
    """``SmoothResult`` of the ensemble Kalman smoother (EnKS), with the filter's fields.

      smoothed_ensembles: (T, N, d) members conditioned on y_{1:T} (or on y_{1:t+lag})
      initial_smoothed_ensemble: (N, d)
    Smoothed moments are the smoothed members' sample moments; cross-covariances pair
    each member with itself at consecutive times.
    """

    smoothed_ensembles: jax.Array = None
    initial_smoothed_ensemble: jax.Array = None


# -- symmetric matrix functions with a gradient that survives repeated eigenvalues ---------------

def _inv_sqrt(w):
    return w ** -0.5, -0.5 * w ** -1.5


def _ensrf_fn(w):  # 1 / (w + sqrt(w))
    s = jnp.sqrt(w)
    f = 1.0 / (w + s)
    return f, -(1.0 + 0.5 / s) * f ** 2


_MATRIX_FUNCTIONS = {"inv_sqrt": _inv_sqrt, "ensrf": _ensrf_fn}


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def symmetric_function(M, name: str):
    """f(M) for symmetric positive-definite M (..., n, n); f by name: "inv_sqrt" (M^{-1/2}) or "ensrf"
    ((M + M^{1/2})^{-1}). Differentiated by the Daleckii-Krein formula, with f' where eigenvalues meet."""
    w, V = jnp.linalg.eigh(M)
    f, _ = _MATRIX_FUNCTIONS[name](w)
    return (V * f[..., None, :]) @ jnp.swapaxes(V, -1, -2)


@symmetric_function.defjvp
def _symmetric_function_jvp(name, primals, tangents):
    (M,), (dM,) = primals, tangents
    w, V = jnp.linalg.eigh(M)
    f, fp = _MATRIX_FUNCTIONS[name](w)
    Vt = jnp.swapaxes(V, -1, -2)
    gap = w[..., :, None] - w[..., None, :]
    close = jnp.abs(gap) <= jnp.sqrt(jnp.finfo(w.dtype).eps) * jnp.max(jnp.abs(w), -1)[..., None, None]
    _, fp_mid = _MATRIX_FUNCTIONS[name](0.5 * (w[..., :, None] + w[..., None, :]))
    divided = jnp.where(close, fp_mid, (f[..., :, None] - f[..., None, :]) / jnp.where(close, 1.0, gap))
    out = (V * f[..., None, :]) @ Vt
    return out, V @ (divided * (Vt @ dM @ V)) @ Vt


# -- observation space -----------------------------------------------------------------------------

def check_emission(problem, variant: str, localized: bool, owner: str):
    """Trace-time checks: a Gaussian emission with a density (no zero variance); a diagonal R where the
    variant needs one; a transition NumPyro can sample."""
    site = problem.names.obs
    z = jnp.zeros(problem.state_dim, problem.observations.dtype)
    d = problem.emission(z, problem.xs_example())
    if not is_gaussian(d):
        raise ModelStructureError(
            f"{owner} needs a Gaussian emission (additive Gaussian noise around h(z)), but site {site!r} is "
            f"{family_name(d)}: use a particle filter (BootstrapPF) or MomentMatching for this model"
        )
    require_density(problem, "emission", owner, "whitens the observations by R^(-1/2), the inverse square root of "
                    "the observation-error covariance", "Give that component a small positive variance, or use "
                    "Kalman(), EKF(), UKF() or GaussHermite(), which condition on exact observations")
    require_samplable(problem, owner)
    _, _, diagonal = gaussian_parts(d)
    if not diagonal and (variant in DIAGONAL_R or localized):
        why = f"variant={variant!r}" if variant in DIAGONAL_R else "localisation"
        raise ModelStructureError(
            f"{owner}({why}) needs a diagonal observation-error covariance R (independent Normal noise, e.g. "
            f"dist.Normal(h(z), r).to_event(1)), but site {site!r} is a {family_name(d)} with a full R. Use "
            "variant='etkf', 'ensrf' or 'stochastic' without localisation, or make R diagonal"
        )


def observation_space(problem, X, xs_t, y):
    """Whitened observation-space quantities of a forecast ensemble X (N, d) at observation y (m,).

    Returns (S (N, m), d (m,), Yw (N, m) whitened predictions, num_observed, log det R over the
    observed components). Missing components are zero in S, d and Yw.
    """
    h = lambda x: problem.emission(x, xs_t).mean.reshape(-1)  # noqa: E731
    Y = jax.vmap(h)(X)
    _, R, diagonal = gaussian_parts(problem.emission(X.mean(0), xs_t))
    observed = ~jnp.isnan(y)
    y0 = jnp.where(observed, y, 0.0)
    if diagonal:
        inv_sd = jnp.where(observed, lax.rsqrt(jnp.where(observed, R, 1.0)), 0.0)
        whiten = lambda v: v * inv_sd  # noqa: E731
        log_det_r = jnp.sum(jnp.where(observed, jnp.log(jnp.where(observed, R, 1.0)), 0.0))
    else:
        both = observed[:, None] & observed[None, :]
        R_obs = jnp.where(both, R, jnp.eye(R.shape[0], dtype=R.dtype))
        L = jnp.linalg.cholesky(R_obs)
        whiten = lambda v: solve_triangular(L, jnp.where(observed, v, 0.0).T, lower=True).T  # noqa: E731
        log_det_r = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
    Yw = whiten(jnp.where(observed, Y, 0.0))
    y_mean = Yw.mean(0)
    return Yw - y_mean, whiten(y0) - y_mean, Yw, observed.sum(), log_det_r


def gaussian_predictive(S, d, num_observed, log_det_r):
    """log N(y; mean, S^T S/(N-1) + R) and the innovation chi^2 for whitened S (N, m), d (m,).

    Factorises the smaller of M = (N-1) I_N + S S^T (then the determinant lemma and Woodbury's
    identity) and C = I_m + S^T S / (N-1). Returns (log predictive, chi2)."""
    N, m = S.shape
    if m < N:
        L = jnp.linalg.cholesky(jnp.eye(m, dtype=S.dtype) + S.T @ S / (N - 1))
        u = solve_triangular(L, d, lower=True)
        chi2 = u @ u
        log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
    else:
        L = jnp.linalg.cholesky((N - 1) * jnp.eye(N, dtype=S.dtype) + S @ S.T)
        u = solve_triangular(L, S @ d, lower=True)
        chi2 = d @ d - u @ u
        log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L))) - N * jnp.log(N - 1.0)
    log_pred = -0.5 * (num_observed * jnp.log(2 * jnp.pi) + log_det_r + log_det + chi2)
    return log_pred, chi2


# -- analysis steps: (forecast members X (N, c), S, d, ...) -> analysis members --------------------
# X may carry extra columns (the smoother appends the identity to read off the transform).

def _centre(X):
    mean = X.mean(0)
    return mean, X - mean


def etkf_weights(S, d):
    """ETKF weights for whitened S (N, m), d (m,): the mean weights w (N,) and the transform T (N, N)."""
    N = S.shape[0]
    M = (N - 1) * jnp.eye(N, dtype=S.dtype) + S @ S.T
    w = cho_solve((jnp.linalg.cholesky(M), True), S @ d)
    return w, jnp.sqrt(N - 1.0) * symmetric_function(M, "inv_sqrt")


def etkf_analysis(X, S, d):
    mean, A = _centre(X)
    w, T = etkf_weights(S, d)
    return mean + w @ A, T @ A


def stochastic_analysis(X, S, d, key, observed, taper_xy=None, taper_yy=None):
    """Perturbed observations e_i ~ N(0, I) (whitened), centred and rescaled by sqrt(N/(N-1)) so their
    sample covariance is unbiased (as DAPPER); the gain uses the unperturbed S."""
    N, m = S.shape
    mean, A = _centre(X)
    e = jax.random.normal(key, S.shape, S.dtype) * observed
    e = (e - e.mean(0)) * jnp.sqrt(N / (N - 1.0))
    innov = d[None, :] - S - e  # (N, m): whitened y - h(x_i) - e_i
    SS = S.T @ S / (N - 1)
    if taper_xy is None and N <= m:  # ensemble space: M = (N-1) I + S S^T
        M = (N - 1) * jnp.eye(N, dtype=S.dtype) + S @ S.T
        X_a = X + cho_solve((jnp.linalg.cholesky(M), True), S @ innov.T).T @ A
    else:  # observation space: C = I + (taper o) S^T S / (N-1)
        C = (SS if taper_yy is None else taper_yy * SS) + jnp.eye(m, dtype=S.dtype)
        coef = cho_solve((jnp.linalg.cholesky(C), True), innov.T).T  # (N, m)
        if taper_xy is None:
            X_a = X + (coef @ S.T) @ A / (N - 1)
        else:
            X_a = X + coef @ (taper_xy * (A.T @ S) / (N - 1)).T
    return _centre(X_a)


def ensrf_analysis(X, S, d, taper_xy=None, taper_yy=None):
    N, m = S.shape
    mean, A = _centre(X)
    SS = S.T @ S / (N - 1)
    C = (SS if taper_yy is None else taper_yy * SS) + jnp.eye(m, dtype=S.dtype)
    Z = symmetric_function(C, "ensrf")  # (C + C^{1/2})^{-1}
    Cinv_d = cho_solve((jnp.linalg.cholesky(C), True), d)
    if taper_xy is None:
        return mean + (S @ Cinv_d) @ A / (N - 1), A - S @ Z @ (S.T @ A) / (N - 1)
    K = taper_xy * (A.T @ S) / (N - 1)  # localised P H^T (c, m)
    return mean + K @ Cinv_d, A - S @ Z @ K.T


def serial_analysis(X, S, d, Yw, observed, taper_xy=None, taper_yy=None):
    """One scalar (whitened, so unit-variance) observation at a time; the predicted observations are
    updated as part of the state, so later observations see earlier ones."""
    N, m = S.shape
    mean, A = _centre(X)
    y_mean = Yw.mean(0)
    y_obs = d + y_mean

    def one(carry, j):
        mean, A, y_mean, Y = carry
        s = Y[:, j]
        c = s @ s / (N - 1) + 1.0
        innov = y_obs[j] - y_mean[j]
        k_x = A.T @ s / ((N - 1) * c)
        k_y = Y.T @ s / ((N - 1) * c)
        if taper_xy is not None:
            k_x, k_y = k_x * taper_xy[:, j], k_y * taper_yy[:, j]
        alpha = 1.0 / (1.0 + jnp.sqrt(1.0 / c))
        on = observed[j]
        mean = mean + jnp.where(on, k_x * innov, 0.0)
        y_mean = y_mean + jnp.where(on, k_y * innov, 0.0)
        A = A - jnp.where(on, alpha * jnp.outer(s, k_x), 0.0)
        Y = Y - jnp.where(on, alpha * jnp.outer(s, k_y), 0.0)
        return (mean, A, y_mean, Y), None

    (mean, A, _, _), _ = lax.scan(one, (mean, A, y_mean, S), jnp.arange(m))
    return mean, A


def letkf_analysis(X, S, d, obs_index, obs_taper, block: int = 2048):
    """Per state component i, the ETKF on the observations obs_index[i] (K,) with R^{-1} scaled by
    obs_taper[i] (K,): mean and anomalies (N, d). Components are processed in blocks of ``block``."""
    mean, A = _centre(X)
    root = jnp.sqrt(obs_taper)

    def local(args):
        idx, r, a, mu = args
        w, T = etkf_weights(S[:, idx] * r, d[idx] * r)
        return mu + w @ a, T @ a

    new_mean, new_A = lax.map(local, (obs_index, root, A.T, mean), batch_size=min(block, X.shape[1]))
    return new_mean, new_A.T


def random_rotation(key, N, dtype):
    """A random N x N orthogonal matrix that fixes the vector of ones (so anomalies keep zero mean)."""
    basis = np.linalg.qr(np.concatenate([np.ones((N, 1)), np.eye(N)[:, 1:]], axis=1))[0][:, 1:]  # (N, N-1) _|_ 1
    Q, R = jnp.linalg.qr(jax.random.normal(key, (N - 1, N - 1), dtype))
    Q = Q * jnp.sign(jnp.diagonal(R))  # Haar-distributed
    B = jnp.asarray(basis, dtype)
    return B @ Q @ B.T + jnp.full((N, N), 1.0 / N, dtype)


# -- the filter ------------------------------------------------------------------------------------

def _initial_ensemble(problem, key, N, dtype):
    d = problem.state_dim
    if problem.initial is None:
        return jnp.broadcast_to(problem.initial_value.astype(dtype), (N, d))
    return problem.initial.sample(key, (N,)).reshape(N, d).astype(dtype)


def ensemble_forecast(problem, X, xs_t, key):
    """Each member (N, d) moved by the transition, sampled (vectorised over members)."""
    keys = jax.random.split(key, X.shape[0])
    return jax.vmap(lambda k, x: problem.transition(x, xs_t).sample(k).reshape(-1).astype(X.dtype))(keys, X)


def _moments(mean, A, covariances):
    N = A.shape[0]
    var = (A ** 2).sum(0) / (N - 1)
    cov = A.T @ A / (N - 1) if covariances else None
    return var, cov


def ensemble_filter(problem, key, settings: "EnKF", keep_ensembles=False, covariances=True, transforms=False):
    """Run the ensemble filter of the module docstring; with ``transforms`` also return the per-step
    N x N transforms G_t (analysis members = G_t forecast members), which the smoother uses."""
    N, variant = settings.num_members, settings.variant
    dtype = jnp.result_type(problem.observations, float)
    check_emission(problem, variant, settings.localization is not None, "EnKF")
    kinds = as_inflation(settings.inflation, "EnKF")
    adaptive = adaptive_of(kinds)
    loc = settings.localization
    taper_xy = taper_yy = obs_index = obs_taper = None
    if loc is not None:
        loc.check(problem.state_dim, problem.obs_dim, "EnKF")
        if variant == "letkf":
            idx, coef = loc.local_observations()
            obs_index, obs_taper = jnp.asarray(idx), jnp.asarray(coef, dtype)
        else:
            taper_xy, taper_yy = jnp.asarray(loc.state_obs(), dtype), jnp.asarray(loc.obs_obs(), dtype)

    key_init, key_steps = jax.random.split(key)
    X0 = _initial_ensemble(problem, key_init, N, dtype)
    d = problem.state_dim

    def analysis(Xf, S, dv, Yw, observed, k):
        if variant == "etkf":
            return etkf_analysis(Xf, S, dv)
        if variant == "stochastic":
            return stochastic_analysis(Xf, S, dv, k, observed, taper_xy, taper_yy)
        if variant == "ensrf":
            return ensrf_analysis(Xf, S, dv, taper_xy, taper_yy)
        if variant == "serial":
            return serial_analysis(Xf, S, dv, Yw, observed, taper_xy, taper_yy)
        return letkf_analysis(Xf, S, dv, obs_index, obs_taper)

    def step(carry, inputs):
        X, factor = carry
        k, y, xs_t = inputs
        k_fore, k_pert, k_infl, k_rot = jax.random.split(k, 4)
        Xf = ensemble_forecast(problem, X, xs_t, k_fore)
        S, dv, Yw, m, log_det_r = observation_space(problem, Xf, xs_t, y)
        observed = ~jnp.isnan(y)
        log_pred, chi2 = gaussian_predictive(S, dv, m, log_det_r)
        if adaptive is not None:
            factor = update_adaptive(adaptive, factor, dv @ dv, m, jnp.sum(S * S), N)
        Xin = jnp.concatenate([Xf, jnp.eye(N, dtype=dtype)], axis=1) if transforms else Xf
        mean_f, A_f = _centre(Xin)
        mean_a, A_a = analysis(Xin, S, dv, Yw, observed, k_pert)
        A_inf = inflate(kinds, A_f, A_a, k_infl, {"adaptive_factor": factor})
        if settings.rotate:
            A_inf = random_rotation(k_rot, N, dtype) @ A_inf
        A_a = jnp.where(m > 0, A_inf, A_a)  # no inflation or rotation without observations
        Xa_full = mean_a + A_a
        Xa = Xa_full[:, :d]
        var_f, cov_f = _moments(mean_f[:d], A_f[:, :d], covariances)
        var_a, cov_a = _moments(mean_a[:d], A_a[:, :d], covariances)
        out = dict(mf=mean_a[:d], Pf=cov_a, mp=mean_f[:d], Pp=cov_f, ll=log_pred, chi2=chi2, m=m, factor=factor,
                   var_a=var_a if covariances else None, spread_a=jnp.sqrt(var_a.mean()),
                   spread_f=jnp.sqrt(var_f.mean()))
        if keep_ensembles:
            out.update(Xa=Xa, Xf=Xf)
        if transforms:
            out.update(G=Xa_full[:, d:])
        return (Xa, factor), out

    init_factor = jnp.asarray(adaptive.initial if adaptive is not None else 1.0, dtype)
    keys = jax.random.split(key_steps, problem.length)
    (X_last, _), out = lax.scan(step, (X0, init_factor), (keys, problem.observations.astype(dtype), problem.xs))
    base = FilterResult.from_steps(out["ll"], out["mf"], out["Pf"], out["mp"], out["Pp"])
    result = EnsembleFilterResult(
        **vars(base), filtered_spread=out["spread_a"], predicted_spread=out["spread_f"],
        filtered_variances=out["var_a"], innovation_chi2=out["chi2"], num_observed=out["m"],
        inflation_factors=out["factor"], final_ensemble=X_last, initial_ensemble=X0,
        filtered_ensembles=out.get("Xa"), predicted_ensembles=out.get("Xf"))
    return (result, out["G"]) if transforms else result


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

    def filter(self, problem, key=None) -> EnsembleFilterResult:
        return ensemble_filter(problem, self._key(key), self, self.keep_ensembles, self.store_covariances)

    def log_likelihood(self, problem, key=None):
        return ensemble_filter(problem, self._key(key), self, False, False).marginal_loglik

    def log_predictive(self, problem, key=None):
        return ensemble_filter(problem, self._key(key), self, False, False).log_predictive

    def smooth(self, problem, key=None) -> EnsembleSmoothResult:
        from .ensemble_smoother import ensemble_smooth

        return ensemble_smooth(problem, self._key(key), self)

    def sample_states(self, problem, key):
        """One smoothed member's path (T, d), the member drawn uniformly."""
        k_smooth, k_pick = jax.random.split(key)
        smoothed = self.smooth(problem, k_smooth)
        return smoothed.smoothed_ensembles[:, jax.random.randint(k_pick, (), 0, self.num_members)]

    def forecast(self, problem, filtered, num_steps, key=None):
        from .particle import particle_forecast

        check_forecastable(problem)
        x_last = None if problem.xs is None else problem.xs_at(problem.length - 1)
        X = filtered.final_ensemble
        log_w = jnp.full(X.shape[0], -jnp.log(X.shape[0]), X.dtype)
        return particle_forecast(problem, X, log_w, x_last, num_steps, self._key(key))

    def posterior_predictive(self, problem, smoothed):
        """E[y_t | y_{1:T}] and sd[y_t | y_{1:T}] (T, dy), mixing p(y_t | z_t) over the smoothed members."""
        from .particle import mixture_predictive

        return mixture_predictive(problem, jnp.swapaxes(smoothed.smoothed_ensembles, 0, 1))

    def diagnose(self, result) -> Optional[str]:
        bad = ~np.isfinite(np.asarray(result.filtered_means)).all(axis=-1)
        if not bad.any():
            return None
        step = int(np.argmax(bad)) + 1
        return (f"EnKF({self.variant!r}): the ensemble diverged: its mean is not finite from step {step} on. "
                "Check the data near that step; more inflation, localisation, more members or a smaller model "
                "time step may help (ssmppl.diagnostics.ensemble_health shows the RMSE and spread over time)")


def smoothable(settings: EnKF):
    """None if the EnKS can reuse the filter's ensemble transforms, else why not."""
    if settings.localization is not None:
        return ("a localised analysis updates each component with its own transform, so the past states "
                "cannot be updated by one ensemble transform")
    kinds = as_inflation(settings.inflation, "EnKF")
    other = [type(k).__name__ for k in kinds if not isinstance(k, (Multiplicative, RTPP, Adaptive))]
    if other:
        return f"{other} inflation acts per component or adds noise, not as an ensemble transform"
    return None
