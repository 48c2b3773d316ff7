"""``SSM.fit_mle`` (L-BFGS maximum likelihood, observed-information standard errors) against
statsmodels on the Nile local-level model, and its compile-once and warning contracts.

Footings (see tests/test_nile.py): ssmppl's ``local_level`` puts mu_0 ~ N(0, KAPPA), KAPPA = 1e10;
statsmodels with the known initialisation N(0, KAPPA + sigma2_level) at t = 1 and no burn-in has
the same log-likelihood, and its exact diffuse MLE is the same maximiser up to O(sigma2 / KAPPA).
The oracle fits are statsmodels' BFGS with gtol 1e-8 (its default L-BFGS stops ~1e-3 relative
short of the maximum on this series: 15078 / 1478.8).

Standard errors: statsmodels' ``cov_type='approx'`` is the inverse of the numerical Hessian of
the log-likelihood, the observed information, which fit_mle computes (by automatic
differentiation). Its ``cov_type='oim'`` is *not* that Hessian: it is Harvey's (1989) analytic
information-matrix formula built from the filter's innovations (2580 / 814 here against
3146 / 1280 for the Hessian); a finite-difference Hessian of ssmppl's own log-likelihood
confirms the latter, so 'oim' is not the oracle.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan
from numpyro.distributions import constraints

sm = pytest.importorskip("statsmodels.api")
from statsmodels.datasets import nile  # noqa: E402

import ssmppl  # noqa: E402
from ssmppl.models import local_level  # noqa: E402

KAPPA = 1e10
_compiles = {"on": False, "n": 0}


def _count(event, duration, **kwargs):
    if _compiles["on"] and event == "/jax/core/compile/backend_compile_duration":
        _compiles["n"] += 1


jax.monitoring.register_event_duration_secs_listener(_count)


def _backend_compilations(fn):
    _compiles.update(on=True, n=0)
    try:
        out = fn()
    finally:
        _compiles["on"] = False
    return out, _compiles["n"]


@pytest.fixture(scope="module")
def nile_y():
    return nile.load_pandas().data["volume"].to_numpy(float)


def _known_init_statsmodels(y, s2_level=1469.0):
    model = sm.tsa.UnobservedComponents(y, level="local level")
    model.ssm.initialize_known(np.array([0.0]), np.array([[KAPPA + s2_level]]))
    model.loglikelihood_burn = 0
    return model


def _ssm():
    return ssmppl.SSM(local_level(initial_mean=0.0, initial_variance=KAPPA))


def test_nile_mle_matches_statsmodels(x64, nile_y):
    y = jnp.asarray(nile_y)
    start = {"sigma2_obs": jnp.var(y), "sigma2_level": jnp.var(y)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = _ssm().fit_mle(start, y)
    assert result.converged and 0 < result.num_iters < 200 and result.grad_norm <= 1e-6

    diffuse = sm.tsa.UnobservedComponents(nile_y, level="local level", use_exact_diffuse=True)
    exact = diffuse.fit(method="bfgs", gtol=1e-8, disp=False)
    known = _known_init_statsmodels(nile_y)
    fit = known.fit(method="bfgs", gtol=1e-8, disp=False, cov_type="approx")
    for i, k in enumerate(["sigma2_obs", "sigma2_level"]):  # param_names: sigma2.irregular, sigma2.level
        assert float(result.params[k]) == pytest.approx(exact.params[i], rel=1e-4), k
        assert float(result.params[k]) == pytest.approx(fit.params[i], rel=1e-4), k
        # observed information (numerical Hessian in statsmodels): measured agreement ~1e-4
        assert float(result.stderr[k]) == pytest.approx(fit.bse[i], rel=1e-2), k
    assert float(result.log_likelihood) == pytest.approx(fit.llf, rel=1e-6)
    # the reported log-likelihood is ssmppl's own at the returned parameters
    assert float(result.log_likelihood) == pytest.approx(float(_ssm().log_likelihood(result.params, y)), abs=1e-8)
    assert result.labels == ("sigma2_level", "sigma2_obs")
    assert np.allclose(np.sqrt(np.diag(result.covariance)),
                       [float(result.stderr["sigma2_level"]), float(result.stderr["sigma2_obs"])])
    assert "sigma2_obs" in result.summary()


def test_nile_stderr_match_a_finite_difference_hessian(x64, nile_y):
    """The standard errors are the inverse Hessian of ssmppl's log-likelihood in the variances (the
    delta method from the unconstrained space agrees at the optimum), by central differences."""
    y = jnp.asarray(nile_y)
    ssm = _ssm()
    result = ssm.fit_mle({"sigma2_obs": jnp.asarray(1e4), "sigma2_level": jnp.asarray(1e3)}, y)
    v = np.array([float(result.params["sigma2_obs"]), float(result.params["sigma2_level"])])
    f = lambda w: float(ssm.log_likelihood({"sigma2_obs": jnp.asarray(w[0]), "sigma2_level": jnp.asarray(w[1])}, y))  # noqa: E731
    h, H = 1e-3 * v, np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            ei, ej = np.eye(2)[i] * h[i], np.eye(2)[j] * h[j]
            H[i, j] = (f(v + ei + ej) - f(v + ei - ej) - f(v - ei + ej) + f(v - ei - ej)) / (4 * h[i] * h[j])
    se = np.sqrt(np.diag(np.linalg.inv(-H)))
    assert float(result.stderr["sigma2_obs"]) == pytest.approx(se[0], rel=1e-3)
    assert float(result.stderr["sigma2_level"]) == pytest.approx(se[1], rel=1e-3)


def test_fit_mle_compiles_once(x64, nile_y):
    """New data of the same shape and new starting values reuse the compiled fit."""
    ssm = _ssm()
    y = jnp.asarray(nile_y)
    y2 = y[::-1] * 1.1  # built before counting
    s1 = {"sigma2_obs": jnp.asarray(1e4), "sigma2_level": jnp.asarray(1e3)}
    s2 = {"sigma2_obs": jnp.asarray(2e4), "sigma2_level": jnp.asarray(5e2)}
    ssm.fit_mle(s1, y)
    r2, n2 = _backend_compilations(lambda: ssm.fit_mle(s2, y2))
    assert n2 == 0
    # and the reused program fitted the new data: statsmodels' MLE on it
    fit = _known_init_statsmodels(np.asarray(y2)).fit(method="bfgs", gtol=1e-8, disp=False)
    assert float(r2.params["sigma2_obs"]) == pytest.approx(fit.params[0], rel=1e-4)
    assert float(r2.params["sigma2_level"]) == pytest.approx(fit.params[1], rel=1e-4)


def test_warns_when_not_converged(x64, nile_y):
    y = jnp.asarray(nile_y)
    with pytest.warns(RuntimeWarning, match="did not converge in max_iters=2"):
        result = _ssm().fit_mle({"sigma2_obs": jnp.asarray(1.0), "sigma2_level": jnp.asarray(1.0)}, y, max_iters=2)
    assert not result.converged and result.num_iters == 2


def _two_noise_model(y=None, T=None):
    """y_t = z_t + eps_t with Var(eps_t) = a + b: only a + b is identified; c is not used at all."""
    a = numpyro.param("a", jnp.asarray(1.0), constraint=constraints.positive)
    b = numpyro.param("b", jnp.asarray(1.0), constraint=constraints.positive)
    numpyro.param("c", jnp.asarray(1.0))

    def step(z, y_t):
        z = numpyro.sample("z", dist.Normal(0.5 * z, 1.0))
        numpyro.sample("y", dist.Normal(z, jnp.sqrt(a + b)), obs=y_t)
        return z, None

    z0 = numpyro.sample("z0", dist.Normal(0.0, 1.0))
    scan(step, z0, y, length=T)


def test_unidentified_parameters(x64):
    ssm = ssmppl.SSM(_two_noise_model)
    _, y = ssm.sample(jax.random.PRNGKey(0), {"a": jnp.asarray(1.0), "b": jnp.asarray(1.0)}, T=200)
    # c does not enter the likelihood: a zero row in the Hessian, so it is singular
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        result = ssm.fit_mle({"a": jnp.asarray(0.5), "b": jnp.asarray(2.0)}, y)
    assert all(np.isnan(float(result.stderr[k])) for k in "abc")
    # with c frozen, H is positive definite up to the residual gradient along a - b: the standard
    # errors are then two orders of magnitude above the estimates, telling the user the same
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ab = ssm.fit_mle({"a": jnp.asarray(0.5), "b": jnp.asarray(2.0)}, y, frozen=("c",))
    assert set(ab.stderr) == {"a", "b"} and float(ab.params["c"]) == 1.0
    assert float(ab.stderr["a"]) > 30 * float(ab.params["a"]) and float(ab.stderr["b"]) > 30 * float(ab.params["b"])
    # the identified combination a + b is the MLE: the fit with b frozen near 0 finds the same total
    one = ssm.fit_mle({"a": jnp.asarray(1.0), "b": jnp.asarray(1e-12)}, y, frozen=("b", "c"))
    assert float(ab.params["a"] + ab.params["b"]) == pytest.approx(float(one.params["a"]) + 1e-12, rel=1e-4)
    assert float(result.params["a"] + result.params["b"]) == pytest.approx(float(one.params["a"]), rel=1e-4)
