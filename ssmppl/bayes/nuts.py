"""NUTS on a state-space model's global parameters: NumPyro's sampler or blackjax's.

Both run on the same NumPyro model (``sampler_model``): by default the latent
path is integrated out by a filter, so the sampler moves in the parameters'
few dimensions only; ``method=None`` samples parameters and path jointly.
Draws come back as a ``Posterior`` with ArviZ-named sampler statistics.
"""

from __future__ import annotations

import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._jit import jit_by_arrays, traced_floats
from .model_setup import SamplerSetup, chain_sharding, sampler_model, sampler_setup, split_draws
from .pmmh import pmmh_draws
from .posterior import Posterior

CHAIN_METHODS = ("vectorized", "sequential", "parallel")


class DivergenceWarning(UserWarning):
    """Some post-warmup NUTS transitions diverged: the draws may be biased."""


def _tree_depth(n_steps):
    # A trajectory of n leapfrog steps took floor(log2(n)) + 1 doublings.
    return np.floor(np.log2(np.maximum(np.asarray(n_steps), 1))).astype(np.int64) + 1


def _init_strategy(init_values):
    from numpyro.infer import init_to_uniform, init_to_value

    return init_to_uniform if not init_values else init_to_value(values=dict(init_values))


def _numpyro_chain(model, key, init_values, args, kwargs, num_warmup, num_samples, target_accept_prob, dense_mass,
                   max_tree_depth):
    """One NumPyro NUTS chain (``numpyro.infer.hmc``'s kernel, the one ``numpyro.infer.NUTS`` runs,
    with its step-size and mass-matrix adaptation): (constrained draws, statistics)."""
    from numpyro.infer.hmc import hmc
    from numpyro.infer.util import initialize_model

    k_init, k_run = jax.random.split(key)
    info = initialize_model(k_init, model, model_args=args, model_kwargs=kwargs, dynamic_args=True,
                            init_strategy=_init_strategy(init_values))
    init_kernel, sample_kernel = hmc(potential_fn_gen=info.potential_fn, algo="NUTS")
    state = init_kernel(info.param_info, num_warmup, dense_mass=dense_mass, target_accept_prob=target_accept_prob,
                        max_tree_depth=max_tree_depth, model_args=args, model_kwargs=kwargs, rng_key=k_run)

    def record(s):
        return (s.z, s.diverging, s.num_steps, s.energy, s.accept_prob, s.adapt_state.step_size, -s.potential_energy)

    # Warm-up and draws in one loop, so the NUTS kernel is traced and compiled once, not twice (a
    # fori_loop for warm-up then a scan for draws doubled the first call's compile time). Warm-up
    # iterations write into slot 0, which the first draw overwrites.
    buffers = jax.tree.map(lambda v: jnp.zeros((num_samples,) + v.shape, v.dtype),
                           jax.eval_shape(record, state))

    def step(i, carry):
        s, out = carry
        s = sample_kernel(s, model_args=args, model_kwargs=kwargs)
        slot = jnp.maximum(i - num_warmup, 0)
        return s, jax.tree.map(lambda b, v: b.at[slot].set(v), out, record(s))

    _, (z, diverging, n_steps, energy, accept, step_size, lp) = lax.fori_loop(0, num_warmup + num_samples, step,
                                                                              (state, buffers))
    constrained = jax.vmap(info.postprocess_fn(*args, **kwargs))(z)
    stats = {"diverging": diverging, "n_steps": n_steps, "energy": energy, "acceptance_rate": accept,
             "step_size": step_size, "lp": lp}
    return constrained, stats


def _blackjax_chain(model, key, init_values, args, kwargs, num_warmup, num_samples, target_accept_prob, dense_mass,
                    max_tree_depth):
    """One blackjax chain: ``window_adaptation`` then ``nuts`` steps on the same log density."""
    import blackjax
    from blackjax.adaptation.base import get_filter_adapt_info_fn
    from numpyro.infer.util import initialize_model

    k_init, k_warm, k_draw = jax.random.split(key, 3)
    info = initialize_model(k_init, model, model_args=args, model_kwargs=kwargs, dynamic_args=True,
                            init_strategy=_init_strategy(init_values))
    potential_fn = info.potential_fn(*args, **kwargs)
    logdensity = lambda z: -potential_fn(z)  # noqa: E731
    warmup = blackjax.window_adaptation(blackjax.nuts, logdensity, is_mass_matrix_diagonal=not dense_mass,
                                        target_acceptance_rate=target_accept_prob,
                                        adaptation_info_fn=get_filter_adapt_info_fn(),
                                        max_num_doublings=max_tree_depth)
    (state, parameters), _ = warmup.run(k_warm, info.param_info.z, num_steps=num_warmup)
    kernel = blackjax.nuts(logdensity, **{**parameters, "max_num_doublings": max_tree_depth}).step

    def draw(state, k):
        state, nuts_info = kernel(k, state)
        return state, (state.position, state.logdensity, nuts_info.is_divergent,
                       nuts_info.num_trajectory_expansions, nuts_info.num_integration_steps,
                       nuts_info.energy, nuts_info.acceptance_rate)

    _, (z, lp, diverging, depth, n_steps, energy, accept) = lax.scan(draw, state,
                                                                     jax.random.split(k_draw, num_samples))
    constrained = jax.vmap(info.postprocess_fn(*args, **kwargs))(z)
    stats = {"diverging": diverging, "n_steps": n_steps, "tree_depth": depth, "energy": energy,
             "acceptance_rate": accept, "step_size": jnp.broadcast_to(parameters["step_size"], diverging.shape),
             "lp": lp}
    return constrained, stats


_CHAIN = {"numpyro": _numpyro_chain, "blackjax": _blackjax_chain}


def _chains(ssm, method, names, inferred, conditioned, fixed, keys, init_values, args, kwargs, backend, num_warmup,
            num_samples, chain_method, target_accept_prob, dense_mass, max_tree_depth):
    """Every chain, warm-up and draws, in one program (through ``jit_by_arrays``: data, fixed
    values, keys and initial values are traced, so a second call on the same model, backend and
    settings runs without compiling). Returns ({site: (C, D, ...)}, {statistic: (C, D)})."""
    setup = SamplerSetup(names=names, inferred=inferred, fixed=fixed, conditioned=conditioned)
    model = sampler_model(ssm, setup, method)
    run_one = _CHAIN[backend]

    def one(key):
        return run_one(model, key, init_values, args, kwargs, num_warmup, num_samples, target_accept_prob,
                       dense_mass, max_tree_depth)

    if chain_method == "sequential":
        return lax.map(one, keys)
    return jax.vmap(one)(keys)


def _run(ssm, key, setup, method, args, kwargs, backend, num_warmup, num_samples, num_chains, chain_method,
         progress_bar, target_accept_prob, dense_mass, max_tree_depth, init_params):
    keys = jax.random.split(key, num_chains)
    if chain_method == "parallel":
        sharding = chain_sharding(num_chains)
        if sharding is not None:
            keys = jax.device_put(keys, sharding)
    if progress_bar:
        # One line per run: a live bar needs a host callback in every step, which slowed sampling.
        print(f"{backend} NUTS: {num_chains} chain(s) x ({num_warmup} warmup + {num_samples} draws) ...",
              end=" ", flush=True)
    start = time.perf_counter()
    draws, stats = jit_by_arrays(
        _chains, ssm, method, setup.names, tuple(setup.inferred), tuple(setup.conditioned),
        traced_floats(dict(setup.fixed)), keys, traced_floats(dict(init_params or {})), tuple(args), dict(kwargs),
        backend, num_warmup, num_samples, chain_method, float(target_accept_prob), bool(dense_mass),
        int(max_tree_depth))
    draws = jax.block_until_ready(draws)
    if progress_bar:
        print(f"done in {time.perf_counter() - start:.1f} s", flush=True)
    stats = {k: np.asarray(v) for k, v in stats.items()}
    if "tree_depth" not in stats:
        stats["tree_depth"] = _tree_depth(stats["n_steps"])
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
        draws, stats = _run(ssm, key, setup, method, args, kwargs, backend, num_warmup, num_samples, num_chains,
                            chain_method, progress_bar, target_accept_prob, dense_mass, max_tree_depth, init_params)
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
