"""EM that stops improving in float32 says so (issue 18): an ``EMStallWarning`` naming x64.

The model is the trap a user fell into: a 13-state local linear trend + 11 dummy-seasonal
states (monthly), fitted by the generalised M-step, on a CO2-like series
(315 + 0.1 t + 3 sin(2 pi t / 12) + random-walk drift + noise). In float32 its EM stops
changing the log-likelihood at all (gains exactly 0) while float64 keeps climbing from the
very same parameters and the log-likelihood's gradient is 10x the warning's threshold.
"""

import contextlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan
from numpyro.distributions import constraints

import ssmppl
from ssmppl.learning.em import EMStallWarning, stalled_at
from ssmppl.models import local_level

SEASONS = 12
DZ = 2 + SEASONS - 1  # level, slope, 11 seasonal states


def _matrices():
    F = np.zeros((DZ, DZ))
    F[0, 0] = F[0, 1] = F[1, 1] = 1.0  # level += slope
    F[2, 2:] = -1.0  # the seasonal effects of 12 consecutive months sum to zero
    for k in range(3, DZ):
        F[k, k - 1] = 1.0
    H = np.zeros(DZ)
    H[0] = H[2] = 1.0
    return F, H


def trend_seasonal(y=None, T=None):
    sigmas = numpyro.param("sigmas", jnp.array([0.5, 0.05, 0.2]), constraint=constraints.positive)
    r = numpyro.param("r", jnp.asarray(0.5), constraint=constraints.positive)
    F, H = (jnp.asarray(a, sigmas.dtype) for a in _matrices())
    # The lagged seasonal states are deterministic copies; a tiny noise keeps Q positive definite.
    scale = jnp.concatenate([sigmas, jnp.full(DZ - 3, 1e-4, sigmas.dtype)])

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(F @ z_prev, scale).to_event(1))
        numpyro.sample("y", dist.Normal(H @ z, r), obs=y_t)
        return z, None

    m0 = jnp.zeros(DZ, sigmas.dtype).at[0].set(315.0)
    z0 = numpyro.sample("z0", dist.Normal(m0, 10.0 * jnp.ones(DZ, sigmas.dtype)).to_event(1))
    scan(step, z0, y, length=T)


def co2_like(T):
    rng = np.random.default_rng(0)
    t = np.arange(T)
    return (315 + 0.1 * t + 3 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 0.3, T)
            + np.cumsum(rng.normal(0, 0.1, T)))


@contextlib.contextmanager
def float64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def _fit(ssm, params, y, num_iters, tol=None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted, lls = ssm.fit_em(params, y, num_iters=num_iters, tol=tol, progress_bar=False)
    stalls = [w for w in caught if issubclass(w.category, EMStallWarning)]
    return fitted, np.asarray(lls, np.float64), stalls


def test_stalled_at_finds_the_last_rise():
    eps = float(np.finfo(np.float32).eps)
    assert stalled_at([-10.0, -9.0, -8.5, -8.5, -8.5, -8.5], np.float32) == 3
    assert stalled_at([-10.0, -9.0, -8.5, -8.5, -8.5], np.float32) is None  # two flat changes only
    assert stalled_at([-10.0, -9.0, -8.5, -8.5, -8.49], np.float32) is None
    # Falling counts as flat (EM never lowers an exact likelihood: that is rounding too) ...
    assert stalled_at([-10.0, -9.0, -8.6, -8.7, -8.8, -8.9], np.float32) == 3
    # ... and so does a rise below 4 float epsilons of |log-lik|, per dtype.
    tiny = [-100.0, -99.0] + [-99.0 + 2 * eps * 99 * k for k in range(1, 5)]
    assert stalled_at(tiny, np.float32) == 2
    assert stalled_at(tiny, np.float64) is None
    assert stalled_at([-1.0, -1.0], np.float32, window=1) == 1


@pytest.mark.slow  # ~20 s: 120 float32 EM iterations of a 13-state model
def test_float32_em_stall_on_trend_seasonal_warns(x32):
    y = jnp.asarray(co2_like(120), jnp.float32)
    ssm = ssmppl.SSM(trend_seasonal)
    fitted, lls, stalls = _fit(ssm, None, y, 120)
    assert len(stalls) == 1, [str(w.message) for w in stalls]
    message = str(stalls[0].message)
    assert 'jax.config.update("jax_enable_x64", True)' in message and "float32" in message
    stall = int(message.split("since iteration ")[1].split(" ")[0])
    # the log-likelihood is exactly flat from there (not a slow climb mistaken for a stall)
    assert stall < 117 and np.all(np.diff(lls[stall - 1:]) <= 0)
    # float64 climbs from the very parameters float32 stalled at: the stall is precision, not a maximum
    with float64():
        p64 = {k: jnp.asarray(v, jnp.float64) for k, v in fitted.items()}
        _, lls64, stalls64 = _fit(ssm, p64, jnp.asarray(co2_like(120)), 10)
    assert not stalls64
    assert lls64[-1] - lls64[0] > 0.05


# Where float32 EM stalls in the slow test (T = 120, 120 iterations from the model's initial values),
# bit for bit (float32 rounding decides whether the M-step still moves, so decimal copies would not do).
STALL_BITS = {"r": 1048951310, "sigmas": [1036662395, 1007020292, 1023537255]}


def _stall_point():
    return {k: jnp.asarray(np.asarray(v, np.uint32).view(np.float32)) for k, v in STALL_BITS.items()}


def test_float64_em_from_float32_stall_point_climbs_without_warning(x64):
    """Where float32 EM stalls, float64 keeps raising the log-likelihood, every iteration by far more
    than rounding, and does not warn: the stall is precision, not a maximum."""
    ssm = ssmppl.SSM(trend_seasonal)
    start = {k: jnp.asarray(v, jnp.float64) for k, v in _stall_point().items()}
    _, lls, stalls = _fit(ssm, start, jnp.asarray(co2_like(120)), 8)
    assert not stalls
    gains = np.diff(lls)
    assert np.all(gains > 1e3 * np.finfo(np.float64).eps * abs(lls[-1])), gains


def test_float32_em_from_its_stall_point_warns(x32):
    """The fast version of the slow test: float32 EM restarted where it stalled stays exactly flat and
    warns, with or without tol (a tol "convergence" at float32's rounding level is the stall, not a
    maximum: the float64 test below climbs from the same point)."""
    ssm = ssmppl.SSM(trend_seasonal)
    y = jnp.asarray(co2_like(120), jnp.float32)
    for tol in (None, 1e-6):
        _, lls, stalls = _fit(ssm, _stall_point(), y, 6, tol=tol)
        assert len(stalls) == 1, (tol, lls)
        message = str(stalls[0].message)
        assert 'jax.config.update("jax_enable_x64", True)' in message and "float32" in message
        assert np.all(np.diff(lls) <= 4 * np.finfo(np.float32).eps * abs(lls[-1])), np.diff(lls)


def _local_level_fit(dtype, num_iters, tol=None):
    rng = np.random.default_rng(1)
    y = np.cumsum(rng.normal(0, 0.3, 200)) + rng.normal(0, 1, 200)
    ssm = ssmppl.SSM(local_level(initial_variance=100.0))
    start = {"sigma2_obs": jnp.asarray(0.9, dtype), "sigma2_level": jnp.asarray(0.02, dtype)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted, lls = ssm.fit_em(start, jnp.asarray(y, dtype), num_iters=num_iters, tol=tol, progress_bar=False)
    stalls = [w for w in caught if issubclass(w.category, EMStallWarning)]
    return ssm, y, fitted, np.asarray(lls, np.float64), stalls


def _float64_mle(ssm, y):
    """Oracle: the float64 maximum of the exact Kalman log-likelihood over log-variances, by SciPy's
    BFGS (not EM); and the float64 log-likelihood at given parameters."""
    from scipy.optimize import minimize

    def loglik(u):
        return ssm.log_likelihood({"sigma2_obs": jnp.exp(u[0]), "sigma2_level": jnp.exp(u[1])}, jnp.asarray(y))

    def at(p):
        with float64():
            return float(loglik(jnp.log(jnp.asarray([float(p["sigma2_obs"]), float(p["sigma2_level"])]))))

    with float64():
        value_and_grad = jax.jit(jax.value_and_grad(lambda u: -loglik(u)))
        fun = lambda u: tuple(np.asarray(v, np.float64) for v in value_and_grad(jnp.asarray(u)))  # noqa: E731
        best = minimize(fun, np.log([0.9, 0.02]), jac=True, method="BFGS", options={"gtol": 1e-9})
    return -best.fun, at


def test_converged_em_does_not_warn_in_float32_or_float64(x32):
    """Local level run to convergence: the log-likelihood goes flat (so the stall check does compute
    the gradient) and the fit is at the maximum (SciPy's float64 BFGS): no warning, in either dtype."""
    ssm, y, fitted32, lls32, stalls32 = _local_level_fit(jnp.float32, 60)
    assert stalled_at(lls32, jnp.float32) is not None  # flat at the end: the gradient decided
    assert not stalls32
    best, loglik64 = _float64_mle(ssm, y)
    # float32 EM stopped short of the maximum by far less than a log-likelihood unit: no stall worth a warning
    assert best - loglik64(fitted32) < 1e-3, (best, loglik64(fitted32))
    with float64():
        _, _, fitted64, lls64, stalls64 = _local_level_fit(jnp.float64, 600)
    assert stalled_at(lls64, jnp.float64) is not None
    assert not stalls64
    assert best - loglik64(fitted64) < 1e-8


def test_tol_converged_em_does_not_warn(x32):
    """A fit stopped by tol at a maximum: no warning (float32 and float64), and it is near SciPy's maximum."""
    ssm, y, fitted32, lls32, stalls32 = _local_level_fit(jnp.float32, 300, tol=1e-6)
    assert len(lls32) < 300 and not stalls32
    with float64():
        _, _, fitted64, lls64, stalls64 = _local_level_fit(jnp.float64, 300, tol=1e-10)
    assert len(lls64) < 300 and not stalls64
    best, loglik64 = _float64_mle(ssm, y)
    assert best - loglik64(fitted32) < 1e-2 and best - loglik64(fitted64) < 1e-6
