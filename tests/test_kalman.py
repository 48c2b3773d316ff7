"""Kalman filter and smoother against independent oracles (float64).

Oracles: a brute-force joint Gaussian (tests/oracles.py) and statsmodels'
state-space Kalman filter/smoother. Models are ordinary NumPyro scan programs
with biases, inputs, time-varying matrices through ``xs`` and missing data.
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan

from oracles import brute_force
from ssmppl import SSM, Kalman

pytestmark = pytest.mark.usefixtures("x64")

FIELDS = (
    "marginal_loglik", "log_predictive", "filtered_means", "filtered_covariances", "predicted_means",
    "predicted_covariances", "smoothed_means", "smoothed_covariances", "smoothed_cross_covariances",
    "initial_smoothed_mean", "initial_smoothed_covariance", "initial_cross_covariance",
)


def assert_close(a, b, rtol=1e-8, name=""):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (name, a.shape, b.shape)
    scale = max(np.max(np.abs(b)), 1e-300)
    err = np.max(np.abs(a - b)) / scale
    assert err < rtol, f"{name}: max error {err:.2e} relative to scale {scale:.2e}"


def random_cov(rng, n, lo=0.2):
    A = rng.normal(size=(n, n)) / np.sqrt(n)
    return A @ A.T + lo * np.eye(n)


# -- model 1: every matrix time-varying, passed through xs ---------------------
def tv_model(m0, P0, Fs, cs, LQs, Hs, ds, LRs, y=None):
    z0 = numpyro.sample("z0", dist.MultivariateNormal(m0, P0))

    def step(z_prev, xs):
        F, c, LQ, H, d, LR, y_t = xs
        z = numpyro.sample("z", dist.MultivariateNormal(F @ z_prev + c, scale_tril=LQ))
        numpyro.sample("y", dist.MultivariateNormal(H @ z + d, scale_tril=LR), obs=y_t)
        return z, None

    scan(step, z0, (Fs, cs, LQs, Hs, ds, LRs, y))


def tv_case(rng, T, dz, dy):
    Q = [random_cov(rng, dz) for _ in range(T)]
    R = [random_cov(rng, dy) for _ in range(T)]
    mats = dict(
        m0=rng.normal(size=dz), P0=random_cov(rng, dz),
        F=[0.9 * np.linalg.qr(rng.normal(size=(dz, dz)))[0] for _ in range(T)],
        c=[rng.normal(size=dz) for _ in range(T)], Q=Q,
        H=[rng.normal(size=(dy, dz)) for _ in range(T)],
        d=[rng.normal(size=dy) for _ in range(T)], R=R,
    )
    args = (mats["m0"], mats["P0"], np.array(mats["F"]), np.array(mats["c"]),
            np.linalg.cholesky(np.array(Q)), np.array(mats["H"]), np.array(mats["d"]), np.linalg.cholesky(np.array(R)))
    return tv_model, args, {}, mats


# -- model 2: time-invariant, inputs, diagonal Normal sites, numpyro.param globals --
def input_model(u, y=None):
    F = numpyro.param("F", jnp.array([[0.8, 0.3], [-0.2, 0.9]]))
    B = numpyro.param("B", jnp.array([[0.5, -1.0], [0.2, 0.3]]))
    b = numpyro.param("b", jnp.array([0.1, -0.3]))
    q = numpyro.param("q", jnp.array([0.3, 0.5]))
    H = numpyro.param("H", jnp.array([[1.0, 0.0], [0.5, -1.0], [0.3, 0.2]]))
    D = numpyro.param("D", jnp.array([[0.0, 1.0], [0.4, 0.0], [-0.5, 0.5]]))
    d = numpyro.param("d", jnp.array([1.0, 0.0, -1.0]))
    r = numpyro.param("r", jnp.array([0.4, 0.7, 0.2]))
    z0 = numpyro.sample("z0", dist.Normal(jnp.array([0.5, -0.5]), jnp.array([1.0, 2.0])).to_event(1))

    def step(z_prev, xs):
        u_t, y_t = xs
        z = numpyro.sample("z", dist.Normal(F @ z_prev + B @ u_t + b, q).to_event(1))
        numpyro.sample("y", dist.Normal(H @ z + D @ u_t + d, r).to_event(1), obs=y_t)
        return z, None

    scan(step, z0, (u, y))


def input_case(rng, T):
    u = rng.normal(size=(T, 2))
    F = np.array([[0.8, 0.3], [-0.2, 0.9]]); B = np.array([[0.5, -1.0], [0.2, 0.3]])
    H = np.array([[1.0, 0.0], [0.5, -1.0], [0.3, 0.2]]); D = np.array([[0.0, 1.0], [0.4, 0.0], [-0.5, 0.5]])
    mats = dict(
        m0=np.array([0.5, -0.5]), P0=np.diag([1.0, 4.0]), F=[F] * T,
        c=[B @ u[t] + np.array([0.1, -0.3]) for t in range(T)], Q=[np.diag([0.09, 0.25])] * T,
        H=[H] * T, d=[D @ u[t] + np.array([1.0, 0.0, -1.0]) for t in range(T)], R=[np.diag([0.16, 0.49, 0.04])] * T,
    )
    return input_model, (u,), {}, mats


# -- model 3: scalar state, low-rank emission covariance ------------------------
def scalar_model(y=None, T=None):
    z0 = numpyro.sample("x0", dist.Normal(1.0, 2.0))

    def step(x_prev, y_t):
        x = numpyro.sample("x", dist.Normal(0.7 * x_prev + 0.2, 0.5))
        W = jnp.array([[1.0], [0.5], [-0.3]])
        numpyro.sample("obs", dist.LowRankMultivariateNormal(jnp.array([1.0, -2.0, 0.5]) * x, W, jnp.array([0.3, 0.2, 0.4])), obs=y_t)
        return x, None

    scan(step, z0, y, length=T)


def scalar_case(rng, T):
    W = np.array([[1.0], [0.5], [-0.3]])
    mats = dict(m0=np.array([1.0]), P0=np.array([[4.0]]), F=[np.array([[0.7]])] * T, c=[np.array([0.2])] * T,
                Q=[np.array([[0.25]])] * T, H=[np.array([[1.0], [-2.0], [0.5]])] * T, d=[np.zeros(3)] * T,
                R=[W @ W.T + np.diag([0.3, 0.2, 0.4])] * T)
    return scalar_model, (), {}, mats


def simulate(mats, rng):
    T = len(mats["F"])
    z = rng.multivariate_normal(mats["m0"], mats["P0"])
    ys = []
    for t in range(T):
        z = mats["F"][t] @ z + mats["c"][t] + rng.multivariate_normal(np.zeros(len(z)), mats["Q"][t])
        ys.append(mats["H"][t] @ z + mats["d"][t] + rng.multivariate_normal(np.zeros(len(mats["d"][t])), mats["R"][t]))
    return np.array(ys)


def make_case(name, T, missing=True, seed=0):
    rng = np.random.default_rng(seed)
    if name == "time_varying":
        model, args, kwargs, mats = tv_case(rng, T, 3, 2)
    elif name == "inputs":
        model, args, kwargs, mats = input_case(rng, T)
    else:
        model, args, kwargs, mats = scalar_case(rng, T)
    ys = simulate(mats, rng)
    if missing:
        ys[1] = np.nan  # a whole step
        ys[T // 2, 0] = np.nan  # single components
        ys[T - 1, -1] = np.nan
    return model, args, {**kwargs, "y": ys}, mats, ys


CASES = ["time_varying", "inputs", "scalar"]


METHODS = {"sequential": Kalman(), "square-root": Kalman(square_root=True), "parallel": Kalman(parallel=True)}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", CASES)
def test_against_brute_force_joint_gaussian(case, method):
    model, args, kwargs, mats, ys = make_case(case, T=6)
    ssm = SSM(model)
    result = ssm.smooth(None, *args, method=METHODS[method], **kwargs)
    ref = brute_force(mats["m0"], mats["P0"], mats["F"], mats["c"], mats["Q"], mats["H"], mats["d"], mats["R"], ys)
    for field in FIELDS:
        assert_close(getattr(result, field), ref[field], name=field)
    assert_close(ssm.log_likelihood(None, *args, **kwargs), ref["marginal_loglik"], name="log_likelihood")


def statsmodels_reference(mats, ys):
    sm = pytest.importorskip("statsmodels.tsa.statespace.kalman_smoother")
    T, dy = ys.shape
    dz = len(mats["m0"])
    ks = sm.KalmanSmoother(k_endog=dy, k_states=dz, k_posdef=dz)
    ks.bind(np.ascontiguousarray(ys))  # (T, dy); statsmodels reads NaN as missing
    # statsmodels: a_{t+1} = T_t a_t + c_t + eta_t, y_t = Z_t a_t + d_t + eps_t, a_1 ~ N(a1, P1).
    # Ours: z_t = F_t z_{t-1} + c_t; so its step t -> t+1 is our F_{t+1}, and a_1 = z_1.
    shift = lambda xs: np.stack(list(xs[1:]) + [xs[-1]], axis=-1)
    ks["design"] = np.stack(mats["H"], -1)
    ks["obs_intercept"] = np.stack(mats["d"], -1)
    ks["obs_cov"] = np.stack(mats["R"], -1)
    ks["transition"] = shift(mats["F"])
    ks["state_intercept"] = shift(mats["c"])
    ks["selection"] = np.eye(dz)
    ks["state_cov"] = shift(mats["Q"])
    F1 = mats["F"][0]
    ks.initialize_known(F1 @ mats["m0"] + mats["c"][0], F1 @ mats["P0"] @ F1.T + mats["Q"][0])
    return ks.smooth()


@pytest.mark.parametrize("case", CASES)
def test_against_statsmodels(case):
    model, args, kwargs, mats, ys = make_case(case, T=40, seed=1)
    res = statsmodels_reference(mats, ys)
    ours = SSM(model).smooth(None, *args, **kwargs)
    assert_close(ours.marginal_loglik, res.llf_obs.sum(), name="loglik")
    assert_close(ours.log_predictive, res.llf_obs, name="log_predictive")
    assert_close(ours.filtered_means, res.filtered_state.T, name="filtered_means")
    assert_close(ours.filtered_covariances, np.moveaxis(res.filtered_state_cov, -1, 0), name="filtered_covariances")
    assert_close(ours.predicted_means, res.predicted_state[:, :-1].T, name="predicted_means")
    assert_close(ours.predicted_covariances, np.moveaxis(res.predicted_state_cov[..., :-1], -1, 0), name="predicted_covs")
    assert_close(ours.smoothed_means, res.smoothed_state.T, name="smoothed_means")
    assert_close(ours.smoothed_covariances, np.moveaxis(res.smoothed_state_cov, -1, 0), name="smoothed_covs")
    cross = np.moveaxis(res.smoothed_state_autocov[..., :-1], -1, 0)  # Cov(a_{t+1}, a_t)
    assert_close(ours.smoothed_cross_covariances, np.swapaxes(cross, -1, -2), name="cross_covs")


# Long cases (~30 s each) are slow; the default run checks the same code paths at small T above.
@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_parallel_equals_sequential_long(case):
    model, args, kwargs, mats, ys = make_case(case, T=200, seed=2)
    ssm = SSM(model)
    seq = ssm.smooth(None, *args, **kwargs)
    for method in (Kalman(parallel=True), Kalman(square_root=True)):
        other = ssm.smooth(None, *args, method=method, **kwargs)
        for field in FIELDS:
            assert_close(getattr(other, field), getattr(seq, field), name=f"{method}: {field}")


def test_missing_data_equals_skipping_entries():
    """A NaN step changes nothing but the prediction: it equals filtering without that step."""
    model, args, kwargs, mats, ys = make_case("inputs", T=8, missing=False, seed=3)
    ssm = SSM(model)
    with_nan = ys.copy()
    with_nan[4] = np.nan
    r = ssm.filter(None, *args, y=with_nan)
    assert r.log_predictive[4] == 0.0
    np.testing.assert_allclose(r.filtered_means[4], r.predicted_means[4], rtol=1e-12)
    np.testing.assert_allclose(r.filtered_covariances[4], r.predicted_covariances[4], rtol=1e-12)
    # all observations missing: the filter is the prior and the likelihood is 1
    r_none = ssm.filter(None, *args, y=np.full_like(ys, np.nan))
    assert float(r_none.marginal_loglik) == 0.0
