"""The pendulum tracking benchmark of nonlinear Gaussian filtering, as an ordinary NumPyro program."""

from __future__ import annotations

from typing import Mapping, Optional

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.distributions import constraints

from ._sites import check_priors, global_site

PENDULUM_SITES = ("g", "q_c", "r")


def pendulum_dynamics(z, dt, g):
    """One explicit Euler step of the pendulum ODE a'' = -g sin(a): z = (angle, angular velocity)."""
    return jnp.stack([z[0] + z[1] * dt, z[1] - g * jnp.sin(z[0]) * dt])


def pendulum_noise_covariance(dt, q_c):
    """Q = q_c [[dt^3/3, dt^2/2], [dt^2/2, dt]]: white-noise acceleration of spectral density q_c
    integrated over one step."""
    return q_c * jnp.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]])


def _noise_scale_tril(dt, q_c):
    # Closed-form Cholesky factor of pendulum_noise_covariance (no factorisation per step).
    dt = jnp.asarray(dt, jnp.result_type(float))
    return jnp.sqrt(q_c) * jnp.array([[jnp.sqrt(dt**3 / 3), 0.0], [jnp.sqrt(3 * dt) / 2, jnp.sqrt(dt) / 2]])


def pendulum(dt: float = 0.0125, g: float = 9.8, q_c: float = 1.0, r: float = 0.3,
             initial_mean=(jnp.pi / 2, 0.0), initial_cov=0.1, priors: Optional[Mapping] = None):
    """A NumPyro model of the noisy pendulum (Särkkä 2013, Example 3.7; dynamax's EKF/UKF demo)

        z_0 ~ N(initial_mean, initial_cov)                 (known: not fitted)
        z_t ~ N(f(z_{t-1}), Q),  f(z) = (z_1 + z_2 dt, z_2 - g sin(z_1) dt)
        y_t ~ N(sin(z_{t,1}), r^2)

    with z = (angle, angular velocity) and Q = q_c [[dt^3/3, dt^2/2], [dt^2/2, dt]]
    (``pendulum_noise_covariance``), as ``model(y=None, T=None)`` with scalar
    observations ``y`` (T,) (NaN = missing). Sites in the scan: ``z`` (the state,
    shape (2,)) and ``y``; ``z0`` is the initial state. ``initial_cov`` is a
    (2, 2) matrix or a scalar (times the identity). dynamax's demo (dt = 0.0125,
    g = 9.8, q_c = 1, r = 0.3, states started at (pi/2, 0), filter prior
    covariance 0.1 I) gives the defaults; note that its initial moments are those
    of the first observed state, here z_1, one transition after z_0.

    Global sites ``g``, ``q_c`` (positive) and ``r`` (the observation noise
    standard deviation, positive) are ``numpyro.param`` with the keyword values as
    initial values, so ``fit_em``/``fit_sgd`` learn them (``frozen=("g",)`` keeps
    one fixed). ``priors={"r": dist.HalfNormal(1.0), ...}`` makes the named sites
    ``numpyro.sample`` sites with those priors instead, for ``sample_posterior``.
    """
    priors = check_priors(priors, PENDULUM_SITES, "pendulum")

    def model(y=None, T=None):
        g_ = global_site("g", g, constraints.positive, priors)
        q_c_ = global_site("q_c", q_c, constraints.positive, priors)
        r_ = global_site("r", r, constraints.positive, priors)
        L = _noise_scale_tril(dt, q_c_)
        m0 = jnp.asarray(initial_mean, jnp.result_type(float))
        P0 = jnp.asarray(initial_cov, jnp.result_type(float))
        P0 = P0 * jnp.eye(2) if P0.ndim == 0 else P0

        def step(z_prev, y_t):
            z = numpyro.sample("z", dist.MultivariateNormal(pendulum_dynamics(z_prev, dt, g_), scale_tril=L))
            numpyro.sample("y", dist.Normal(jnp.sin(z[0]), r_), obs=y_t)
            return z, None

        z0 = numpyro.sample("z0", dist.MultivariateNormal(m0, P0))
        scan(step, z0, y, length=T)

    model.__name__ = "pendulum"
    return model
