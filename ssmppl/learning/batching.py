"""Batches of independent sequences sharing one set of parameters.

A model is written for one sequence. Given observations of shape (B, T, dy)
instead of (T, dy), the model arguments are split along a leading batch axis:
the observation array, plus every other array argument whose leading size is B
and that the model accepts sliced (per-sequence inputs). Which interpretation
holds is decided by tracing the model on one slice, abstractly (no compute).
"""

from __future__ import annotations

import itertools
from typing import Optional

import jax
import jax.numpy as jnp
from numpyro import handlers

from .._jit import is_array
from ..models.tracing import ScanInterceptor, discover


def _traces(model, args, kwargs, latent, obs) -> Optional[Exception]:
    """None if the model builds a state space from these arguments, else the error."""

    def probe():
        names = discover(model, args, kwargs, latent, obs)
        with handlers.seed(rng_seed=0), ScanInterceptor(names=names, on_scan=lambda problem, key: None):
            model(*args, **kwargs)

    try:
        jax.eval_shape(probe)
    except Exception as err:  # any failure means: not this interpretation
        return err
    return None


def find_batch(model, args, kwargs, latent=None, obs=None):
    """``(flags, B)``: per flattened leaf of ``(args, kwargs)``, whether it is split
    per sequence; ``(None, None)`` for a single sequence."""
    error = _traces(model, args, kwargs, latent, obs)
    if error is None:
        return None, None
    leaves = jax.tree.leaves((args, kwargs))
    arrays = [i for i, x in enumerate(leaves) if is_array(x) and jnp.ndim(x) >= 2]
    if not arrays:
        raise error
    # The observations: the array with the most axes (first such).
    obs_leaf = max(arrays, key=lambda i: (jnp.ndim(leaves[i]), -i))
    B = int(jnp.shape(leaves[obs_leaf])[0])
    others = [i for i, x in enumerate(leaves)
              if i != obs_leaf and is_array(x) and jnp.ndim(x) >= 1 and jnp.shape(x)[0] == B][:4]
    # Prefer splitting as many candidate inputs as the model accepts.
    for k in range(len(others), -1, -1):
        for chosen in itertools.combinations(others, k):
            flags = [i == obs_leaf or i in chosen for i in range(len(leaves))]
            a, kw = take_sequences(args, kwargs, flags, 0)
            if _traces(model, a, kw, latent, obs) is None:
                return flags, B
    raise type(error)(
        f"{error}\n(ssmppl also tried reading the arguments as a batch of {B} sequences along their first "
        "axis, and that failed too)"
    ) from error


def map_sequences(fn, args, kwargs, flags, per_sequence=None):
    """``fn(extra, *args, **kwargs)`` per sequence, stacked on a leading axis (size 1
    for a single sequence); ``extra`` is that sequence's slice of ``per_sequence``
    (a pytree with a leading sequence axis, or None)."""
    if flags is None:
        extra = None if per_sequence is None else jax.tree.map(lambda x: x[0], per_sequence)
        return jax.tree.map(lambda x: jnp.asarray(x)[None], fn(extra, *args, **kwargs))
    leaves, treedef = jax.tree.flatten((args, kwargs))
    split = [i for i, f in enumerate(flags) if f]

    def one(per_leaf, extra):
        leaves_ = list(leaves)
        for i, value in zip(split, per_leaf):
            leaves_[i] = value
        a, kw = jax.tree.unflatten(treedef, leaves_)
        return fn(extra, *a, **kw)

    return jax.vmap(one)([leaves[i] for i in split], per_sequence)


def take_sequences(args, kwargs, flags, index):
    """The arguments restricted to the sequences ``index`` (an int array)."""
    leaves, treedef = jax.tree.flatten((args, kwargs))
    return jax.tree.unflatten(treedef, [x[index] if f else x for x, f in zip(leaves, flags)])
