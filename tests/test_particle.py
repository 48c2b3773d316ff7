"""Particle filters and smoothers against the exact Kalman filter and smoother.

Oracles: the exact Kalman likelihood, moments and gradient of a linear Gaussian
model. The estimate p_hat(y) is unbiased: over K independent runs the mean of
p_hat / p is 1 within its Monte Carlo standard error (from the runs' own spread),
for every filter; Var[log p_hat] falls like 1/N; weighted filtered and FFBSi
smoothed means agree with the Kalman ones within their Monte Carlo error; the
"score" gradient estimator's mean agrees with the exact gradient.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan

from ssmppl import SSM
from ssmppl.errors import ModelStructureError
from ssmppl.inference import AuxiliaryPF, BootstrapPF, GuidedPF, Kalman

pytestmark = pytest.mark.usefixtures("x64")

K = 2000  # independent filter runs


def ar1_model(y=None):
    z0 = numpyro.sample("z0", dist.Normal(0.0, 1.0))

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(0.8 * z_prev, 0.5))
        numpyro.sample("y", dist.Normal(z, 0.7), obs=y_t)
        return z, None

    scan(step, z0, y)


@pytest.fixture(scope="module")
def runs(x64_module):
    """(exact Kalman result, run(n, scheme) -> K vmapped particle filter results), cached."""
    ssm = SSM(ar1_model)
    y = np.array([0.3, -0.5, 1.2, np.nan, 0.8, 0.1, -0.9, -0.4, 0.6, 1.5])
    exact = ssm.filter({}, y)
    problem = ssm.state_space({}, y)
    keys = jax.random.split(jax.random.PRNGKey(0), K)
    cache = {}

    def run(n, scheme="systematic", method=None):
        method = method or BootstrapPF(n, resampling=scheme)
        if method not in cache:
            cache[method] = jax.jit(jax.vmap(lambda k: method.filter(problem, k)))(keys)
        return cache[method]

    return exact, run


@pytest.mark.parametrize("n, scheme", [(100, "systematic"), pytest.param(25, "multinomial", marks=pytest.mark.slow)])
def test_likelihood_estimate_is_unbiased(runs, n, scheme):
    exact, run = runs
    ratio = np.exp(np.asarray(run(n, scheme).marginal_loglik) - float(exact.marginal_loglik))
    z = (ratio.mean() - 1.0) / (ratio.std(ddof=1) / np.sqrt(K))
    assert abs(z) < 4.5, (ratio.mean(), z)


def _wide_proposal(z_prev, xs_t, y_t, transition):
    # the transition's mean with a wider scale: a valid proposal whose weights are f g / q
    return dist.Normal(transition.loc, 0.8)


GUIDED = {
    "locally optimal": GuidedPF(100),
    "user proposal": GuidedPF(100, proposal=_wide_proposal),
    "auxiliary": AuxiliaryPF(100),
    "auxiliary, user proposal": AuxiliaryPF(100, proposal=_wide_proposal,
                                            log_eta=lambda z_prev, xs_t, y_t: -0.5 * (0.8 * z_prev - y_t) ** 2),
}


@pytest.mark.parametrize("name", [pytest.param(k, marks=() if k == "locally optimal" else
                                               pytest.mark.slow) for k in GUIDED])
def test_guided_and_auxiliary_estimates_are_unbiased(runs, name):
    exact, run = runs
    result = run(None, method=GUIDED[name])
    ratio = np.exp(np.asarray(result.marginal_loglik) - float(exact.marginal_loglik))
    z = (ratio.mean() - 1.0) / (ratio.std(ddof=1) / np.sqrt(K))
    assert abs(z) < 4.5, (ratio.mean(), z)
    means = np.asarray(result.filtered_means)[..., 0]
    se = means.std(axis=0, ddof=1) / np.sqrt(K)
    bias = np.sqrt(np.asarray(exact.filtered_covariances)[:, 0, 0]) / 100
    assert np.all(np.abs(means.mean(axis=0) - np.asarray(exact.filtered_means)[:, 0]) < 4.5 * se + bias)
    if name == "locally optimal":
        # fully adapted: the weights ignore z_t, so the estimate varies much less than the bootstrap's
        # (measured: 0.020 vs 0.061 at N = 100)
        assert np.var(np.asarray(result.marginal_loglik)) < 0.5 * np.var(np.asarray(run(100).marginal_loglik))


@pytest.mark.slow  # a second filter compile (~6 s); the default run keeps the unbiasedness tests
def test_log_likelihood_variance_falls_like_one_over_n(runs):
    _, run = runs
    v25 = np.var(np.asarray(run(25).marginal_loglik))
    v100 = np.var(np.asarray(run(100).marginal_loglik))
    # ratio 4 expected; the sample variances of 2000 runs have ~3% relative error each
    assert 3.0 < v25 / v100 < 5.3, v25 / v100


def test_filtered_means_match_kalman(runs):
    exact, run = runs
    means = np.asarray(run(100).filtered_means)[..., 0]  # (K, T)
    se = means.std(axis=0, ddof=1) / np.sqrt(K)
    # the self-normalised estimate has O(1/N) bias: allow it on top of 4.5 standard errors
    bias = np.sqrt(np.asarray(exact.filtered_covariances)[:, 0, 0]) / 100
    assert np.all(np.abs(means.mean(axis=0) - np.asarray(exact.filtered_means)[:, 0]) < 4.5 * se + bias)
    ess = np.asarray(run(100).ess)
    assert np.all((ess >= 1 - 1e-9) & (ess <= 100 + 1e-9))
    resampled = np.asarray(run(100).resampled)
    # step 3 is missing: its weights are those carried in, so its ESS is the previous step's
    # unless the particles were resampled before it (then all weights are equal: ESS = N)
    np.testing.assert_allclose(ess[:, 3], np.where(resampled[:, 3], 100.0, ess[:, 2]), rtol=1e-9)


def test_same_key_same_result_and_bad_settings(x64):
    ssm = SSM(ar1_model)
    y = np.array([0.3, -0.5, 1.2])
    a = ssm.log_likelihood({}, y, method=BootstrapPF(50), key=jax.random.PRNGKey(1))
    b = ssm.log_likelihood({}, y, method=BootstrapPF(50), key=jax.random.PRNGKey(1))
    assert float(a) == float(b)
    with pytest.raises(ValueError, match="key"):
        ssm.log_likelihood({}, y, method=BootstrapPF(50))
    for bad in (0, -5, 10.0, True):
        with pytest.raises(ValueError, match="positive int"):
            BootstrapPF(bad)
    with pytest.raises(ValueError, match="systematic"):
        BootstrapPF(10, resampling="bogus")
    with pytest.raises(ValueError, match="ess_threshold"):
        BootstrapPF(10, ess_threshold=1.5)


@pytest.mark.parametrize("smoother", ["ffbsi", pytest.param("genealogy", marks=pytest.mark.slow)])
def test_smoothed_moments_match_kalman_smoother(x64, smoother):
    ssm = SSM(ar1_model)
    y = np.array([0.3, -0.5, 1.2, np.nan, 0.8, 0.1, -0.9, -0.4, 0.6, 1.5])
    exact = ssm.smooth({}, y)
    problem = ssm.state_space({}, y)
    R, N = 200, 100
    method = BootstrapPF(N, smoother=smoother, num_trajectories=100)
    res = jax.jit(jax.vmap(lambda k: method.smooth(problem, k)))(jax.random.split(jax.random.PRNGKey(2), R))
    sd = np.sqrt(np.asarray(exact.smoothed_covariances)[:, 0, 0])
    for got, want in ((res.smoothed_means[..., 0], exact.smoothed_means[:, 0]),
                      (res.initial_smoothed_mean[:, 0], exact.initial_smoothed_mean[0])):
        got = np.asarray(got)
        se = got.std(axis=0, ddof=1) / np.sqrt(R)
        assert np.all(np.abs(got.mean(axis=0) - np.asarray(want)) < 4.5 * se + sd.min() / N), smoother
    # variances and lag-one covariances: within a few percent (M = 100 paths, N = 100 particles) for
    # FFBSi; lineages coalesce, so genealogy underestimates them (measured: up to 8% at N = 100)
    rtol = 0.06 if smoother == "ffbsi" else 0.15
    var = np.asarray(res.smoothed_covariances)[..., 0, 0].mean(axis=0)
    np.testing.assert_allclose(var, sd**2, rtol=rtol)
    cross = np.asarray(res.smoothed_cross_covariances)[..., 0, 0].mean(axis=0)
    np.testing.assert_allclose(cross, np.asarray(exact.smoothed_cross_covariances)[:, 0, 0], rtol=rtol + 0.02)
    assert res.trajectories.shape == (R, 100, 10, 1)


def ar1_param_model(y=None, T=None):
    phi = numpyro.param("phi", 0.8)
    q = numpyro.param("q", 0.5, constraint=dist.constraints.positive)
    z0 = numpyro.sample("z0", dist.Normal(0.0, 1.0))

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(phi * z_prev, q))
        numpyro.sample("y", dist.Normal(z, 0.7), obs=y_t)
        return z, None

    scan(step, z0, y, length=T)


@pytest.mark.slow
def test_score_gradient_matches_kalman_gradient_and_stop_gradient_is_biased(x64):
    ssm = SSM(ar1_param_model)
    _, y = ssm.sample(jax.random.PRNGKey(3), {"phi": 0.9, "q": 0.6}, T=50)
    p0 = {"phi": 0.7, "q": 0.5}
    exact = jax.grad(lambda p: Kalman().log_likelihood(ssm.state_space(p, y)))(p0)
    R = 500
    keys = jax.random.split(jax.random.PRNGKey(0), R)

    def grads(method):
        g = jax.jit(jax.vmap(lambda k: jax.grad(lambda p: method.log_likelihood(ssm.state_space(p, y), k))(p0)))(keys)
        return {s: np.asarray(g[s]) for s in p0}

    score = grads(BootstrapPF(200))  # gradient="score" is the default
    naive = grads(BootstrapPF(200, gradient="stop_gradient"))
    for s in p0:
        se = score[s].std(ddof=1) / np.sqrt(R)
        assert abs(score[s].mean() - float(exact[s])) < 4.5 * se, (s, score[s].mean(), float(exact[s]))
        se = naive[s].std(ddof=1) / np.sqrt(R)
        assert abs(naive[s].mean() - float(exact[s])) > 10 * se  # the documented bias (phi: 4.6 vs -1.2)


def boxed_model(y=None):
    z0 = numpyro.sample("z0", dist.Normal(0.0, 1.0))

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(z_prev, 0.1))
        numpyro.sample("y", dist.Uniform(z - 1.0, z + 1.0), obs=y_t)
        return z, None

    scan(step, z0, y)


def sine_model(y=None):
    z0 = numpyro.sample("z0", dist.Normal(0.0, 1.0))

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(z_prev, 0.1))
        numpyro.sample("y", dist.Normal(jnp.sin(z), 0.1), obs=y_t)
        return z, None

    scan(step, z0, y)


def test_impossible_step_and_bad_settings_errors(x64):
    y = np.array([0.1, 0.2, 30.0, 0.1])  # step 3 is out of every particle's reach
    with pytest.raises(ValueError, match="at step 3 every particle"):
        SSM(boxed_model).log_likelihood({}, y, method=BootstrapPF(100), key=jax.random.PRNGKey(0))
    with pytest.raises(ModelStructureError, match="locally optimal proposal needs a Gaussian emission.*'y'"):
        SSM(boxed_model).filter({}, y, method=GuidedPF(10), key=jax.random.PRNGKey(0))
    with pytest.raises(ModelStructureError, match="affine"):
        SSM(sine_model).filter({}, y, method=GuidedPF(10), key=jax.random.PRNGKey(0))
    for bad in (dict(gradient="bogus"), dict(smoother="bogus"), dict(num_trajectories=0)):
        with pytest.raises(ValueError):
            BootstrapPF(10, **bad)
    with pytest.raises(TypeError, match="proposal"):
        GuidedPF(10, proposal=3)
    with pytest.raises(ValueError, match="positive int"):
        AuxiliaryPF(0)


@pytest.mark.slow
def test_kept_particles_same_key_and_errors_from_every_entry_point(x64):
    ssm = SSM(ar1_model)
    y = np.array([0.3, -0.5, np.nan, 0.8])
    res = ssm.filter({}, y, method=AuxiliaryPF(64, keep_particles=True), key=jax.random.PRNGKey(4))
    assert res.particles.shape == (4, 64, 1) and res.ancestors.shape == (4, 64)
    w = np.exp(np.asarray(res.log_weights))
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.einsum("tn,tnd->td", w, np.asarray(res.particles)), res.filtered_means, atol=1e-12)
    assert not hasattr(ssm.filter({}, y, method=AuxiliaryPF(64), key=jax.random.PRNGKey(4)), "particles")  # absent
    a = ssm.log_likelihood({}, y, method=GuidedPF(64), key=jax.random.PRNGKey(5))
    assert float(a) == float(ssm.log_likelihood({}, y, method=GuidedPF(64), key=jax.random.PRNGKey(5)))
    for call in (SSM(boxed_model).filter, SSM(boxed_model).smooth):
        with pytest.raises(ValueError, match="at step 3 every particle"):
            call({}, np.array([0.1, 0.2, 30.0, 0.1]), method=BootstrapPF(100), key=jax.random.PRNGKey(0))
    # a user proposal runs where the locally optimal one is refused
    ll = SSM(sine_model).log_likelihood({}, np.array([0.1, 0.2]), key=jax.random.PRNGKey(0),
                                        method=GuidedPF(10, proposal=lambda zp, x, y_t: dist.Normal(zp, 0.2)))
    assert np.isfinite(float(ll))


@pytest.mark.slow
def test_fit_sgd_through_particle_filters_finds_the_kalman_mle(x64):
    """fit_sgd on the particle filters' "score" gradients lands within half a standard error
    (from the exact observed information) of the exact maximum-likelihood estimate. Measured
    (T = 200, 400 Adam steps, cosine-decayed learning rate): MLE phi 0.784, q 0.681; GuidedPF 0.784,
    0.682; BootstrapPF(200) 0.795, 0.671; with gradient="stop_gradient" 0.844, 0.621 (its bias)."""
    import optax

    ssm = SSM(ar1_param_model)
    _, y = ssm.sample(jax.random.PRNGKey(3), {"phi": 0.9, "q": 0.6}, T=200)
    start = {"phi": 0.5, "q": 1.0}
    fit = dict(num_epochs=400, progress_bar=False)
    mle, _ = ssm.fit_sgd(start, y, optimizer=optax.adam(0.05), num_epochs=600, progress_bar=False)
    names = ("phi", "q")
    ll = lambda v: Kalman().log_likelihood(ssm.state_space(dict(zip(names, v)), y))
    theta = jnp.array([mle[n] for n in names])
    np.testing.assert_allclose(jax.grad(ll)(theta), 0.0, atol=1e-3)  # it is the MLE
    se = np.sqrt(np.diag(np.linalg.inv(-np.asarray(jax.hessian(ll)(theta)))))
    for method in (GuidedPF(200), BootstrapPF(200)):
        got, _ = ssm.fit_sgd(start, y, optimizer=optax.adam(optax.cosine_decay_schedule(0.05, 400)), method=method,
                             key=jax.random.PRNGKey(0), **fit)
        err = np.abs(np.array([float(got[n]) for n in names]) - np.asarray(theta))
        assert np.all(err < 0.5 * se), (type(method).__name__, got, mle, se)


@pytest.mark.slow
def test_forecast_matches_kalman_forecast(x64):
    ssm = SSM(ar1_model)
    y = np.array([0.3, -0.5, 1.2, np.nan, 0.8, 0.1, -0.9, -0.4, 0.6, 1.5])
    exact = ssm.forecast({}, 3, y)
    N = 20000
    got = ssm.forecast({}, 3, y, method=BootstrapPF(N), key=jax.random.PRNGKey(0))
    var = np.asarray(exact.state_covariances)[:, 0, 0]
    # the means' Monte Carlo sd is about sqrt(var / ESS) with ESS > N / 2; variances within ~4 sd of theirs
    np.testing.assert_allclose(got.state_means[:, 0], exact.state_means[:, 0], atol=4.5 * np.sqrt(2 * var.max() / N))
    np.testing.assert_allclose(got.emission_means, exact.emission_means, atol=4.5 * np.sqrt(2 * var.max() / N))
    np.testing.assert_allclose(got.state_covariances, exact.state_covariances, rtol=4.5 * np.sqrt(2 * 2 / N))
    np.testing.assert_allclose(got.emission_covariances, exact.emission_covariances, rtol=4.5 * np.sqrt(2 * 2 / N))


@pytest.mark.slow
def test_posterior_predictive_matches_kalman(x64):
    ssm = SSM(ar1_model)
    y = np.array([0.3, -0.5, 1.2, np.nan, 0.8, 0.1, -0.9, -0.4, 0.6, 1.5])
    means, sds = ssm.posterior_predictive({}, y)
    M = 2000
    got_means, got_sds = ssm.posterior_predictive({}, y, method=BootstrapPF(M, num_trajectories=M),
                                                  key=jax.random.PRNGKey(0))
    # M FFBSi paths: the mean's sd is about sd[z_t | y] / sqrt(M) (times ~2 for the particles' own error)
    smoothed_sd = np.sqrt(np.asarray(ssm.smooth({}, y).smoothed_covariances)[:, 0, 0])
    np.testing.assert_allclose(got_means[:, 0], means[:, 0], atol=4.5 * 2 * smoothed_sd.max() / np.sqrt(M))
    np.testing.assert_allclose(got_sds, sds, rtol=0.03)
