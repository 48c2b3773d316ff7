"""The local-level model (random walk plus noise), written as an ordinary NumPyro program."""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.distributions import constraints


def local_level(initial_mean: float = 0.0, initial_variance: float = 1e6, sigma2_obs: float = 1.0,
                sigma2_level: float = 1.0):
    """A NumPyro model of the local-level model

        mu_0 ~ N(initial_mean, initial_variance)       (known: not fitted)
        mu_t = mu_{t-1} + eta_t,  eta_t ~ N(0, sigma2_level)
        y_t  = mu_t + eps_t,      eps_t ~ N(0, sigma2_obs)

    as ``model(y=None, T=None)`` with scalar observations ``y`` (T,) (NaN =
    missing). Global sites: ``numpyro.param`` ``sigma2_obs`` and
    ``sigma2_level``, constrained positive (initial values from the keywords).
    Sites in the scan: ``level`` (the state) and ``y``; ``level0`` is mu_0.

    A large ``initial_variance`` approximates the diffuse initialisation of
    Durbin & Koopman: the log-likelihood then contains the first observation's
    term log N(y_1; initial_mean, initial_variance + sigma2_level + sigma2_obs),
    which the exact diffuse likelihood replaces by -log(2 pi)/2. Keep
    ``initial_variance / sigma2_obs`` below about 1e4 in float32 (scale the data).
    """

    def model(y=None, T=None):
        s2_obs = numpyro.param("sigma2_obs", jnp.asarray(sigma2_obs), constraint=constraints.positive)
        s2_level = numpyro.param("sigma2_level", jnp.asarray(sigma2_level), constraint=constraints.positive)

        def step(mu_prev, y_t):
            mu = numpyro.sample("level", dist.Normal(mu_prev, jnp.sqrt(s2_level)))
            numpyro.sample("y", dist.Normal(mu, jnp.sqrt(s2_obs)), obs=y_t)
            return mu, None

        mu0 = numpyro.sample("level0", dist.Normal(initial_mean, jnp.sqrt(initial_variance)))
        scan(step, mu0, y, length=T)

    model.__name__ = "local_level"
    return model
