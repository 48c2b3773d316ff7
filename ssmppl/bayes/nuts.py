"""NUTS on a state-space model's global parameters: NumPyro's sampler or blackjax's.

Both run on the same NumPyro model (``sampler_model``): by default the latent
path is integrated out by a filter, so the sampler moves in the parameters'
few dimensions only; ``method=None`` samples parameters and path jointly.
Draws come back as a ``Posterior`` with ArviZ-named sampler statistics.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
from jax import lax

from .model_setup import chain_sharding, sampler_model, sampler_setup, split_draws
from .pmmh import pmmh_draws
from .posterior import Posterior

CHAIN_METHODS = ("vectorized", "sequential", "parallel")


class DivergenceWarning(UserWarning):
    """Some post-warmup NUTS transitions diverged: the draws may be biased."""


def _tree_depth(n_steps):
    # A trajectory of n leapfrog steps took floor(log2(n)) + 1 doublings.
    return np.floor(np.log2(np.maximum(np.asarray(n_steps), 1))).astype(np.int64) + 1


def _init_strategy(init_params):
    from numpyro.infer import init_to_uniform, init_to_value

    return init_to_uniform if not init_params else init_to_value(values=dict(init_params))


def _run_numpyro(model, key, args, kwargs, num_warmup, num_samples, num_chains, chain_method, progress_bar,
                 target_accept_prob, dense_mass, max_tree_depth, init_params=None):
    from numpyro.infer import MCMC, NUTS

    kernel = NUTS(model, target_accept_prob=target_accept_prob, dense_mass=dense_mass, max_tree_depth=max_tree_depth,
                  init_strategy=_init_strategy(init_params))
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method=chain_method, progress_bar=progress_bar)
    with warnings.catch_warnings():
        # NumPyro warns when chains outnumber devices under chain_method="parallel"; it then runs them in turn.
        warnings.filterwarnings("ignore", message="There are not enough devices")
        mcmc.run(key, *args, extra_fields=("diverging", "num_steps", "energy", "accept_prob", "adapt_state.step_size",
                                           "potential_energy"), **kwargs)
    draws = mcmc.get_samples(group_by_chain=True)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    stats = {
        "diverging": np.asarray(extra["diverging"]),
        "n_steps": np.asarray(extra["num_steps"]),
        "tree_depth": _tree_depth(extra["num_steps"]),
        "step_size": np.asarray(extra["adapt_state.step_size"]),
        "energy": np.asarray(extra["energy"]),
        "acceptance_rate": np.asarray(extra["accept_prob"]),
        "lp": -np.asarray(extra["potential_energy"]),
    }
    return draws, stats


def _run_blackjax(model, key, args, kwargs, num_warmup, num_samples, num_chains, chain_method, progress_bar,
                  target_accept_prob, dense_mass, max_tree_depth, init_params=None):
    import blackjax
    from blackjax.adaptation.base import get_filter_adapt_info_fn
    from numpyro.infer.util import initialize_model

    k_init, k_run = jax.random.split(key)
    info = initialize_model(jax.random.split(k_init, num_chains), model, model_args=args, model_kwargs=kwargs,
                            dynamic_args=False, init_strategy=_init_strategy(init_params))
    potential_fn, postprocess_fn = info.potential_fn, info.postprocess_fn
    positions = info.param_info.z

    def one_chain(key, position):
        logdensity = lambda z: -potential_fn(z)
        k_warm, k_draw = jax.random.split(key)
        warmup = blackjax.window_adaptation(blackjax.nuts, logdensity, is_mass_matrix_diagonal=not dense_mass,
                                            target_acceptance_rate=target_accept_prob,
                                            adaptation_info_fn=get_filter_adapt_info_fn(),
                                            max_num_doublings=max_tree_depth)
        (state, parameters), _ = warmup.run(k_warm, position, num_steps=num_warmup)
        kernel = blackjax.nuts(logdensity, **{**parameters, "max_num_doublings": max_tree_depth}).step

        def step(state, k):
            state, nuts_info = kernel(k, state)
            return state, (state.position, state.logdensity, nuts_info.is_divergent,
                           nuts_info.num_trajectory_expansions, nuts_info.num_integration_steps,
                           nuts_info.energy, nuts_info.acceptance_rate)

        _, out = lax.scan(step, state, jax.random.split(k_draw, num_samples))
        constrained = jax.vmap(postprocess_fn)(out[0])
        return constrained, out[1:], parameters["step_size"]

    keys = jax.random.split(k_run, num_chains)
    if chain_method == "sequential":
        run = jax.jit(lambda keys, pos: lax.map(lambda kp: one_chain(*kp), (keys, pos)))
    else:
        run = jax.jit(jax.vmap(one_chain))
        sharding = chain_sharding(num_chains) if chain_method == "parallel" else None
        if sharding is not None:
            keys, positions = jax.device_put((keys, positions), sharding)
    if progress_bar:
        print(f"blackjax NUTS: {num_chains} chain(s), {num_warmup} warmup + {num_samples} draws ...", flush=True)
    draws, (lp, diverging, depth, n_steps, energy, accept), step_size = run(keys, positions)
    stats = {
        "diverging": np.asarray(diverging),
        "n_steps": np.asarray(n_steps),
        "tree_depth": np.asarray(depth),
        "step_size": np.broadcast_to(np.asarray(step_size)[:, None], np.shape(diverging)).copy(),
        "energy": np.asarray(energy),
        "acceptance_rate": np.asarray(accept),
        "lp": np.asarray(lp),
    }
    return draws, stats


def _validate(ssm, key, setup, method, args, kwargs):
    """Trace the model once, with prior draws, before any sampler compiles: shape and structure errors now."""
    from numpyro import handlers
    from numpyro.infer.util import log_density

    model = sampler_model(ssm, setup, method)
    jax.eval_shape(lambda k: log_density(handlers.seed(model, k), args, kwargs, {})[0], key)


def sample_posterior(ssm, key, args, kwargs, num_warmup=1000, num_samples=1000, num_chains=4, method=None,
                     backend="numpyro", chain_method="vectorized", progress_bar=True, params=None,
                     target_accept_prob=0.8, dense_mass=False, max_tree_depth=10, init_params=None) -> Posterior:
    """See ``SSM.sample_posterior``."""
    if backend not in ("numpyro", "blackjax"):
        raise ValueError(f"backend must be 'numpyro' or 'blackjax', got {backend!r}")
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {chain_method!r}")
    for name, value, low in (("num_warmup", num_warmup, 1), ("num_samples", num_samples, 1),
                             ("num_chains", num_chains, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    setup = sampler_setup(ssm, args, kwargs, params)
    _validate(ssm, key, setup, method, args, kwargs)
    if init_params is not None:
        unknown = sorted(set(init_params) - set(setup.inferred))
        if unknown:
            raise ValueError(f"init_params names {unknown}, which are not global sample sites "
                             f"sampled by NUTS ({list(setup.inferred)})")
    if method is not None and method.noisy_likelihood:
        if init_params is not None:
            raise ValueError("init_params is not supported by PMMH (noisy-likelihood backends) yet")
        # A random likelihood estimate (particle filter): particle marginal Metropolis-Hastings, not NUTS.
        draws, stats, sampler = pmmh_draws(ssm, key, args, kwargs, setup, method, num_warmup, num_samples,
                                           num_chains, chain_method, progress_bar, target_accept_prob, dense_mass,
                                           max_tree_depth)
    else:
        model = sampler_model(ssm, setup, method)
        run = _run_numpyro if backend == "numpyro" else _run_blackjax
        draws, stats = run(model, key, args, kwargs, num_warmup, num_samples, num_chains, chain_method,
                           progress_bar, target_accept_prob, dense_mass, max_tree_depth, init_params)
        sampler = f"{backend} NUTS, " + (f"marginalised by {type(method).__name__}" if method is not None else
                                         "joint")
    samples, deterministic, states = split_draws(draws, setup, method)
    posterior = Posterior(ssm=ssm, args=tuple(args), kwargs=dict(kwargs), samples=samples, sample_stats=stats,
                          fixed=setup.fixed, method=method, sampler=sampler, states=states,
                          deterministic=deterministic)
    n_div = posterior.num_divergences
    if n_div:
        warnings.warn(
            f"{n_div} of {num_chains * num_samples} post-warmup NUTS transitions diverged ({sampler}): the draws may "
            "be biased. Raise target_accept_prob (e.g. 0.95), reparameterise, or tighten the priors; "
            "posterior.sample_stats['diverging'] marks them", DivergenceWarning, stacklevel=3)
    return posterior
