"""Kalman corner cases (issue 17): exact observations, partly missing steps, T = 1, zero-variance noise.

Oracles, all independent of ssmppl's filters:

* statsmodels' ``KalmanFilter`` on Clark's (1989) bivariate unobserved-components model of US GDP
  and unemployment (the data and parameters statsmodels' own ``Clark1989`` tests use, from Kim &
  Nelson 1999). GDP is observed without noise; unemployment is missing in the first four quarters
  (zeros in ``clark1989.csv``), so those steps are partly missing with a singular observed block of R.
  Initialisation: z_0 ~ N(0, 100 I) (statsmodels' test's P0), i.e. statsmodels' known initial state
  at t = 1, N(F m0, F P0 F' + Q).
* a dense joint Gaussian: y_{1:T} is a linear map of (z_0, the transition noises, the emission
  noises), built by hand in NumPy, evaluated with ``scipy.stats.multivariate_normal``;
* closed-form conditioning for T = 1 (smoothed = filtered = prior conditioned on y_1), against
  Monte Carlo moments of ``Posterior.sample_states`` draws.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan
from scipy.stats import multivariate_normal

from ssmppl import (EKF, UKF, AuxiliaryPF, BootstrapPF, EnKF, EnSF, GaussHermite, GuidedPF, Kalman,
                    ModelStructureError, MomentMatching, SSM)
from ssmppl.bayes import Posterior

statsmodels = pytest.importorskip("statsmodels")
from statsmodels.tsa.statespace.kalman_filter import KalmanFilter  # noqa: E402
from statsmodels.tsa.statespace.tests.results.results_kalman_filter import uc_bi  # noqa: E402

KALMAN_FORMS = [Kalman(), Kalman(square_root=True), Kalman(parallel=True)]
KALMAN_IDS = ["covariance", "square_root", "parallel"]


def _normwise(a, b):
    """max |a - b| / max |b|: the error relative to the quantity's scale over the whole series."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# -- Clark (1989) --------------------------------------------------------------------------------


def _clark_data():
    path = os.path.join(os.path.dirname(statsmodels.__file__), "tsa", "statespace", "tests", "results",
                        "clark1989.csv")
    raw = np.loadtxt(path, delimiter=",")  # quarterly GDP (level), unemployment (percent; 0 = not recorded)
    y = np.column_stack([np.log(raw[:, 0]), raw[:, 1] / 100.0])
    y[raw[:, 1] == 0, 1] = np.nan
    return y


def _clark_matrices():
    """States: trend, cycle c_t, c_{t-1}, c_{t-2}, drift, unemployment trend (statsmodels' layout)."""
    sd_v, sd_e, sd_w, sd_vl, sd_ec, phi1, phi2, a1, a2, a3 = np.asarray(uc_bi["parameters"], float)
    F = np.zeros((6, 6))
    F[0, 0] = F[0, 4] = 1.0  # trend_t = trend_{t-1} + drift_{t-1} + v_t
    F[1, 1], F[1, 2] = phi1, phi2  # AR(2) cycle
    F[2, 1] = F[3, 2] = 1.0  # lags: no noise
    F[4, 4] = F[5, 5] = 1.0
    H = np.array([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0], [0.0, a1, a2, a3, 0.0, 1.0]])
    q_sd = np.array([sd_v, sd_e, 0.0, 0.0, sd_w, sd_vl])  # zero variance: the two lagged cycle states
    r_sd = np.array([0.0, sd_ec])  # GDP observed exactly
    return F, H, q_sd, r_sd


def clark_model(y=None, T=None):
    F, H, q_sd, r_sd = (jnp.asarray(a) for a in _clark_matrices())
    dtype = jnp.result_type(float)

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(F @ z_prev, q_sd.astype(dtype)).to_event(1))
        numpyro.sample("y", dist.Normal(H @ z, r_sd.astype(dtype)).to_event(1), obs=y_t)
        return z, None

    z0 = numpyro.sample("z0", dist.MultivariateNormal(jnp.zeros(6, dtype), 100.0 * jnp.eye(6, dtype=dtype)))
    scan(step, z0, y, length=T)


@pytest.fixture(scope="module")
def clark():
    """(observations (T, 2), statsmodels' log_predictive (T,), filtered means (T, 6), covariances (T, 6, 6))."""
    y = _clark_data()
    F, H, q_sd, r_sd = _clark_matrices()
    kf = KalmanFilter(k_endog=2, k_states=6)
    kf.bind(y.copy())
    kf.design, kf.transition, kf.selection = H, F, np.eye(6)
    kf.state_cov, kf.obs_cov = np.diag(q_sd**2), np.diag(r_sd**2)
    kf.initialize_known(np.zeros(6), F @ (100.0 * np.eye(6)) @ F.T + np.diag(q_sd**2))
    res = kf.filter()
    return y, res.llf_obs, res.filtered_state.T, np.moveaxis(res.filtered_state_cov, -1, 0)


def test_clark_data_has_partly_missing_steps(clark):
    y = clark[0]
    partly = np.isnan(y).any(1) & ~np.isnan(y).all(1)
    assert y.shape == (195, 2) and partly.sum() == 4 and not np.isnan(y[:, 0]).any()


@pytest.mark.parametrize("method", KALMAN_FORMS, ids=KALMAN_IDS)
def test_clark1989_exact_observation_matches_statsmodels(x64, clark, method):
    """Issue 17 bug 1: the square-root form factored the observed block of R on partly missing
    steps with a plain Cholesky, which fails on R_oo = 0 (GDP observed exactly)."""
    y, lp_sm, m_sm, P_sm = clark
    out = SSM(clark_model).filter(None, jnp.asarray(y), method=method)
    assert float(out.marginal_loglik) == pytest.approx(lp_sm.sum(), rel=1e-8)
    np.testing.assert_allclose(out.log_predictive, lp_sm, rtol=0, atol=1e-8)
    assert _normwise(out.filtered_means, m_sm) < 1e-8
    assert _normwise(out.filtered_covariances, P_sm) < 1e-8


@pytest.mark.parametrize("method", KALMAN_FORMS, ids=KALMAN_IDS)
def test_clark1989_float32(clark, method):
    """Float32 (Kalman() picks the square-root form there) stays finite and close to statsmodels' float64.

    The conditioning is kappa = P0 / Var(GDP innovation) = 100 / 6.8e-5 ~ 1.5e6 on the first steps.
    The square-root form works with factors, so its errors scale like eps32 sqrt(kappa) ~ 7e-5
    (measured: log-likelihood 8e-7 relative, filtered means 6e-6, covariances 7e-7, normwise);
    tolerances 2e-5 / 1e-4 / 1e-4. The parallel form is a covariance form: it subtracts covariances
    of size 1e2 to get ones of size 1e-5, errors ~ eps32 kappa ~ 0.1 relative on the worst entries
    (measured: log-likelihood 5e-5 relative, means and covariances 2e-3); tolerances 5e-4 / 1e-2.
    (The sequential covariance form, not tested here, is 0.6 nats off: the reason float32 uses the
    square-root one.)"""
    assert not jax.config.jax_enable_x64
    y, lp_sm, m_sm, P_sm = clark
    out = SSM(clark_model).filter(None, jnp.asarray(y, jnp.float32), method=method)
    assert out.filtered_means.dtype == jnp.float32
    for field in ("marginal_loglik", "filtered_means", "filtered_covariances"):
        assert np.all(np.isfinite(np.asarray(getattr(out, field)))), field
    tol_ll, tol = (5e-4, 1e-2) if method.parallel else (2e-5, 1e-4)
    assert float(out.marginal_loglik) == pytest.approx(lp_sm.sum(), rel=tol_ll)
    assert _normwise(out.filtered_means, m_sm) < tol
    assert _normwise(out.filtered_covariances, P_sm) < tol


def test_clark1989_parallel_matches_sequential(x64, clark):
    """Issue 17 bug 4: the parallel filter's element combination solved with I + C_i J_j (LU,
    condition number ~9e6 here: diffuse prior against an exact observation) and was 6e-8 off the
    sequential filter in the filtered means (normwise; 5e-7 absolute). Measured after the fix:
    means 2e-12, covariances 5e-13, log-likelihood 8e-13 (relative)."""
    y = jnp.asarray(clark[0])
    ssm = SSM(clark_model)
    seq = ssm.filter(None, y, method=Kalman())
    par = ssm.filter(None, y, method=Kalman(parallel=True))
    assert abs(float(par.marginal_loglik - seq.marginal_loglik)) < 1e-10 * abs(float(seq.marginal_loglik))
    assert _normwise(par.filtered_means, seq.filtered_means) < 1e-10
    assert _normwise(par.filtered_covariances, seq.filtered_covariances) < 1e-10
    # per step: the covariance after the diffuse prior has met the exact observations (step 5, P drops
    # from 1e2 to 2e-3) carries ~4e-10 relative rounding in either filter (sequential vs statsmodels
    # too), so single terms differ by up to ~1e-9 nats; their sum is the log-likelihood above
    np.testing.assert_allclose(par.log_predictive, seq.log_predictive, rtol=0, atol=1e-8)


def test_clark1989_parallel_gradient_matches_sequential(x64, clark):
    """The parallel filter re-factors its information matrices by QR, whose own derivative is NaN for
    rank-deficient ones (J has rank <= 2 per step here, and J = 0 once the prior is absorbed): the
    gradient of the log-likelihood must still be the sequential filter's."""
    from ssmppl.inference.kalman import linear_gaussian_params
    from ssmppl.maths.kalman import kalman_filter
    from ssmppl.maths.parallel_kalman import parallel_kalman_filter

    y = jnp.asarray(clark[0][:8])  # the diffuse start and the partly missing steps; short: compiles faster
    base = linear_gaussian_params(SSM(clark_model).state_space(None, y))

    def loglik(kernel, a):  # scale phi_1, Q and the unemployment noise by a
        p = base._replace(F=base.F.at[1, 1].multiply(a), Q=base.Q * a, R=base.R.at[1, 1].multiply(a))
        return kernel(p, y).marginal_loglik

    g_seq = jax.jit(jax.grad(lambda a: loglik(kalman_filter, a)))(1.0)
    g_par = jax.jit(jax.grad(lambda a: loglik(parallel_kalman_filter, a)))(1.0)
    assert np.isfinite(float(g_par)) and abs(float(g_seq)) > 0.1
    assert float(g_par) == pytest.approx(float(g_seq), rel=1e-7)


# -- zero-variance noise (issue 17 bug 3) ----------------------------------------------------------
# A Normal with a zero scale (or a MultivariateNormal with a singular covariance) used to be refused by
# NumPyro's argument validation while ssmppl traced the model.

PHI1, PHI2, Q_SD, R_SD = 0.6, 0.3, 0.5, 0.2
Y7 = np.array([0.1, 0.3, -0.2, 0.5, 0.7, np.nan, 0.2])
AR2_F = np.array([[PHI1, PHI2], [1.0, 0.0]])
TREND_F = np.array([[1.0, 1.0], [0.0, 1.0]])


def ar2_model(noise="normal"):
    """Companion-form AR(2), z_t = (x_t, x_{t-1}): the lag copies x_{t-1} with zero variance;
    y_t = x_t + N(0, R_SD^2). ``noise="mvn"``: the same Q as a singular MultivariateNormal covariance."""

    def model(y=None, T=None):
        F = jnp.asarray(AR2_F)

        def step(z_prev, y_t):
            if noise == "normal":
                d = dist.Normal(F @ z_prev, jnp.array([Q_SD, 0.0])).to_event(1)
            else:
                d = dist.MultivariateNormal(F @ z_prev, jnp.diag(jnp.array([Q_SD**2, 0.0])))
            z = numpyro.sample("z", d)
            numpyro.sample("y", dist.Normal(z[0], R_SD), obs=y_t)
            return z, None

        z0 = numpyro.sample("z0", dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)))
        scan(step, z0, y, length=T)

    model.__name__ = f"ar2_{noise}"
    return model


def trend_model(y=None, T=None):
    """A level with a deterministic slope, observed exactly: level_t = level_{t-1} + slope_{t-1} +
    N(0, Q_SD^2), slope_t = slope_{t-1} (zero variance), y_t = level_t (zero variance)."""
    F = jnp.asarray(TREND_F)

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(F @ z_prev, jnp.array([Q_SD, 0.0])).to_event(1))
        numpyro.sample("y", dist.Normal(z[0], 0.0), obs=y_t)
        return z, None

    z0 = numpyro.sample("z0", dist.Normal(jnp.array([0.0, 0.1]), jnp.array([1.0, 0.5])).to_event(1))
    scan(step, z0, y, length=T)


# (model, F, transition sds, H, emission sds, m0, P0)
ZERO_VARIANCE_CASES = {
    "ar2_normal": (ar2_model("normal"), AR2_F, [Q_SD, 0.0], [[1.0, 0.0]], [R_SD], [0.0, 0.0], np.eye(2)),
    "ar2_mvn": (ar2_model("mvn"), AR2_F, [Q_SD, 0.0], [[1.0, 0.0]], [R_SD], [0.0, 0.0], np.eye(2)),
    "trend_exact": (trend_model, TREND_F, [Q_SD, 0.0], [[1.0, 0.0]], [0.0], [0.0, 0.1], np.diag([1.0, 0.25])),
}


def brute_force_loglik(F, q_sd, H, r_sd, m0, P0, y):
    """log p(y observed) by a dense Gaussian: y_{1:T} = K u with u = (z_0, eps_1..T, eta_1..T) ~
    N((m0, 0), diag(P0, I, I)), z_t = F z_{t-1} + diag(q_sd) eps_t, y_t = H z_t + diag(r_sd) eta_t."""
    F, H, P0 = (np.asarray(a, float) for a in (F, H, P0))
    q_sd, r_sd, m0 = (np.asarray(a, float) for a in (q_sd, r_sd, m0))
    y = np.asarray(y, float).reshape(len(y), -1)
    T, dy = y.shape
    dz = F.shape[0]
    nu = dz + T * dz + T * dy
    K = np.zeros((T * dy, nu))
    Z = np.zeros((dz, nu))
    Z[:, :dz] = np.eye(dz)  # z_0 as a map of u
    for t in range(T):
        Z = F @ Z
        Z[:, dz + t * dz : dz + (t + 1) * dz] += np.diag(q_sd)
        K[t * dy : (t + 1) * dy] = H @ Z
        K[t * dy : (t + 1) * dy, dz + T * dz + t * dy : dz + T * dz + (t + 1) * dy] = np.diag(r_sd)
    mean_u = np.concatenate([m0, np.zeros(nu - dz)])
    cov_u = np.eye(nu)
    cov_u[:dz, :dz] = P0
    mean, cov = K @ mean_u, K @ cov_u @ K.T
    obs = ~np.isnan(y.ravel())
    return multivariate_normal(mean[obs], cov[np.ix_(obs, obs)]).logpdf(y.ravel()[obs])


EXACT_BACKENDS = KALMAN_FORMS + [EKF(), UKF(), GaussHermite(), MomentMatching()]
EXACT_IDS = KALMAN_IDS + ["EKF", "UKF", "GaussHermite", "MomentMatching"]


@pytest.mark.parametrize("case", sorted(ZERO_VARIANCE_CASES))
def test_zero_variance_gaussian_backends_match_brute_force(x64, case):
    """Every Kalman form and every Gaussian filter accepts zero-variance noise; on these linear
    models all are the exact filter: the dense Gaussian to 1e-10, each other to 1e-8."""
    model, *matrices = ZERO_VARIANCE_CASES[case]
    expected = brute_force_loglik(*matrices, Y7)
    ssm = SSM(model)
    reference = ssm.filter(None, jnp.asarray(Y7))
    for method, name in zip(EXACT_BACKENDS, EXACT_IDS):
        out = ssm.filter(None, jnp.asarray(Y7), method=method)
        assert float(out.marginal_loglik) == pytest.approx(expected, rel=1e-10), name
        for field in ("filtered_means", "filtered_covariances"):
            np.testing.assert_allclose(getattr(out, field), getattr(reference, field), rtol=1e-8, atol=1e-10,
                                       err_msg=f"{name} {field}")


def test_zero_variance_smoothers_agree(x64):
    """Smoothing too: the sequential, parallel and unscented RTS smoothers on the exactly observed trend."""
    ssm = SSM(trend_model)
    ref = ssm.smooth(None, jnp.asarray(Y7))
    assert np.all(np.isfinite(np.asarray(ref.smoothed_covariances)))
    # the level is observed exactly: its smoothed variance is 0 where y is observed
    observed = ~np.isnan(Y7)
    np.testing.assert_allclose(np.asarray(ref.smoothed_means)[observed, 0], Y7[observed], atol=1e-10)
    np.testing.assert_allclose(np.asarray(ref.smoothed_covariances)[observed, 0, 0], 0.0, atol=1e-10)
    for method in (Kalman(parallel=True), UKF()):
        out = ssm.smooth(None, jnp.asarray(Y7), method=method)
        for field in ("smoothed_means", "smoothed_covariances", "smoothed_cross_covariances"):
            np.testing.assert_allclose(getattr(out, field), getattr(ref, field), rtol=1e-8, atol=1e-10,
                                       err_msg=f"{method} {field}")


def test_zero_variance_simulation(x64):
    """ssm.sample accepts it too: the AR(2) lag copies the previous value, the trend's data are its level."""
    states, ys = SSM(ar2_model()).sample(jax.random.PRNGKey(0), None, T=20)
    np.testing.assert_array_equal(np.asarray(states)[1:, 1], np.asarray(states)[:-1, 0])
    states, ys = SSM(trend_model).sample(jax.random.PRNGKey(1), None, T=20)
    np.testing.assert_array_equal(np.asarray(ys), np.asarray(states)[:, 0])
    np.testing.assert_array_equal(np.asarray(states)[1:, 1], np.asarray(states)[:-1, 1])


def test_zero_variance_ensemble_kalman_filter(x64):
    """EnKF moves members by the transition (a zero scale just adds no noise): its Gaussian-approximation
    log-likelihood is close to the exact one. Measured over 10 keys at N = 2000 (ensrf): mean -3.876,
    sd 0.05 around the exact -3.869; tolerance 0.25 (5 sd)."""
    model, *matrices = ZERO_VARIANCE_CASES["ar2_normal"]
    expected = brute_force_loglik(*matrices, Y7)
    out = SSM(model).filter(None, jnp.asarray(Y7), method=EnKF(2000, variant="ensrf"), key=jax.random.PRNGKey(0))
    assert np.isfinite(float(out.marginal_loglik))
    assert float(out.marginal_loglik) == pytest.approx(expected, abs=0.25)


def test_zero_variance_particle_filters(x64):
    """A bootstrap filter only samples the transition: zero-variance state components are fine (and the
    genealogy smoother needs no density). The locally optimal GuidedPF conditions on an exact linear
    observation like a Kalman update. Measured sd of the log-likelihood over 20 keys at N = 2000:
    0.063 (BootstrapPF, AR(2)) and 0.015 (GuidedPF, exact trend); tolerances 5 sd."""
    key = jax.random.PRNGKey(0)
    model, *matrices = ZERO_VARIANCE_CASES["ar2_normal"]
    out = SSM(model).filter(None, jnp.asarray(Y7), method=BootstrapPF(2000), key=key)
    assert float(out.marginal_loglik) == pytest.approx(brute_force_loglik(*matrices, Y7), abs=0.32)
    smoothed = SSM(model).smooth(None, jnp.asarray(Y7), method=BootstrapPF(2000, smoother="genealogy"), key=key)
    assert np.all(np.isfinite(np.asarray(smoothed.smoothed_means)))
    model, *matrices = ZERO_VARIANCE_CASES["trend_exact"]
    out = SSM(model).filter(None, jnp.asarray(Y7), method=GuidedPF(2000), key=key)
    assert float(out.marginal_loglik) == pytest.approx(brute_force_loglik(*matrices, Y7), abs=0.08)


def smooth_trend_model(y=None, T=None):
    """An integrated random walk observed exactly: level_t = level_{t-1} + slope_{t-1} (no noise),
    slope_t = slope_{t-1} + N(0, Q_SD^2), y_t = level_t (no noise)."""
    F = jnp.asarray(TREND_F)

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(F @ z_prev, jnp.array([0.0, Q_SD])).to_event(1))
        numpyro.sample("y", dist.Normal(z[0], 0.0), obs=y_t)
        return z, None

    z0 = numpyro.sample("z0", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
    scan(step, z0, y, length=T)


def test_exact_observation_without_transition_noise(x64):
    """y_t = level_t exactly and the level gets no noise of its own: the sequential forms condition on
    H P H^T + R (positive: the slope is uncertain), the parallel form on y_t given z_{t-1} alone, where
    H Q H^T + R = 0. Sequential: the dense Gaussian; parallel: a clear error, not NaN."""
    expected = brute_force_loglik(TREND_F, [0.0, Q_SD], [[1.0, 0.0]], [0.0], [0.0, 0.0], np.eye(2), Y7)
    ssm = SSM(smooth_trend_model)
    for method in (Kalman(), Kalman(square_root=True), EKF()):
        assert float(ssm.log_likelihood(None, jnp.asarray(Y7), method=method)) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match=r"Kalman\(parallel=True\) conditions each step's observation on the previous "
                                         r"state alone.*singular at steps \[1, 2, 3, 4, 5\].*site 'y' is observed "
                                         r"exactly.*no transition noise from site 'z'"):
        ssm.log_likelihood(None, jnp.asarray(Y7), method=Kalman(parallel=True))


def _proposal(z_prev, xs_t, y_t):
    return dist.Normal(jnp.asarray(AR2_F) @ z_prev, 1.0).to_event(1)


REFUSALS = [
    ("trend_exact", EnKF(20), "filter", r"EnKF whitens the observations by R\^\(-1/2\).*emission site 'y' has zero "
                                         r"variance in component\(s\) \[0\].*noiseless observation has no density"),
    ("trend_exact", EnKF(20), "smooth", r"EnKF whitens .*emission site 'y'"),
    ("trend_exact", EnSF(20), "filter", r"EnSF needs the likelihood score .*emission site 'y' has zero variance"),
    ("trend_exact", BootstrapPF(50), "filter", r"BootstrapPF weights particles by the emission density .*site 'y' "
                                               r"has zero variance"),
    ("trend_exact", AuxiliaryPF(50), "filter", r"AuxiliaryPF weights particles by the emission density .*site 'y'"),
    ("ar2_normal", BootstrapPF(50), "smooth", r"BootstrapPF\(smoother='ffbsi'\) weights particles by the transition "
                                              r"density.*state site 'z' has zero variance in component\(s\) \[1\] "
                                              r"of 2: a deterministic state component has no density.*genealogy"),
    ("ar2_normal", GuidedPF(50, proposal=_proposal), "filter", r"GuidedPF\(proposal=...\) weights particles by "
                                                               r"f\(z_t \| z_\{t-1\}\).*state site 'z'"),
    ("ar2_mvn", EnKF(20), "filter", r"EnKF samples the state site 'z', a MultivariateNormal given a singular "
                                    r"covariance_matrix.*scale_tril"),
    ("ar2_mvn", BootstrapPF(50), "filter", r"BootstrapPF samples the state site 'z'.*singular covariance_matrix"),
]


@pytest.mark.parametrize("case, method, call, match", REFUSALS,
                         ids=[f"{c}-{type(m).__name__}-{call}" for c, m, call, _ in REFUSALS])
def test_zero_variance_refused_where_a_density_is_needed(x64, case, method, call, match):
    """Backends that weight by a density (particle filters), whiten by R^(-1/2) (EnKF) or differentiate
    the log-likelihood (EnSF) cannot use a zero-variance site: a clear error naming it, not NaN."""
    ssm = SSM(ZERO_VARIANCE_CASES[case][0])
    with pytest.raises(ModelStructureError, match=match):
        getattr(ssm, call)(None, jnp.asarray(Y7), method=method, key=jax.random.PRNGKey(0))


def test_invalid_scales_still_refused_by_site():
    """Zero is a valid scale; a negative one (or an indefinite covariance) is not, and the error names the site."""

    def model_with(transition_scale=Q_SD, emission_scale=R_SD, initial_scale=1.0, cov=None):
        def model(y=None, T=None):
            def step(z_prev, y_t):
                if cov is None:
                    d = dist.Normal(jnp.asarray(AR2_F) @ z_prev, transition_scale).to_event(1)
                else:
                    d = dist.MultivariateNormal(jnp.asarray(AR2_F) @ z_prev, cov)
                z = numpyro.sample("z", d)
                numpyro.sample("y", dist.Normal(z[0], emission_scale), obs=y_t)
                return z, None

            z0 = numpyro.sample("z0", dist.Normal(jnp.zeros(2), initial_scale).to_event(1))
            scan(step, z0, y, length=T)

        return model

    y = jnp.asarray(Y7)
    assert np.isfinite(float(SSM(model_with(transition_scale=np.array([Q_SD, 0.0]), initial_scale=np.array(
        [1.0, 0.0]))).log_likelihood(None, y)))
    cases = [
        (model_with(transition_scale=-1.0), r"site 'z': Normal distribution got an invalid scale parameter "
                                            r"\(scales must be >= 0"),
        (model_with(emission_scale=-0.5), r"site 'y': Normal distribution got an invalid scale"),
        (model_with(initial_scale=np.array([1.0, -1.0])), r"site 'z0': Normal distribution got an invalid scale"),
        (model_with(cov=np.array([[1.0, 2.0], [2.0, 1.0]])), r"site 'z': MultivariateNormal distribution got an "
                                                             r"invalid covariance_matrix parameter \(it must be "
                                                             r"symmetric positive semi-definite\)"),
    ]
    for model, match in cases:
        with pytest.raises(ValueError, match=match):
            SSM(model).log_likelihood(None, y)
        with pytest.raises(ValueError, match=match):
            SSM(model).sample(jax.random.PRNGKey(0), None, T=3)


def test_zero_variance_from_a_parameter(x64):
    """A zero scale that is a parameter value is traced, so it cannot be refused at trace time: the exact
    filters use it (the dense Gaussian); the backends that need an emission density refuse it by site
    when they explain the non-finite result."""

    def model(y=None, T=None):
        r = numpyro.param("r", 0.2)

        def step(z_prev, y_t):
            z = numpyro.sample("z", dist.Normal(0.8 * z_prev, Q_SD))
            numpyro.sample("y", dist.Normal(z, r), obs=y_t)
            return z, None

        z0 = numpyro.sample("z0", dist.Normal(0.0, 1.0))
        scan(step, z0, y, length=T)

    params, y = {"r": jnp.asarray(0.0)}, jnp.asarray(Y7)
    expected = brute_force_loglik([[0.8]], [Q_SD], [[1.0]], [0.0], [0.0], [[1.0]], Y7)
    for method in KALMAN_FORMS + [UKF()]:
        assert float(SSM(model).log_likelihood(params, y, method=method)) == pytest.approx(expected, rel=1e-10)
    for method, match in [(BootstrapPF(50), r"BootstrapPF weights particles by the emission density"),
                          (EnKF(20), r"EnKF\('etkf'\) whitens the observations"),
                          (EnSF(20), r"EnSF needs the likelihood score")]:
        with pytest.raises(ValueError, match=match + r".*site 'y' has zero variance in component"):
            SSM(model).filter(params, y, method=method, key=jax.random.PRNGKey(0))


# -- a series of length one (issue 17 bug 2) -------------------------------------------------------

T1_F = np.array([[0.9, 0.2], [0.0, 0.5]])
T1_H = np.array([1.0, 1.0])
T1_R, T1_Q = 0.3, 0.5
T1_Y = 0.7


def t1_model(y=None, T=None):
    q = numpyro.sample("q", dist.HalfNormal(1.0))

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(jnp.asarray(T1_F) @ z_prev, q).to_event(1))
        numpyro.sample("y", dist.Normal(jnp.asarray(T1_H) @ z, T1_R), obs=y_t)
        return z, None

    z0 = numpyro.sample("z0", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
    scan(step, z0, y, length=T)


def _t1_posterior():
    """p(z_1 | y_1) in closed form: z_1 ~ N(0, F F' + q^2 I) conditioned on y_1 = h' z_1 + N(0, r^2)."""
    P = T1_F @ T1_F.T + T1_Q**2 * np.eye(2)
    S = T1_H @ P @ T1_H + T1_R**2
    K = P @ T1_H / S
    return K * T1_Y, P - np.outer(K, K) * S


@pytest.mark.parametrize("method", KALMAN_FORMS + [EKF(), UKF()], ids=KALMAN_IDS + ["EKF", "UKF"])
def test_sample_states_with_one_time_step(x64, method):
    """T = 1: the backward pass has no step (it indexed an empty cross-covariance array: IndexError).
    Posterior.sample_states draws (one per parameter draw; here M copies of the same q) must have the
    closed-form moments of p(z_1 | y_1): each mean within 4 standard errors sqrt(P_ii / M), each
    covariance entry within 4 sd of a sample covariance, sqrt((P_ii P_jj + P_ij^2) / M)."""
    M = 4000
    y = jnp.asarray([T1_Y])
    ssm = SSM(t1_model)
    mean, cov = _t1_posterior()
    smoothed = ssm.smooth({"q": jnp.asarray(T1_Q)}, y, method=method)
    np.testing.assert_allclose(smoothed.smoothed_means[0], mean, rtol=1e-10)
    np.testing.assert_allclose(smoothed.smoothed_covariances[0], cov, rtol=1e-10)
    posterior = Posterior(ssm=ssm, args=(y,), kwargs={}, samples={"q": jnp.full((1, M), T1_Q)}, sample_stats={},
                          fixed={}, method=method, sampler="fixed q")
    draws = np.asarray(posterior.sample_states(jax.random.PRNGKey(0)))
    assert draws.shape == (1, M, 1, 2)
    z = draws.reshape(M, 2)
    se_mean = np.sqrt(np.diag(cov) / M)
    assert np.all(np.abs(z.mean(0) - mean) < 4 * se_mean), (z.mean(0), mean)
    sd_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / M)
    assert np.all(np.abs(np.cov(z.T) - cov) < 4 * sd_cov), (np.cov(z.T), cov)
