"""Lorenz systems observed with noise, as ordinary NumPyro programs, and a small RK4 integrator."""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.distributions import constraints

from ._sites import check_priors, global_site

LORENZ63_SITES = ("sigma", "rho", "beta", "process_noise", "obs_noise")


def rk4_step(f: Callable, x, dt):
    """One classical Runge–Kutta (RK4) step of dx/dt = f(x) (autonomous), step size dt."""
    k1 = f(x)
    k2 = f(x + (dt / 2) * k1)
    k3 = f(x + (dt / 2) * k2)
    k4 = f(x + dt * k3)
    return x + (dt / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


def integrate(f: Callable, x, dt, num_steps: int):
    """``num_steps`` RK4 steps of size dt from x (a ``fori_loop``: differentiable, vmappable)."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if num_steps == 1:
        return rk4_step(f, x, dt)
    return jax.lax.fori_loop(0, num_steps, lambda _, x: rk4_step(f, x, dt), x)


def lorenz63_vector_field(x, sigma, rho, beta):
    """dx/dt of the Lorenz-63 system at x = (x, y, z)."""
    return jnp.stack([sigma * (x[1] - x[0]), x[0] * (rho - x[2]) - x[1], x[0] * x[1] - beta * x[2]])


def _observed_indices(observe, dim):
    if isinstance(observe, str):
        if observe != "all":
            raise ValueError(f'observe must be "all" or a sequence of state indices, got {observe!r}')
        return None
    idx = tuple(int(i) for i in observe)
    if not idx or any(not 0 <= i < dim for i in idx) or len(set(idx)) != len(idx):
        raise ValueError(f"observe must list distinct state indices in [0, {dim}), got {observe!r}")
    return idx


def lorenz63(dt: float = 0.01, steps_per_obs: int = 10, sigma: float = 10.0, rho: float = 28.0,
             beta: float = 8.0 / 3.0, obs_noise: float = 1.0, process_noise: float = 0.1,
             observe: Union[str, Sequence[int]] = "all", initial_mean=(1.0, 1.0, 1.0), initial_scale: float = 1.0,
             priors: Optional[Mapping] = None):
    """A NumPyro model of the Lorenz-63 system observed with Gaussian noise

        z_0 ~ N(initial_mean, initial_scale^2 I)            (known: not fitted)
        z_t ~ N(Phi(z_{t-1}), process_noise^2 I)
        y_t ~ N(z_t[observe], obs_noise^2 I)

    where Phi is ``steps_per_obs`` RK4 steps of size ``dt`` (``integrate``) of
    dx/dt = sigma (y - x), dy/dt = x (rho - z) - y, dz/dt = x y - beta z; the
    observations are ``dt * steps_per_obs`` time units apart and the process noise
    is added once per observation interval. ``observe``: "all" (dy = 3) or a
    sequence of state indices, e.g. ``(0,)`` for x only (dy = its length).

    ``model(y=None, T=None)`` with ``y`` (T, dy) (NaN = missing). Sites in the
    scan: ``z`` (the state, shape (3,)) and ``y``; ``z0`` is the initial state.
    Global sites ``sigma``, ``rho``, ``beta``, ``process_noise``, ``obs_noise``
    (standard deviations), all positive, are ``numpyro.param`` with the keyword
    values as initial values; ``priors={"rho": dist.Normal(28.0, 2.0), ...}``
    makes the named sites ``numpyro.sample`` sites with those priors instead.
    """
    priors = check_priors(priors, LORENZ63_SITES, "lorenz63")
    idx = _observed_indices(observe, 3)
    if not isinstance(steps_per_obs, int) or steps_per_obs < 1:
        raise ValueError(f"steps_per_obs must be a positive int, got {steps_per_obs!r}")

    def model(y=None, T=None):
        s = global_site("sigma", sigma, constraints.positive, priors)
        rh = global_site("rho", rho, constraints.positive, priors)
        b = global_site("beta", beta, constraints.positive, priors)
        q = global_site("process_noise", process_noise, constraints.positive, priors)
        r = global_site("obs_noise", obs_noise, constraints.positive, priors)
        m0 = jnp.asarray(initial_mean, jnp.result_type(float))
        f = lambda x: lorenz63_vector_field(x, s, rh, b)  # noqa: E731

        def step(z_prev, y_t):
            mean = integrate(f, z_prev, dt, steps_per_obs)
            z = numpyro.sample("z", dist.Normal(mean, q).to_event(1))
            observed = z if idx is None else z[jnp.array(idx)]
            numpyro.sample("y", dist.Normal(observed, r).to_event(1), obs=y_t)
            return z, None

        z0 = numpyro.sample("z0", dist.Normal(m0, initial_scale).to_event(1))
        scan(step, z0, y, length=T)

    model.__name__ = "lorenz63"
    return model
