"""A repeated call must not recompile (issue 18): counted, not timed.

XLA compilations are counted with JAX's monitoring event for a backend compile. Each test first
makes every input it needs (so that creating data does not count), then calls an operation twice
with new values of the same structure: the second call must compile nothing. Each also checks
that the reused program answers for the *new* values (a cache keyed too loosely would return the
old answer): against an independent value (a fresh closed form, or the same computation with the
values given as arrays, compiled separately).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.contrib.control_flow import scan

from ssmppl import SSM, Kalman
from ssmppl.models import linear_gaussian_ssm

_COMPILES = [0]


def _count(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count)


@contextlib.contextmanager
def compilations():
    """Yields a list whose one entry is, after the block, the number of XLA compilations in it."""
    out = [0]
    start = _COMPILES[0]
    try:
        yield out
    finally:
        out[0] = _COMPILES[0] - start


def ar1_model(y=None, T=None):
    """z_t = 0.8 z_{t-1} + N(0, q^2), y_t = z_t + m + N(0, 1); m ~ N(0, 10^2), q a param."""
    q = numpyro.param("q", 1.0)
    m = numpyro.sample("m", dist.Normal(0.0, 10.0))

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(0.8 * z_prev, q))
        numpyro.sample("y", dist.Normal(z + m, 1.0), obs=y_t)
        return z, None

    z0 = numpyro.sample("z0", dist.Normal(0.0, 1.0))
    scan(step, z0, y, length=T)


def marginal_covariance(T, q, rho=0.8):
    """Cov(y_{1:T}) of ar1_model given m: the AR(1) path's covariance plus I (closed form)."""
    var = np.zeros(T + 1)
    var[0] = 1.0
    for t in range(1, T + 1):
        var[t] = rho ** 2 * var[t - 1] + q ** 2
    t = np.arange(1, T + 1)
    lo, hi = np.minimum.outer(t, t), np.maximum.outer(t, t)
    return var[lo] * rho ** (hi - lo) + np.eye(T)


def exact_loglik(y, q, m):
    from scipy.stats import multivariate_normal

    return multivariate_normal(np.full(len(y), m), marginal_covariance(len(y), q)).logpdf(y)


def data(seed, T=20):
    return jnp.asarray(np.random.default_rng(seed).normal(size=T) + 2.0)


def test_python_float_params_are_traced(x64):
    ssm = SSM(ar1_model)
    ys = data(0)
    ssm.log_likelihood({"q": 0.5, "m": 1.0}, ys)  # compiles
    for q in (0.6, 0.7, 1.3):
        with compilations() as n:
            ll = ssm.log_likelihood({"q": q, "m": 1.0}, ys)
        assert n[0] == 0, f"q = {q}: {n[0]} compilations"
        assert float(ll) == pytest.approx(exact_loglik(np.asarray(ys), q, 1.0), rel=1e-10)


def test_log_likelihood_and_smooth_compile_once(x64):
    model = linear_gaussian_ssm(2, 3)
    rng = np.random.default_rng(1)
    params = {"initial_mean": jnp.zeros(2), "initial_cov": jnp.eye(2), "F": 0.9 * jnp.eye(2), "b": jnp.zeros(2),
              "Q": 0.1 * jnp.eye(2), "H": jnp.asarray(rng.normal(size=(3, 2))), "d": jnp.zeros(3),
              "R": 0.5 * jnp.eye(3)}
    y1, y2 = jnp.asarray(rng.normal(size=(15, 3))), jnp.asarray(rng.normal(size=(15, 3)))
    params2 = {**params, "Q": 0.2 * jnp.eye(2)}
    first = SSM(model)
    ll1, sm1 = first.log_likelihood(params, y1), first.smooth(params, y1)
    # a new SSM object of the same model, new data, new parameter values: the same programs
    with compilations() as n:
        again = SSM(model)
        ll2, sm2 = again.log_likelihood(params2, y2), again.smooth(params2, y2)
    assert n[0] == 0
    # the reused programs answer for the new values: as a separate compilation (parallel form) does
    ref = SSM(model).smooth(params2, y2, method=Kalman(parallel=True))
    assert float(ll2) == pytest.approx(float(ref.marginal_loglik), rel=1e-10)
    np.testing.assert_allclose(sm2.smoothed_means, ref.smoothed_means, atol=1e-9)
    assert abs(float(ll2) - float(ll1)) > 1e-3


def test_fit_em_and_fit_sgd_compile_once(x64):
    ssm = SSM(ar1_model)
    y1, y2 = data(1), data(2)
    start = {"q": 0.5, "m": 0.0}
    ssm.fit_em(start, y1, num_iters=3, progress_bar=False)
    ssm.fit_sgd(start, y1, optimizer=optax.adam(1e-2), num_epochs=3, progress_bar=False)
    with compilations() as n:
        p_em, lls = ssm.fit_em({"q": 0.7, "m": 0.5}, y2, num_iters=3, progress_bar=False)
        p_sgd, losses = ssm.fit_sgd({"q": 0.7, "m": 0.5}, y2, optimizer=optax.adam(1e-2), num_epochs=3,
                                    progress_bar=False)
    assert n[0] == 0
    # EM's recorded log-likelihoods are those of the new data at its own iterates
    assert float(lls[0]) == pytest.approx(exact_loglik(np.asarray(y2), 0.7, 0.5) + float(
        dist.Normal(0.0, 10.0).log_prob(0.5)), rel=1e-9)
    # an optimiser with another learning rate is another program (and moves further)
    with compilations() as n:
        p_fast, _ = ssm.fit_sgd({"q": 0.7, "m": 0.5}, y2, optimizer=optax.adam(1e-1), num_epochs=3,
                                progress_bar=False)
    assert n[0] > 0
    assert abs(float(p_fast["m"]) - 0.5) > abs(float(p_sgd["m"]) - 0.5)


@pytest.mark.parametrize("backend", ["numpyro", "blackjax"])
def test_sample_posterior_and_to_arviz_compile_once(x64, backend):
    """Second call: new key and new data of the same shape. The posterior of the emission offset m
    given q = 1 is Gaussian in closed form (y = m 1 + e, e ~ N(0, Sigma)); each call's draws must
    centre on their own data's posterior mean, within 5 Monte Carlo standard errors."""
    ssm = SSM(ar1_model)
    y1, y2 = data(3), data(4) - 3.0
    kw = dict(num_warmup=150, num_samples=150, num_chains=2, method=Kalman(), backend=backend, progress_bar=False)
    post1 = ssm.sample_posterior(jax.random.PRNGKey(0), y1, **kw)
    post1.to_arviz(jax.random.PRNGKey(1))
    with compilations() as n:
        post2 = ssm.sample_posterior(jax.random.PRNGKey(5), y2, **kw)
        idata = post2.to_arviz(jax.random.PRNGKey(2))
    assert n[0] == 0
    for post, ys in ((post1, y1), (post2, y2)):
        Sinv = np.linalg.inv(marginal_covariance(len(ys), 1.0))
        one = np.ones(len(ys))
        precision = 1 / 100 + one @ Sinv @ one
        mean, sd = (one @ Sinv @ np.asarray(ys)) / precision, precision ** -0.5
        draws = np.asarray(post.samples["m"]).reshape(-1)
        ess = float(numpyro.diagnostics.effective_sample_size(np.asarray(post.samples["m"])))
        assert abs(draws.mean() - mean) < 5 * sd / np.sqrt(ess), (draws.mean(), mean, sd, ess)
    np.testing.assert_allclose(idata.observed_data["y"].values.reshape(-1), np.asarray(y2))
