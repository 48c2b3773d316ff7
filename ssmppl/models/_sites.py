"""Global sites of the built-in models: a ``numpyro.param`` by default, a prior on request."""

from __future__ import annotations

from typing import Mapping, Optional

import jax.numpy as jnp
import numpyro
from numpyro.distributions import Distribution


def check_priors(priors: Optional[Mapping], names, model_name: str) -> dict:
    """Validate a ``priors`` argument: a dict site name -> NumPyro distribution."""
    priors = dict(priors or {})
    unknown = sorted(set(priors) - set(names))
    if unknown:
        raise ValueError(f"priors for unknown sites {unknown}; the sites of {model_name} are {list(names)}")
    for name, prior in priors.items():
        if not isinstance(prior, Distribution):
            raise TypeError(f"the prior of {name!r} must be a numpyro distribution, got {prior!r}")
    return priors


def global_site(name: str, initial_value, constraint, priors: Mapping):
    """``numpyro.sample(name, prior)`` if the site has a prior, else
    ``numpyro.param(name, initial_value, constraint=constraint)``."""
    if name in priors:
        return numpyro.sample(name, priors[name])
    return numpyro.param(name, jnp.asarray(initial_value, dtype=jnp.result_type(float)), constraint=constraint)
