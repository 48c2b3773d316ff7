"""``marginalize``: a NumPyro model with the latent path integrated out."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import constraints

from .inference import DEFAULT_BACKEND
from .inference.base import Backend, Capability, require, require_key
from .models.tracing import ScanInterceptor, discover_observed


class MarginalEmissions(dist.Distribution):
    """The observations' density in a marginal model: batch shape (T,), event shape the
    emission site's. ``log_prob`` returns the filter's one-step-ahead log predictive densities
    log p(y_t | y_{1:t-1}) (T,), computed from the very observations the site holds, whatever
    value it is given; it is only ever observed (it cannot be sampled: the path is not drawn)."""

    pytree_data_fields = ("log_predictive",)

    def __init__(self, log_predictive, event_shape=(), site="y"):
        self.log_predictive = log_predictive
        self.site = site
        super().__init__(batch_shape=jnp.shape(log_predictive), event_shape=tuple(event_shape), validate_args=False)

    @constraints.dependent_property(is_discrete=False)
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    def sample(self, key, sample_shape=()):
        raise ValueError(
            f"the emission site {self.site!r} of a marginalised model (ssmppl.marginalize) holds the observations "
            "and cannot be sampled from them. For emissions given parameter draws call the marginal model "
            "without observations (y=None, T=...: it then runs the original model, path included), or use "
            "ssm.sample_posterior(...).predictive(key), which draws paths given the data"
        )

    def log_prob(self, value):
        return self.log_predictive


def marginalize(model, method: Backend = DEFAULT_BACKEND, latent=None, obs=None):
    """Return ``model`` with its latent path (initial state included) integrated out.

    The returned function has the model's signature. With observations, the scan over time is
    replaced by the emission site, observed with the data in the model's own shape
    ``(T, *obs_shape)``, whose log density is the (T,) vector of one-step-ahead log predictive
    densities computed by ``method`` (``MarginalEmissions``; their sum is the marginal
    log-likelihood), and the initial-state site is hidden from outer handlers: the only latent
    sites left are the global ones. NUTS, SVI, ``Predictive`` and
    ``numpyro.infer.util.log_density`` / ``log_likelihood`` run on it unchanged; ``Predictive``
    returns the observations as the emission site (as for any NumPyro model given ``obs``).
    What the scan returns (carry and stacked outputs) is NaN: the path is not sampled.

    Without observations (the emission site's ``obs`` is None, e.g. ``y=None, T=100``) there
    is nothing to integrate against, and the marginal model runs ``model`` itself: initial
    state, path and emissions are sampled, so ``Predictive(marginalize(model), samples)(key,
    T=100)`` returns emissions ``(draws, T, *obs_shape)`` given the parameter draws, each with a
    fresh path (for paths and emissions given the data, ``Posterior.predictive``). Sampling
    backends take their key from the enclosing ``numpyro.handlers.seed``.
    """
    require(method, Capability.LIKELIHOOD, needed_by="marginalize")

    @functools.wraps(model)
    def marginal_model(*args, **kwargs):
        with handlers.block():  # the probe run must not reach the caller's handlers
            names, observed = discover_observed(model, args, kwargs, latent, obs)
        if not observed:
            return model(*args, **kwargs)

        def add_emissions(problem, rng_key):
            require_key(method, rng_key, "run the marginal model under numpyro.handlers.seed")
            log_predictive = method.log_predictive(problem, rng_key if method.requires_key else None)
            T = problem.observations.shape[0]
            y = jnp.reshape(problem.observations, (T, *problem.obs_shape))
            numpyro.sample(names.obs, MarginalEmissions(log_predictive, problem.obs_shape, names.obs), obs=y)

        # The interceptor gives the initial-state site a NaN placeholder and no density; hiding it
        # from the caller's handlers keeps that placeholder out of Predictive's and MCMC's output.
        hide = [names.init] if names.init is not None else []
        with handlers.block(hide=hide):
            with ScanInterceptor(names=names, on_scan=add_emissions):
                return model(*args, **kwargs)

    return marginal_model
