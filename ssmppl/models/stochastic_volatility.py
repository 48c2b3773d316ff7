"""The stochastic-volatility model, as an ordinary NumPyro program."""

from __future__ import annotations

import math
from typing import Mapping, Optional

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.distributions import constraints

from ._sites import check_priors, global_site

STOCHASTIC_VOLATILITY_SITES = ("mu", "rho", "sigma")


def stochastic_volatility(mu: float = 2 * math.log(0.5992), rho: float = 0.9702, sigma: float = 0.178,
                          priors: Optional[Mapping] = None):
    """A NumPyro model of the stochastic-volatility model (Pitt & Shephard 1999)

        x_0 ~ N(mu, sigma^2 / (1 - rho^2))          (the stationary distribution)
        x_t ~ N(mu + rho (x_{t-1} - mu), sigma^2)
        y_t ~ N(0, exp(x_t / 2)^2)                   (standard deviation exp(x_t / 2))

    as ``model(y=None, T=None)`` with returns ``y`` (T,) (NaN = missing): x_t is
    the log-variance of y_t. The parametrisation y_t = beta exp(h_t / 2) eps_t with
    h_t = rho h_{t-1} + sigma eta_t is the same model with mu = 2 log(beta). The
    defaults are Pitt & Shephard's values beta = 0.5992, rho = 0.9702, sigma = 0.178,
    the usual set-up for daily GBP/USD log-returns in percent (``100 * diff(log(rate))``,
    e.g. the 1997-98 series in ``../shared/data/``). Sites in
    the scan: ``x`` (the log-variance, a scalar) and ``y``; ``x0`` is the initial
    state. The emission mean does not depend on the state (its variance does), so
    Cov(x_t, y_t | y_{1:t-1}) = 0 and the Gaussian-approximation backends (EKF, UKF,
    MomentMatching) learn nothing about x_t from y_t: their filtered means stay at
    the prior's. Use a sampling backend, or ``sample_posterior(..., method=None)``
    (joint NUTS over the parameters and the path).

    Global sites ``mu`` (real), ``rho`` (in (-1, 1)) and ``sigma`` (positive) are
    ``numpyro.param`` with the keyword values as initial values;
    ``priors={"rho": dist.Uniform(-1.0, 1.0), ...}`` makes the named sites
    ``numpyro.sample`` sites with those priors instead, for ``sample_posterior``.
    """
    priors = check_priors(priors, STOCHASTIC_VOLATILITY_SITES, "stochastic_volatility")

    def model(y=None, T=None):
        mu_ = global_site("mu", mu, constraints.real, priors)
        rho_ = global_site("rho", rho, constraints.interval(-1.0, 1.0), priors)
        sigma_ = global_site("sigma", sigma, constraints.positive, priors)

        def step(x_prev, y_t):
            x = numpyro.sample("x", dist.Normal(mu_ + rho_ * (x_prev - mu_), sigma_))
            numpyro.sample("y", dist.Normal(0.0, jnp.exp(x / 2)), obs=y_t)
            return x, None

        x0 = numpyro.sample("x0", dist.Normal(mu_, sigma_ / jnp.sqrt(1 - rho_**2)))
        scan(step, x0, y, length=T)

    model.__name__ = "stochastic_volatility"
    return model
