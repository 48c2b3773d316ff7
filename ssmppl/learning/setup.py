"""What both learners need before iterating: sites, batch layout, data size, checks."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from .._jit import jit_by_arrays, traced_floats
from .batching import find_batch, map_sequences, take_sequences
from .parameters import check_frozen, complete_params, global_sites


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static description of the data: which argument leaves are split per sequence."""

    ssm: object  # the SSM (equal for the same model function and site names)
    flags: Optional[tuple]  # per flattened (args, kwargs) leaf; None = one sequence
    num_sequences: int

    def first_sequence(self, args, kwargs):
        if self.flags is None:
            return args, kwargs
        return take_sequences(args, kwargs, self.flags, 0)

    def sites(self, args, kwargs):
        a, k = self.first_sequence(args, kwargs)
        return global_sites(self.ssm.model, a, k, self.ssm.site_names(*a, **k), self.ssm.latent, self.ssm.obs)[0]

    def per_sequence(self, fn, args, kwargs, per_sequence=None):
        """``fn(extra, *args, **kwargs)`` per sequence, stacked on a leading axis."""
        return map_sequences(fn, args, kwargs, self.flags, per_sequence)

    def subset(self, args, kwargs, index):
        return take_sequences(args, kwargs, self.flags, index)


def prepare(ssm, params, args, kwargs, frozen, method):
    """(layout, sites, full params, frozen names, number of observed scalars)."""
    flags, B = find_batch(ssm.model, args, kwargs, ssm.latent, ssm.obs)
    layout = Layout(ssm, None if flags is None else tuple(flags), B or 1)
    a, k = layout.first_sequence(args, kwargs)
    names = ssm.site_names(*a, **k)
    sites, initial = global_sites(ssm.model, a, k, names, ssm.latent, ssm.obs)
    frozen = check_frozen(frozen, sites)
    full = traced_floats(complete_params(params, sites, initial))
    num_observed = int(jit_by_arrays(_observed_count, layout, full, args, kwargs))
    if num_observed == 0:
        raise ValueError(f"no observations: the emission site {names.obs!r} is unobserved or all NaN; "
                         "pass the data to fit")
    return layout, sites, full, frozen, num_observed


def _observed_count(layout, params, args, kwargs):
    def one(_, *a, **k):
        return jnp.sum(~jnp.isnan(layout.ssm.state_space(params, *a, **k).observations))

    return layout.per_sequence(one, args, kwargs).sum()


def tree_all_finite(tree):
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.asarray(True)
