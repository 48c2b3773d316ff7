"""The SSM methods beyond filtering: sampling, forecasting, posterior predictive,
parameters, and jax transformations through them (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oracles import brute_force, joint_gaussian
from ssmppl import SSM
from ssmppl.models import linear_gaussian_ssm
from test_kalman import make_case

pytestmark = pytest.mark.usefixtures("x64")


def lg_params(dz=2, dy=3, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(dz, dz))
    return {
        "initial_mean": rng.normal(size=dz), "initial_cov": np.eye(dz) * 0.5,
        "F": 0.9 * np.linalg.qr(A)[0], "b": rng.normal(size=dz) * 0.1, "Q": np.diag(rng.uniform(0.1, 0.3, dz)),
        "H": rng.normal(size=(dy, dz)), "d": rng.normal(size=dy), "R": np.diag(rng.uniform(0.2, 0.5, dy)),
    }


def as_lists(p, T):
    return (p["initial_mean"], p["initial_cov"], [p["F"]] * T, [p["b"]] * T, [p["Q"]] * T, [p["H"]] * T,
            [p["d"]] * T, [p["R"]] * T)


def test_sample_moments_match_joint_gaussian():
    """Mean and covariance of simulated (z_T, y_T) over 4000 draws against the closed form (5-sigma bounds)."""
    p, T, n = lg_params(), 4, 4000
    ssm = SSM(linear_gaussian_ssm(2, 3))
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    states, ys = jax.vmap(lambda k: ssm.sample(k, p, T=T))(keys)
    assert states.shape == (n, T, 2) and ys.shape == (n, T, 3)
    mean, cov = joint_gaussian(*as_lists(p, T))
    nz = (T + 1) * 2
    idx_y = np.arange(nz + (T - 1) * 3, nz + T * 3)
    sd = np.sqrt(np.diag(cov)[idx_y])
    assert np.all(np.abs(ys[:, -1].mean(0) - mean[idx_y]) < 5 * sd / np.sqrt(n))
    emp_cov = np.cov(np.asarray(ys[:, -1]).T)
    # sd of a sample covariance entry is about sqrt((S_ii S_jj + S_ij^2) / n)
    S = cov[np.ix_(idx_y, idx_y)]
    tol = 5 * np.sqrt((np.outer(np.diag(S), np.diag(S)) + S ** 2) / n)
    assert np.all(np.abs(emp_cov - S) < tol)
    # same key, same draw
    a = ssm.sample(jax.random.PRNGKey(3), p, T=T)
    b = ssm.sample(jax.random.PRNGKey(3), p, T=T)
    np.testing.assert_array_equal(a[1], b[1])


def test_forecast_equals_conditioning_on_padded_nan():
    """Forecast moments = brute-force filtered moments of future steps with no observations."""
    p, T, H = lg_params(), 6, 4
    ssm = SSM(linear_gaussian_ssm(2, 3))
    _, y = ssm.sample(jax.random.PRNGKey(1), p, T=T)
    fc = ssm.forecast(p, H, y)
    padded = np.concatenate([np.asarray(y), np.full((H, 3), np.nan)])
    ref = brute_force(*as_lists(p, T + H), padded)
    np.testing.assert_allclose(fc.state_means, ref["filtered_means"][T:], rtol=1e-9)
    np.testing.assert_allclose(fc.state_covariances, ref["filtered_covariances"][T:], rtol=1e-9)
    np.testing.assert_allclose(fc.emission_means, ref["filtered_means"][T:] @ p["H"].T + p["d"], rtol=1e-9)
    ycov = p["H"] @ ref["filtered_covariances"][T:] @ p["H"].T + p["R"]
    np.testing.assert_allclose(fc.emission_covariances, ycov, rtol=1e-9)


def test_posterior_predictive_against_brute_force():
    p, T = lg_params(), 6
    ssm = SSM(linear_gaussian_ssm(2, 3))
    _, y = ssm.sample(jax.random.PRNGKey(2), p, T=T)
    y = np.asarray(y).copy()
    y[2, 1] = np.nan
    means, sds = ssm.posterior_predictive(p, y)
    ref = brute_force(*as_lists(p, T), y)
    np.testing.assert_allclose(means, ref["smoothed_means"] @ p["H"].T + p["d"], rtol=1e-9)
    var = np.einsum("ij,tjk,ik->ti", p["H"], ref["smoothed_covariances"], p["H"]) + np.diag(p["R"])
    np.testing.assert_allclose(sds, np.sqrt(var), rtol=1e-9)


def test_forecast_with_time_varying_inputs_is_an_error():
    model, args, kwargs, _, _ = make_case("inputs", T=5)
    with pytest.raises(ValueError, match="pad the observations with NaN"):
        SSM(model).forecast(None, 3, *args, **kwargs)


def test_vmap_over_sequences_and_jit():
    p = lg_params()
    ssm = SSM(linear_gaussian_ssm(2, 3))
    ys = jax.vmap(lambda k: ssm.sample(k, p, T=8)[1])(jax.random.split(jax.random.PRNGKey(4), 5))
    batched = jax.jit(jax.vmap(lambda y: ssm.log_likelihood(p, y)))(ys)
    for i in range(5):
        ref = brute_force(*as_lists(p, 8), np.asarray(ys[i]))["marginal_loglik"]
        np.testing.assert_allclose(batched[i], ref, rtol=1e-10)


def test_grad_matches_finite_differences():
    p = lg_params()
    ssm = SSM(linear_gaussian_ssm(2, 3))
    _, y = ssm.sample(jax.random.PRNGKey(5), p, T=10)
    pj = {k: jnp.asarray(v) for k, v in p.items()}
    g = jax.grad(lambda q: ssm.log_likelihood(q, y))(pj)
    for name, idx in [("F", (0, 1)), ("H", (2, 0)), ("Q", (1, 1)), ("initial_mean", (0,)), ("d", (1,))]:
        eps = 1e-6
        up = {**p, name: p[name].copy()}; up[name][idx] += eps
        dn = {**p, name: p[name].copy()}; dn[name][idx] -= eps
        fd = (brute_force(*as_lists(up, 10), np.asarray(y))["marginal_loglik"]
              - brute_force(*as_lists(dn, 10), np.asarray(y))["marginal_loglik"]) / (2 * eps)
        np.testing.assert_allclose(g[name][idx], fd, rtol=1e-5, err_msg=name)


def test_init_params_and_site_names():
    ssm = SSM(linear_gaussian_ssm(2, 3))
    names = ssm.site_names(T=4)
    assert (names.latent, names.obs, names.init) == ("z", "y", "z0")
    p1 = ssm.init_params(jax.random.PRNGKey(0), T=4)
    p2 = ssm.init_params(jax.random.PRNGKey(1), T=4)
    assert set(p1) == {"initial_mean", "initial_cov", "F", "b", "Q", "H", "d", "R"}
    np.testing.assert_array_equal(p1["F"], 0.99 * np.eye(2))  # a param's initial value
    assert not np.allclose(p1["H"], p2["H"])  # H's initial value is drawn from the key
    # params=None uses the params' initial values (random ones drawn from PRNGKey(0))
    _, y = ssm.sample(jax.random.PRNGKey(2), p1, T=4)
    ref = brute_force(*as_lists({k: np.asarray(v) for k, v in p1.items()}, 4), np.asarray(y))["marginal_loglik"]
    np.testing.assert_allclose(ssm.log_likelihood(None, y), ref, rtol=1e-10)
    assert abs(float(ssm.log_likelihood(p2, y)) - ref) > 1e-3


@pytest.mark.slow  # ~35 s: the whole demo at small size (EM, SGD, NUTS, ArviZ, four figures)
def test_demo_fits_and_writes_figures(x64, tmp_path):
    """The demo's EM and SGD fits beat the true parameters' log-likelihood (T=100 overfits)."""
    from ssmppl.demo import run_demo

    result = run_demo(str(tmp_path), num_em_iters=15, num_sgd_epochs=150, num_hmc_warmup=150, num_hmc_samples=100,
                      num_chains=2)
    assert result["em_loglik"] > result["marginal_loglik"]
    assert result["sgd_loglik"] > result["marginal_loglik"] - 150.0  # 150 Adam epochs: well on the way
    # the HMC section: 6 scalars summarised; with the true H known, F, q, r are well determined
    summary = result["hmc_summary"]
    assert summary.shape[0] == 6 and result["hmc_divergences"] == 0
    assert np.all(np.abs(summary["mean"].values - [0.99 * np.cos(np.pi / 20), -0.99 * np.sin(np.pi / 20),
                                                   0.99 * np.sin(np.pi / 20), 0.99 * np.cos(np.pi / 20),
                                                   0.1, np.sqrt(0.1)]) < 4 * summary["sd"].values + 0.01)
    for key in ("figure", "learning_curves", "fitted_figure", "hmc_trace", "state_posterior"):
        assert (tmp_path / result[key].split("/")[-1]).stat().st_size > 10_000
