"""``marginalize``: the latent path integrated out of a NumPyro model (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta
from numpyro.infer.util import log_density
from scipy import stats

from oracles import brute_force
from ssmppl import SSM, marginalize

pytestmark = pytest.mark.usefixtures("x64")


def local_level(y=None, T=None):
    log_q = numpyro.sample("log_q", dist.Normal(-1.0, 1.0))
    log_r = numpyro.sample("log_r", dist.Normal(0.0, 1.0))
    z0 = numpyro.sample("z0", dist.Normal(0.0, 3.0))

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(z_prev, jnp.exp(log_q)))
        numpyro.sample("y", dist.Normal(z, jnp.exp(log_r)), obs=y_t)
        return z, None

    scan(step, z0, y, length=T)


def reference_loglik(log_q, log_r, y):
    T = len(y)
    one = np.ones((1, 1))
    ref = brute_force(np.zeros(1), 9.0 * one, [one] * T, [np.zeros(1)] * T, [np.exp(2 * log_q) * one] * T,
                      [one] * T, [np.zeros(1)] * T, [np.exp(2 * log_r) * one] * T, np.asarray(y)[:, None])
    return ref["marginal_loglik"]


@pytest.fixture
def data(x64):
    _, y = SSM(local_level).sample(jax.random.PRNGKey(0), {"log_q": -1.0, "log_r": 0.0}, T=30)
    return np.asarray(y)  # (T,): the model's own shape


def test_log_density_is_loglik_plus_log_prior(data):
    mm = marginalize(local_level)
    for log_q, log_r in [(-1.0, 0.0), (0.3, -0.7)]:
        ld, trace = log_density(mm, (data,), {}, {"log_q": log_q, "log_r": log_r})
        expected = (reference_loglik(log_q, log_r, data) + stats.norm(-1, 1).logpdf(log_q)
                    + stats.norm(0, 1).logpdf(log_r))
        np.testing.assert_allclose(ld, expected, rtol=1e-10)
    # the only latent sites left are the global ones
    latent = [k for k, s in trace.items() if s["type"] == "sample" and not s["is_observed"]]
    assert latent == ["log_q", "log_r"]


def test_nuts_matches_grid_posterior(data):
    """NUTS on the marginal model against a brute-force grid posterior of log_r (log_q fixed)."""
    fixed = numpyro.handlers.condition(local_level, {"log_q": -1.0})
    mm = marginalize(fixed)
    mcmc = MCMC(NUTS(mm), num_warmup=400, num_samples=1000, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(1), data)
    draws = np.asarray(mcmc.get_samples()["log_r"])
    grid = np.linspace(-2.0, 1.5, 701)
    ssm = SSM(local_level)
    ll = jax.vmap(lambda r: ssm.log_likelihood({"log_q": -1.0, "log_r": r}, data))(jnp.asarray(grid))
    logpost = np.asarray(ll) + stats.norm(0, 1).logpdf(grid)
    w = np.exp(logpost - logpost.max())
    w /= w.sum()
    mean = np.sum(w * grid)
    sd = np.sqrt(np.sum(w * (grid - mean) ** 2))
    ess = float(numpyro.diagnostics.effective_sample_size(draws[None]))
    # Monte Carlo standard error of the mean is sd / sqrt(ESS); allow 4 of them.
    assert abs(draws.mean() - mean) < 4 * sd / np.sqrt(ess), (draws.mean(), mean, sd, ess)
    assert abs(draws.std() - sd) < 0.15 * sd


def test_svi_map_and_predictive(data):
    mm = marginalize(local_level)
    guide = AutoDelta(mm)
    svi = SVI(mm, guide, numpyro.optim.Adam(0.05), Trace_ELBO())
    result = svi.run(jax.random.PRNGKey(2), 1500, data, progress_bar=False)
    est = guide.median(result.params)
    # the MAP maximises loglik + log prior: its gradient vanishes there
    ssm = SSM(local_level)

    def log_post(p):
        return (ssm.log_likelihood(p, data) + dist.Normal(-1, 1).log_prob(p["log_q"])
                + dist.Normal(0, 1).log_prob(p["log_r"]))

    g = jax.grad(log_post)({k: jnp.asarray(v) for k, v in est.items()})
    assert max(abs(float(v)) for v in g.values()) < 1e-2
    pred = Predictive(mm, num_samples=5)(jax.random.PRNGKey(3), data)
    assert pred["log_q"].shape == (5,)
    # the integrated-out initial state is hidden; the emission site holds the data, in its own shape
    assert "z0" not in pred and "z" not in pred
    np.testing.assert_array_equal(pred["y"], np.broadcast_to(data, (5, len(data))))


def test_predictive_without_data_draws_emissions_of_the_model_shape(data):
    """Issue 18: ``Predictive(marginalize(model), samples)(key, T=T)`` returned y of shape (draws, T, 0)
    and a NaN initial state. Without observations the marginal model runs the model itself, so the
    draws are emissions given each parameter draw with a fresh path. Oracle: the local level's
    closed form, y_t ~ N(0, 9 + t q^2 + r^2), checked at t = 1 and t = T by its mean and variance
    (tolerances from the sampling distributions of the sample mean and variance)."""
    n, T = 4000, 20
    samples = {"log_q": jnp.full(n, -1.0), "log_r": jnp.full(n, 0.5)}
    pred = Predictive(marginalize(local_level), samples)(jax.random.PRNGKey(5), T=T)
    assert pred["y"].shape == (n, T) and pred["z"].shape == (n, T) and pred["z0"].shape == (n,)
    assert np.all(np.isfinite(pred["z0"]))
    for t in (1, T):
        var = 9.0 + t * np.exp(-2.0) + np.exp(1.0)
        draws = np.asarray(pred["y"][:, t - 1])
        assert abs(draws.mean()) < 5 * np.sqrt(var / n)
        assert abs(draws.var() - var) < 5 * var * np.sqrt(2 / n)
    # the path and the emissions belong together: y_t - z_t are n T independent N(0, r^2) draws
    resid = np.asarray(pred["y"] - pred["z"])
    assert abs(resid.var() - np.exp(1.0)) < 5 * np.exp(1.0) * np.sqrt(2 / resid.size)


def test_marginal_emission_site_holds_the_data_and_the_per_step_log_predictive(data):
    """With data, the emission site is observed with the data ((T,) here) and its log density is
    the filter's per-step log predictive, summing to the brute-force log-likelihood."""
    from numpyro.infer.util import log_likelihood

    draws = {"log_q": jnp.array([-1.0, 0.3]), "log_r": jnp.array([0.0, -0.7])}
    per_step = log_likelihood(marginalize(local_level), draws, data)["y"]
    assert per_step.shape == (2, len(data))
    for i in range(2):
        ref = reference_loglik(float(draws["log_q"][i]), float(draws["log_r"][i]), data)
        np.testing.assert_allclose(float(per_step[i].sum()), ref, rtol=1e-10)
