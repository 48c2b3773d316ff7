"""Ensemble Kalman filters (EnKF backend) and the EnKS against exact and statistical oracles.

Oracles, on a linear Gaussian model (d = 5 states, m = 4 observations, NaN-missing
components and one fully missing step) unless said otherwise:
  * the deterministic variants (etkf, ensrf, serial, letkf with an all-covering
    cut-off radius) give, at every step, exactly the Kalman update of the ensemble's
    own predicted mean and covariance, for N < d and N > d; every variant's
    log-predictive is the Gaussian density of y_t under those predicted moments,
    computed by brute force over the observed components;
  * with many members the filter, and the EnKS, match the exact Kalman filter and
    RTS smoother within sampling error, and the error shrinks as N grows;
  * the EnKS identities: lag 0 gives the filter, a fixed lag L gives the full
    smoother's last L+1 states, the last smoothed state is the filtered one;
  * inflation: closed forms for Multiplicative, RTPP(1), RTPS(1) and the adaptive
    recursion (recomputed from the filter's own predicted moments), a sampling
    tolerance for Additive, the direction of the adaptive factor, and a rotation
    that changes the members but not their moments;
  * the gradient of the Gaussian-approximation log-likelihood matches a central
    finite difference (Lorenz-96 forcing), with m < N - 1 (repeated eigenvalues);
  * same key same result; bad settings and diverged ensembles raise clear errors.

Compilation dominates the run time (about 1 to 2 s per filter configuration), so
module fixtures run several configurations in one ``jax.jit`` compiled with
``FAST`` options (lower XLA backend optimisation: the programs are tiny).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan
from scipy.stats import multivariate_normal

from ssmppl import SSM, EnKF, Localization
from ssmppl.errors import ModelStructureError
from ssmppl.inference import RTPP, RTPS, Adaptive, Additive, Kalman, Multiplicative
from ssmppl.models import lorenz96

pytestmark = pytest.mark.usefixtures("x64_module")

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
fast_jit = functools.partial(jax.jit, compiler_options=FAST)

T = 10
F0 = np.array([[0.9, 0.1, 0.0, 0.0, 0.0],
               [-0.1, 0.8, 0.2, 0.0, 0.0],
               [0.0, 0.1, 0.7, 0.1, 0.0],
               [0.0, 0.0, -0.2, 0.85, 0.1],
               [0.1, 0.0, 0.0, 0.0, 0.6]])
Q0 = 0.2 * np.eye(5) + 0.05  # process noise covariance at q = 1
H = np.array([[1.0, 0.5, 0.0, 0.0, 0.0],
              [0.0, 1.0, -1.0, 0.0, 0.0],
              [0.0, 0.0, 0.0, 1.0, 0.3],
              [0.2, 0.0, 0.0, 0.0, 1.0]])
R_SD = np.array([0.5, 0.8, 0.6, 0.7])
R = np.diag(R_SD ** 2)
D, M_OBS = H.shape[1], H.shape[0]
DETERMINISTIC = ("etkf", "ensrf", "serial", "letkf")
VARIANTS = DETERMINISTIC + ("stochastic",)
# radius far beyond the grid with a hard cut-off: every observation is local to every component
GLOBAL_LOC = Localization(1e6, np.arange(float(D)), np.arange(float(M_OBS)), taper="cutoff")


def linear_model(y=None, T=None):
    """z_t ~ N(a F0 z_{t-1}, q^2 Q0), y_t ~ N(H z_t, diag(R_SD^2)), z_0 ~ N(0, I); a, q params."""
    a = numpyro.param("a", 1.0)
    q = numpyro.param("q", 1.0)
    z0 = numpyro.sample("z0", dist.MultivariateNormal(jnp.zeros(D), jnp.eye(D)))

    def step(z, y_t):
        z = numpyro.sample("z", dist.MultivariateNormal(a * jnp.asarray(F0) @ z, q ** 2 * jnp.asarray(Q0)))
        numpyro.sample("y", dist.Normal(jnp.asarray(H) @ z, jnp.asarray(R_SD)).to_event(1), obs=y_t)
        return z, None

    scan(step, z0, y, length=T)


def deterministic_linear_model(y=None, T=None):
    """The linear model without process noise: z_t = F0 z_{t-1} (a Delta transition)."""
    z0 = numpyro.sample("z0", dist.MultivariateNormal(jnp.zeros(D), jnp.eye(D)))

    def step(z, y_t):
        z = numpyro.sample("z", dist.Delta(jnp.asarray(F0) @ z, event_dim=1))
        numpyro.sample("y", dist.Normal(jnp.asarray(H) @ z, jnp.asarray(R_SD)).to_event(1), obs=y_t)
        return z, None

    scan(step, z0, y, length=T)


def method(variant, N, **kw):
    if variant == "letkf":
        kw.setdefault("localization", GLOBAL_LOC)
    return EnKF(N, variant=variant, **kw)


def params(a=1.0, q=1.0):
    return {"a": jnp.asarray(a), "q": jnp.asarray(q)}


# -- brute-force oracles ---------------------------------------------------------------------------

def kalman_update(m, P, y):
    """Kalman analysis (mean, covariance) of prior N(m, P) given y (m,) with NaN = missing."""
    o = ~np.isnan(y)
    if not o.any():
        return m, P
    Ho = H[o]
    S = Ho @ P @ Ho.T + R[np.ix_(o, o)]
    K = np.linalg.solve(S, Ho @ P).T
    return m + K @ (y[o] - Ho @ m), P - K @ S @ K.T


def log_predictive(m, P, y):
    """log N(y_obs; H_obs m, H_obs P H_obs^T + R_obs) over the observed components (0 if none)."""
    o = ~np.isnan(y)
    if not o.any():
        return 0.0
    Ho = H[o]
    return multivariate_normal(Ho @ m, Ho @ P @ Ho.T + R[np.ix_(o, o)]).logpdf(y[o])


def analysis_oracle(res, y):
    """Per step, the Kalman analysis of the result's own predicted moments: means (T, d), covs (T, d, d)."""
    pairs = [kalman_update(np.asarray(res.predicted_means[t]), np.asarray(res.predicted_covariances[t]), y[t])
             for t in range(y.shape[0])]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def run_filters(ssm, methods, P, y, key, smooth=False):
    """Filter (or smooth) with several backends in one compiled program: a list of results."""
    def run(P, y, key):
        problem = ssm.state_space(P, y=y)
        return [m.smooth(problem, key) if smooth else m.filter(problem, key) for m in methods]

    return fast_jit(run)(P, y, key)


def vmapped_filters(ssm, methods, P, y, keys):
    """As run_filters, vmapped over keys (K,): results with a leading K axis."""
    def run(P, y, keys):
        problem = ssm.state_space(P, y=y)
        return [jax.vmap(lambda k: m.filter(problem, k))(keys) for m in methods]

    return fast_jit(run)(P, y, keys)


# -- shared data and runs --------------------------------------------------------------------------

def simulate_linear(seed, T, q=1.0):
    """Observations (T, m) from linear_model at a = 1 (NumPy: no compilation)."""
    rng = np.random.default_rng(seed)
    z, ys = rng.standard_normal(D), []
    for _ in range(T):
        z = F0 @ z + q * np.linalg.cholesky(Q0) @ rng.standard_normal(D)
        ys.append(H @ z + R_SD * rng.standard_normal(M_OBS))
    return np.array(ys)


def simulate_lorenz96(seed, T, dim=6, forcing=8.0, dt=0.05, every=2):
    """Observations (T, ceil(dim / every)) of Lorenz-96 (one RK4 step per observation, unit noise)."""
    rng = np.random.default_rng(seed)
    f = lambda x: (np.roll(x, -1) - np.roll(x, 2)) * np.roll(x, 1) - x + forcing  # noqa: E731
    x, ys = forcing + rng.standard_normal(dim), []
    for _ in range(T):
        k1 = f(x)
        k2 = f(x + dt / 2 * k1)
        k3 = f(x + dt / 2 * k2)
        x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + f(x + dt * k3))
        ys.append(x[::every] + rng.standard_normal(x[::every].shape))
    return np.array(ys)


@pytest.fixture(scope="module")
def data(x64_module):
    """(ssm, y (T, m) with y[3, 0] and all of y[5] missing, numpy copy of y)."""
    yn = simulate_linear(0, T)
    yn[3, 0] = yn[5] = yn[8, 2] = np.nan
    return SSM(linear_model), jnp.asarray(yn), yn


# -- 1. deterministic variants: exact Kalman analysis of the ensemble's own moments ---------------

# N = 4 (< d, <= m: ensemble-space branches) for every variant; N = 12 (> d, > m: observation-space
# branches of the stochastic analysis and of the predictive density) for a subset, to save compiling:
# etkf, serial and ensrf are also checked exactly at N > d by the inflation tests below.
SMALL = [(v, 4) for v in VARIANTS] + [("letkf", 12), ("stochastic", 12)]


@pytest.fixture(scope="module")
def small_runs(data):
    """{(variant, N): filter result} for SMALL, one key."""
    ssm, y, _ = data
    results = run_filters(ssm, [method(v, N) for v, N in SMALL], params(), y, jax.random.PRNGKey(1))
    return dict(zip(SMALL, results))


@pytest.mark.parametrize("variant, N", [c for c in SMALL if c[0] != "stochastic"])
def test_deterministic_analysis_is_the_kalman_update_of_the_ensemble_moments(small_runs, data, variant, N):
    _, _, yn = data
    res = small_runs[variant, N]
    means, covs = analysis_oracle(res, yn)
    np.testing.assert_allclose(res.filtered_means, means, rtol=0, atol=1e-10)
    np.testing.assert_allclose(res.filtered_covariances, covs, rtol=0, atol=1e-10)
    # the analysis did something (observed steps), and nothing at the fully missing step
    assert np.abs(np.asarray(res.filtered_means - res.predicted_means)).max(axis=1)[0] > 1e-3
    np.testing.assert_array_equal(res.filtered_means[5], res.predicted_means[5])
    np.testing.assert_allclose(res.filtered_variances, np.diagonal(covs, 0, 1, 2), rtol=0, atol=1e-10)
    np.testing.assert_array_equal(res.num_observed, (~np.isnan(yn)).sum(1))


@pytest.mark.parametrize("variant, N", SMALL)
def test_log_predictive_is_the_gaussian_density_of_the_forecast_moments(small_runs, data, variant, N):
    _, _, yn = data
    res = small_runs[variant, N]
    expected = [log_predictive(np.asarray(res.predicted_means[t]), np.asarray(res.predicted_covariances[t]), yn[t])
                for t in range(T)]
    np.testing.assert_allclose(res.log_predictive, expected, rtol=1e-10, atol=1e-10)
    assert abs(float(res.log_predictive[5])) < 1e-12  # nothing observed
    np.testing.assert_allclose(res.marginal_loglik, np.sum(expected), rtol=1e-10)
    # the innovation chi^2 is the Mahalanobis distance under the same moments
    t = 8
    o = ~np.isnan(yn[t])
    S = H[o] @ np.asarray(res.predicted_covariances[t]) @ H[o].T + R[np.ix_(o, o)]
    v = yn[t, o] - H[o] @ np.asarray(res.predicted_means[t])
    np.testing.assert_allclose(res.innovation_chi2[t], v @ np.linalg.solve(S, v), rtol=1e-10)


# -- 2. many members: the Kalman filter within sampling error --------------------------------------

SEEDS = 4


@pytest.fixture(scope="module")
def kalman(data):
    ssm, y, _ = data
    return fast_jit(lambda P, y: Kalman().smooth(ssm.state_space(P, y=y)))(params(), y)


@pytest.fixture(scope="module")
def stochastic_runs(data):
    """Stochastic EnKF with N = 250 and 4000, each over SEEDS keys (leading axis)."""
    ssm, y, _ = data
    keys = jax.random.split(jax.random.PRNGKey(7), SEEDS)
    small, large = vmapped_filters(ssm, [method("stochastic", 250), method("stochastic", 4000)], params(), y, keys)
    return {250: small, 4000: large}


def test_stochastic_first_analysis_matches_kalman_within_sampling_error(stochastic_runs, kalman):
    """Step 1 with N = 4000. Mean error in units of sqrt(diag P_pred / N): besides the forecast mean's
    own error, the sampled gain's error times the innovation adds to it (measured: sd <= 1.35 per
    component over 40 seeds), so the RMS over seeds and components must be <= 3, each <= 5.
    Covariance error in units of a sample covariance's standard error sqrt((P_ii P_jj + P_ij^2) / N)
    of the analysis P (measured sd <= 1.32): RMS <= 3, each <= 6."""
    N, res = 4000, stochastic_runs[4000]
    Pp, Pa = np.asarray(kalman.predicted_covariances[0]), np.asarray(kalman.filtered_covariances[0])
    z_mean = (np.asarray(res.filtered_means[:, 0]) - np.asarray(kalman.filtered_means[0])) / np.sqrt(np.diag(Pp) / N)
    se = np.sqrt((np.outer(np.diag(Pa), np.diag(Pa)) + Pa ** 2) / N)
    z_cov = (np.asarray(res.filtered_covariances[:, 0]) - Pa) / se
    assert np.sqrt(np.mean(z_mean ** 2)) <= 3 and np.abs(z_mean).max() <= 5
    assert np.sqrt(np.mean(z_cov ** 2)) <= 3 and np.abs(z_cov).max() <= 6
    # the forecast (before any analysis) is a plain Monte Carlo sample of the prior predictive
    z_pred = (np.asarray(res.predicted_means[:, 0]) - np.asarray(kalman.predicted_means[0])) / np.sqrt(np.diag(Pp) / N)
    assert np.abs(z_pred).max() <= 5


def rms_error(res, kalman):
    return float(np.sqrt(np.mean((np.asarray(res.filtered_means) - np.asarray(kalman.filtered_means)) ** 2)))


def test_stochastic_filtered_means_converge_to_kalman(stochastic_runs, kalman):
    """RMS error over T, d and seeds falls like 1/sqrt(N): 16x the members, error ratio ~ 0.25 (< 0.5)."""
    small, large = rms_error(stochastic_runs[250], kalman), rms_error(stochastic_runs[4000], kalman)
    assert large < 0.5 * small, (small, large)
    assert large < 0.05  # ~ 0.019 measured: about sqrt(P / N) with P ~ 1


@pytest.mark.slow
@pytest.mark.parametrize("variant, sizes", [("ensrf", (250, 4000)), ("serial", (250, 4000)),
                                            ("etkf", (25, 400)), ("letkf", (25, 400))])
def test_every_variant_converges_to_kalman(data, kalman, variant, sizes):
    """etkf/letkf factor N x N matrices, so they use 25 vs 400 members (same 16x ratio)."""
    ssm, y, _ = data
    keys = jax.random.split(jax.random.PRNGKey(7), SEEDS)
    small, large = vmapped_filters(ssm, [method(variant, n) for n in sizes], params(), y, keys)
    e_small, e_large = rms_error(small, kalman), rms_error(large, kalman)
    assert e_large < 0.5 * e_small, (e_small, e_large)


# -- 3. the ensemble Kalman smoother ---------------------------------------------------------------

def test_enks_matches_rts_smoother_within_sampling_error(data, kalman):
    """ETKF-EnKS with N = 500 (one key) against the RTS smoother. Covariances and cross-covariances:
    z-scores against a sample covariance's standard error (measured |z| <= 3.1 over 8 keys): RMS <= 2,
    each <= 6. Means: errors in units of sqrt(diag P_pred / N) (sqrt(1/N) for z_0, prior I): the
    sampled gains' errors accumulate over the steps (measured RMS z 1.3 to 2.9, max 8 over 8 keys;
    the error times sqrt(N) is constant from N = 100 to 1600, so no bias): RMS <= 4.5, each <= 12."""
    ssm, y, _ = data
    N = 500
    [sm] = run_filters(ssm, [method("etkf", N)], params(), y, jax.random.PRNGKey(101), smooth=True)
    Ps, Pp = np.asarray(kalman.smoothed_covariances), np.asarray(kalman.predicted_covariances)
    z_mean = (np.asarray(sm.smoothed_means) - np.asarray(kalman.smoothed_means)) / np.sqrt(np.diagonal(Pp, 0, 1, 2) / N)
    z_0 = (np.asarray(sm.initial_smoothed_mean) - np.asarray(kalman.initial_smoothed_mean)) * np.sqrt(N)
    z_all = np.concatenate([z_mean.ravel(), z_0])
    assert np.sqrt(np.mean(z_all ** 2)) <= 4.5 and np.abs(z_all).max() <= 12

    def z_cov(est, exact, var_a, var_b):
        return (np.asarray(est) - exact) / np.sqrt((var_a[..., :, None] * var_b[..., None, :] + exact ** 2) / N)

    v_s = np.diagonal(Ps, 0, 1, 2)
    P0, C0 = np.asarray(kalman.initial_smoothed_covariance), np.asarray(kalman.initial_cross_covariance)
    C = np.asarray(kalman.smoothed_cross_covariances)
    zs = [z_cov(sm.smoothed_covariances, Ps, v_s, v_s), z_cov(sm.smoothed_cross_covariances, C, v_s[:-1], v_s[1:]),
          z_cov(sm.initial_smoothed_covariance, P0, np.diag(P0), np.diag(P0)),
          z_cov(sm.initial_cross_covariance, C0, np.diag(P0), v_s[0])]
    z = np.concatenate([a.ravel() for a in zs])
    assert np.sqrt(np.mean(z ** 2)) <= 2 and np.abs(z).max() <= 6


@pytest.fixture(scope="module")
def lag_runs(data):
    """ETKF-EnKS with N = 8, one key: lag None, 0 and 2."""
    ssm, y, _ = data
    lags = (None, 0, 2)
    results = run_filters(ssm, [method("etkf", 8, lag=lag) for lag in lags], params(), y, jax.random.PRNGKey(3),
                          smooth=True)
    return dict(zip(lags, results))


def test_enks_lag_identities(lag_runs, data):
    full, zero, two = lag_runs[None], lag_runs[0], lag_runs[2]
    tol = dict(rtol=0, atol=1e-10)
    # lag 0: each state conditioned on the data up to itself, i.e. the filter
    np.testing.assert_allclose(zero.smoothed_means, zero.filtered_means, **tol)
    np.testing.assert_allclose(zero.smoothed_covariances, zero.filtered_covariances, **tol)
    np.testing.assert_allclose(zero.initial_smoothed_mean, zero.initial_ensemble.mean(0), **tol)
    # the full smoother's last state is the filtered one; the filter underneath is the same for any lag
    np.testing.assert_allclose(full.smoothed_means[-1], full.filtered_means[-1], **tol)
    np.testing.assert_allclose(full.smoothed_covariances[-1], full.filtered_covariances[-1], **tol)
    np.testing.assert_allclose(two.filtered_means, full.filtered_means, **tol)
    # lag 2: the last 3 states see all the data, like the full smoother; earlier ones do not
    np.testing.assert_allclose(two.smoothed_means[-3:], full.smoothed_means[-3:], **tol)
    np.testing.assert_allclose(two.smoothed_covariances[-3:], full.smoothed_covariances[-3:], **tol)
    np.testing.assert_allclose(two.smoothed_ensembles[-3:], full.smoothed_ensembles[-3:], **tol)
    assert np.abs(np.asarray(two.smoothed_means[:-3] - full.smoothed_means[:-3])).max() > 1e-3
    # lag 2 at state s uses y_{s+1}, y_{s+2}: it differs from the filter where those are observed
    assert np.abs(np.asarray(two.smoothed_means[0] - zero.filtered_means[0])).max() > 1e-3
    # the smoothed members' sample moments are the reported moments
    X = np.asarray(full.smoothed_ensembles)
    np.testing.assert_allclose(full.smoothed_means, X.mean(1), **tol)
    A = X - X.mean(1, keepdims=True)
    np.testing.assert_allclose(full.smoothed_cross_covariances, np.einsum("tni,tnj->tij", A[:-1], A[1:]) / 7, **tol)



def test_posterior_predictive_mixes_the_emission_over_smoothed_members(lag_runs, data):
    """For a linear emission y = H z + N(0, R): the predictive mean is H times the smoothed members'
    mean and its variance diag(H S H^T) + r^2 with S their population (1/N) covariance: exact."""
    ssm, y, _ = data
    full = lag_runs[None]
    method_ = method("etkf", 8)
    problem = ssm.state_space(params(), y=y)
    mean, sd = method_.posterior_predictive(problem, full)
    X = np.asarray(full.smoothed_ensembles)  # (T, N, d)
    S = np.einsum("tni,tnj->tij", X - X.mean(1, keepdims=True), X - X.mean(1, keepdims=True)) / X.shape[1]
    np.testing.assert_allclose(mean, X.mean(1) @ H.T, rtol=0, atol=1e-10)
    np.testing.assert_allclose(sd ** 2, np.einsum("ki,tij,kj->tk", H, S, H) + R_SD ** 2, rtol=1e-10)

# -- 4. inflation and rotation ---------------------------------------------------------------------

def adaptive_factors(kind, res, y):
    """The adaptive factor recursion recomputed from the result's predicted moments: lambda^2 =
    (d'd - m) / tr(H P H^T R^-1) over the observed components (whitened by R), relaxed, then
    clipped to [1, max^2]; unchanged at a step without observations."""
    factor, out = kind.initial, []
    for t in range(y.shape[0]):
        o = ~np.isnan(y[t])
        if o.any():
            Ho, r2 = H[o], R_SD[o] ** 2
            d = y[t, o] - Ho @ np.asarray(res.predicted_means[t])
            spread = np.trace(Ho @ np.asarray(res.predicted_covariances[t]) @ Ho.T / r2[:, None])
            lam2 = (d @ (d / r2) - o.sum()) / spread
            factor = np.sqrt(np.clip((1 - kind.relaxation) * factor ** 2 + kind.relaxation * lam2, 1.0,
                                     kind.max_factor ** 2))
        out.append(factor)
    return np.array(out)


ADAPTIVE = Adaptive(relaxation=0.3)
# N = 6 > d: with the closed forms below these also check the ensrf, etkf and serial analyses exactly
INFLATED = {"multiplicative": method("ensrf", 6, inflation=Multiplicative(1.1)),
            "rtpp": method("etkf", 6, inflation=RTPP(1.0)),
            "rtps": method("serial", 6, inflation=RTPS(1.0)),
            "adaptive": method("etkf", 6, inflation=ADAPTIVE),
            "additive": method("ensrf", 2000, inflation=Additive(0.3))}


@pytest.fixture(scope="module")
def inflation_runs(data):
    """{name: result} for INFLATED on the data; "delta": etkf without/with rotation on the model
    without process noise (members kept); "adaptive_q": adaptive etkf (N = 20) on T = 40 data from
    q = 1, filtered with q = 0.3 (forecast variance too small) and q = 1 (well specified)."""
    ssm, y, _ = data
    delta_ssm = SSM(deterministic_linear_model)
    y40 = jnp.asarray(simulate_linear(11, 40))
    plain, rotated = method("etkf", 6, keep_ensembles=True), method("etkf", 6, keep_ensembles=True, rotate=True)
    adaptive = method("etkf", 20, inflation=Adaptive(relaxation=0.2))

    def run(P, y, y40, key):
        problem = ssm.state_space(P, y=y)
        out = {name: m.filter(problem, key) for name, m in INFLATED.items()}
        delta = delta_ssm.state_space({}, y=y)
        out["delta"] = (plain.filter(delta, key), rotated.filter(delta, key))
        qs = jnp.array([0.3, 1.0])
        out["adaptive_q"] = jax.vmap(lambda q: adaptive.filter(ssm.state_space(params(q=q), y=y40), key))(qs)
        return out

    return fast_jit(run)(params(), y, y40, jax.random.PRNGKey(5))


def test_multiplicative_rtpp_rtps_adaptive_closed_forms(inflation_runs, data):
    """Exact, every step (tolerance 1e-10), from each run's own predicted moments (P_f) and the Kalman
    analysis P_a of them: Multiplicative(1.1) -> 1.21 P_a; RTPP(1) -> P_f; RTPS(1) -> D P_a D with
    D = diag(sqrt(diag P_f / diag P_a)) (per-component variances back to the forecast's); Adaptive ->
    lambda_t^2 P_a with lambda_t from the recursion. The mean is the Kalman analysis mean in all cases;
    a step without observations is not inflated."""
    _, _, yn = data
    tol = dict(rtol=0, atol=1e-10)
    for name in ("multiplicative", "rtpp", "rtps", "adaptive"):
        res = inflation_runs[name]
        means, covs = analysis_oracle(res, yn)
        Pf = np.asarray(res.predicted_covariances)
        np.testing.assert_allclose(res.filtered_means, means, **tol, err_msg=name)
        if name == "multiplicative":
            expected = 1.21 * covs.copy()
        elif name == "rtpp":
            expected = Pf.copy()
        elif name == "rtps":
            scale = np.sqrt(np.diagonal(Pf, 0, 1, 2) / np.diagonal(covs, 0, 1, 2))
            expected = scale[:, :, None] * covs * scale[:, None, :]
            np.testing.assert_allclose(res.filtered_variances, np.diagonal(Pf, 0, 1, 2), **tol)
        elif name == "adaptive":
            factors = adaptive_factors(ADAPTIVE, res, yn)
            np.testing.assert_allclose(res.inflation_factors, factors, rtol=1e-10)
            assert factors.max() > 1.0  # the recursion moved the factor
            expected = factors[:, None, None] ** 2 * covs
        expected[5] = Pf[5]  # nothing observed: no analysis, no inflation
        np.testing.assert_allclose(res.filtered_covariances, expected, **tol, err_msg=name)


def test_additive_inflation_adds_its_variance(inflation_runs, data):
    """Additive(v) adds re-centred N(0, v) noise: the mean stays the Kalman analysis mean exactly; each
    variance gains v up to the noise's sampling error, sd v sqrt(2/(N-1)) plus 2 sqrt(var_a v/(N-1))
    for the cross term; 5 sd."""
    _, _, yn = data
    res, v, N = inflation_runs["additive"], 0.3, 2000
    means, covs = analysis_oracle(res, yn)
    np.testing.assert_allclose(res.filtered_means, means, rtol=0, atol=1e-10)
    observed = (~np.isnan(yn)).any(1)
    var_a = np.diagonal(covs, 0, 1, 2)[observed]
    gain = np.asarray(res.filtered_variances)[observed] - var_a
    sd = v * np.sqrt(2 / (N - 1)) + 2 * np.sqrt(var_a * v / (N - 1))
    assert np.all(np.abs(gain - v) <= 5 * sd), (gain, sd)
    np.testing.assert_allclose(res.filtered_variances[5], np.diagonal(res.predicted_covariances[5]), rtol=1e-10)


def test_adaptive_factor_detects_underdispersed_forecasts(inflation_runs):
    """Data from q = 1: filtering with q = 0.3 underestimates the forecast variance, so the factor
    climbs above 1; with q = 1 it stays near 1 (the running average is clipped at 1 from below)."""
    factors = np.asarray(inflation_runs["adaptive_q"].inflation_factors)  # (2, 40)
    under, right = factors[0, 20:].mean(), factors[1, 20:].mean()
    assert under > 1.3 and 1.0 <= right < 1.35 and under - right > 0.1, (under, right)


def test_rotation_changes_members_not_moments(inflation_runs):
    """Without process noise the forecast is linear in the members, so a rotated ensemble keeps the
    same moments at every later step: the same key gives equal means and covariances (1e-10) but
    different members."""
    plain, rotated = inflation_runs["delta"]
    tol = dict(rtol=0, atol=1e-10)
    np.testing.assert_allclose(rotated.filtered_means, plain.filtered_means, **tol)
    np.testing.assert_allclose(rotated.filtered_covariances, plain.filtered_covariances, **tol)
    np.testing.assert_allclose(rotated.log_predictive, plain.log_predictive, **tol)
    assert np.abs(np.asarray(rotated.filtered_ensembles[0] - plain.filtered_ensembles[0])).max() > 1e-2


# -- 5. gradients of the Gaussian-approximation log-likelihood --------------------------------------

L96 = dict(dim=6, every=2, process_noise=0.0, obs_noise=1.0, dt=0.05)  # m = 3 < N - 1 = 7


@pytest.fixture(scope="module")
def lorenz_data(x64_module):
    return SSM(lorenz96(**L96)), jnp.asarray(simulate_lorenz96(2, 15))


LETKF_RING = Localization.on_ring(2.0, 6, observed=[0, 2, 4])  # Gaspari-Cohn: real tapers
GRAD_METHODS = {"etkf": EnKF(8, "etkf"), "letkf": EnKF(8, "letkf", localization=LETKF_RING),
                "ensrf": EnKF(8, "ensrf"), "serial": EnKF(8, "serial")}


def forcing_gradients(ssm, y, variants):
    """{variant: (jax.grad at F = 7.5, central difference with h = 1e-5)} of ssm.log_likelihood, one key."""
    key, F, h = jax.random.PRNGKey(4), 7.5, 1e-5

    def ll(m, F):
        return ssm.log_likelihood({"forcing": F}, y=y, method=m, key=key)

    def run(F):
        grads = {v: jax.grad(functools.partial(ll, GRAD_METHODS[v]))(F) for v in variants}
        ends = {v: jax.vmap(functools.partial(ll, GRAD_METHODS[v]))(jnp.stack([F + h, F - h])) for v in variants}
        return grads, {v: (e[0] - e[1]) / (2 * h) for v, e in ends.items()}

    grads, fd = fast_jit(run)(jnp.asarray(F))
    return {v: (float(grads[v]), float(fd[v])) for v in variants}


@pytest.fixture(scope="module")
def gradients(lorenz_data):
    return forcing_gradients(*lorenz_data, ("etkf",))


def check_gradient(grad, fd):
    assert np.isfinite(grad) and abs(grad) > 1.0
    np.testing.assert_allclose(grad, fd, rtol=1e-5)


def test_log_likelihood_gradient_matches_finite_difference(gradients):
    """The Gaussian-approximation log-likelihood with a fixed key is smooth in the forcing, and
    jax.grad (through the custom square-root rule, M with the eigenvalue N - 1 repeated N - m = 5
    times) equals the central difference in float64."""
    check_gradient(*gradients["etkf"])


@pytest.mark.slow
def test_log_likelihood_gradient_matches_finite_difference_other_variants(lorenz_data):
    for variant, pair in forcing_gradients(*lorenz_data, ("letkf", "ensrf", "serial")).items():
        check_gradient(*pair)


# -- 6. determinism, 7. errors, 8. divergence ------------------------------------------------------

def test_same_key_same_result_other_key_other_result(data):
    ssm, y, _ = data
    m = method("stochastic", 4)
    a = ssm.filter(params(), y=y, method=m, key=jax.random.PRNGKey(3))
    b = ssm.filter(params(), y=y, method=m, key=jax.random.PRNGKey(3))
    c = ssm.filter(params(), y=y, method=m, key=jax.random.PRNGKey(4))
    for field in ("filtered_means", "filtered_covariances", "log_predictive", "final_ensemble"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert not np.allclose(getattr(a, field), getattr(c, field)), field


def two_state_model(emission):
    def model(y=None, T=None):
        z0 = numpyro.sample("z0", dist.Normal(jnp.zeros(2), 1.0).to_event(1))

        def step(z, y_t):
            z = numpyro.sample("z", dist.Normal(0.9 * z, 0.5).to_event(1))
            numpyro.sample("y", emission(z), obs=y_t)
            return z, None

        scan(step, z0, y, length=T)

    return model


FULL_R = two_state_model(lambda z: dist.MultivariateNormal(z, jnp.array([[1.0, 0.5], [0.5, 1.0]])))
POISSON = two_state_model(lambda z: dist.Poisson(jnp.exp(z)).to_event(1))


def test_bad_settings_raise_clear_errors(data):
    ssm, y, _ = data
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="must be >= 1"):
        EnKF(6, inflation=0.9)
    with pytest.raises(ValueError, match=r"Multiplicative\(factor=...\) must be a number >= 1"):
        EnKF(6, inflation=Multiplicative(0.9))
    for radius in (0.0, -1.0):
        with pytest.raises(ValueError, match="radius=...\\) must be a positive number"):
            Localization(radius, np.arange(5.0), np.arange(4.0))
    for n in (1, 2.5):
        with pytest.raises(ValueError, match="must be an int >= 2"):
            EnKF(n)
    with pytest.raises(ValueError, match="variant=...\\) must be one of"):
        EnKF(6, variant="enkf")
    with pytest.raises(ValueError, match="needs localization="):
        EnKF(6, variant="letkf")
    with pytest.raises(ValueError, match="cannot localise"):
        EnKF(6, variant="etkf", localization=GLOBAL_LOC)
    with pytest.raises(ValueError, match="pass key=jax.random.PRNGKey"):
        ssm.filter(params(), y=y, method=EnKF(6))
    mismatch = Localization(1.0, np.arange(3.0), np.arange(4.0))
    with pytest.raises(ValueError, match="localisation has 3 state and 4 observation coordinates, but the model "
                                         "has 5 state and 4 observed"):
        ssm.filter(params(), y=y, method=EnKF(6, "letkf", localization=mismatch), key=key)
    # the EnKS reuses global ensemble transforms: no localisation, no per-component or additive inflation
    for m in (EnKF(6, "serial", localization=GLOBAL_LOC), EnKF(6, inflation=RTPS(0.5)),
              EnKF(6, inflation=(Multiplicative(1.1), Additive(0.1)))):
        with pytest.raises(ValueError, match="EnKF smoother \\(EnKS\\)"):
            ssm.smooth(params(), y=y, method=m, key=key)


def test_emissions_the_ensemble_filter_cannot_use(x64_module):
    y2 = jnp.ones((4, 2))
    full = SSM(FULL_R)
    for m in (EnKF(6, "serial"), EnKF(6, "letkf", localization=Localization(1.0, np.arange(2.0), np.arange(2.0)))):
        with pytest.raises(ModelStructureError, match="needs a diagonal observation-error covariance R"):
            full.filter({}, y=y2, method=m, key=jax.random.PRNGKey(0))
    with pytest.raises(ModelStructureError, match="Gaussian emission.*Poisson.*particle filter"):
        SSM(POISSON).filter({}, y=y2, method=EnKF(6), key=jax.random.PRNGKey(0))


@pytest.mark.slow
def test_etkf_with_full_observation_covariance_is_exact(x64_module):
    """etkf whitens a full R by its Cholesky factor: the analysis is still the exact Kalman one."""
    y2 = jnp.ones((4, 2))
    [res] = run_filters(SSM(FULL_R), [EnKF(6)], {}, y2, jax.random.PRNGKey(0))
    Rf = np.array([[1.0, 0.5], [0.5, 1.0]])
    m, P = np.asarray(res.predicted_means[0]), np.asarray(res.predicted_covariances[0])
    K = P @ np.linalg.inv(P + Rf)
    np.testing.assert_allclose(res.filtered_means[0], m + K @ (np.ones(2) - m), rtol=0, atol=1e-10)
    np.testing.assert_allclose(res.filtered_covariances[0], P - K @ P, rtol=0, atol=1e-10)


def test_diverged_ensemble_names_the_step(data):
    """An infinite observation at step 7 is invalid data, refused by the checks every backend
    shares before the filter is blamed; a transition that multiplies the state by 1e100 (params
    a = 1e100) breaks the analysis at once (the ensemble-space matrix (N-1) I + S S^T is no longer
    numerically positive definite), which Backend.diagnose explains. Both name the step."""
    ssm, y, _ = data
    m, key = method("stochastic", 4), jax.random.PRNGKey(3)  # compiled by the determinism test
    with pytest.raises(ValueError, match=r"observations of site 'y' are \+-inf at steps \[7\]"):
        ssm.filter(params(), y=y.at[6, 1].set(jnp.inf), method=m, key=key)
    with pytest.raises(ValueError, match=r"the ensemble diverged: its mean is not finite from step \d+ on"):
        ssm.filter(params(a=1e100), y=y, method=m, key=key)
