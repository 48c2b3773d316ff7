"""The seed-003 workflow on a linear Gaussian SSM: simulate, smooth, forecast, plot."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from .inference import Kalman
from .models import linear_gaussian_ssm
from .ssm import SSM


def rotation(theta):
    return jnp.array([[jnp.cos(theta), -jnp.sin(theta)], [jnp.sin(theta), jnp.cos(theta)]])


def seed003_params(key):
    """2-d state, 10-d emissions: F = 0.99 x a slow rotation, Q = 0.01 I, R = 0.1 I, H ~ N(0, 1)."""
    return {
        "initial_mean": jnp.zeros(2),
        "initial_cov": jnp.eye(2),
        "F": 0.99 * rotation(jnp.pi / 20),
        "b": jnp.zeros(2),
        "Q": 0.01 * jnp.eye(2),
        "H": jax.random.normal(key, (10, 2)),
        "d": jnp.zeros(10),
        "R": 0.1 * jnp.eye(10),
    }


def run_demo(out_dir: str, num_timesteps: int = 100, num_forecast: int = 50, seed: int = 0) -> dict:
    """Run the demo, write ``emissions_and_forecast.png`` into ``out_dir``; return the numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting import plot_emissions_and_forecast

    k_params, k_sample = jax.random.split(jax.random.PRNGKey(seed))
    ssm = SSM(linear_gaussian_ssm(state_dim=2, emission_dim=10))
    params = seed003_params(k_params)
    _, emissions = ssm.sample(k_sample, params, T=num_timesteps)

    smoothed = ssm.smooth(params, emissions, method=Kalman())
    recon_means, recon_sds = ssm.posterior_predictive(params, emissions)
    forecast = ssm.forecast(params, num_forecast, emissions)
    forecast_sds = jnp.sqrt(jnp.diagonal(forecast.emission_covariances, axis1=-2, axis2=-1))

    os.makedirs(out_dir, exist_ok=True)
    ax = plot_emissions_and_forecast(emissions, recon_means, recon_sds, forecast.emission_means, forecast_sds,
                                     title="ssmppl demo: Kalman smoother and 50-step forecast (true parameters)")
    path = os.path.join(out_dir, "emissions_and_forecast.png")
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=110)
    plt.close(ax.figure)
    return {
        "marginal_loglik": float(smoothed.marginal_loglik),
        "figure": path,
        "coverage_2sd": float(np.mean(np.abs(np.asarray(emissions) - np.asarray(recon_means)) < 2 * np.asarray(recon_sds))),
    }
