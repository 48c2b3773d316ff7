"""Stochastic variational inference on a state-space model's global parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .model_setup import sampler_model, sampler_setup, split_draws
from .posterior import Posterior

_GUIDES = ("normal", "mvn", "delta")


def _make_guide(guide, model):
    from numpyro.infer import autoguide

    if callable(guide) and not isinstance(guide, str):
        return guide
    if guide == "normal":
        return autoguide.AutoNormal(model)
    if guide == "mvn":
        return autoguide.AutoMultivariateNormal(model)
    if guide == "delta":
        return autoguide.AutoDelta(model)
    raise ValueError(f"guide must be one of {_GUIDES} or a NumPyro guide, got {guide!r}")


def fit_svi(ssm, key, args, kwargs, guide="normal", optimizer=None, num_steps=5000, method=None, num_samples=1000,
            num_particles=1, progress_bar=True, params=None):
    """See ``SSM.fit_svi``. Returns ``(guide_params, losses (num_steps,), Posterior)``."""
    import optax
    from numpyro.infer import SVI, Trace_ELBO

    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    setup = sampler_setup(ssm, args, kwargs, params)
    model = sampler_model(ssm, setup, method)
    guide_fn = _make_guide(guide, model)
    optimizer = optax.adam(1e-2) if optimizer is None else optimizer
    svi = SVI(model, guide_fn, optimizer, Trace_ELBO(num_particles=num_particles))
    k_fit, k_draw = jax.random.split(key)
    result = svi.run(k_fit, num_steps, *args, progress_bar=progress_bar, **kwargs)
    if hasattr(guide_fn, "sample_posterior"):
        draws = guide_fn.sample_posterior(k_draw, result.params, *args, sample_shape=(num_samples,), **kwargs)
    else:
        from numpyro.infer import Predictive

        draws = Predictive(guide_fn, params=result.params, num_samples=num_samples)(k_draw, *args, **kwargs)
    draws = {k: jnp.asarray(v)[None] for k, v in draws.items()}  # one "chain"
    samples, deterministic, states = split_draws(draws, setup, method)
    name = guide if isinstance(guide, str) else type(guide_fn).__name__
    posterior = Posterior(ssm=ssm, args=tuple(args), kwargs=dict(kwargs), samples=samples, sample_stats={},
                          fixed=setup.fixed, method=method, sampler=f"SVI ({name} guide)", states=states,
                          deterministic=deterministic)
    return result.params, result.losses, posterior
