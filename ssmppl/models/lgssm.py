"""The linear Gaussian state-space model, written as an ordinary NumPyro program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.distributions import constraints

from ..maths.lgssm_em import LinearGaussianMStep


def linear_gaussian_ssm(state_dim: int, emission_dim: int, input_dim: int = 0, **initial_values):
    """A NumPyro model of the linear Gaussian SSM

        z_0 ~ N(initial_mean, initial_cov)
        z_t ~ N(F z_{t-1} + b + B u_t, Q)
        y_t ~ N(H z_t + d + D u_t, R)

    as ``model(y=None, u=None, T=None)`` with ``y`` (T, emission_dim) (NaN =
    missing) and ``u`` (T, input_dim). Global sites are ``numpyro.param``:
    ``initial_mean, initial_cov, F, b, Q, H, d, R`` (and ``B, D`` when
    ``input_dim > 0``); covariances are constrained positive definite. Initial
    values (dynamax's defaults: F = 0.99 I, Q = R = 0.1 I, H standard normal
    drawn from the seed key) can be overridden by keyword, e.g. ``F=...``.
    """
    dz, dy, du = state_dim, emission_dim, input_dim
    defaults = {
        "initial_mean": jnp.zeros(dz),
        "initial_cov": jnp.eye(dz),
        "F": 0.99 * jnp.eye(dz),
        "b": jnp.zeros(dz),
        "Q": 0.1 * jnp.eye(dz),
        "H": lambda key: jax.random.normal(key, (dy, dz)),
        "d": jnp.zeros(dy),
        "R": 0.1 * jnp.eye(dy),
    }
    if du:
        defaults["B"] = jnp.zeros((dz, du))
        defaults["D"] = jnp.zeros((dy, du))
    unknown = set(initial_values) - set(defaults)
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)}; the model has {sorted(defaults)}")
    init = {**defaults, **initial_values}
    pd = constraints.positive_definite

    def model(y=None, u=None, T=None):
        m0 = numpyro.param("initial_mean", init["initial_mean"])
        P0 = numpyro.param("initial_cov", init["initial_cov"], constraint=pd)
        F = numpyro.param("F", init["F"])
        b = numpyro.param("b", init["b"])
        Q = numpyro.param("Q", init["Q"], constraint=pd)
        H = numpyro.param("H", init["H"])
        d = numpyro.param("d", init["d"])
        R = numpyro.param("R", init["R"], constraint=pd)
        B = numpyro.param("B", init["B"]) if du else None
        D = numpyro.param("D", init["D"]) if du else None
        if du and u is None:
            raise ValueError(f"this model has inputs: pass u of shape (T, {du})")

        def step(z_prev, xs):
            y_t, u_t = xs
            mean_z = F @ z_prev + b + (B @ u_t if du else 0.0)
            z = numpyro.sample("z", dist.MultivariateNormal(mean_z, Q))
            mean_y = H @ z + d + (D @ u_t if du else 0.0)
            numpyro.sample("y", dist.MultivariateNormal(mean_y, R), obs=y_t)
            return z, None

        z0 = numpyro.sample("z0", dist.MultivariateNormal(m0, P0))
        scan(step, z0, (y, u if du else None), length=T)

    model.__name__ = f"linear_gaussian_ssm_{dz}x{dy}" + (f"x{du}" if du else "")
    # SSM.fit_em's closed-form M-step: which global site plays which role, and where the inputs are.
    roles = ["F", "b", "Q", "H", "d", "R", "initial_mean", "initial_cov"] + (["B", "D"] if du else [])
    model.closed_form_m_step = LinearGaussianMStep({r: r for r in roles}, (lambda p: p.xs[1]) if du else None)
    return model
