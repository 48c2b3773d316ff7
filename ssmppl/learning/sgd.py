"""Gradient descent (any optax optimiser) on the negative log marginal likelihood.

The loss is -(log p(y | theta) + log prior(theta)) divided by the number of
observed scalars (NaN entries do not count), in the unconstrained space of the
free global sites. With ``batch_size`` each epoch shuffles the sequences and
takes one step per minibatch, the minibatch log-likelihood scaled by
B / batch_size so every step sees an unbiased estimate of the full loss; the
epoch's loss is the mean over its steps.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from .._jit import StructuralKey, jit_by_arrays
from ..inference.base import Backend, require_key
from .parameters import log_prior, split_frozen, to_constrained, to_unconstrained
from .progress import DIVERGED, RUNNING, chunk_size, progress_mode, run_in_chunks
from .setup import Layout, prepare, tree_all_finite


@dataclasses.dataclass(frozen=True)
class _SGDPlan:
    layout: Layout
    method: Backend
    optimizer: StructuralKey  # an equal optimiser (same kind and hyperparameters) reuses the compilation
    frozen: tuple
    num_epochs: int
    batch_size: Optional[int]
    chunk: int
    num_observed: int


def _sgd_start(plan, free, args, kwargs):
    """The optimiser's state at the unconstrained values of ``free``."""
    u = to_unconstrained(free, plan.layout.sites(args, kwargs))
    return u, plan.optimizer.obj.init(u), u, jnp.asarray(RUNNING)


def _sgd_result(plan, u, args, kwargs):
    return to_constrained(u, plan.layout.sites(args, kwargs))


def _loss(plan, u, fixed, index, key, args, kwargs):
    sites = plan.layout.sites(args, kwargs)
    params = {**fixed, **to_constrained(u, sites)}
    if index is None:
        a, k, n = args, kwargs, plan.layout.num_sequences
    else:
        (a, k), n = plan.layout.subset(args, kwargs, index), plan.batch_size
    scale = plan.layout.num_sequences / n  # the minibatch stands for all sequences
    keys = jax.random.split(key, n) if plan.method.requires_key else None

    def one(seq_key, *a_, **k_):
        problem, outer = plan.layout.ssm._trace(params, a_, k_)
        return plan.method.log_likelihood(problem, seq_key), log_prior(outer, problem.names)

    lls, priors = plan.layout.per_sequence(one, a, k, keys)
    return -(scale * lls.sum() + priors[0]) / plan.num_observed


def _epoch(plan, state, epoch, fixed, key, args, kwargs):
    u, opt_state, good, status = state
    epoch_key = jax.random.fold_in(key, epoch)
    shuffle_key, loss_key = jax.random.split(epoch_key)
    if plan.batch_size is None:
        batches = jnp.zeros((1, 0), int)  # one full-data step
    else:
        B, b = plan.layout.num_sequences, plan.batch_size
        batches = jax.random.permutation(shuffle_key, B)[: (B // b) * b].reshape(B // b, b)

    def step(carry, inputs):
        u, opt_state = carry
        index, j = inputs
        index = None if plan.batch_size is None else index
        loss, grad = jax.value_and_grad(_loss, argnums=1)(plan, u, fixed, index, jax.random.fold_in(loss_key, j),
                                                          args, kwargs)
        updates, opt_state = plan.optimizer.obj.update(grad, opt_state, u)
        return (optax.apply_updates(u, updates), opt_state), loss

    (u_new, opt_new), losses = jax.lax.scan(step, (u, opt_state), (batches, jnp.arange(batches.shape[0])))
    loss = losses.mean().astype(jnp.result_type(float))
    ok = jnp.isfinite(loss) & tree_all_finite(u_new)
    good = jax.tree.map(lambda a, b: jnp.where(jnp.isfinite(loss), a, b), u, good)
    u = jax.tree.map(lambda a, b: jnp.where(ok, a, b), u_new, good)
    opt_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), opt_new, opt_state)
    status = jnp.where(ok, RUNNING, DIVERGED).astype(status.dtype)
    return (u, opt_state, good, status), loss


def _sgd_chunk(plan, state, start, fixed, key, args, kwargs):
    def body(state, epoch):
        active = (epoch < plan.num_epochs) & (state[3] == RUNNING)
        nan = jnp.full((), jnp.nan, jnp.result_type(float))
        return jax.lax.cond(active, lambda s: _epoch(plan, s, epoch, fixed, key, args, kwargs), lambda s: (s, nan), state)

    return jax.lax.scan(body, state, start + jnp.arange(plan.chunk))


def fit_sgd(ssm, params, args, kwargs, optimizer=None, num_epochs=1000, method=None, frozen=(), batch_size=None,
            key=None, progress_bar=True):
    """See ``SSM.fit_sgd``."""
    if optimizer is None:
        optimizer = optax.adam(1e-2)
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"optimizer must be an optax GradientTransformation, got {optimizer!r}")
    if not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"num_epochs must be a positive int, got {num_epochs!r}")
    layout, sites, full, frozen, num_observed = prepare(ssm, params, args, kwargs, frozen, method)
    if len(frozen) == len(sites):
        raise ValueError("every global site is frozen: nothing to fit")
    if batch_size is not None:
        if not isinstance(batch_size, int) or not 1 <= batch_size <= layout.num_sequences:
            raise ValueError(f"batch_size must be an int in [1, {layout.num_sequences}] (the number of sequences), "
                             f"got {batch_size!r}")
    require_key(method, key, "pass key=jax.random.PRNGKey(...) to fit_sgd")
    key = jax.random.PRNGKey(0) if key is None else key
    mode = progress_mode(progress_bar)  # a live bar in terminals and notebooks only
    plan = _SGDPlan(layout, method, StructuralKey(optimizer), frozen, num_epochs, batch_size, chunk_size(num_epochs, mode),
                    num_observed)
    free, fixed = split_frozen(full, frozen)
    # One compiled program each for the start and the end: run eagerly, the constraint transforms
    # and the optimiser's init compile one small program per operation (~100 on a first call).
    state = jit_by_arrays(_sgd_start, plan, free, args, kwargs)

    def run_chunk(state, start):
        return jit_by_arrays(_sgd_chunk, plan, state, jnp.asarray(start), fixed, key, args, kwargs)

    state, losses = run_in_chunks(run_chunk, state, num_epochs, mode, "SGD", lambda s: s[3],
                                  lambda v: f"loss {v:.4g}")
    u, _, good, status = state
    losses = jnp.asarray(losses)
    done = int(jnp.sum(jnp.isfinite(losses))) if int(status) == DIVERGED else num_epochs
    if int(status) == DIVERGED:
        warnings.warn(
            f"SGD stopped at epoch {done + 1}: the loss or the parameters became non-finite (learning rate too "
            "large?). Returning the last parameters with a finite loss", RuntimeWarning, stacklevel=3)
        u = good
    losses = losses[:done]
    out = {**jit_by_arrays(_sgd_result, plan, u, args, kwargs), **{k: full[k] for k in frozen}}
    return {k: out[k] for k in full}, losses
