"""Global sites as optimisation variables: constraints, unconstrained space, log prior.

A model's global sites are ``numpyro.param`` sites (constraint from
``constraint=``) and ``numpyro.sample`` sites (constraint: the prior's
support). Optimisers work on unconstrained values mapped through NumPyro's
``biject_to``, so a variance stays positive and a covariance positive definite.
Frozen sites are never transformed: they stay bit-for-bit at their values.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from ..models.tracing import ScanInterceptor, SiteNames


@dataclasses.dataclass(frozen=True)
class GlobalSite:
    name: str
    kind: str  # "param" or "sample"
    constraint: object


def global_sites(model, args, kwargs, names: SiteNames, latent=None, obs=None):
    """``({name: GlobalSite}, {name: initial value of each param site})``."""
    interceptor = ScanInterceptor(names=names, latent=latent, obs=obs)
    with handlers.seed(rng_seed=0), interceptor:
        model(*args, **kwargs)
    sites, initial = {}, {}
    for name in names.globals:
        msg = interceptor.outer_sites[name]
        if msg["type"] == "param":
            constraint = msg["kwargs"].get("constraint", constraints.real)
            initial[name] = msg["value"]
        else:
            constraint = msg["fn"].support
        sites[name] = GlobalSite(name, msg["type"], constraint)
    return sites, initial


def check_frozen(frozen, sites) -> tuple:
    if isinstance(frozen, str):
        frozen = (frozen,)
    frozen = tuple(frozen)
    unknown = [f for f in frozen if f not in sites]
    if unknown:
        raise ValueError(f"frozen names {unknown} are not global sites of the model (global sites: {list(sites)})")
    return frozen


def complete_params(params, sites, initial) -> dict:
    """``params`` with missing ``numpyro.param`` sites at their initial values; checks finiteness."""
    params = dict(params or {})
    unknown = [k for k in params if k not in sites]
    if unknown:
        raise ValueError(f"params has entries {unknown} that are not global sites of the model (global sites: {list(sites)})")
    missing = [k for k, s in sites.items() if k not in params and s.kind == "sample"]
    if missing:
        raise ValueError(f"no value for the global sample site(s) {missing}: pass them in params "
                         "(ssm.init_params(key, ...) returns a complete dict)")
    full = {k: jnp.asarray(params[k]) if k in params else jnp.asarray(initial[k]) for k in sites}
    for k, v in full.items():
        if not isinstance(v, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(v))):  # numpy: no compilation
            raise ValueError(f"the initial value of global site {k!r} is not finite: {np.asarray(v)}")
    return full


def split_frozen(params: dict, frozen) -> tuple:
    """(free, fixed): the sites an optimiser moves and those it must not."""
    return ({k: v for k, v in params.items() if k not in frozen}, {k: v for k, v in params.items() if k in frozen})


def to_unconstrained(params: dict, sites) -> dict:
    return {k: biject_to(sites[k].constraint).inv(v) for k, v in params.items()}


def to_constrained(free: dict, sites) -> dict:
    return {k: biject_to(sites[k].constraint)(v) for k, v in free.items()}


def log_prior(outer_sites, names: SiteNames):
    """Sum of the log densities of the model's global sample sites (the init state excluded)."""
    total = jnp.zeros(())
    for name, msg in outer_sites.items():
        if msg["type"] == "sample" and name != names.init:
            total = total + jnp.sum(msg["fn"].log_prob(msg["value"]))
    return total
