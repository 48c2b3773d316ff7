"""The ensemble Kalman filter's recursion over a ``StateSpace``: forecast each member by the
model's transition, then one of the analyses of ``ssmppl.maths.ensemble`` (the variants and
equations are in ``ssmppl.inference.ensemble.enkf``'s docstring)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

from ...errors import ModelStructureError
from ...maths.gaussian import masked_covariance
from ...maths.ensemble import (anomaly_moments, centre, ensrf_analysis, etkf_analysis, gaussian_predictive,
                               letkf_analysis, random_rotation, serial_analysis, stochastic_analysis)
from ...results import FilterResult
from ..distributions import density_refusal, family_name, gaussian_parts, require_gaussian, require_samplable
from ..samples import initial_draws, propagate
from .inflation import adaptive_of, as_inflation, inflate, update_adaptive
from .results import EnsembleFilterExtras

VARIANTS = ("stochastic", "etkf", "ensrf", "serial", "letkf")


DIAGONAL_R = ("serial", "letkf")


def emission_density_refusal(problem, owner: str):
    """The refusal of an emission with zero-variance noise (concrete noise only), or None."""
    return density_refusal(problem, "emission", owner, "whitens the observations by R^(-1/2), the inverse square "
                           "root of the observation-error covariance", "Give that component a small positive "
                           "variance, or use Kalman(), EKF(), UKF() or GaussHermite(), which condition on exact "
                           "observations")


def check_emission(problem, variant: str, localized: bool, owner: str):
    """Trace-time checks: a Gaussian emission with a density (no zero variance); a diagonal R where the
    variant needs one; a transition NumPyro can sample."""
    site = problem.names.obs
    z = jnp.zeros(problem.state_dim, problem.observations.dtype)
    d = problem.emission(z, problem.xs_example())
    require_gaussian(d, site, "emission", owner, "an ensemble Kalman analysis needs additive Gaussian noise "
                     "around h(z); use a particle filter (BootstrapPF) or MomentMatching for this model")
    message = emission_density_refusal(problem, owner)
    if message is not None:
        raise ModelStructureError(message)
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
        L = jnp.linalg.cholesky(masked_covariance(R, observed))
        whiten = lambda v: solve_triangular(L, jnp.where(observed, v, 0.0).T, lower=True).T  # noqa: E731
        log_det_r = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
    Yw = whiten(jnp.where(observed, Y, 0.0))
    y_mean = Yw.mean(0)
    return Yw - y_mean, whiten(y0) - y_mean, Yw, observed.sum(), log_det_r


def ensemble_filter(problem, key, settings, keep_ensembles=False, covariances=True, transforms=False):
    """Run the ensemble filter (``settings``: an ``EnKF``) of the module docstring; with ``transforms`` also return the per-step
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
    X0 = initial_draws(problem, key_init, N, dtype)
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
        Xf = propagate(problem, X, xs_t, k_fore)
        S, dv, Yw, m, log_det_r = observation_space(problem, Xf, xs_t, y)
        observed = ~jnp.isnan(y)
        log_pred, chi2 = gaussian_predictive(S, dv, m, log_det_r)
        if adaptive is not None:
            factor = update_adaptive(adaptive, factor, dv @ dv, m, jnp.sum(S * S), N)
        Xin = jnp.concatenate([Xf, jnp.eye(N, dtype=dtype)], axis=1) if transforms else Xf
        mean_f, A_f = centre(Xin)
        mean_a, A_a = analysis(Xin, S, dv, Yw, observed, k_pert)
        A_inf = inflate(kinds, A_f, A_a, k_infl, {"adaptive_factor": factor})
        if settings.rotate:
            A_inf = random_rotation(k_rot, N, dtype) @ A_inf
        A_a = jnp.where(m > 0, A_inf, A_a)  # no inflation or rotation without observations
        Xa_full = mean_a + A_a
        Xa = Xa_full[:, :d]
        var_f, cov_f = anomaly_moments(A_f[:, :d], covariances)
        var_a, cov_a = anomaly_moments(A_a[:, :d], covariances)
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
    extras = EnsembleFilterExtras(
        filtered_spread=out["spread_a"], predicted_spread=out["spread_f"],
        filtered_variances=out["var_a"], innovation_chi2=out["chi2"], num_observed=out["m"],
        inflation_factors=out["factor"], final_ensemble=X_last, initial_ensemble=X0,
        filtered_ensembles=out.get("Xa"), predicted_ensembles=out.get("Xf"))
    result = FilterResult.from_steps(out["ll"], out["mf"], out["Pf"], out["mp"], out["Pp"], extras)
    return (result, out["G"]) if transforms else result
