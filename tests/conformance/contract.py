"""The capability contract, as tests any backend gets by providing the ``backend_entry`` fixture
(``(name, backend)``): ``test_contract.py`` provides it for every backend exported by
``ssmppl.inference``; a new backend's test module provides it for its own and imports these
tests (``from tests.conformance.contract import *``), with no edit elsewhere.

- every capability a backend declares works through the facade, and agrees with the exact
  Kalman filter on a linear Gaussian model as far as the backend's nature allows (exact:
  1e-8; sampling: finite, within a loose Monte Carlo band);
- every capability it does not declare is refused by every entry point that needs it, with
  the one generated message (``ssmppl.inference.base.refusal``), which lists exactly the
  backends that declare it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.infer.util  # noqa: F401  (log_density)
import pytest
from numpyro import handlers

import ssmppl
from ssmppl.errors import CapabilityError
from ssmppl.inference import Capability, Kalman
from ssmppl.inference.base import backends_with, refusal
from ssmppl.models import linear_gaussian_ssm

T, DZ, DY = 6, 2, 2


def lg_params():
    return {"initial_mean": np.array([0.3, -0.2]), "initial_cov": np.array([[1.0, 0.2], [0.2, 0.5]]),
            "F": np.array([[0.9, 0.1], [-0.2, 0.8]]), "b": np.array([0.05, 0.0]),
            "Q": np.array([[0.1, 0.02], [0.02, 0.2]]), "H": np.array([[1.0, 0.5], [0.0, 1.0]]),
            "d": np.array([0.0, 0.1]), "R": np.array([[0.3, 0.0], [0.0, 0.2]])}


@pytest.fixture(scope="module")
def lg(x64_module):
    """A linear Gaussian model, its parameters, data and the exact answers (Kalman, float64)."""
    ssm = ssmppl.SSM(linear_gaussian_ssm(DZ, DY))
    params = lg_params()
    _, y = ssm.sample(jax.random.PRNGKey(3), params, T=T)
    exact = ssm.smooth(params, y, method=Kalman())
    return ssm, params, np.asarray(y), exact


def key_of(backend):
    return jax.random.PRNGKey(7) if backend.requires_key else None


def tolerance(backend):
    """(rtol, atol) of agreement with Kalman on the linear Gaussian model, by the backend's nature."""
    return (1e-8, 1e-10) if not backend.requires_key else (0.2, 0.2)


# The entry points that need each capability: (what the refusal says needs it, call).
def _calls(ssm, params, y, method, key):
    problem = ssm.state_space(params, y)
    return {
        Capability.LIKELIHOOD: [
            ("ssm.log_likelihood", lambda: ssm.log_likelihood(params, y, method=method, key=key)),
            ("fit_sgd", lambda: ssm.fit_sgd(params, y, method=method, key=key, num_epochs=1, progress_bar=False)),
            ("marginalize", lambda: ssmppl.marginalize(ssm.model, method)),
            ("log_predictive", lambda: method.log_predictive(problem, key)),
        ],
        Capability.SMOOTH: [
            ("ssm.smooth", lambda: ssm.smooth(params, y, method=method, key=key)),
            ("smooth", lambda: method.smooth(problem, key)),
        ],
        Capability.SAMPLE_STATES: [
            ("sample_states", lambda: method.sample_states(problem, jax.random.PRNGKey(0))),
        ],
        Capability.FORECAST: [
            ("ssm.forecast", lambda: ssm.forecast(params, 3, y, method=method, key=key)),
        ],
        Capability.POSTERIOR_PREDICTIVE: [
            ("posterior_predictive", lambda: method.posterior_predictive(problem, None)),
        ],
    }


def test_filter_agrees_with_kalman(x64, backend_entry, lg):
    _, method = backend_entry
    ssm, params, y, exact = lg
    result = ssm.filter(params, y, method=method, key=key_of(method))
    rtol, atol = tolerance(method)
    if Capability.LIKELIHOOD in method.capabilities:
        np.testing.assert_allclose(result.filtered_means, exact.filtered_means, rtol=rtol, atol=atol)
    else:  # a heuristic posterior (EnSF's damped likelihood score): within 3 Kalman sds
        sd = np.sqrt(np.diagonal(np.asarray(exact.filtered_covariances), axis1=1, axis2=2))
        assert (np.abs(np.asarray(result.filtered_means) - np.asarray(exact.filtered_means)) <= 3 * sd).all()
    if Capability.LIKELIHOOD in method.capabilities:
        assert result.log_predictive.shape == (T,)
        np.testing.assert_allclose(result.marginal_loglik, exact.marginal_loglik, rtol=rtol, atol=atol * 10)
        np.testing.assert_allclose(result.log_predictive.sum(), result.marginal_loglik, rtol=1e-10)
    else:  # absent, not None
        assert not hasattr(result, "marginal_loglik") and not hasattr(result, "log_predictive")


def test_declared_capabilities_work(x64, backend_entry, lg):
    _, method = backend_entry
    ssm, params, y, exact = lg
    key = key_of(method)
    rtol, atol = tolerance(method)
    caps = method.capabilities
    if Capability.LIKELIHOOD in caps:
        ll = ssm.log_likelihood(params, y, method=method, key=key)
        np.testing.assert_allclose(ll, exact.marginal_loglik, rtol=rtol, atol=atol * 10)
        # the marginal model's log density is the same likelihood
        marginal = ssmppl.marginalize(ssm.model, method)
        seeded = handlers.seed(marginal, 7) if method.requires_key else marginal
        log_joint, _ = numpyro.infer.util.log_density(seeded, (y,), {}, params)
        np.testing.assert_allclose(log_joint, exact.marginal_loglik, rtol=rtol, atol=atol * 10)
    if Capability.SMOOTH in caps:
        sm = ssm.smooth(params, y, method=method, key=key)
        np.testing.assert_allclose(sm.smoothed_means, exact.smoothed_means, rtol=rtol, atol=atol)
        assert sm.filtered.filtered_means.shape == (T, DZ)
    if Capability.SAMPLE_STATES in caps:
        problem = ssm.state_space(params, y)
        draw = method.sample_states(problem, jax.random.PRNGKey(1))
        assert draw.shape == (T, DZ) and bool(jnp.isfinite(draw).all())
        # a draw is near the smoothed path: within 6 smoothed sds at every step
        sd = np.sqrt(np.diagonal(np.asarray(exact.smoothed_covariances), axis1=1, axis2=2))
        assert (np.abs(np.asarray(draw) - np.asarray(exact.smoothed_means)) < 6 * sd + 0.5 * (sd > 0)).all()
    if Capability.FORECAST in caps:
        fc = ssm.forecast(params, 3, y, method=method, key=key)
        exact_fc = ssm.forecast(params, 3, y, method=Kalman())
        np.testing.assert_allclose(fc.state_means, exact_fc.state_means, rtol=rtol, atol=atol)
    if Capability.POSTERIOR_PREDICTIVE in caps:
        means, sds = ssm.posterior_predictive(params, y, method=method, key=key)
        exact_means, exact_sds = ssm.posterior_predictive(params, y, method=Kalman())
        np.testing.assert_allclose(means, exact_means, rtol=rtol, atol=atol)
        np.testing.assert_allclose(sds, exact_sds, rtol=rtol, atol=atol)


def test_undeclared_capabilities_are_refused_by_name(x64, backend_entry, lg):
    _, method = backend_entry
    ssm, params, y, _ = lg
    calls = _calls(ssm, params, y, method, key_of(method))
    missing = [c for c in Capability if c not in method.capabilities]
    for capability in missing:
        for needed_by, call in calls[capability]:
            with pytest.raises(CapabilityError) as info:
                call()
            message = str(info.value)
            # the one generated message: the backend, the capability, and exactly those that have it
            assert message.startswith(f"{type(method).__name__} has no {capability.value}")
            assert message == refusal(method, capability, message.split(", which ")[1].split(" needs")[0])
            listed = message.rsplit("Backends with one: ", 1)[1].split(", ")
            assert listed == backends_with(capability)
            assert type(method).__name__ not in listed


def test_refusal_lists_are_generated_from_the_declarations(backend_entry):
    _, method = backend_entry
    for capability in Capability:
        assert (type(method).__name__ in backends_with(capability)) == (capability in method.capabilities)
    assert "EnSF" not in backends_with(Capability.LIKELIHOOD)
    assert {"Kalman", "EKF", "BootstrapPF", "EnKF"} <= set(backends_with(Capability.LIKELIHOOD))


__all__ = ["lg", "test_filter_agrees_with_kalman", "test_declared_capabilities_work",
           "test_undeclared_capabilities_are_refused_by_name", "test_refusal_lists_are_generated_from_the_declarations"]
