"""Float32 stability of the sequential Kalman filter (the default square-root form).

Parameters and data are made exactly representable in float32, so the float64
run is the exact answer to the same float32 problem.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssmppl


def seed003_params(dz=2, dy=10, p0=1.0, q=0.01, r=0.1, h_scale=1.0):
    rng = np.random.default_rng(0)
    th = np.pi / 10
    F = 0.99 * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    p = dict(initial_mean=np.zeros(dz), initial_cov=p0 * np.eye(dz), F=F, b=np.zeros(dz), Q=q * np.eye(dz),
             H=h_scale * rng.normal(size=(dy, dz)), d=np.zeros(dy), R=r * np.eye(dy))
    return {k: np.asarray(v, np.float32) for k, v in p.items()}


def run_both(params, T, smooth=False):
    ssm = ssmppl.SSM(ssmppl.models.linear_gaussian_ssm(2, 10))
    assert not jax.config.jax_enable_x64
    _, y = ssm.sample(jax.random.PRNGKey(0), params, T=T)
    y = np.asarray(y, np.float32)
    op = ssm.smooth if smooth else ssm.filter
    r32 = op(params, y)
    jax.config.update("jax_enable_x64", True)
    try:
        r64 = op({k: v.astype(np.float64) for k, v in params.items()}, y.astype(np.float64))
    finally:
        jax.config.update("jax_enable_x64", False)
    return r32, r64


def assert_no_nan(result):
    for path, value in jax.tree_util.tree_leaves_with_path(result):
        assert not np.isnan(np.asarray(value)).any(), f"NaN in {jax.tree_util.keystr(path)}"


def test_loglik_at_T_100000_within_1e6_of_float64():
    r32, r64 = run_both(seed003_params(), T=100_000)
    assert r32.marginal_loglik.dtype == jnp.float32
    assert_no_nan(r32)
    rel = abs(float(r32.marginal_loglik) - float(r64.marginal_loglik)) / abs(float(r64.marginal_loglik))
    print(f"float32 vs float64 relative error of log-likelihood at T=100000: {rel:.2e}")
    assert rel < 1e-6


@pytest.mark.parametrize("p0,q,r,h_scale", [(1e6, 1e-2, 1e-1, 1.0), (1e2, 1e-4, 1e-3, 30.0), (1e6, 1e-8, 1e-4, 1.0)],
                         ids=["diffuse-prior", "tiny-noise", "diffuse-and-tiny"])
def test_ill_conditioned_models_stay_finite(p0, q, r, h_scale):
    """Here the covariance form's innovation Cholesky fails in float32; the square-root form does not."""
    r32, r64 = run_both(seed003_params(p0=p0, q=q, r=r, h_scale=h_scale), T=2000, smooth=True)
    assert_no_nan(r32)
    rel = abs(float(r32.marginal_loglik) - float(r64.marginal_loglik)) / abs(float(r64.marginal_loglik))
    assert rel < 1e-4, rel
    scale = np.abs(np.asarray(r64.smoothed_means)).max()
    assert np.abs(np.asarray(r32.smoothed_means) - np.asarray(r64.smoothed_means)).max() < 1e-2 * scale


@pytest.mark.slow  # ~25 s: 50 SGD epochs in float32
def test_fit_sgd_float32_default_filter_has_finite_gradients():
    """float32 uses the square-root filter; its factor of q I must have a finite gradient
    (eigh's is NaN for repeated eigenvalues), or fit_sgd would stop at once."""
    import warnings

    from ssmppl.models import linear_gaussian_ssm

    ssm = ssmppl.SSM(linear_gaussian_ssm(2, 10))
    _, y = ssm.sample(jax.random.PRNGKey(0), ssm.init_params(jax.random.PRNGKey(1), T=100), T=100)
    assert y.dtype == jnp.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        params, losses = ssm.fit_sgd(None, y, num_epochs=50, progress_bar=False)
    assert losses.shape == (50,)
    assert float(losses[-1]) < 0.5 * float(losses[0])


@pytest.mark.parametrize("method", ["EKF", "UKF", "MomentMatching"])
def test_nonlinear_filters_in_float32(method):
    """Pendulum (EKF, UKF) and Poisson counts (moment matching), 2,000 steps in float32:
    finite, and within 1e-3 of the float64 run on the same float32 data."""
    from ssmppl.inference import EKF, UKF, MomentMatching
    from ssmppl.models import pendulum, poisson_ar1

    backend = {"EKF": EKF(), "UKF": UKF(), "MomentMatching": MomentMatching()}[method]
    model = poisson_ar1(phi=0.9, sigma=0.3, mu=1.0) if method == "MomentMatching" else pendulum()
    ssm = ssmppl.SSM(model)
    assert not jax.config.jax_enable_x64
    _, y = ssm.sample(jax.random.PRNGKey(0), {}, T=2000)
    y = np.asarray(y, np.float32).reshape(-1)  # the models take scalar observations (T,)
    r32 = ssm.smooth({}, y, method=backend)
    assert_no_nan(r32)
    jax.config.update("jax_enable_x64", True)
    try:
        r64 = ssm.smooth({}, y.astype(np.float64), method=backend)
    finally:
        jax.config.update("jax_enable_x64", False)
    ll32, ll64 = float(r32.marginal_loglik), float(r64.marginal_loglik)
    assert abs(ll32 - ll64) <= 1e-3 * abs(ll64), (ll32, ll64)
    for f in ("filtered_means", "smoothed_means"):
        a, b = np.asarray(getattr(r32, f)), np.asarray(getattr(r64, f))
        assert np.max(np.abs(a - b)) <= 1e-3 * (1 + np.max(np.abs(b))), f


@pytest.mark.slow
@pytest.mark.parametrize("method", ["BootstrapPF", "AuxiliaryPF"])
def test_particle_filters_in_float32(method):
    """Stochastic volatility, 2,000 steps, N = 500, in float32: finite weights and estimates whose
    mean over 16 runs matches float64 runs on the same data within Monte Carlo error."""
    from ssmppl.inference import AuxiliaryPF, BootstrapPF
    from ssmppl.models import stochastic_volatility

    backend = {"BootstrapPF": BootstrapPF(500), "AuxiliaryPF": AuxiliaryPF(500)}[method]
    ssm = ssmppl.SSM(stochastic_volatility())
    _, y = ssm.sample(jax.random.PRNGKey(0), {}, T=2000)
    y = np.asarray(y, np.float32).reshape(-1)
    keys = jax.random.split(jax.random.PRNGKey(1), 16)

    def runs(y):
        problem = ssm.state_space({}, y)
        return np.asarray(jax.jit(jax.vmap(lambda k: backend.filter(problem, k).marginal_loglik))(keys), np.float64)

    ll32 = runs(y)
    assert ll32.dtype == np.float64 and np.all(np.isfinite(ll32))
    jax.config.update("jax_enable_x64", True)
    try:
        ll64 = runs(y.astype(np.float64))
    finally:
        jax.config.update("jax_enable_x64", False)
    se = np.sqrt(ll32.var(ddof=1) / 16 + ll64.var(ddof=1) / 16)
    assert abs(ll32.mean() - ll64.mean()) < 4.5 * se + 1e-4 * abs(ll64.mean()), (ll32.mean(), ll64.mean(), se)
