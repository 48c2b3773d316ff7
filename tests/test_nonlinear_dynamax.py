"""ssmppl's EKF, UKF and moment-matching backends against dynamax (a peer library), on
the same models, data and parameters: dynamax's pendulum demo (Särkkä's example),
a Lorenz-63 set-up, and Poisson counts with an AR(1) log-rate.

Conventions. dynamax's ``initial_mean/initial_covariance`` are the prior of the first
observed state (our z_1), ours are those of z_0, one transition earlier. Each
comparison hands dynamax our backend's own ``predicted_means[0]``,
``predicted_covariances[0]`` (E, Cov of z_1 before y_1), so that from there both run
the same recursions. dynamax's ``predicted_*[t]`` is for t + 1 (ours for t). Missing
observations: dynamax has none, but an emission variance of 1e12 at a step makes
its update there negligible, which is what a missing observation does to ours.

dynamax solves every linear system through ``psd_solve``, which adds 1e-9 I to the
matrix (a regulariser). That alone moves its results by up to 8e-7 relative (the
pendulum's smoothed covariances over 400 steps; ~1e-8 for its filter), so the comparisons run with that boost set to 0 and ask for 1e-10 relative (they
agree to ~1e-14); the slow set also compares with dynamax as shipped, to 1e-6.

dynamax's iterated EKF re-conditions the already updated posterior on the same
observation (it carries the posterior covariance into the next iteration); our
``EKF(iterations=k)`` is the Gauss–Newton iterated EKF, so only k = 1 is compared.
"""

import contextlib
import functools
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmppl import SSM
from ssmppl.inference import EKF, UKF, GaussHermite, MomentMatching
from ssmppl.models import lorenz63, pendulum, poisson_ar1
from ssmppl.models.lorenz import integrate, lorenz63_vector_field
from ssmppl.models.pendulum import pendulum_dynamics, pendulum_noise_covariance

dynamax = pytest.importorskip("dynamax")
from dynamax.generalized_gaussian_ssm import (EKFIntegrals, GHKFIntegrals, ParamsGGSSM,  # noqa: E402
                                              UKFIntegrals, conditional_moments_gaussian_smoother)
from dynamax.nonlinear_gaussian_ssm import (ParamsNLGSSM, UKFHyperParams, extended_kalman_filter,  # noqa: E402
                                            extended_kalman_smoother, unscented_kalman_filter,
                                            unscented_kalman_smoother)
from dynamax.utils.utils import psd_solve  # noqa: E402

pytestmark = pytest.mark.usefixtures("x64_module")

RTOL = 1e-10  # dynamax without its 1e-9 diagonal boost
RTOL_AS_SHIPPED = 1e-6
_SOLVER_MODULES = ("dynamax.nonlinear_gaussian_ssm.inference_ekf", "dynamax.nonlinear_gaussian_ssm.inference_ukf",
                   "dynamax.generalized_gaussian_ssm.inference")


@contextlib.contextmanager
def _dynamax_solver(as_shipped):
    """dynamax's own psd_solve (as_shipped), or the same solve without its 1e-9 I boost.
    Active while dynamax's functions are traced."""
    if as_shipped:
        yield
        return
    exact = functools.partial(psd_solve, diagonal_boost=0.0)
    with contextlib.ExitStack() as stack:
        for name in _SOLVER_MODULES:
            stack.enter_context(mock.patch(f"{name}.psd_solve", exact))
        yield


# dynamax's UKF defaults (alpha = sqrt(3), beta = 2, kappa = 1), given to both libraries as Python
# floats: dynamax's default alpha is a jnp.sqrt(3) made at import, float32 unless x64 was already
# on, and its float32 weights would move the covariances by ~3e-6 relative.
_UKF_DEFAULTS = (np.sqrt(3.0), 2.0, 1.0)
for _defaults in (UKFHyperParams(), UKFIntegrals()):
    np.testing.assert_allclose([float(v) for v in _defaults], _UKF_DEFAULTS, rtol=1e-7)
_H = UKFHyperParams(*_UKF_DEFAULTS)
_UI = UKFIntegrals(*_UKF_DEFAULTS)
OUR_UKF = UKF(*_UKF_DEFAULTS)


def _assert_rel(actual, desired, what, rtol):
    """Equal to rtol relative to the largest entry of the reference array (covariance
    entries span many magnitudes; the error of each is relative to the matrix's scale)."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.shape == desired.shape, (what, actual.shape, desired.shape)
    scale = np.abs(desired).max()
    err = np.abs(actual - desired).max() / scale
    assert err <= rtol, f"{what}: max relative error {err:.3g} (scale {scale:.3g})"


# -- cases: (ssm, params, y, dynamax ingredients) --------------------------------


def _pendulum_case(T, seed=0):
    """dynamax's demo: its constants, its simulation started at (pi/2, 0)."""
    dt, g, q_c, r = 0.0125, 9.8, 1.0, 0.3
    ssm = SSM(pendulum(dt=dt, g=g, q_c=q_c, r=r))
    params = {"g": g, "q_c": q_c, "r": r}
    Q = np.asarray(pendulum_noise_covariance(dt, q_c))
    rng = np.random.default_rng(seed)
    z, y = np.array([np.pi / 2, 0.0]), np.empty(T)
    for t in range(T):
        z = np.array([z[0] + z[1] * dt, z[1] - g * np.sin(z[0]) * dt]) + rng.multivariate_normal(np.zeros(2), Q)
        y[t] = np.sin(z[0]) + r * rng.normal()
    parts = dict(f=lambda z: pendulum_dynamics(z, dt, g), Q=jnp.asarray(Q),
                 h=lambda z: jnp.sin(z[:1]), R=r**2 * jnp.eye(1))
    return ssm, params, jnp.asarray(y), parts


def _lorenz_case(T, observe, steps_per_obs, seed=1):
    dt, s, rho, b, q, r = 0.01, 10.0, 28.0, 8.0 / 3.0, 0.2, 1.0
    m0 = (-5.9, -5.5, 24.6)  # near the attractor
    ssm = SSM(lorenz63(dt=dt, steps_per_obs=steps_per_obs, observe=observe, initial_mean=m0))
    params = {"sigma": s, "rho": rho, "beta": b, "process_noise": q, "obs_noise": r}
    idx = [0, 1, 2] if observe == "all" else list(observe)
    vf = lambda x: lorenz63_vector_field(x, s, rho, b)  # noqa: E731
    flow = jax.jit(lambda z: integrate(vf, z, dt, steps_per_obs))
    rng = np.random.default_rng(seed)
    z, y = np.asarray(m0) + rng.normal(size=3), np.empty((T, len(idx)))
    for t in range(T):
        z = np.asarray(flow(z)) + q * rng.normal(size=3)
        y[t] = z[idx] + r * rng.normal(size=len(idx))
    parts = dict(f=flow, Q=q**2 * jnp.eye(3), h=lambda z: z[jnp.array(idx)], R=r**2 * jnp.eye(len(idx)))
    return ssm, params, jnp.asarray(y), parts


def _poisson_case(T, seed=2):
    mu, phi, sigma = 0.5, 0.9, 0.3
    ssm = SSM(poisson_ar1())
    params = {"mu": mu, "phi": phi, "sigma": sigma}
    rng = np.random.default_rng(seed)
    z = mu + sigma / np.sqrt(1 - phi**2) * rng.normal()
    y = np.empty(T)
    for t in range(T):
        z = mu + phi * (z - mu) + sigma * rng.normal()
        y[t] = rng.poisson(np.exp(z))
    parts = dict(f=lambda z: mu + phi * (z - mu), Q=sigma**2 * jnp.eye(1))
    return ssm, params, jnp.asarray(y), parts


CASES = {
    "pendulum": lambda: _pendulum_case(200),
    "lorenz63": lambda: _lorenz_case(60, observe=(0, 2), steps_per_obs=2),
    "pendulum-400": lambda: _pendulum_case(400, seed=3),  # the demo's length
    "lorenz63-all": lambda: _lorenz_case(300, observe="all", steps_per_obs=10, seed=4),
    "lorenz63-x": lambda: _lorenz_case(200, observe=(0,), steps_per_obs=5, seed=5),
    "poisson": lambda: _poisson_case(200),
    "poisson-long": lambda: _poisson_case(500, seed=6),
}


@functools.lru_cache(maxsize=None)
def _case(name):
    return CASES[name]()


# -- runs, shared by the tests of a case and method -------------------------------


def _as_2d(y):
    return y[:, None] if y.ndim == 1 else y


@functools.lru_cache(maxsize=None)
def _nlgssm_runs(case, method_name, missing=(), as_shipped=False):
    """(ours: SmoothResult, dynamax filtered, dynamax smoothed, per-step dynamax log predictive)."""
    ssm, params, y, parts = _case(case)
    method = {"EKF": EKF(), "UKF": OUR_UKF}[method_name]
    y_ours = y.at[jnp.array(missing)].set(jnp.nan) if missing else y
    ours = ssm.smooth(params, y_ours, method=method)
    R = parts["R"]
    if missing:  # a huge emission variance where ours sees a missing observation
        R = jnp.broadcast_to(R, (y.shape[0],) + R.shape).at[jnp.array(missing)].set(1e12 * jnp.eye(R.shape[0]))
    dparams = ParamsNLGSSM(initial_mean=ours.predicted_means[0], initial_covariance=ours.predicted_covariances[0],
                           dynamics_function=parts["f"], dynamics_covariance=parts["Q"],
                           emission_function=parts["h"], emission_covariance=R)
    fields = ["filtered_means", "filtered_covariances", "predicted_means", "predicted_covariances",
              "marginal_loglik"]

    @jax.jit  # dparams (holding functions) is closed over
    def run(Y):
        if method_name == "EKF":
            filtered = extended_kalman_filter(dparams, Y, output_fields=fields)
            smoothed = extended_kalman_smoother(dparams, Y, filtered_posterior=filtered)
        else:
            filtered = unscented_kalman_filter(dparams, Y, _H, output_fields=fields)
            smoothed = unscented_kalman_smoother(dparams, Y, _H)
        return filtered, smoothed

    with _dynamax_solver(as_shipped):
        filtered, smoothed = run(_as_2d(y))
    # With "marginal_loglik" among the output fields, dynamax returns its running sum.
    log_pred = jnp.diff(filtered.marginal_loglik, prepend=0.0)
    return ours, filtered, smoothed, log_pred


def _check_nlgssm(case, method_name, missing=(), as_shipped=False):
    ours, filtered, smoothed, log_pred = _nlgssm_runs(case, method_name, tuple(missing), as_shipped)
    observed = np.setdiff1d(np.arange(len(log_pred)), missing)
    assert_rel = functools.partial(_assert_rel, rtol=RTOL_AS_SHIPPED if as_shipped else RTOL)
    assert_rel(ours.log_predictive[observed], log_pred[observed], "log predictive")
    assert_rel(ours.marginal_loglik, log_pred[observed].sum(), "log-likelihood")
    assert_rel(ours.filtered_means, filtered.filtered_means, "filtered means")
    assert_rel(ours.filtered_covariances, filtered.filtered_covariances, "filtered covariances")
    assert_rel(ours.predicted_means[1:], filtered.predicted_means[:-1], "predicted means")
    assert_rel(ours.predicted_covariances[1:], filtered.predicted_covariances[:-1], "predicted covariances")
    assert_rel(ours.smoothed_means, smoothed.smoothed_means, "smoothed means")
    assert_rel(ours.smoothed_covariances, smoothed.smoothed_covariances, "smoothed covariances")
    assert np.all(ours.log_predictive[np.asarray(missing, int)] == 0)


MISSING = (0, 17, 18, 120, 199)


@pytest.mark.parametrize("method", ["EKF", "UKF"])
def test_pendulum_equals_dynamax(method):
    """dynamax's pendulum demo, T = 200, five observations missing (the first and last included)."""
    _check_nlgssm("pendulum", method, missing=MISSING)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["EKF", "UKF"])
@pytest.mark.parametrize("case", ["pendulum-400", "lorenz63", "lorenz63-all", "lorenz63-x"])
def test_filter_and_smoother_equal_dynamax_more(case, method):
    """No missing data: the demo's full length; Lorenz-63 with two, all or one component
    observed, 2 to 10 RK4 steps per observation (slow only for compilation: about 4 s a case)."""
    _check_nlgssm(case, method)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["EKF", "UKF"])
@pytest.mark.parametrize("case", ["pendulum-400", "lorenz63"])
def test_filter_and_smoother_equal_dynamax_as_shipped(case, method):
    """dynamax unmodified (1e-9 diagonal boost in its solves): equal to 1e-6 relative."""
    _check_nlgssm(case, method, as_shipped=True)


# -- moment matching vs dynamax's conditional-moments Gaussian filter --------------

_RULES = {
    "UKF": (OUR_UKF, _UI),
    "GH10": (GaussHermite(order=10), GHKFIntegrals(order=10)),
    "GH5": (GaussHermite(order=5), GHKFIntegrals(order=5)),
    "EKF": (EKF(), EKFIntegrals()),
}


@functools.lru_cache(maxsize=None)
def _cmgf_runs(case, rule_name, as_shipped=False):
    ssm, params, y, parts = _case(case)
    rule, integrals = _RULES[rule_name]
    ours = ssm.smooth(params, y, method=MomentMatching(rule=rule, predictive="gaussian"))
    dparams = ParamsGGSSM(initial_mean=ours.predicted_means[0], initial_covariance=ours.predicted_covariances[0],
                          dynamics_function=parts["f"], dynamics_covariance=parts["Q"],
                          emission_mean_function=jnp.exp, emission_cov_function=lambda z: jnp.diag(jnp.exp(z)))
    with _dynamax_solver(as_shipped):
        smoothed = jax.jit(lambda Y: conditional_moments_gaussian_smoother(dparams, integrals, Y))(_as_2d(y))
    return ours, smoothed


def _check_cmgf(case, rule_name, as_shipped=False):
    ours, smoothed = _cmgf_runs(case, rule_name, as_shipped)
    assert_rel = functools.partial(_assert_rel, rtol=RTOL_AS_SHIPPED if as_shipped else RTOL)
    assert_rel(ours.marginal_loglik, smoothed.marginal_loglik, "log-likelihood")
    assert_rel(ours.filtered_means, smoothed.filtered_means, "filtered means")
    assert_rel(ours.filtered_covariances, smoothed.filtered_covariances, "filtered covariances")
    assert_rel(ours.smoothed_means, smoothed.smoothed_means, "smoothed means")
    assert_rel(ours.smoothed_covariances, smoothed.smoothed_covariances, "smoothed covariances")


def test_moment_matching_poisson_equals_dynamax_cmgf():
    """Unscented rule with dynamax's default hyperparameters, T = 200."""
    _check_cmgf("poisson", "UKF")


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["UKF", "GH5", "GH10", "EKF"])
def test_moment_matching_poisson_equals_dynamax_cmgf_more(rule):
    """Gauss–Hermite of orders 5 and 10, first-order Taylor, T = 500."""
    _check_cmgf("poisson-long", rule)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["UKF", "GH10"])
def test_moment_matching_poisson_equals_dynamax_cmgf_as_shipped(rule):
    _check_cmgf("poisson-long", rule, as_shipped=True)
