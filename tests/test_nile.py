"""The Nile local-level model: ssmppl's fit_em / fit_sgd against statsmodels' MLE.

Durbin & Koopman's estimates (sigma2_eps ~ 15099, sigma2_eta ~ 1469.1) maximise
the exact diffuse likelihood (statsmodels ``use_exact_diffuse=True``). ssmppl
has no diffuse filter: ``local_level`` gives mu_0 the known prior N(0, KAPPA)
with KAPPA = 1e10. Its log-likelihood is then the exact diffuse one with the
first observation's -log(2 pi)/2 replaced by log N(y_1; 0, KAPPA + s2_eta +
s2_eps), up to O(s2 / KAPPA) ~ 1e-6 (measured: 1.5e-6 nats), so the maximisers
agree to ~1e-6 relative. Footings compared:

* same model: statsmodels with the same known initialisation (state at t=1 ~
  N(0, KAPPA + s2_eta), no burn-in) gives ssmppl's log-likelihood to 1e-6 nats
  (measured ~1e-11);
* same estimator: the fitted variances vs statsmodels' exact-diffuse MLE, and
  ssmppl's log-likelihood converted to the exact diffuse footing vs statsmodels'.

Tolerances: rtol 1e-3 on the variances. Measured errors are ~1e-5 for EM (600
iterations from var(y); EM converges linearly here, ~2e-5 left after 350
iterations, and statsmodels' own BFGS optimum differs from Nelder-Mead's by
~7e-6) and ~6e-6 for Adam; 1e-3 leaves a wide margin for platform differences
while still failing on a wrong M-step or a biased likelihood (a prior of 1e6
instead of 1e10 moves sigma2_level by 0.4%). Log-likelihoods within 1e-3 nats
(measured < 1e-5).
"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

sm = pytest.importorskip("statsmodels.api")
from scipy.stats import norm  # noqa: E402
from statsmodels.datasets import nile  # noqa: E402

import ssmppl  # noqa: E402
from ssmppl.models import local_level  # noqa: E402

KAPPA, M0 = 1e10, 0.0
PUBLISHED = {"sigma2_obs": 15099.0, "sigma2_level": 1469.1}  # Durbin & Koopman (2012), section 2.10


@pytest.fixture(scope="module")
def nile_y():
    return nile.load_pandas().data["volume"].to_numpy(float)


@pytest.fixture(scope="module")
def statsmodels_mle(nile_y):
    """(exact diffuse model, {sigma2_obs, sigma2_level}, log-likelihood) at statsmodels' MLE."""
    model = sm.tsa.UnobservedComponents(nile_y, level="local level", use_exact_diffuse=True)
    fit = model.fit(method="bfgs", gtol=1e-8, disp=False)
    s2_obs, s2_level = fit.params  # param_names: sigma2.irregular, sigma2.level
    return model, {"sigma2_obs": s2_obs, "sigma2_level": s2_level}, fit.llf


def _as_params(d):
    return {k: jnp.asarray(float(v)) for k, v in d.items()}


def _exact_diffuse_from_ssmppl(ll, nile_y, p):
    """ssmppl's log-likelihood with mu_0 ~ N(M0, KAPPA), first-observation term swapped for the diffuse one."""
    first = norm.logpdf(nile_y[0], M0, np.sqrt(KAPPA + float(p["sigma2_obs"]) + float(p["sigma2_level"])))
    return float(ll) - first - 0.5 * np.log(2 * np.pi)


def _check_fit(name, fitted, nile_y, statsmodels_mle):
    model, mle, llf = statsmodels_mle
    for k in ("sigma2_obs", "sigma2_level"):
        assert float(fitted[k]) == pytest.approx(mle[k], rel=1e-3), (name, k, float(fitted[k]), mle[k])
        assert float(fitted[k]) == pytest.approx(PUBLISHED[k], rel=1e-3), (name, k)
    # statsmodels' exact diffuse log-likelihood at ssmppl's estimate is its maximum
    at_fit = model.loglike(np.array([float(fitted["sigma2_obs"]), float(fitted["sigma2_level"])]))
    assert at_fit == pytest.approx(llf, abs=1e-3)
    # ssmppl's own log-likelihood at its estimate, on the exact diffuse footing, is statsmodels' maximum
    ssm = ssmppl.SSM(local_level(initial_mean=M0, initial_variance=KAPPA))
    ll = ssm.log_likelihood(fitted, jnp.asarray(nile_y))
    assert _exact_diffuse_from_ssmppl(ll, nile_y, fitted) == pytest.approx(llf, abs=1e-3)


def test_loglik_matches_statsmodels_known_initialisation(x64, nile_y):
    """Same model, same footing: statsmodels with ssmppl's known prior, pushed one transition ahead."""
    ssm = ssmppl.SSM(local_level(initial_mean=M0, initial_variance=KAPPA))
    for s2_obs, s2_level in [(15098.5, 1469.2), (30000.0, 100.0), (5000.0, 5000.0)]:
        model = sm.tsa.UnobservedComponents(nile_y, level="local level")
        model.ssm.initialize_known(np.array([M0]), np.array([[KAPPA + s2_level]]))
        model.loglikelihood_burn = 0
        expected = model.loglike(np.array([s2_obs, s2_level]))
        got = ssm.log_likelihood(_as_params({"sigma2_obs": s2_obs, "sigma2_level": s2_level}), jnp.asarray(nile_y))
        assert float(got) == pytest.approx(expected, abs=1e-6)
        # and the converted value is the exact diffuse log-likelihood
        diffuse = sm.tsa.UnobservedComponents(nile_y, level="local level", use_exact_diffuse=True)
        converted = _exact_diffuse_from_ssmppl(got, nile_y, {"sigma2_obs": s2_obs, "sigma2_level": s2_level})
        assert converted == pytest.approx(diffuse.loglike(np.array([s2_obs, s2_level])), abs=1e-4)


def test_em_matches_statsmodels_mle(x64, nile_y, statsmodels_mle):
    ssm = ssmppl.SSM(local_level(initial_mean=M0, initial_variance=KAPPA))
    y = jnp.asarray(nile_y)
    start = {"sigma2_obs": jnp.var(y), "sigma2_level": jnp.var(y)}
    fitted, lls = ssm.fit_em(start, y, num_iters=600, m_step_iters=5, progress_bar=False)
    assert lls.shape == (600,)
    assert bool(jnp.all(jnp.diff(lls) >= -1e-9 * jnp.abs(lls[1:])))  # EM is monotone (up to round-off)
    _check_fit("EM", fitted, nile_y, statsmodels_mle)


def test_squarem_em_reaches_the_mle_with_a_tenth_of_the_e_steps(x64, nile_y, statsmodels_mle):
    """SQUAREM: 20 cycles (60 E-steps) reach statsmodels' MLE, which plain EM needs ~600 iterations
    for (120 plain iterations are still 5% off in sigma2_level); the log-likelihoods stay monotone."""
    ssm = ssmppl.SSM(local_level(initial_mean=M0, initial_variance=KAPPA))
    y = jnp.asarray(nile_y)
    start = {"sigma2_obs": jnp.var(y), "sigma2_level": jnp.var(y)}
    fitted, lls = ssm.fit_em(start, y, num_iters=20, m_step_iters=5, progress_bar=False, acceleration="squarem")
    assert lls.shape == (20,)
    assert bool(jnp.all(jnp.diff(lls) >= -1e-9 * jnp.abs(lls[1:])))
    _check_fit("SQUAREM", fitted, nile_y, statsmodels_mle)
    plain, _ = ssm.fit_em(start, y, num_iters=60, m_step_iters=5, progress_bar=False)
    assert abs(float(plain["sigma2_level"]) / statsmodels_mle[1]["sigma2_level"] - 1) > 1e-2
    with pytest.raises(ValueError, match="acceleration must be None or 'squarem'"):
        ssm.fit_em(start, y, num_iters=2, progress_bar=False, acceleration="aitken")


def test_sgd_matches_statsmodels_mle(x64, nile_y, statsmodels_mle):
    """Adam on the log-variances (the positive constraint's unconstrained space): no data scaling needed."""
    ssm = ssmppl.SSM(local_level(initial_mean=M0, initial_variance=KAPPA))
    y = jnp.asarray(nile_y)
    start = {"sigma2_obs": jnp.var(y), "sigma2_level": jnp.var(y)}
    fitted, losses = ssm.fit_sgd(start, y, optimizer=optax.adam(0.1), num_epochs=500, progress_bar=False)
    assert losses.shape == (500,)
    # the last loss is the log-likelihood (per observation) at the parameters the last step started from
    assert float(-losses[-1] * y.size) == pytest.approx(float(ssm.log_likelihood(fitted, y)), abs=1e-3)
    _check_fit("SGD", fitted, nile_y, statsmodels_mle)
