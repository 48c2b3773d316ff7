"""The Ensemble Score Filter (EnSF; Bao, Zhang & Zhang 2024): a training-free score-based filter.

Notation: N members, d state components, pseudo-time t in [0, 1]. Each cycle
  1. forecast: every member moves by the model's transition, sampled (as in the
     EnKF: ``ensemble_forecast``), giving the prior ensemble X (N, d);
  2. analysis: N reverse-SDE samples, started from N(0, I) at t = 1 and integrated by
     Euler-Maruyama to t = 0 in ``num_steps`` steps; they are the analysis ensemble.

Forward noising q(z_t | z_0) = N(alpha_t z_0, beta_t^2 I), with
    alpha_t = 1 - (1 - eps_alpha) t,     beta_t^2 = eps_beta + (1 - eps_beta) t,
drift b(t) = d log alpha_t / dt = -(1 - eps_alpha) / alpha_t and diffusion
sigma^2(t) = d beta_t^2 / dt - 2 b(t) beta_t^2 = (1 - eps_beta) - 2 b(t) beta_t^2. One step
from t to t - dt (the reference code's scheme, coefficients at the step's start):
    z <- z - dt (b(t) z - sigma^2(t) s(z, t)) + sqrt(dt sigma^2(t)) xi,   xi ~ N(0, I).

Posterior score s(z, t) = prior score + h(t) grad_z log p(y | z), damping h(t) = 1 - t
by default. Prior score from the forecast ensemble, no training:
  paired   reverse sample j uses member j only: -(z_j - alpha_t x_j) / beta_t^2 (the
           reference runs' choice; O(N d));
  mixture  the score of the ensemble's noised empirical law (1/N) sum_j N(alpha_t x_j, beta_t^2 I):
           -(z - alpha_t sum_j w_j x_j) / beta_t^2 with w = softmax_j(-|z - alpha_t x_j|^2 / (2 beta_t^2)).
           The squared distances come from inner products (one (N, N) matmul), never from the
           (N, N, d) differences, and from the anomalies about the ensemble mean, which keeps
           the float32 logits well conditioned: O(N^2 + N d) memory.
The likelihood score is ``jax.grad`` of the emission site's log-density (missing, NaN,
components excluded), so any differentiable observation operator and noise model work.
With every component missing the likelihood score is zero and the analysis resamples
the prior ensemble's noised law.

``clip``: the reference code clips the posterior score elementwise to [-1000, 1000]
(``score_max``) and, separately, the forecast ensemble to [-50, 50] for Lorenz-96 (a
model-side safeguard, not applied here). ``clip=c`` clips the posterior score to [-c, c]
before each step; off by default. It guards float32 runs against a huge likelihood score
far from the data (small obs noise, early cycles); it biases the analysis wherever active.

Accuracy (tests/test_score_filter.py measures it with the exact Gaussian recursion of the
discretised scheme): EnSF is not a consistent Bayesian update. Even with N and num_steps
infinite and eps -> 0, on a linear Gaussian model the analysis differs from the Kalman
posterior, because prior_t + h(t) grad log p(y | z_t) is not the score of the noised
posterior (that one integrates the likelihood over p(z_0 | z_t)): in the test's case the
mean goes about a third of the way past the Kalman mean towards y and the variance is 0.4-0.9
of Kalman's. And with eps_alpha = 0.5 the N(0, I) start is not the forward law at t = 1
(N(alpha_1 x, beta_1^2)), so even without data the mixture analysis shrinks towards 0 (the
mean of a unit-variance Gaussian prior by a factor ~0.8); small eps removes that part. The
paired score without data maps member x_j to about N(0.994 x_j, 0.026) (eps defaults,
500 steps), so it keeps the ensemble; with data it moves each member only part of the way
(the test's case: 1.20 where Kalman gives 1.8 from a prior mean of 1) and relies on
repeated cycles.

EnSF gives no likelihood estimate: ``marginal_loglik`` and ``log_predictive`` are None,
and ``log_likelihood``, ``log_predictive`` (hence ``marginalize``, ``fit_sgd``,
``sample_posterior``) and ``smooth`` (``fit_em``) raise, naming the backends that do.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ...errors import ModelStructureError
from ...maths.ensemble import anomaly_moments
from ...diagnostics import EnsembleWarning
from ...maths.score import SCORES, likelihood_curvature, reverse_amplification, reverse_sde, stable_num_steps
from ...models.dependence import require_derivative
from ...results import FilterResult
from ..base import Backend, Capability
from ..distributions import density_refusal, masked_log_prob, require_samplable
from ..ensemble.results import EnsembleFilterExtras
from ..samples import forecast_samples, initial_draws, propagate


# -- the likelihood score --------------------------------------------------------------------------

def likelihood_score(problem, Z, xs_t, y):
    """grad_z log p(y_observed | z) for each row of Z (N, d); zero where y is all missing."""
    def log_lik(z):
        return masked_log_prob(problem.emission(z, xs_t), y, problem.obs_shape)

    return jax.vmap(jax.grad(log_lik))(Z)


def check_differentiable(problem):
    """Trace-time probe: refuse an emission whose log-density reads the state only through
    non-differentiable operations (rounding, comparisons, integer casts): its likelihood
    score would be zero everywhere and EnSF would silently ignore the data."""
    site = problem.names.obs
    dtype = jnp.result_type(problem.observations, float)
    z = jnp.zeros(problem.state_dim, dtype)
    x0 = problem.xs_example()
    y0 = jnp.zeros(problem.obs_dim, dtype)

    def log_lik(z_):
        return masked_log_prob(problem.emission(z_, x0), y0, problem.obs_shape)

    # an emission that does not read the state passes: the data say nothing about it, a zero score is the truth
    require_derivative(
        log_lik, z,
        lambda error: (f"EnSF differentiates the log-density of the emission site {site!r} (its likelihood score), "
                       f"which failed ({type(error).__name__}: {error}). Make the observation operator "
                       "differentiable, or use EnKF or a particle filter, which need no derivatives"),
        f"EnSF needs the likelihood score grad_z log p(y | z), but the emission site {site!r} depends on the "
        "state only through non-differentiable operations (rounding, comparisons, integer casts), so the "
        "score is zero everywhere and the data would be ignored. Make the observation operator "
        "differentiable, or use EnKF or a particle filter, which need no derivatives")


# -- the filter ------------------------------------------------------------------------------------

def _emission_density_refusal(problem):
    return density_refusal(problem, "emission", "EnSF", "needs the likelihood score grad_z log p(y | z)",
                           "Give that component a small positive variance, or use Kalman(), EKF(), UKF() or "
                           "GaussHermite(), which condition on exact observations")


def score_filter(problem, key, settings: "EnSF"):
    """Run EnSF over the problem's observations; a ``FilterResult`` without likelihood fields."""
    N = settings.num_members
    dtype = jnp.result_type(problem.observations, float)
    check_differentiable(problem)
    message = _emission_density_refusal(problem)
    if message is not None:
        raise ModelStructureError(message)
    require_samplable(problem, "EnSF")
    key_init, key_steps = jax.random.split(key)
    X0 = initial_draws(problem, key_init, N, dtype)
    covariances = settings.store_covariances

    def step(X, inputs):
        k, y, xs_t = inputs
        k_fore, k_ana = jax.random.split(k)
        Xf = propagate(problem, X, xs_t, k_fore)
        Xa = reverse_sde(k_ana, Xf, lambda Z: likelihood_score(problem, Z, xs_t, y), settings.num_steps,
                         settings.eps_alpha, settings.eps_beta, settings.score, settings.damping, settings.clip)
        mean_f, mean_a = Xf.mean(0), Xa.mean(0)
        # for the step-size check (EnSF.result_warnings): ~20 Hessian-vector products, against the
        # num_steps * N likelihood scores of the analysis
        curvature = likelihood_curvature(
            lambda z: masked_log_prob(problem.emission(z, xs_t), y, problem.obs_shape), mean_f)
        var_f, cov_f = anomaly_moments(Xf - mean_f, covariances)
        var_a, cov_a = anomaly_moments(Xa - mean_a, covariances)
        out = dict(mf=mean_a, Pf=cov_a, mp=mean_f, Pp=cov_f, var_a=var_a if covariances else None,
                   spread_a=jnp.sqrt(var_a.mean()), spread_f=jnp.sqrt(var_f.mean()), m=(~jnp.isnan(y)).sum(),
                   curvature=curvature)
        if settings.keep_ensembles:
            out.update(Xa=Xa, Xf=Xf)
        return Xa, out

    keys = jax.random.split(key_steps, problem.length)
    X_last, out = lax.scan(step, X0, (keys, problem.observations.astype(dtype), problem.xs))
    extras = EnsembleFilterExtras(filtered_spread=out["spread_a"], predicted_spread=out["spread_f"],
                                  filtered_variances=out["var_a"], num_observed=out["m"], final_ensemble=X_last,
                                  initial_ensemble=X0, filtered_ensembles=out.get("Xa"),
                                  likelihood_curvature=out["curvature"],
                                  predicted_ensembles=out.get("Xf"))
    return FilterResult(filtered_means=out["mf"], filtered_covariances=out["Pf"], predicted_means=out["mp"],
                        predicted_covariances=out["Pp"], extras=extras)


# -- the backend -----------------------------------------------------------------------------------

# An analysis spread this many times the forecast's (or the schedule's floor sqrt(eps_beta)) is a blow-up
# whatever the curvature estimate says (a Bayesian analysis narrows the ensemble on average).
_SPREAD_BLOWUP = 100.0

def _check_open_unit(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not 0 < value < 1:
        raise ValueError(f"EnSF({name}=...) must be a number in the open interval (0, 1), got {value!r}")


@dataclasses.dataclass(frozen=True)
class EnSF(Backend):
    """Ensemble score filter on any model with a differentiable emission log-density.

    num_members: N >= 2.
    num_steps: Euler-Maruyama steps of the reverse SDE per analysis (>= 1).
    eps_alpha, eps_beta: the schedule's alpha_1 and beta_0^2, each in (0, 1) (module docstring).
    score: "paired" (reverse sample j uses forecast member j; O(N d)) or "mixture" (the
        Gaussian-mixture score of the whole ensemble; O(N^2 d) time, O(N d) memory).
    damping: h(t), a callable of the pseudo-time (traced scalar); None: h(t) = 1 - t.
    clip: None, or c > 0 to clip the posterior score elementwise to [-c, c] (the reference
        code uses 1000); a float32 safeguard that biases the analysis where it binds.
    keep_ensembles: store the (T, N, d) forecast and analysis members.
    store_covariances: True adds the (T, d, d) covariances and (T, d) variances (off by
        default: EnSF is meant for large d, where memory is O(T d + N d) without them).

    Needs a ``key``; the same key gives the same result. Results (a ``FilterResult`` with
    ``EnsembleFilterExtras``): the analysis ensemble's mean (``filtered_means``) and spread
    (``extras.filtered_spread``) per step, the forecast's (``predicted_*``), ``final_ensemble``
    and, with ``keep_ensembles``, every ensemble. EnSF has no likelihood: the result has no
    ``marginal_loglik`` or ``log_predictive``.
    """

    num_members: int = 20
    num_steps: int = 500
    eps_alpha: float = 0.5
    eps_beta: float = 0.025
    score: str = "paired"
    damping: Optional[Callable] = None
    clip: Optional[float] = None
    keep_ensembles: bool = False
    store_covariances: bool = False

    capabilities = frozenset({Capability.FORECAST})
    requires_key = True

    def __post_init__(self):
        n = self.num_members
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
            raise ValueError(f"EnSF(num_members=...) must be an int >= 2 (the prior score needs an ensemble), "
                             f"got {n!r}")
        s = self.num_steps
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"EnSF(num_steps=...) must be an int >= 1 (reverse-SDE steps per analysis), got {s!r}")
        _check_open_unit("eps_alpha", self.eps_alpha)
        _check_open_unit("eps_beta", self.eps_beta)
        if self.score not in SCORES:
            raise ValueError(f"EnSF(score=...) must be one of {SCORES}, got {self.score!r}")
        if self.damping is not None and not callable(self.damping):
            raise TypeError(f"EnSF(damping=...) must be None or a callable h(t), got {self.damping!r}")
        if self.clip is not None and (isinstance(self.clip, bool) or not isinstance(self.clip, (int, float))
                                      or not self.clip > 0):
            raise ValueError(f"EnSF(clip=...) must be None or a positive number, got {self.clip!r}")

    def filter(self, problem, key=None) -> FilterResult:
        return score_filter(problem, self._key(key), self)

    def forecast(self, problem, filtered: FilterResult, num_steps, key=None):
        return forecast_samples(problem, filtered.extras.final_ensemble, num_steps, self._key(key))

    def result_warnings(self, result, problem):
        """An ``EnsembleWarning`` naming ``num_steps`` when the reverse SDE's Euler-Maruyama step is
        unstable for the observations' curvature (``ssmppl.maths.score.reverse_amplification`` > 1 at
        the step with the largest ``likelihood_curvature``), or when an analysis spread exceeds
        ``_SPREAD_BLOWUP`` times max(forecast spread, sqrt(eps_beta)) (the schedule's noise floor)."""
        extras = getattr(result, "extras", None)
        if extras is None or not hasattr(extras, "likelihood_curvature"):
            return ()
        curvature = np.asarray(extras.likelihood_curvature, np.float64)
        growth = np.asarray(extras.filtered_spread, np.float64) / np.maximum(
            np.asarray(extras.predicted_spread, np.float64), np.sqrt(self.eps_beta))
        if not np.isfinite(curvature).any():
            return ()
        step = int(np.nanargmax(curvature))
        amplification, t = reverse_amplification(self.num_steps, self.eps_alpha, self.eps_beta,
                                                 float(curvature[step]), self.damping)
        worst = int(np.nanargmax(growth)) if np.isfinite(growth).any() else None
        blown = worst is not None and growth[worst] > _SPREAD_BLOWUP
        if amplification <= 1.0 and not blown:
            return ()
        name = f"EnSF({self.num_members}, num_steps={self.num_steps})"
        if amplification > 1.0:
            needed = stable_num_steps(self.num_steps, self.eps_alpha, self.eps_beta, float(curvature[step]),
                                      self.damping)
            message = (f"{name}: the reverse SDE is unstable at this step size. At step {step + 1} the "
                       f"likelihood's curvature is {curvature[step]:.3g} (largest Hessian eigenvalue of "
                       f"-log p(y_t | z) at the forecast mean), and one Euler-Maruyama step of 1/{self.num_steps} "
                       f"multiplies the analysis' own noise by up to {amplification:.3g} (> 1, near pseudo-time "
                       f"t = {t:.2g}), so the analysis amplifies noise instead of converging")
            fix = (f"use num_steps >= {needed} (the stability limit; more for accuracy)" if needed else
                   "the observations are too precise for any step count: give them more noise")
        else:
            message = f"{name}: the analysis ensemble blew up"
            fix = (f"check the observations at step {worst + 1} (one far from the forecast makes a huge likelihood "
                   "score), or use clip=1000 (as the reference code), more num_steps or float64")
        if worst is not None:
            message += (f"; the analysis spread reaches {growth[worst]:.3g} times the forecast spread at step "
                        f"{worst + 1} (an analysis should narrow the ensemble)")
        return (EnsembleWarning(f"{message}. The filtered means are not to be trusted: {fix}"),)

    def explain(self, problem, result, step) -> str:
        # a zero emission variance given as a parameter value is concrete only here
        refusal = _emission_density_refusal(problem)
        if refusal is not None:
            return refusal
        return (f"EnSF: the analysis mean is not finite from step {step} on. Check the data near that step; "
                "clip=1000 (as the reference code), more reverse steps or float64 may help")

