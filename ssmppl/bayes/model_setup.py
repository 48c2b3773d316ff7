"""The NumPyro model a sampler runs: checked priors, fixed sites, missing data.

``sample_posterior`` and ``fit_svi`` infer the model's global ``numpyro.sample``
sites. Before anything compiles, the model is checked here: it must have at
least one such site, every prior must be proper, and the data must trace. Sites
the user holds fixed (``params=``) are substituted (``numpyro.param``) or
conditioned on (``numpyro.sample``). The latent path is then either integrated
out by a filter (``ssmppl.marginalize``) or, for joint sampling, kept with
missing observations masked.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.contrib.control_flow.scan import scan_wrapper
from numpyro.primitives import Messenger

from ..errors import ModelStructureError
from ..inference.distributions import masked_log_prob
from ..marginal import marginalize
from ..models.tracing import ScanInterceptor, SiteNames, discover


def _base_distribution(d):
    """Strip the wrappers that do not change whether a prior is proper."""
    while isinstance(d, (dist.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)):
        d = d.base_dist
    return d


def is_improper(d) -> bool:
    base = _base_distribution(d)
    return isinstance(base, (dist.ImproperUniform, dist.Unit))


class _RejectImproperPriors(Messenger):
    """Raise before an improper global prior is sampled (its ``sample`` does not exist)."""

    def process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"] and is_improper(msg["fn"]):
            raise ModelStructureError(
                f"the prior of global site {msg['name']!r} is improper ({type(_base_distribution(msg['fn'])).__name__}): "
                "give it a proper prior (e.g. dist.Normal(0, 10) or dist.HalfNormal(10) for a scale). "
                "The posterior may be improper, chains cannot be initialised from it, and "
                "simulation-based checks need prior draws"
            )


@dataclasses.dataclass(frozen=True)
class SamplerSetup:
    """What a sampler needs to know about the model.

    names: the model's state-space sites; inferred: the global sample sites the
    sampler draws; fixed: values of every other global site (``numpyro.param``
    initial values unless overridden, and sample sites given in ``params``).
    """

    names: SiteNames
    inferred: tuple
    fixed: dict
    conditioned: tuple = ()


def sampler_setup(ssm, args, kwargs, params=None) -> SamplerSetup:
    """Check the model for posterior sampling; raise a clear error if it cannot be sampled."""
    params = dict(params or {})
    # One discovery pass; improper priors are refused before they are sampled.
    interceptor = ScanInterceptor(latent=ssm.latent, obs=ssm.obs)
    with handlers.seed(rng_seed=0), interceptor, _RejectImproperPriors():
        ssm.model(*args, **kwargs)
    names = interceptor.found or discover(ssm.model, args, kwargs, ssm.latent, ssm.obs)  # (raises: no scan)
    outer = {k: interceptor.outer_sites[k] for k in names.globals}
    unknown = [k for k in params if k not in outer]
    if unknown:
        raise ValueError(f"params has entries {unknown} that are not global sites of the model "
                         f"(global sites: {list(names.globals)})")
    for k, v in params.items():
        if not isinstance(v, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(jnp.asarray(v)))):
            raise ValueError(f"the fixed value of global site {k!r} is not finite: {np.asarray(v)}")
    sample_sites = [k for k, m in outer.items() if m["type"] == "sample"]
    inferred = tuple(k for k in sample_sites if k not in params)
    if not inferred:
        raise ModelStructureError(
            "the model has no global numpyro.sample site to infer"
            + (f" (the sample sites {sample_sites} are all fixed by params)" if sample_sites else "")
            + ": NUTS and SVI draw the global numpyro.sample sites and hold numpyro.param sites fixed. "
            "Give the parameters priors, e.g. numpyro.sample('sigma', dist.HalfNormal(1.0)), "
            "or fit numpyro.param sites with ssm.fit_em / ssm.fit_sgd"
        )
    fixed = {k: jnp.asarray(params[k]) if k in params else jnp.asarray(m["value"])
             for k, m in outer.items() if m["type"] == "param" or k in params}
    conditioned = tuple(k for k in params if outer[k]["type"] == "sample")
    return SamplerSetup(names=names, inferred=inferred, fixed=fixed, conditioned=conditioned)


class _MaskMissingObservations(Messenger):
    """Inside the scan body: the emission site's density counts observed components only.

    NaN marks a missing observation. The site's distribution is replaced by a
    factor holding log p(y_t observed components | z_t) (exact marginal for
    Gaussian emissions), so joint samplers see data with gaps as data.
    """

    def __init__(self, obs_site):
        self.obs_site = obs_site
        super().__init__()

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] == self.obs_site and msg["is_observed"]:
            fn, y = msg["fn"], msg["value"]
            shape = tuple(fn.shape())
            log_p = masked_log_prob(fn, jnp.reshape(jnp.asarray(y, jnp.result_type(float)), (-1,)), shape)
            msg["fn"] = dist.Unit(log_p)
            # A factor's value is empty (what numpyro.factor records); the step sees it in place of y_t.
            msg["value"] = jnp.zeros((0,), jnp.result_type(float))


class _MaskMissingInScan(Messenger):
    """Wraps the step function of the model's scan in ``_MaskMissingObservations``."""

    def __init__(self, fn=None, obs_site=None):
        self.obs_site = obs_site
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "control_flow" and msg["fn"] is scan_wrapper:
            f, *rest = msg["args"]
            obs_site = self.obs_site

            def masked_step(carry, x):
                with _MaskMissingObservations(obs_site):
                    return f(carry, x)

            msg["args"] = (masked_step, *rest)


def sampler_model(ssm, setup: SamplerSetup, method):
    """The NumPyro model the sampler runs: marginal (``method``) or joint (``method=None``),
    with fixed sites substituted or conditioned on."""
    if method is not None:
        model = marginalize(ssm.model, method, latent=ssm.latent, obs=ssm.obs)
        if method.requires_key and not method.noisy_likelihood:
            # A sampling backend whose likelihood is a smooth surrogate for a fixed key (EnKF): one fixed
            # key (common random numbers) makes the log density deterministic, so NUTS can use it.
            model = handlers.seed(model, rng_seed=0)
    else:
        model = _MaskMissingInScan(ssm.model, obs_site=setup.names.obs)
    observed = {k: v for k, v in setup.fixed.items() if k in setup.conditioned}
    params = {k: v for k, v in setup.fixed.items() if k not in setup.conditioned}
    # Fixed sample sites are conditioned on (observed), so the sampler does not draw them.
    return handlers.condition(handlers.substitute(model, data=params), data=observed)


def chain_sharding(num_chains):
    """Chains split over the available devices (JAX sharding), or None on one device."""
    devices = jax.devices()
    if len(devices) < 2 or num_chains % len(devices):
        return None
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    mesh = jax.make_mesh((len(devices),), ("chain",), axis_types=(AxisType.Auto,))
    return NamedSharding(mesh, PartitionSpec("chain"))


def split_draws(draws, setup, method):
    """(parameter draws, deterministic values, path draws (C, D, T, dz) or None)."""
    names = setup.names
    samples = {k: jnp.asarray(draws[k]) for k in setup.inferred}
    states = None
    if method is None:
        z = jnp.asarray(draws[names.latent])
        states = jnp.reshape(z, z.shape[:3] + (-1,))
    skip = set(setup.inferred) | {names.latent, names.obs, names.init}
    deterministic = {k: jnp.asarray(v) for k, v in draws.items() if k not in skip}
    return samples, deterministic, states
