"""Compile a function of arbitrary model arguments once per argument structure.

Model arguments mix arrays (data: traced) with Python values (``T=100``,
flags: static). ``jit_by_arrays`` traces the arrays and keys the compiled
function on everything else, so a user never has to mark static arguments.
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np


def is_array(x):
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


@partial(jax.jit, static_argnames=("spec",))
def _apply(arrays, spec):
    fn, treedef, statics = spec
    it = iter(arrays)
    leaves = [next(it) if s is _ARRAY else s for s in statics]
    args, kwargs = jax.tree.unflatten(treedef, leaves)
    return fn(*args, **kwargs)


class _ArrayMarker:
    def __repr__(self):
        return "<array>"


_ARRAY = _ArrayMarker()


def jit_by_arrays(fn, *args, **kwargs):
    """Call ``fn(*args, **kwargs)`` compiled, with every array leaf traced.

    ``fn`` must be hashable (a module-level function or a bound method of a
    hashable object); non-array leaves must be hashable.
    """
    leaves, treedef = jax.tree.flatten((args, kwargs))
    arrays = [x for x in leaves if is_array(x)]
    statics = tuple(_ARRAY if is_array(x) else x for x in leaves)
    return _apply(arrays, spec=(fn, treedef, statics))
