"""Particle marginal Metropolis-Hastings (PMMH): posterior sampling with a noisy likelihood.

A particle filter's likelihood is a random, unbiased estimate p_hat(y | theta).
Hamiltonian samplers cannot use it (its gradient is not the gradient of the log
posterior), but a Metropolis-Hastings chain that plugs p_hat in for p and
*keeps* the current point's estimate, never recomputing it, targets the exact
posterior (Andrieu, Doucet & Holenstein 2010). ``sample_posterior`` runs this
whenever ``method.noisy_likelihood`` is True (``BootstrapPF`` and the other
particle filters).

The target is the marginal model (``sampler_model``: the latent path integrated
out by the particle filter) in the unconstrained space of the inferred global
sites, log-Jacobians included (``numpyro.infer.util.potential_energy``). The
filter draws its randomness from ``numpyro.handlers.seed``: every proposal gets
a fresh key. The kernel is blackjax's additive-step random walk
(``blackjax.mcmc.random_walk.build_additive_step``) with a Gaussian step, drawn
(and the filter run at the proposed point) just before the kernel's call, so
that one filter call site serves every phase of the chain and compiles once.
Chains are vmapped (``chain_method="vectorized"`` or ``"parallel"``, sharded
over devices when there are several) or run in turn (``"sequential"``); all of
it is one compiled function, reused by later calls on the same ``SSM``,
backend and settings. Draws are deterministic given the key.

Warm-up (one compiled scan; the schedule is fixed by ``num_warmup``):

* Initial positions: as NumPyro's default, uniform in (-2, 2) in unconstrained
  space: each chain starts at such a point with log density -inf and makes 8
  independence proposals of such points (the first with a finite estimated log
  posterior is accepted, later ones by the Metropolis ratio).
* Proposal covariance ``lambda^2 * S``. S starts at 0.1^2 I. Warm-up is cut into
  windows of doubling length (the first max(25, num_warmup // 20) steps); at the
  end of each window but the last, S becomes (2.38^2 / d) times the window's
  empirical covariance of the draws, regularised towards 1e-3 I as in Stan
  (n / (n + 5) cov + 1e-3 * 5 / (n + 5) I). A window with fewer than
  max(5, d + 1) accepted moves cannot estimate a covariance: S keeps its shape
  (``lambda^2 S``). The last window (at least a fifth of the warm-up) only
  tunes lambda. Under 100 warm-up steps there is one window: lambda only.
* lambda is adapted by Robbins-Monro on log lambda, gain (m + 1)^-0.6 (m: the
  step within the window, restarted at each window), towards an acceptance
  probability of ``target_acceptance`` = 0.2, and clipped to [e^-5, e^5].
  Why 0.2: with an exact likelihood the optimal random-walk acceptance rate is
  0.234 in high dimension (Roberts, Gelman & Gilks 1997; higher in one or two
  dimensions); with a noisy likelihood it is lower, about 0.07 at Sherlock,
  Thiery, Roberts & Rosenthal's (2015) optimal noise sd of 1.8, while Doucet,
  Pitt, Deligiannidis & Kohn (2015) recommend a noise sd of about 1 to 1.5 (N
  chosen for that), where the optimum sits between the two. Efficiency is flat
  near the optimum. And 0.2 is reachable: with Gaussian log-likelihood noise
  of sd sigma the acceptance rate tends to 2 Phi(-sigma / sqrt 2) as the step
  shrinks, which exceeds 0.2 exactly when sigma < 1.81. Above that, no step
  size reaches the target (lambda shrinks to its bound): the filter needs more
  particles, which the diagnostic below reports.

Diagnostic: at the end of warm-up the log-likelihood estimate is evaluated 16
times at each chain's position; the standard deviation, per chain, is stored
as ``sample_stats["loglik_sd"]`` (constant along each chain) and a
``PMMHWarning`` (a ``UserWarning``) is raised when it exceeds 2 (PMMH then mixes badly: use more
particles; aim at about 1 to 1.5).

``sample_stats`` (chains, draws): ``acceptance_rate`` (the Metropolis acceptance
probability of each step's proposal), ``is_accepted``, ``lp`` (the kept
estimate of the log posterior density in unconstrained space, Jacobian
included: it changes only when a proposal is accepted), ``diverging`` (all
False: no such thing in a random walk; ArviZ reads it) and ``loglik_sd``. The
NUTS tuning options of ``sample_posterior`` are refused (``ValueError``) when
changed from their defaults; ``backend`` is not used.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from .._jit import jit_by_arrays
from .model_setup import SamplerSetup, chain_sharding, sampler_model

TARGET_ACCEPTANCE = 0.2
NUM_LOGLIK_EVALS = 16
LOGLIK_SD_WARN = 2.0
_NUM_INIT_CANDIDATES = 8
_LOG_SCALE_BOUND = 5.0
_NUTS_DEFAULTS = {"target_accept_prob": 0.8, "dense_mass": False, "max_tree_depth": 10}


class PMMHWarning(UserWarning):
    """The particle filter's log-likelihood estimate is too noisy for PMMH to mix well."""


def warmup_windows(num_warmup: int):
    """Steps (0-based) after which the proposal covariance is re-estimated: ends of the
    doubling windows; the last window, from the last end to ``num_warmup``, tunes the scale only."""
    if num_warmup < 100:
        return []
    last = max(50, num_warmup // 5)
    budget = num_warmup - last
    ends, start, length = [], 0, max(25, num_warmup // 20)
    while start + length <= budget:
        ends.append(start + length)
        start, length = start + length, 2 * length
    if ends:
        ends[-1] = budget  # the last covariance window stretches to the scale-only window
    return ends


def _reject_nuts_options(options):
    changed = [k for k, v in options.items() if v != _NUTS_DEFAULTS[k]]
    if changed:
        raise ValueError(
            f"{', '.join(changed)} tune NUTS, but a noisy likelihood (particle filter) is sampled by particle "
            "marginal Metropolis-Hastings (a random walk with adapted covariance): leave them at their defaults"
        )


def _unconstrained_prototype(model, key, args, kwargs, inferred):
    """Zeros shaped as the unconstrained values of the inferred sites (traced abstractly: no filter runs)."""
    from numpyro import handlers
    from numpyro.distributions.transforms import biject_to

    def proto(k):
        tr = handlers.trace(handlers.seed(model, k)).get_trace(*args, **kwargs)
        return {n: biject_to(tr[n]["fn"].support).inv(tr[n]["value"]) for n in inferred}

    shapes = jax.eval_shape(proto, key)
    return {n: jnp.zeros(s.shape, s.dtype) for n, s in shapes.items()}


def _welford(acc, x):
    n, mean, m2 = acc
    n = n + 1
    delta = x - mean
    mean = mean + delta / n
    m2 = m2 + jnp.outer(delta, x - mean)
    return n, mean, m2


_INIT, _WARM, _DIAG, _DRAW = 0, 1, 2, 3


def schedule(num_warmup, num_samples, num_loglik_evals=NUM_LOGLIK_EVALS):
    """Per step of the one scan that runs a chain: phase code, window-end flag, step within the window.

    Phases: ``_NUM_INIT_CANDIDATES`` jumps to uniform(-2, 2) candidates (the first finite log density
    is taken from -inf; later ones by the Metropolis ratio of an independence proposal), the warm-up,
    ``num_loglik_evals`` evaluations at the warmed-up position (the chain does not move), the draws.
    """
    lengths = (_NUM_INIT_CANDIDATES, num_warmup, num_loglik_evals, num_samples)
    phase = np.concatenate([np.full(n, p, np.int32) for p, n in zip((_INIT, _WARM, _DIAG, _DRAW), lengths)])
    ends = warmup_windows(num_warmup)
    window_end = np.zeros(len(phase), bool)
    step_in_window = np.zeros(len(phase), np.int64)
    offset = _NUM_INIT_CANDIDATES
    window_end[offset + np.asarray(ends, int) - 1] = True
    for s, e in zip([0] + ends, ends + [num_warmup]):
        step_in_window[offset + s:offset + e] = np.arange(e - s)
    return phase, window_end, step_in_window


def _chains(ssm, method, names, inferred, conditioned, fixed, keys, args, kwargs, num_warmup, num_samples,
            chain_method, target_acceptance, num_loglik_evals):
    """The compiled part of ``run_pmmh`` (through ``jit_by_arrays``: data, fixed values and keys are
    traced, so a second run on the same ``SSM`` and backend reuses the compiled chains)."""
    from blackjax.mcmc.random_walk import RWState, build_additive_step
    from numpyro import handlers
    from numpyro.infer.util import constrain_fn, potential_energy

    setup = SamplerSetup(names=names, inferred=inferred, fixed=fixed, conditioned=conditioned)
    model = sampler_model(ssm, setup, method)
    num_chains = keys.shape[0]
    proto = _unconstrained_prototype(model, jax.random.PRNGKey(0), args, kwargs, inferred)
    flat0, unravel = ravel_pytree(proto)
    d = flat0.shape[0]
    dtype = flat0.dtype
    eye = jnp.eye(d, dtype=dtype)
    phase, window_end, step_in_window = (jnp.asarray(a) for a in schedule(num_warmup, num_samples,
                                                                           num_loglik_evals))
    kernel = build_additive_step()
    min_moves = max(5, d + 1)
    zero_acc = (jnp.zeros((), dtype), jnp.zeros(d, dtype), jnp.zeros((d, d), dtype))

    def log_target(u, k):
        lp = -potential_energy(handlers.seed(model, k), args, kwargs, unravel(u))
        return jnp.where(jnp.isnan(lp), -jnp.inf, lp)

    def step(carry, inputs):
        state, log_scale, chol, acc, moves = carry
        k, ph, is_end, m = inputs
        k_mh, k_ll, k_cand = jax.random.split(k, 3)
        warm = ph == _WARM
        candidate = jax.random.uniform(k_cand, (d,), dtype, -2.0, 2.0)

        k_prop, k_mh = jax.random.split(k_mh)
        rw = jnp.exp(log_scale) * (chol @ jax.random.normal(k_prop, (d,), dtype))
        delta = jnp.where(ph == _INIT, candidate - state.position, jnp.where(ph == _DIAG, 0.0, rw))
        # The one filter run of the step, with a fresh key, at the proposed point; the current
        # state's estimate is kept, never recomputed (what makes PMMH exact). blackjax's kernel
        # then proposes exactly this point (its step ignores the key) and accepts or rejects it.
        lp_prop = log_target(state.position + delta, k_ll)
        new, info = kernel(k_mh, state, lambda u: lp_prop, lambda _key, _position: delta)
        state = jax.tree.map(lambda a, b: jnp.where(ph == _DIAG, a, b), state, new)
        gain = (m + 1.0) ** -0.6
        log_scale = jnp.where(warm, jnp.clip(log_scale + gain * (info.acceptance_rate - target_acceptance),
                                             -_LOG_SCALE_BOUND, _LOG_SCALE_BOUND), log_scale)
        acc = jax.tree.map(lambda a, b: jnp.where(warm, a, b), _welford(acc, state.position), acc)
        moves = moves + (warm & info.is_accepted).astype(jnp.int32)

        def new_window(_):
            n, _, m2 = acc
            cov = m2 / jnp.maximum(n - 1.0, 1.0)
            reg = (n / (n + 5.0)) * cov + 1e-3 * (5.0 / (n + 5.0)) * eye
            est = jnp.linalg.cholesky((2.38**2 / d) * reg)
            ok = (moves >= min_moves) & jnp.all(jnp.isfinite(est))
            kept = jnp.where(ok, est, jnp.exp(log_scale) * chol)
            return jnp.zeros((), dtype), kept, zero_acc, jnp.int32(0)

        log_scale, chol, acc, moves = lax.cond(is_end, new_window, lambda _: (log_scale, chol, acc, moves), None)
        out = (state.position, state.logdensity, info.acceptance_rate, info.is_accepted, lp_prop)
        return (state, log_scale, chol, acc, moves), out

    def one_chain(key):
        k_start, k_steps = jax.random.split(key)
        start = RWState(jax.random.uniform(k_start, (d,), dtype, -2.0, 2.0), jnp.array(-jnp.inf, dtype))
        carry = (start, jnp.zeros((), dtype), 0.1 * eye, zero_acc, jnp.int32(0))
        inputs = (jax.random.split(k_steps, phase.shape[0]), phase, window_end, step_in_window.astype(dtype))
        (_, log_scale, chol, _, _), out = lax.scan(step, carry, inputs)
        chol = jnp.exp(log_scale) * chol
        return out, jnp.sqrt(jnp.diag(chol @ chol.T))

    if chain_method == "sequential":
        (positions, lp, accept, accepted, lp_prop), step_sd = lax.map(one_chain, keys)
    else:
        (positions, lp, accept, accepted, lp_prop), step_sd = jax.vmap(one_chain)(keys)
    first = _NUM_INIT_CANDIDATES + num_warmup + num_loglik_evals
    diag = lp_prop[:, first - num_loglik_evals:first]
    positions, lp, accept, accepted = (a[:, first:] for a in (positions, lp, accept, accepted))

    def constrain(u):
        # The key only feeds the filter, whose output no constrained or deterministic value reads
        # (tracing drops the filter from this map).
        return constrain_fn(handlers.seed(model, jax.random.PRNGKey(0)), args, kwargs, unravel(u),
                            return_deterministic=True)

    draws = lax.map(constrain, positions.reshape((num_chains * num_samples, d)))
    draws = {k: v.reshape((num_chains, num_samples) + v.shape[1:]) for k, v in draws.items()}
    return draws, (lp, accept, accepted), diag, step_sd


def run_pmmh(ssm, key, args, kwargs, setup, method, num_warmup, num_samples, num_chains, chain_method,
             target_acceptance=TARGET_ACCEPTANCE, num_loglik_evals=NUM_LOGLIK_EVALS):
    """PMMH chains on the marginal model of ``ssm`` (latent path integrated out by ``method``).

    Each chain is one ``lax.scan`` in which every step evaluates the filter once, at one call site
    (initial candidates, warm-up, the noise diagnostic and the draws are phases of the same step):
    the particle filter compiles once, not once per phase.
    Returns (constrained draws incl. deterministic sites {name: (C, D, ...)}, stats {name: (C, D)},
    final proposal sds (C, d) in unconstrained space).
    """
    keys = jax.random.split(key, num_chains)
    if chain_method == "parallel":
        sharding = chain_sharding(num_chains)
        if sharding is not None:
            keys = jax.device_put(keys, sharding)
    draws, (lp, accept, accepted), diag, step_sd = jit_by_arrays(
        _chains, ssm, method, setup.names, tuple(setup.inferred), tuple(setup.conditioned), dict(setup.fixed), keys,
        tuple(args), dict(kwargs), num_warmup, num_samples, chain_method, float(target_acceptance),
        num_loglik_evals)
    diag = np.asarray(diag)
    ll_sd = np.std(np.where(np.isfinite(diag), diag, np.nan), axis=1, ddof=1)
    shape = (num_chains, num_samples)
    stats = {
        "acceptance_rate": np.asarray(accept),
        "is_accepted": np.asarray(accepted),
        "lp": np.asarray(lp),
        "diverging": np.zeros(shape, bool),
        "loglik_sd": np.broadcast_to(ll_sd[:, None], shape).copy(),
    }
    return {k: np.asarray(v) for k, v in draws.items()}, stats, np.asarray(step_sd)


def pmmh_draws(ssm, key, args, kwargs, setup, method, num_warmup, num_samples, num_chains, chain_method,
               progress_bar, target_accept_prob, dense_mass, max_tree_depth):
    """``sample_posterior``'s draws for a backend with a noisy likelihood (see the module docstring):
    (draws {name: (C, D, ...)}, sample stats, sampler description). Warns when the estimate is too noisy."""
    _reject_nuts_options({"target_accept_prob": target_accept_prob, "dense_mass": dense_mass,
                          "max_tree_depth": max_tree_depth})
    if progress_bar:
        print(f"PMMH ({type(method).__name__}): {num_chains} chain(s), {num_warmup} warmup + {num_samples} draws ...",
              flush=True)
    draws, stats, _ = run_pmmh(ssm, key, args, kwargs, setup, method, num_warmup, num_samples, num_chains,
                               chain_method)
    sd = stats["loglik_sd"][:, 0]
    if not np.all(sd <= LOGLIK_SD_WARN):
        n = getattr(method, "num_particles", None)
        warnings.warn(
            f"the log-likelihood estimate of {type(method).__name__}"
            + (f"({n})" if n is not None else "")
            + f" has standard deviation {np.array2string(sd, precision=2)} (per chain, {NUM_LOGLIK_EVALS} "
            f"evaluations at the end of warm-up): above {LOGLIK_SD_WARN:g}, PMMH chains stick for long "
            "stretches. Use more particles (the sd falls like 1/sqrt(N)); aim at about 1 to 1.5",
            PMMHWarning, stacklevel=3)
    return draws, stats, f"PMMH (blackjax random walk), marginalised by {type(method).__name__}"


__all__ = ["pmmh_draws", "run_pmmh", "warmup_windows", "PMMHWarning", "TARGET_ACCEPTANCE"]
