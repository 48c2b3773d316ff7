"""The Gaussian-approximation backends (EKF, UKF, GaussHermite, MomentMatching).

Oracles: on linear Gaussian models every rule's moments are exact, so each
backend must equal the Kalman filter and RTS smoother (themselves checked
against a brute-force joint Gaussian and statsmodels in test_kalman.py); closed
forms of the sigma-point rules (polynomial exactness of the unscented and
Gauss–Hermite rules, the lognormal moments of exp(z)); the eigenvalue-clipped
repair of an indefinite covariance computed by NumPy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan

from ssmppl import SSM, ModelStructureError
from ssmppl.inference import EKF, UKF, GaussHermite, Kalman, MomentMatching
from ssmppl.maths.gaussian import factor_or_repair
from ssmppl.maths.gaussian_filter import PointRule, Site, TaylorRule
from ssmppl.maths.sigma_points import gauss_hermite_points, unscented_points
from test_kalman import FIELDS, assert_close, tv_case

pytestmark = pytest.mark.usefixtures("x64")

FAST = [EKF(), UKF(), GaussHermite(), MomentMatching()]
MORE = [EKF(iterations=3), UKF(alpha=1.7, beta=2.0, kappa=1.0), GaussHermite(order=2),
        MomentMatching(rule=EKF()), MomentMatching(rule=GaussHermite(order=4), predictive="gaussian")]


@pytest.fixture(scope="module")
def linear_case(x64_module):
    rng = np.random.default_rng(3)
    model, args, kwargs, _ = tv_case(rng, 12, 2, 2)
    ssm = SSM(model)
    y = rng.normal(size=(12, 2))
    y[3, 0] = np.nan
    y[7] = np.nan
    reference = ssm.smooth({}, *args, y=y)
    return ssm, args, y, reference


def _check_equal(result, reference, fields=FIELDS, rtol=1e-8):
    for f in fields:
        assert_close(getattr(result, f), getattr(reference, f), rtol, f)


@pytest.mark.parametrize("method", FAST, ids=repr)
def test_equals_kalman_on_linear_gaussian_model(linear_case, method):
    """Filter, smoother (to z_0, with cross-covariances) and log-likelihood, time-varying model, missing data."""
    ssm, args, y, reference = linear_case
    _check_equal(ssm.smooth({}, *args, y=y, method=method), reference)


@pytest.mark.slow
@pytest.mark.parametrize("method", FAST + MORE, ids=repr)
def test_equals_kalman_everywhere_on_linear_model(linear_case, method):
    """The other settings, the filter entry point, FFBS draws and posterior predictive."""
    ssm, args, y, reference = linear_case
    if method not in FAST:
        _check_equal(ssm.smooth({}, *args, y=y, method=method), reference)
    filtered = ssm.filter({}, *args, y=y, method=method)
    _check_equal(filtered, reference, FIELDS[:6])
    problem = ssm.state_space({}, *args, y=y)
    key = jax.random.PRNGKey(5)
    draw = jax.jit(lambda k: method.sample_states(problem, k))(key)
    exact = jax.jit(lambda k: Kalman().sample_states(problem, k))(key)
    assert_close(draw, exact, 1e-8, "FFBS draw with the same key")
    mean, sd = ssm.posterior_predictive({}, *args, y=y, method=method)
    mean_k, sd_k = ssm.posterior_predictive({}, *args, y=y)
    assert_close(mean, mean_k, 1e-8, "predictive mean")
    assert_close(sd, sd_k, 1e-8, "predictive sd")


def _nonlinear_model(y=None, T=None, emission="gaussian"):
    """A small nonlinear model: z_t = 0.9 sin(z_{t-1}) + N(0, 0.3^2), emissions of exp(z)."""
    z0 = numpyro.sample("z0", dist.Normal(0.0, 1.0).expand([1]).to_event(1))

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(0.9 * jnp.sin(z_prev), 0.3).to_event(1))
        if emission == "gaussian":
            numpyro.sample("y", dist.Normal(jnp.exp(z), 0.5).to_event(1), obs=y_t)
        else:
            numpyro.sample("y", dist.Poisson(3.0 * jnp.exp(z)).to_event(1), obs=y_t)
        return z, None

    scan(step, z0, y, length=T)


@pytest.mark.slow
def test_forecast_equals_kalman(x64):
    """Forecast moments of a time-invariant linear model equal Kalman's."""
    from ssmppl.models import linear_gaussian_ssm

    ssm = SSM(linear_gaussian_ssm(2, 1))
    params = ssm.init_params(jax.random.PRNGKey(0), T=20)
    _, y = ssm.sample(jax.random.PRNGKey(1), params, T=20)
    ref = ssm.forecast(params, 4, y)
    got = ssm.forecast(params, 4, y, method=UKF())
    for f in ("state_means", "state_covariances", "emission_means", "emission_covariances"):
        assert_close(getattr(got, f), getattr(ref, f), 1e-8, f)


# -- the rules themselves ------------------------------------------------------


def test_sigma_point_rules_integrate_polynomials_exactly(x64):
    """Unscented (alpha=1, kappa=3-n, n=1): exact up to degree 5 in 1-d; Gauss–Hermite order 3:
    up to degree 5 per coordinate. E[z^4] = 3 s^4 + 6 m^2 s^2 + m^4 for z ~ N(m, s^2)."""
    m, s2 = 0.7, 1.3
    z4 = 3 * s2**2 + 6 * m**2 * s2 + m**4
    for points in (unscented_points(1, 1.0, 0.0, None), gauss_hermite_points(1, 3)):
        rule = PointRule(points)
        mean, cov, cross = rule.moments(Site(lambda z: (z**2, jnp.zeros((1, 1)))), jnp.array([m]),
                                        jnp.array([[s2]]), jnp.array([[np.sqrt(s2)]]))
        np.testing.assert_allclose(mean, [m**2 + s2], rtol=1e-12)
        np.testing.assert_allclose(cov, [[z4 - (m**2 + s2) ** 2]], rtol=1e-12)
        np.testing.assert_allclose(cross, [[2 * m * s2]], rtol=1e-12)  # Cov[z, z^2] = 2 m s^2


def test_lognormal_moments_by_gauss_hermite(x64):
    """exp(z), z ~ N(m, P) in 2-d: E = exp(m + diag(P)/2), Cov_ij = E_i E_j (exp(P_ij) - 1);
    a 20-point Gauss–Hermite rule reaches them to ~1e-9."""
    m = jnp.array([0.1, -0.3])
    P = jnp.array([[0.2, 0.05], [0.05, 0.1]])
    rule = PointRule(gauss_hermite_points(2, 20))
    mean, cov, _ = rule.moments(Site(lambda z: (jnp.exp(z), jnp.zeros((2, 2))), False), m, P,
                                jnp.linalg.cholesky(P))
    e = np.exp(m + np.diag(P) / 2)
    np.testing.assert_allclose(mean, e, rtol=1e-10)
    np.testing.assert_allclose(cov, np.outer(e, e) * (np.exp(P) - 1), rtol=1e-8)


def test_taylor_rule_with_state_dependent_noise(x64):
    """EKF moments of x ~ N(sin z, (0.1 + z^2)) at the mean m: sin m, J P J + 0.1 + m^2, P J."""
    m, p = 0.4, 0.3
    mean, cov, cross = TaylorRule().moments(
        Site(lambda z: (jnp.sin(z), jnp.diag(0.1 + z**2))), jnp.array([m]), jnp.array([[p]]), None)
    J = np.cos(m)
    np.testing.assert_allclose([mean[0], cov[0, 0], cross[0, 0]], [np.sin(m), J * p * J + 0.1 + m**2, p * J],
                               rtol=1e-12)


def test_indefinite_covariance_is_repaired_not_nan(x64):
    """factor_or_repair clips negative eigenvalues (NumPy oracle); a UKF with a negative
    centre weight whose predicted variance goes negative still returns finite, PSD output."""
    P = jnp.array([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3, -1
    L, P_rep = factor_or_repair(P)
    w, V = np.linalg.eigh(np.asarray(P))
    expected = (V * np.clip(w, 0, None)) @ V.T
    np.testing.assert_allclose(P_rep, expected, atol=1e-12)
    np.testing.assert_allclose(L @ L.T, expected, atol=1e-12)

    def model(y=None):
        def step(z_prev, y_t):
            z = numpyro.sample("z", dist.Normal(z_prev**2 - 1.0, 0.01).to_event(1))
            numpyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=y_t)
            return z, None

        scan(step, jnp.array([0.5]), y)

    # n = 1, alpha = 1, kappa = -0.5: lambda = -0.5, centre weights -1 (mean and covariance)
    method = UKF(kappa=-0.5)
    y = np.full((6, 1), np.nan)
    y[0] = 0.3
    result = SSM(model).filter({}, y, method=method)
    raw = jax.device_get(result.predicted_covariances[:, 0, 0])
    assert np.all(np.isfinite(raw)) and np.all(np.isfinite(result.filtered_means))
    assert np.all(np.asarray(result.filtered_covariances) >= 0)


# -- errors ----------------------------------------------------------------------


def test_errors_name_the_backend_to_use(x64):
    y = np.ones((5, 1))
    ssm = SSM(_nonlinear_model)
    with pytest.raises(ModelStructureError, match="EKF"):
        ssm.filter({}, y)  # Kalman on a nonlinear mean
    poisson = SSM(lambda y=None, T=None: _nonlinear_model(y, T, emission="poisson"))
    for method in (EKF(), UKF(), GaussHermite()):
        with pytest.raises(ModelStructureError, match="MomentMatching"):
            poisson.filter({}, y, method=method)
    with pytest.raises(ModelStructureError, match="MomentMatching"):
        poisson.filter({}, y)

    def rounded(y=None):
        def step(z_prev, y_t):
            z = numpyro.sample("z", dist.Normal(jnp.round(z_prev), 1.0).to_event(1))
            numpyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=y_t)
            return z, None

        scan(step, jnp.zeros(1), y)

    with pytest.raises(ModelStructureError, match="UKF"):
        SSM(rounded).filter({}, y, method=EKF())
    assert np.isfinite(SSM(rounded).log_likelihood({}, y, method=UKF()))

    def big(y=None):
        def step(z_prev, y_t):
            z = numpyro.sample("z", dist.Normal(jnp.sin(z_prev), 1.0).to_event(1))
            numpyro.sample("y", dist.Normal(z[:1], 1.0).to_event(1), obs=y_t)
            return z, None

        scan(step, jnp.zeros(12), y)

    with pytest.raises(ValueError, match="UKF"):
        SSM(big).filter({}, y, method=GaussHermite(order=3))  # 3^12 points


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        EKF(iterations=0)
    with pytest.raises(ValueError):
        GaussHermite(order=0)
    with pytest.raises(ValueError):
        UKF(alpha=0.0)
    with pytest.raises(TypeError):
        MomentMatching(rule=Kalman())
    with pytest.raises(ValueError):
        MomentMatching(predictive="laplace")
    with pytest.raises(ValueError, match="EKF"):
        MomentMatching(rule=EKF(), predictive="quadrature")


# -- the iterated EKF: Gauss–Newton to the mode ---------------------------------------


@pytest.mark.slow
def test_iterated_ekf_smoother_reaches_the_map_path(x64):
    """EKF(iterations=k) smooths by Gauss–Newton on log p(z_{0:T} | y): converged, its smoothed
    means are the MAP path, found here independently by BFGS on NumPyro's log joint density
    (numpyro.infer.util.log_density of the model with the path substituted). The plain EKF
    smoother is further from it. Pendulum with precise observations (r = 0.05), T = 10, angles
    within (-pi/2, pi/2), where sin is one-to-one and the posterior has one mode."""
    from numpyro.infer.util import log_density
    from scipy.optimize import minimize

    from ssmppl.models import pendulum

    model = pendulum(r=0.05, initial_mean=(0.3, 0.0), initial_cov=0.1)
    ssm = SSM(model)
    _, y = ssm.sample(jax.random.PRNGKey(2), {}, T=10)
    y = np.asarray(y).reshape(-1)
    iterated = ssm.smooth({}, y, method=EKF(iterations=30))
    plain = ssm.smooth({}, y, method=EKF())
    path = lambda r: np.concatenate([r.initial_smoothed_mean[None], r.smoothed_means])

    def neg_log_joint(v):
        v = v.reshape(11, 2)
        return -log_density(model, (y,), {}, {"z0": v[0], "z": v[1:]})[0]

    f = jax.jit(jax.value_and_grad(neg_log_joint))
    res = minimize(lambda v: [np.asarray(a, np.float64) for a in f(v)], path(plain).reshape(-1), jac=True,
                   method="BFGS", options={"gtol": 1e-10, "maxiter": 10_000})
    map_path = res.x.reshape(11, 2)
    np.testing.assert_allclose(path(iterated), map_path, atol=1e-6)
    grad = np.asarray(f(path(iterated).reshape(-1))[1])
    assert np.max(np.abs(grad)) < 1e-5, grad  # a stationary point of NumPyro's log joint
    assert np.max(np.abs(path(plain) - map_path)) > 1e3 * np.max(np.abs(path(iterated) - map_path))


def test_iterated_ekf_update_is_the_posterior_mode(x64):
    """One step: the iterated update's mean maximises N(z_1; m_p, P_p) N(y_1; sin(z_1[0]), r^2)
    with the EKF's predicted moments (a 2-d problem solved by BFGS)."""
    from scipy.optimize import minimize
    from scipy.stats import multivariate_normal, norm

    from ssmppl.models import pendulum

    r = 0.05
    ssm = SSM(pendulum(r=r, initial_mean=(0.3, 2.0), initial_cov=0.5))
    y = np.array([0.9])
    result = ssm.filter({}, y, method=EKF(iterations=25))
    m_p, P_p = np.asarray(result.predicted_means[0]), np.asarray(result.predicted_covariances[0])
    neg = lambda z: -(multivariate_normal(m_p, P_p).logpdf(z) + norm(np.sin(z[0]), r).logpdf(y[0]))
    mode = minimize(neg, m_p, method="Nelder-Mead", options={"xatol": 1e-11, "fatol": 1e-14, "maxiter": 20_000}).x
    np.testing.assert_allclose(result.filtered_means[0], mode, atol=1e-6)


@pytest.mark.slow
def test_fit_em_through_ukf_equals_kalman_on_linear_model(x64):
    """EM's E-step uses the backend's smoother (marginals and cross-covariances): on a linear
    Gaussian model, 5 EM iterations through UKF() and GaussHermite() give Kalman()'s iterates."""
    from ssmppl.models import linear_gaussian_ssm

    ssm = SSM(linear_gaussian_ssm(2, 2))
    params = ssm.init_params(jax.random.PRNGKey(0), T=30)
    _, y = ssm.sample(jax.random.PRNGKey(1), params, T=30)
    start = {**params, "F": 0.5 * jnp.eye(2), "Q": 0.3 * jnp.eye(2)}
    reference = ssm.fit_em(start, y, num_iters=5, progress_bar=False)
    for method in (UKF(), GaussHermite(order=2)):
        fitted = ssm.fit_em(start, y, num_iters=5, method=method, progress_bar=False)
        for name in ("F", "Q", "H", "R"):
            assert_close(fitted[0][name], reference[0][name], 1e-8, name)
        assert_close(fitted[1], reference[1], 1e-8, "log-likelihoods")


def test_moment_matching_marginalises_with_exact_zero_for_missing_steps(x64):
    """``marginalize(model, MomentMatching())`` adds the filter's log-likelihood as the model's
    density (NumPyro's log_density of the marginal model equals ``ssm.log_likelihood``), and a
    missing count contributes exactly 0 to the quadrature log predictive."""
    from numpyro.infer.util import log_density

    from ssmppl import marginalize
    from ssmppl.models import poisson_ar1

    model = poisson_ar1(mu=1.0, phi=0.8, sigma=0.4)
    y = np.array([2.0, 0.0, np.nan, 5.0, 3.0, np.nan, 1.0])
    ssm = SSM(model)
    method = MomentMatching()
    filtered = ssm.filter({}, y, method=method)
    assert np.all(np.asarray(filtered.log_predictive)[np.isnan(y)] == 0.0)
    density, _ = log_density(marginalize(model, method), (y,), {}, {})
    np.testing.assert_allclose(density, filtered.marginal_loglik, rtol=1e-12)
