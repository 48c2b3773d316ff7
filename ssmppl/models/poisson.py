"""Counts with an AR(1) latent log-rate, as an ordinary NumPyro program."""

from __future__ import annotations

from typing import Mapping, Optional

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.distributions import constraints

from ._sites import check_priors, global_site

POISSON_AR1_SITES = ("mu", "phi", "sigma")


def poisson_ar1(mu: float = 0.0, phi: float = 0.9, sigma: float = 0.3, priors: Optional[Mapping] = None):
    """A NumPyro model of Poisson counts with a stationary AR(1) log-rate

        z_0 ~ N(mu, sigma^2 / (1 - phi^2))          (the stationary distribution)
        z_t ~ N(mu + phi (z_{t-1} - mu), sigma^2)
        y_t ~ Poisson(exp(z_t))

    as ``model(y=None, T=None)`` with counts ``y`` (T,) (floats; NaN = missing;
    ``ssm.sample`` returns integer counts: cast them to float before marking
    entries missing).
    Sites in the scan: ``z`` (the log-rate, a scalar) and ``y``; ``z0`` is the
    initial state. The emission is not Gaussian: filter with
    ``MomentMatching(...)`` (E[y|z] = Var[y|z] = exp(z)).

    Global sites ``mu`` (real), ``phi`` (in (-1, 1)) and ``sigma`` (positive) are
    ``numpyro.param`` with the keyword values as initial values;
    ``priors={"phi": dist.Uniform(-1.0, 1.0), ...}`` makes the named sites
    ``numpyro.sample`` sites with those priors instead, for ``sample_posterior``.
    """
    priors = check_priors(priors, POISSON_AR1_SITES, "poisson_ar1")

    def model(y=None, T=None):
        mu_ = global_site("mu", mu, constraints.real, priors)
        phi_ = global_site("phi", phi, constraints.interval(-1.0, 1.0), priors)
        sigma_ = global_site("sigma", sigma, constraints.positive, priors)

        def step(z_prev, y_t):
            z = numpyro.sample("z", dist.Normal(mu_ + phi_ * (z_prev - mu_), sigma_))
            numpyro.sample("y", dist.Poisson(jnp.exp(z)), obs=y_t)
            return z, None

        z0 = numpyro.sample("z0", dist.Normal(mu_, sigma_ / jnp.sqrt(1 - phi_**2)))
        scan(step, z0, y, length=T)

    model.__name__ = "poisson_ar1"
    return model
