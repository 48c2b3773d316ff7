"""Finite but untrustworthy filter results warn (issue 18): ``Backend.result_warnings``, emitted by
``SSM.filter`` / ``SSM.smooth``.

- EnKF: a diverged ensemble (an ETKF without localisation on Lorenz-96) is flagged from its
  innovations, with no truth: checked against the simulated truth's RMSE (``ensemble_health``), and
  the innovation test's false-alarm rate against the chi2 law.
- EnSF: the reverse SDE's Euler-Maruyama step is unstable when num_steps is too small for the
  observations' curvature: the curvature is checked against H^T R^-1 H, the stability limit against
  the exact linear recursion, and the warning against the blow-up it predicts (means vs Kalman's).
"""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ssmppl import SSM
from ssmppl.demo import seed003_params
from ssmppl.diagnostics import EnsembleWarning, ensemble_health
from ssmppl.inference import EnKF, EnSF, Kalman, Localization
from ssmppl.inference.ensemble.enkf import innovation_divergence
from ssmppl.maths.score import stable_num_steps
from ssmppl.models import linear_gaussian_ssm, lorenz96


def _caught(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [w for w in caught if issubclass(w.category, EnsembleWarning)]


# -- the hook --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Flagging(Kalman):
    """Kalman whose result_warnings flags every result (the hook's contract, not a real check)."""

    def result_warnings(self, result, problem):
        return (UserWarning(f"flagged T={problem().length}, {result.filtered_means.shape}"),)


def test_filter_and_smooth_emit_the_backends_warnings_at_the_callers_line(x64):
    ssm = SSM(linear_gaussian_ssm(2, 10))
    params = seed003_params(jax.random.PRNGKey(3))
    y = ssm.sample(jax.random.PRNGKey(0), params, T=5)[1]
    for call in (ssm.filter, ssm.smooth):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call(params, y, method=_Flagging())
        assert [str(w.message) for w in caught] == ["flagged T=5, (5, 2)"]
        assert caught[0].filename == __file__  # stacklevel: the user's call
    _, none = _caught(lambda: ssm.filter(params, y))  # the default hook: nothing
    assert none == []


# -- EnKF: divergence from the innovations ------------------------------------------------------------

def test_innovation_divergence_false_alarms_and_power_under_the_chi2_law():
    """chi2_t ~ chi2(m_t) (a consistent filter; m_t in 0..5 observed components): no warning in 2000
    replications of T = 40 (the bound: ratio > 4 and p < 1e-6). Innovations with 10x the predicted
    variance (chi2_t ~ 10 chi2(m_t)): a warning every time, naming the step and the remedies."""
    rng = np.random.default_rng(0)
    m = rng.integers(0, 6, size=(2000, 40))
    chi2 = rng.chisquare(np.maximum(m, 1)) * (m > 0)
    assert all(innovation_divergence(c, k, "EnKF") is None for c, k in zip(chi2, m))
    messages = [innovation_divergence(10 * c, k, "EnKF") for c, k in zip(chi2[:200], m[:200])]
    assert all(msg and "from step 21 on" in msg and "inflation" in msg and "letkf" in msg for msg in messages)


def _lorenz96_truth_and_data(dim, T, seed=0):
    """Truth (T, dim) after a spin-up on the attractor, and y = truth + N(0, 1) (NumPy RK4: independent
    of the model's integrator)."""
    rng = np.random.default_rng(seed)
    f = lambda x: (np.roll(x, -1) - np.roll(x, 2)) * np.roll(x, 1) - x + 8.0  # noqa: E731

    def rk4(x, dt=0.05):
        k1 = f(x)
        k2 = f(x + dt / 2 * k1)
        k3 = f(x + dt / 2 * k2)
        return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + f(x + dt * k3))

    x = 8.0 + rng.standard_normal(dim)
    for _ in range(500):
        x = rk4(x)
    truth = []
    for _ in range(T):
        x = rk4(x)
        truth.append(x)
    truth = np.array(truth)
    return truth, truth + rng.standard_normal(truth.shape)


def test_diverged_etkf_on_lorenz96_warns_and_a_stable_letkf_does_not(x32):
    """Lorenz-96, 40 variables all observed, 20 members: the ETKF without inflation or localisation
    diverges (the truth says so: ensemble_health with truth), the LETKF with inflation tracks; only the
    first warns, though the filter sees no truth."""
    dim, T = 40, 120
    truth, y = _lorenz96_truth_and_data(dim, T)
    ssm, key = SSM(lorenz96(dim=dim)), jax.random.PRNGKey(1)
    diverged, flagged = _caught(lambda: ssm.filter({}, jnp.asarray(y, jnp.float32), method=EnKF(20, keep_ensembles=True),
                                                   key=key))
    assert not ensemble_health(diverged.filtered_ensembles, truth, spin_up=T // 2).healthy
    assert len(flagged) == 1 and "EnKF(20, 'etkf') diverged" in str(flagged[0].message)
    stable_method = EnKF(20, "letkf", inflation=1.05, localization=Localization.on_ring(4, dim), keep_ensembles=True)
    stable, quiet = _caught(lambda: ssm.filter({}, jnp.asarray(y, jnp.float32), method=stable_method, key=key))
    health = ensemble_health(stable.filtered_ensembles, truth, spin_up=T // 2)
    assert health.healthy and np.mean(health.rmse[T // 2:]) < 0.5
    assert quiet == []


# -- EnSF: the reverse SDE's step size ------------------------------------------------------------------

def _amplification(n, curvature, eps_alpha=0.5, eps_beta=0.025):
    """max_i |1 - dt c(t_i)| from the schedule's formulas (module docstring of ensf), written out here."""
    t = 1.0 - np.arange(n) / n
    alpha = 1 - (1 - eps_alpha) * t
    beta2 = eps_beta + (1 - eps_beta) * t
    b = -(1 - eps_alpha) / alpha
    sigma2 = (1 - eps_beta) - 2 * b * beta2
    return np.max(np.abs(1 - (b + sigma2 * (1 / beta2 + (1 - t) * curvature)) / n))


def _seed003():
    ssm = SSM(linear_gaussian_ssm(2, 10))
    params = seed003_params(jax.random.PRNGKey(3))
    _, y = ssm.sample(jax.random.PRNGKey(0), params, T=20)
    H, R = np.asarray(params["H"]), np.asarray(params["R"])
    curvature = np.linalg.eigvalsh(H.T @ np.linalg.solve(R, H)).max()
    kalman = np.asarray(ssm.filter(params, y).filtered_means)
    return ssm, params, y, curvature, kalman


def test_ensf_too_few_reverse_steps_warns_naming_num_steps(x64):
    """Seed 003's model (R = 0.1 I, 10 channels): curvature lambda_max(H^T R^-1 H) = 140, for which 50
    reverse steps amplify (the exact linear recursion's factor > 1) and the analysis blows up; the
    warning names the stability limit, which the recursion confirms; 100 steps: no warning, Kalman-like."""
    ssm, params, y, curvature, kalman = _seed003()
    needed = stable_num_steps(50, 0.5, 0.025, curvature)
    assert _amplification(needed, curvature) <= 1 < _amplification(needed - 1, curvature)
    assert 50 < needed < 100

    unstable, flagged = _caught(lambda: ssm.filter(params, y, method=EnSF(20, num_steps=50), key=jax.random.PRNGKey(1)))
    np.testing.assert_allclose(unstable.likelihood_curvature, curvature, rtol=1e-6)
    assert len(flagged) == 1
    message = str(flagged[0].message)
    assert "EnSF(20, num_steps=50)" in message and f"use num_steps >= {needed}" in message

    stable, quiet = _caught(lambda: ssm.filter(params, y, method=EnSF(20, num_steps=100), key=jax.random.PRNGKey(1)))
    assert quiet == []
    error = lambda result: np.sqrt(np.mean((np.asarray(result.filtered_means) - kalman) ** 2))  # noqa: E731
    assert error(stable) < 0.3 and error(unstable) > 10 * error(stable)  # the warning was right


def test_ensf_blown_up_analysis_warns_naming_the_step(x32):
    """float32, an observation of 1e20 at step 4 (finite, but its square is not): the stability
    condition holds (linear Gaussian emission), yet the analysis spread explodes at that step; the
    warning names the step and the remedies."""
    ssm, params, y, _, _ = _seed003()
    y = np.asarray(y, np.float32).copy()
    y[3, 1] = 1e20
    result, flagged = _caught(lambda: ssm.filter(params, jnp.asarray(y), method=EnSF(20, num_steps=100),
                                                 key=jax.random.PRNGKey(1)))
    with np.errstate(divide="ignore", invalid="ignore"):  # later steps: the forecast of a blown-up ensemble
        spread_growth = np.asarray(result.filtered_spread) / np.asarray(result.predicted_spread)
    assert spread_growth[3] > 1e6 and np.all(spread_growth[:3] < 10)  # the blow-up is real, and at step 4
    assert len(flagged) == 1
    message = str(flagged[0].message)
    assert "blew up" in message and "check the observations at step 4" in message and "clip=1000" in message
