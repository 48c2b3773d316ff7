"""``marginalize``: a NumPyro model with the latent path integrated out."""

from __future__ import annotations

import functools

import numpyro
from numpyro import handlers

from .inference import DEFAULT_BACKEND
from .inference.base import Backend, Capability, require, require_key
from .models.tracing import ScanInterceptor, discover


def marginalize(model, method: Backend = DEFAULT_BACKEND, latent=None, obs=None):
    """Return ``model`` with its latent path (initial state included) integrated out.

    The returned function has the model's signature. The scan over time is
    replaced by ``numpyro.factor(<emission site name>, log_predictive)``, a
    (T,) vector of one-step-ahead log predictive densities whose sum is the
    marginal log-likelihood computed by ``method``; the initial-state site keeps
    its name but is observed with a placeholder value and no density, so the
    only latent sites left are the global ones. NUTS, SVI, ``Predictive`` and
    ``numpyro.infer.util.log_density`` run on it unchanged. What the scan
    returns (carry and stacked outputs) is NaN in the marginal model: the path
    is not sampled. Sampling backends take their key from the enclosing
    ``numpyro.handlers.seed``.
    """
    require(method, Capability.LIKELIHOOD, needed_by="marginalize")

    @functools.wraps(model)
    def marginal_model(*args, **kwargs):
        with handlers.block():  # the probe run must not reach the caller's handlers
            names = discover(model, args, kwargs, latent, obs)

        def add_factor(problem, rng_key):
            require_key(method, rng_key, "run the marginal model under numpyro.handlers.seed")
            numpyro.factor(names.obs, method.log_predictive(problem, rng_key if method.requires_key else None))

        with ScanInterceptor(names=names, on_scan=add_factor):
            return model(*args, **kwargs)

    return marginal_model
