"""Learning through an approximate filter: the pendulum's observation noise r and the
Poisson AR(1) model's coefficient phi, recovered from simulated data by ``fit_sgd``
(maximum likelihood through the filter's likelihood) and by ``sample_posterior``
(NUTS on the model marginalised by the UKF / moment-matching UKF), and by ``fit_em``
through the corresponding smoothers.

Oracles, independent of the code under test:
- the simulation's true parameter, which must lie within 4 posterior standard
  deviations of the posterior mean (the draws' sd). For a well-calibrated
  near-Gaussian posterior a 4-sd miss has probability ~6e-5, so a failure means a
  biased likelihood or sampler, not bad luck;
- for the Poisson model (one-dimensional state) the *exact* likelihood, computed by
  a point-mass (grid) filter in numpy: its maximiser and the exact grid posterior
  of phi, which the moment-matching filter's estimates must match to a fraction of a
  posterior sd (the approximation error the filter is allowed);
- for the pendulum, the UKF likelihood on a grid of r (deterministic quadrature of
  the one-parameter posterior, which checks NUTS) and maximised by scipy (which
  checks SGD), and the likelihood of a more accurate rule (Gauss-Hermite, order 5),
  whose maximiser the UKF's must match to a fraction of a posterior sd.

Sampling and SGD through a filter compile long programs (tens of seconds each), so
those tests are slow and share their compiled work through module-scoped fixtures;
the default suite runs one quick check (the Poisson likelihood profile).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
from numpyro.diagnostics import split_gelman_rubin
from scipy import optimize, special, stats

from ssmppl import SSM
from ssmppl.inference import UKF, GaussHermite, MomentMatching
from ssmppl.models import pendulum, poisson_ar1

pytestmark = pytest.mark.usefixtures("x64_module")

SD_MULTIPLIER = 4.0  # truth within 4 posterior sd: false alarm ~6e-5 for a Gaussian posterior

PENDULUM_TRUTH = {"g": 9.8, "q_c": 1.0, "r": 0.3}
PENDULUM_T = 200
POISSON_TRUTH = {"mu": 1.0, "phi": 0.85, "sigma": 0.4}
POISSON_T = 300
PHI_GRID = np.linspace(0.6, 0.98, 77)  # step 0.005; the posterior (sd ~0.035) sits well inside
R_GRID = np.linspace(0.2, 0.45, 101)


# -- data -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pendulum_data(x64_module):
    _, y = SSM(pendulum()).sample(jax.random.PRNGKey(0), PENDULUM_TRUTH, T=PENDULUM_T)
    return y  # (T,): sample returns the model's own shapes


@pytest.fixture(scope="module")
def poisson_data(x64_module):
    """Counts simulated in numpy (z_0 from the stationary distribution)."""
    rng = np.random.default_rng(0)
    mu, phi, sigma = POISSON_TRUTH["mu"], POISSON_TRUTH["phi"], POISSON_TRUTH["sigma"]
    z = mu + sigma / np.sqrt(1 - phi**2) * rng.normal()
    y = np.empty(POISSON_T)
    for t in range(POISSON_T):
        z = mu + phi * (z - mu) + sigma * rng.normal()
        y[t] = rng.poisson(np.exp(z))
    return jnp.asarray(y)


def exact_poisson_loglik(y, phi, mu, sigma, num_points=201):
    """log p(y | phi, mu, sigma) of the Poisson AR(1) model by a point-mass filter: the
    state's densities on a grid of mu +- 8 stationary sd (trapezoid weights), the
    transition a Gaussian kernel matrix, Poisson likelihoods in log space."""
    s0 = sigma / np.sqrt(1 - phi**2)
    grid = np.linspace(mu - 8 * s0, mu + 8 * s0, num_points)
    h = grid[1] - grid[0]
    prob = stats.norm.pdf(grid, mu, s0) * h  # z_0
    kernel = stats.norm.pdf(grid[None, :], mu + phi * (grid[:, None] - mu), sigma) * h  # [from, to]
    loglik_y = y[:, None] * grid[None, :] - np.exp(grid)[None, :] - special.gammaln(y + 1)[:, None]
    total = 0.0
    for t in range(len(y)):
        prob = prob @ kernel
        shift = loglik_y[t].max()
        joint = prob * np.exp(loglik_y[t] - shift)
        c = joint.sum()
        total += np.log(c) + shift
        prob = joint / c
    return total


def grid_moments(grid, log_density):
    """Mean, sd and mode of a 1-d density known up to a constant on an even grid (trapezoid)."""
    w = np.exp(log_density - log_density.max())
    w[0] *= 0.5
    w[-1] *= 0.5
    w /= w.sum()
    mean = np.sum(w * grid)
    return mean, np.sqrt(np.sum(w * (grid - mean) ** 2)), grid[np.argmax(log_density)]


@pytest.fixture(scope="module")
def poisson_exact(poisson_data):
    """Exact profile log-likelihood of phi (mu, sigma at their true values) on PHI_GRID;
    with a flat prior on (-1, 1) it is also the exact log posterior up to a constant."""
    y = np.asarray(poisson_data)
    ll = np.array([exact_poisson_loglik(y, phi, POISSON_TRUTH["mu"], POISSON_TRUTH["sigma"]) for phi in PHI_GRID])
    mean, sd, _ = grid_moments(PHI_GRID, ll)
    res = optimize.minimize_scalar(lambda p: -exact_poisson_loglik(y, p, POISSON_TRUTH["mu"], POISSON_TRUTH["sigma"]),
                                   bounds=(0.6, 0.98), method="bounded", options={"xatol": 1e-5})
    return {"loglik": ll, "mean": mean, "sd": sd, "mle": res.x}


def _report(label, **numbers):
    """The measured numbers, shown by ``pytest -rP`` / ``-s``."""
    print(label + ": " + ", ".join(f"{k} {v:.4g}" for k, v in numbers.items()))


def _profile(ssm, params, name, grid, y, method):
    """log p(y | params with params[name] = v) for v in grid, one compiled vmap."""
    fn = jax.jit(jax.vmap(lambda v: ssm.log_likelihood({**params, name: v}, y, method=method)))
    return np.asarray(fn(jnp.asarray(grid)))


@pytest.fixture(scope="module")
def poisson_profile(poisson_data):
    """Moment-matching UKF log-likelihood of phi on PHI_GRID (mu, sigma at their true values)."""
    return _profile(SSM(poisson_ar1()), POISSON_TRUTH, "phi", PHI_GRID, poisson_data, MomentMatching(rule=UKF()))


# How far the moment-matching likelihood may move phi's posterior, in exact-posterior sd.
# Its update is linear in y_t (conditional moments), so even with exact integrals it is not
# the exact filter: on eight simulated data sets like this one (T = 300) its maximiser sat
# 0.0-1.0 sd from the exact MLE (Gauss-Hermite order 5: 0.0-0.7 sd) and its curvature gave a
# posterior sd 0.92-1.19 times the exact one. A wrong transition, emission or predictive
# density moves them by many sd.
APPROXIMATION_SD = 1.5
APPROXIMATION_SD_RATIO = 0.3


# -- default suite: the approximate likelihood peaks where the exact one does ----------------


def test_poisson_moment_matching_likelihood_profile_matches_exact_filter(poisson_profile, poisson_exact):
    """The moment-matching UKF log-likelihood of phi on a grid against the grid filter's exact
    one: maximiser and flat-prior posterior mean within APPROXIMATION_SD exact-posterior sd of
    the exact ones, posterior sd within 30%, and the truth within 4 exact posterior sd."""
    ll, ex = poisson_profile, poisson_exact
    assert np.all(np.isfinite(ll))
    mean, sd, mode = grid_moments(PHI_GRID, ll)
    _report("phi profile (flat prior)", exact_mean=ex["mean"], exact_sd=ex["sd"], exact_mle=ex["mle"],
            mm_ukf_mean=mean, mm_ukf_sd=sd, mm_ukf_mode=mode)
    assert abs(ex["mean"] - POISSON_TRUTH["phi"]) < SD_MULTIPLIER * ex["sd"]
    assert abs(mode - ex["mle"]) < APPROXIMATION_SD * ex["sd"] + 0.0025  # + half the grid step
    assert abs(mean - ex["mean"]) < APPROXIMATION_SD * ex["sd"]
    assert abs(sd / ex["sd"] - 1) < APPROXIMATION_SD_RATIO
    assert abs(mean - POISSON_TRUTH["phi"]) < SD_MULTIPLIER * sd


# -- slow: the Poisson model -------------------------------------------------------------


@pytest.fixture(scope="module")
def poisson_sgd(poisson_data):
    ssm = SSM(poisson_ar1())
    start = {**POISSON_TRUTH, "phi": 0.5}
    return ssm.fit_sgd(start, poisson_data, method=MomentMatching(rule=UKF()), frozen=("mu", "sigma"),
                       optimizer=optax.adam(0.05), num_epochs=250, progress_bar=False)


@pytest.fixture(scope="module")
def poisson_posterior(poisson_data):
    model = poisson_ar1(mu=POISSON_TRUTH["mu"], sigma=POISSON_TRUTH["sigma"], priors={"phi": dist.Uniform(-1.0, 1.0)})
    return SSM(model).sample_posterior(jax.random.PRNGKey(1), poisson_data, method=MomentMatching(rule=UKF()),
                                       num_warmup=400, num_samples=400, num_chains=2, progress_bar=False)


@pytest.mark.slow
def test_poisson_phi_by_nuts_through_moment_matching(poisson_posterior, poisson_profile, poisson_exact):
    """NUTS on the moment-matching-marginalised model: converged (split r-hat < 1.05, no
    divergences) and truth within 4 posterior sd. The draws' mean and sd equal the grid
    quadrature of the same posterior (the approximate likelihood times the flat prior) to
    0.3 sd and 20% (Monte Carlo error ~sd/sqrt(ESS) ~0.07 sd), and lie within the
    approximation's allowance of the exact grid posterior."""
    post = poisson_posterior
    draws = np.asarray(post.samples["phi"])  # (chains, draws)
    assert post.num_divergences == 0
    assert float(split_gelman_rubin(draws)) < 1.05
    mean, sd = draws.mean(), draws.std()
    grid_mean, grid_sd, _ = grid_moments(PHI_GRID, poisson_profile)
    _report("phi NUTS (MomentMatching(UKF))", mean=mean, sd=sd, r_hat=float(split_gelman_rubin(draws)),
            grid_mean=grid_mean, grid_sd=grid_sd, exact_mean=poisson_exact["mean"], exact_sd=poisson_exact["sd"])
    assert abs(mean - POISSON_TRUTH["phi"]) < SD_MULTIPLIER * sd
    assert abs(mean - grid_mean) < 0.3 * grid_sd
    assert abs(sd / grid_sd - 1) < 0.2
    assert abs(mean - poisson_exact["mean"]) < APPROXIMATION_SD * poisson_exact["sd"]
    assert abs(sd / poisson_exact["sd"] - 1) < APPROXIMATION_SD_RATIO


@pytest.mark.slow
def test_poisson_phi_by_sgd_through_moment_matching(poisson_data, poisson_sgd, poisson_posterior, poisson_exact):
    """fit_sgd from phi = 0.5: converged (loss flat over the last 20 epochs), at scipy's
    maximiser of the same approximate likelihood (to 1e-3), within the approximation's
    allowance of the exact MLE, within 4 posterior sd of the truth and within 0.5 sd of the
    posterior mean (flat prior: mean and MLE differ by O(sd^2 x skewness))."""
    params, losses = poisson_sgd
    phi = float(params["phi"])
    assert params["mu"] == POISSON_TRUTH["mu"] and params["sigma"] == POISSON_TRUTH["sigma"]  # frozen
    losses = np.asarray(losses)
    assert losses[-1] < losses[0]
    assert np.ptp(losses[-20:]) < 1e-6 * abs(losses[-1])
    ssm = SSM(poisson_ar1())
    nll = jax.jit(lambda p: -ssm.log_likelihood({**POISSON_TRUTH, "phi": p}, poisson_data,
                                                method=MomentMatching(rule=UKF())))
    res = optimize.minimize_scalar(lambda p: float(nll(p)), bounds=(0.6, 0.98), method="bounded",
                                   options={"xatol": 1e-6})
    draws = np.asarray(poisson_posterior.samples["phi"])
    sd = draws.std()
    _report("phi fit_sgd (MomentMatching(UKF))", estimate=phi, scipy_max=res.x, exact_mle=poisson_exact["mle"],
            posterior_mean=draws.mean(), posterior_sd=sd, final_loss=losses[-1])
    assert abs(phi - res.x) < 1e-3
    assert abs(phi - poisson_exact["mle"]) < APPROXIMATION_SD * poisson_exact["sd"]
    assert abs(phi - POISSON_TRUTH["phi"]) < SD_MULTIPLIER * sd
    assert abs(phi - draws.mean()) < 0.5 * sd


# -- slow: the pendulum ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pendulum_profile(pendulum_data):
    """UKF log-likelihood of r on R_GRID (g, q_c at their true values)."""
    return _profile(SSM(pendulum()), PENDULUM_TRUTH, "r", R_GRID, pendulum_data, UKF())


@pytest.fixture(scope="module")
def pendulum_sgd(pendulum_data):
    start = {**PENDULUM_TRUTH, "r": 0.6}
    return SSM(pendulum()).fit_sgd(start, pendulum_data, method=UKF(), frozen=("g", "q_c"),
                                   optimizer=optax.adam(0.05), num_epochs=200, progress_bar=False)


@pytest.fixture(scope="module")
def pendulum_posterior(pendulum_data):
    ssm = SSM(pendulum(priors={"r": dist.HalfNormal(1.0)}))
    return ssm.sample_posterior(jax.random.PRNGKey(1), pendulum_data, method=UKF(), num_warmup=300, num_samples=400,
                                num_chains=2, progress_bar=False)


@pytest.mark.slow
def test_pendulum_r_by_nuts_through_ukf(pendulum_posterior, pendulum_profile):
    """NUTS on the UKF-marginalised pendulum: converged, truth within 4 posterior sd, and
    mean/sd equal to the grid quadrature of the same posterior (UKF likelihood times the
    HalfNormal(1) prior): mean within 0.3 sd (Monte Carlo error ~0.07 sd), sd within 20%."""
    post = pendulum_posterior
    draws = np.asarray(post.samples["r"])
    assert post.num_divergences == 0
    assert float(split_gelman_rubin(draws)) < 1.05
    mean, sd = draws.mean(), draws.std()
    grid_mean, grid_sd, _ = grid_moments(R_GRID, pendulum_profile + stats.halfnorm.logpdf(R_GRID))
    _report("r NUTS (UKF)", mean=mean, sd=sd, r_hat=float(split_gelman_rubin(draws)), grid_mean=grid_mean,
            grid_sd=grid_sd)
    assert abs(mean - PENDULUM_TRUTH["r"]) < SD_MULTIPLIER * sd
    assert abs(mean - grid_mean) < 0.3 * grid_sd
    assert abs(sd / grid_sd - 1) < 0.2


@pytest.mark.slow
def test_pendulum_r_by_sgd_through_ukf(pendulum_data, pendulum_sgd, pendulum_posterior, pendulum_profile):
    """fit_sgd from r = 0.6: converged, at scipy's maximiser of the UKF likelihood (to 1e-3),
    within 4 posterior sd of the truth and 0.5 sd of the posterior mean; and the UKF's
    maximiser within 0.25 sd of that of the more accurate Gauss-Hermite (order 5) filter."""
    params, losses = pendulum_sgd
    r = float(params["r"])
    assert params["g"] == PENDULUM_TRUTH["g"] and params["q_c"] == PENDULUM_TRUTH["q_c"]
    losses = np.asarray(losses)
    assert np.ptp(losses[-20:]) < 1e-6 * abs(losses[-1])
    ssm = SSM(pendulum())
    maximisers = {}
    for name, method in (("ukf", UKF()), ("gh", GaussHermite(order=5))):
        nll = jax.jit(lambda v, method=method: -ssm.log_likelihood({**PENDULUM_TRUTH, "r": v}, pendulum_data,
                                                                  method=method))
        maximisers[name] = optimize.minimize_scalar(lambda v: float(nll(v)), bounds=(0.1, 0.6), method="bounded",
                                                    options={"xatol": 1e-6}).x
    draws = np.asarray(pendulum_posterior.samples["r"])
    sd = draws.std()
    _report("r fit_sgd (UKF)", estimate=r, scipy_max_ukf=maximisers["ukf"], scipy_max_gh5=maximisers["gh"],
            posterior_mean=draws.mean(), posterior_sd=sd)
    assert abs(r - maximisers["ukf"]) < 1e-3
    assert abs(maximisers["ukf"] - R_GRID[np.argmax(pendulum_profile)]) < R_GRID[1] - R_GRID[0]
    assert abs(maximisers["ukf"] - maximisers["gh"]) < 0.25 * sd
    assert abs(r - PENDULUM_TRUTH["r"]) < SD_MULTIPLIER * sd
    assert abs(r - draws.mean()) < 0.5 * sd


# -- slow: EM through the approximate smoothers ----------------------------------------------


@pytest.mark.slow
def test_poisson_phi_by_em_through_moment_matching(poisson_data, poisson_posterior, poisson_exact):
    """fit_em (generalised M-step on the moment-matching smoother's expected log joint) from
    phi = 0.5: converged (last two log-likelihoods within 1e-6 nats), within the
    approximation's allowance of the exact MLE and within 4 posterior sd of the truth. Its
    fixed point is not the approximate likelihood's maximiser (the E-step is approximate),
    so it is compared with the exact MLE, not with fit_sgd."""
    params, lls = SSM(poisson_ar1()).fit_em({**POISSON_TRUTH, "phi": 0.5}, poisson_data,
                                            method=MomentMatching(rule=UKF()), frozen=("mu", "sigma"), num_iters=30,
                                            progress_bar=False)
    phi, lls = float(params["phi"]), np.asarray(lls)
    sd = np.asarray(poisson_posterior.samples["phi"]).std()
    _report("phi fit_em (MomentMatching(UKF))", estimate=phi, exact_mle=poisson_exact["mle"], final_loglik=lls[-1])
    assert abs(lls[-1] - lls[-2]) < 1e-6
    assert lls[-1] > lls[0]
    assert abs(phi - poisson_exact["mle"]) < APPROXIMATION_SD * poisson_exact["sd"]
    assert abs(phi - POISSON_TRUTH["phi"]) < SD_MULTIPLIER * sd


@pytest.mark.slow
def test_pendulum_r_by_em_through_ukf(pendulum_data, pendulum_posterior, pendulum_profile):
    """fit_em through the unscented smoother from r = 0.6: converged, within 4 posterior sd of
    the truth and within 1 posterior sd of the UKF likelihood's maximiser on the grid (an
    approximate E-step moves the fixed point, by much less than the data's uncertainty)."""
    params, lls = SSM(pendulum()).fit_em({**PENDULUM_TRUTH, "r": 0.6}, pendulum_data, method=UKF(),
                                         frozen=("g", "q_c"), num_iters=30, progress_bar=False)
    r, lls = float(params["r"]), np.asarray(lls)
    sd = np.asarray(pendulum_posterior.samples["r"]).std()
    _report("r fit_em (UKF)", estimate=r, grid_max_ukf=R_GRID[np.argmax(pendulum_profile)], final_loglik=lls[-1])
    assert abs(lls[-1] - lls[-2]) < 1e-6
    assert abs(r - PENDULUM_TRUTH["r"]) < SD_MULTIPLIER * sd
    assert abs(r - R_GRID[np.argmax(pendulum_profile)]) < sd + (R_GRID[1] - R_GRID[0]) / 2
