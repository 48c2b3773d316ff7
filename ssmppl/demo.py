"""The demo workflow on a linear Gaussian SSM, a 2-d rotating state observed through 10 noisy
channels (T = 100): simulate, smooth, forecast, fit, sample the posterior, plot.

(``seed003_*`` names the model after the project's seed task that defined it.)"""

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


def seed003_bayesian_model(H):
    """The demo's model (a 2-d rotating state, 10 noisy channels) with priors, as a NumPyro program: the emission matrix H
    (dy, 2) is known; the dynamics F (2 x 2) and the noise scales q, r
    (Q = q^2 I, R = r^2 I) get priors. With H known (full column rank) F, q and r
    are identifiable; with H unknown only similarity invariants of (F, H) would be.

    ``model(y=None, T=None)`` with y (T, dy). Truth in the demo: F = 0.99 x
    rotation(pi/20), q = 0.1, r = sqrt(0.1).
    """
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.control_flow import scan

    H = jnp.asarray(H)
    dz = H.shape[1]

    def model(y=None, T=None):
        F = numpyro.sample("F", dist.Normal(0.0, 1.0).expand([dz, dz]).to_event(2))
        q = numpyro.sample("q", dist.HalfNormal(0.5))
        r = numpyro.sample("r", dist.HalfNormal(1.0))

        def step(z_prev, y_t):
            z = numpyro.sample("z", dist.Normal(F @ z_prev, q).to_event(1))
            numpyro.sample("y", dist.Normal(H @ z, r).to_event(1), obs=y_t)
            return z, None

        z0 = numpyro.sample("z0", dist.Normal(jnp.zeros(dz), 1.0).to_event(1))
        scan(step, z0, y, length=T)

    model.__name__ = "seed003_bayesian"
    return model


def _hmc_section(params, emissions, true_states, out_dir, seed, num_warmup, num_samples, num_chains, progress_bar):
    """NUTS on F, q, r with the latent path integrated out; summary, trace plot, state posterior."""
    import arviz as az
    import matplotlib.pyplot as plt

    from .plotting import plot_state_posterior

    bayes = SSM(seed003_bayesian_model(params["H"]))
    posterior = bayes.sample_posterior(jax.random.PRNGKey(seed + 7), emissions, num_warmup=num_warmup,
                                       num_samples=num_samples, num_chains=num_chains, progress_bar=progress_bar)
    idata = posterior.to_arviz(key=jax.random.PRNGKey(seed + 8))
    var_names = ["F", "q", "r"]
    summary = az.summary(idata, var_names=var_names, hdi_prob=0.94)
    axes = az.plot_trace(idata, var_names=var_names, compact=True, figsize=(10, 6))
    fig = np.asarray(axes).ravel()[0].figure
    fig.suptitle("ssmppl demo: NUTS on F, q, r (latent path integrated out by the Kalman filter)")
    fig.tight_layout()
    trace_path = os.path.join(out_dir, "hmc_trace.png")
    fig.savefig(trace_path, dpi=100)
    plt.close(fig)
    axes = plot_state_posterior(idata.posterior["z"].values, truth=true_states,
                                title="ssmppl demo: latent state posterior (94% band) and the true path")
    states_path = os.path.join(out_dir, "state_posterior.png")
    axes[0].figure.tight_layout()
    axes[0].figure.savefig(states_path, dpi=100)
    plt.close(axes[0].figure)
    truth = {"F": np.asarray(params["F"]), "q": 0.1, "r": float(np.sqrt(0.1))}
    inside = {}
    for name, value in truth.items():
        lo = np.asarray(summary.filter(regex=f"^{name}(\\[|$)", axis=0)["hdi_3%"])
        hi = np.asarray(summary.filter(regex=f"^{name}(\\[|$)", axis=0)["hdi_97%"])
        v = np.ravel(value)
        inside[name] = bool(np.all((lo <= v) & (v <= hi)))
    # az.summary rounds r-hat to two decimals; the check against 1.01 needs the value itself
    max_rhat = max(float(v.max()) for v in az.rhat(idata, var_names=var_names).data_vars.values())
    return {"hmc_summary": summary, "hmc_divergences": posterior.num_divergences, "hmc_truth_inside_94": inside,
            "hmc_max_rhat": max_rhat, "hmc_trace": trace_path, "state_posterior": states_path}


def _forecast_figure(ssm, params, emissions, num_forecast, title, path):
    import matplotlib.pyplot as plt

    from .plotting import plot_emissions_and_forecast

    recon_means, recon_sds = ssm.posterior_predictive(params, emissions)
    forecast = ssm.forecast(params, num_forecast, emissions)
    forecast_sds = jnp.sqrt(jnp.diagonal(forecast.emission_covariances, axis1=-2, axis2=-1))
    ax = plot_emissions_and_forecast(emissions, recon_means, recon_sds, forecast.emission_means, forecast_sds,
                                     title=title)
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=110)
    plt.close(ax.figure)
    return recon_means, recon_sds


def run_demo(out_dir: str, num_timesteps: int = 100, num_forecast: int = 50, seed: int = 0,
             num_em_iters: int = 100, num_sgd_epochs: int = 1000, num_hmc_warmup: int = 150,
             num_hmc_samples: int = 350, num_chains: int = 4, progress_bar: bool = False) -> dict:
    """Run the demo, write figures into ``out_dir``; return the numbers.

    Simulates the demo's model (a 2-d state rotating by pi/20 per step, F = 0.99 x rotation,
    observed through 10 noisy channels y = H z + noise, T = ``num_timesteps``), smooths and forecasts under the true parameters,
    then fits the model from a random initialisation by EM and by SGD (Adam) and
    writes the learning curves and the fitted model's forecast. Finally samples
    the posterior of the dynamics and noise scales (``seed003_bayesian_model``)
    with NUTS on the Kalman-marginalised model, and writes the trace plot and
    the latent-state posterior against the true path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optax

    k_params, k_sample = jax.random.split(jax.random.PRNGKey(seed))
    ssm = SSM(linear_gaussian_ssm(state_dim=2, emission_dim=10))
    params = seed003_params(k_params)
    true_states, emissions = ssm.sample(k_sample, params, T=num_timesteps)

    os.makedirs(out_dir, exist_ok=True)
    smoothed = ssm.smooth(params, emissions, method=Kalman())
    path = os.path.join(out_dir, "emissions_and_forecast.png")
    recon_means, recon_sds = _forecast_figure(
        ssm, params, emissions, num_forecast, "ssmppl demo: Kalman smoother and 50-step forecast (true parameters)",
        path)

    # Learning: EM (closed-form M-step) and SGD from the same random initialisation.
    init = ssm.init_params(jax.random.PRNGKey(seed + 42), emissions)
    em_params, em_lls = ssm.fit_em(init, emissions, num_iters=num_em_iters, progress_bar=progress_bar)
    sgd_params, losses = ssm.fit_sgd(init, emissions, optimizer=optax.adam(5e-2), num_epochs=num_sgd_epochs,
                                     progress_bar=progress_bar)
    sgd_lls = -np.asarray(losses) * emissions.size
    true_ll = float(smoothed.marginal_loglik)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, curve, label, xlabel in ((axes[0], np.asarray(em_lls), "EM", "iteration"),
                                     (axes[1], sgd_lls, "SGD (Adam, lr 0.05)", "epoch")):
        ax.plot(curve, label=label)
        ax.axhline(true_ll, color="k", ls="--", lw=1.5, label="true parameters")
        ax.set_ylim(true_ll - 150, max(curve.max(), true_ll) + 25)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("marginal log-likelihood")
        ax.grid(True)
        ax.legend()
    axes[0].set_title("EM")
    axes[1].set_title("SGD")
    fig.tight_layout()
    curves_path = os.path.join(out_dir, "learning_curves.png")
    fig.savefig(curves_path, dpi=110)
    plt.close(fig)
    fitted_path = os.path.join(out_dir, "fitted_forecast.png")
    _forecast_figure(ssm, em_params, emissions, num_forecast,
                     "ssmppl demo: fitted by EM from a random initialisation", fitted_path)

    hmc = _hmc_section(params, emissions, true_states, out_dir, seed, num_hmc_warmup, num_hmc_samples, num_chains,
                       progress_bar)

    return {
        **hmc,
        "marginal_loglik": true_ll,
        "figure": path,
        "coverage_2sd": float(np.mean(np.abs(np.asarray(emissions) - np.asarray(recon_means)) < 2 * np.asarray(recon_sds))),
        "em_loglik": float(ssm.log_likelihood(em_params, emissions)),
        "sgd_loglik": float(ssm.log_likelihood(sgd_params, emissions)),
        "em_iters": int(em_lls.shape[0]),
        "sgd_epochs": int(losses.shape[0]),
        "learning_curves": curves_path,
        "fitted_figure": fitted_path,
    }
