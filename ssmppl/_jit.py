"""Compile a function of arbitrary model arguments once per argument structure.

Model arguments mix arrays (data: traced) with Python values (``T=100``,
flags: static). ``jit_by_arrays`` traces the arrays and keys the compiled
function on everything else, so a user never has to mark static arguments.

Two helpers keep that key stable across calls that a user sees as "the same":

- ``traced_floats`` turns Python floats (``{"sigma": 0.5}``) into weakly typed
  arrays, so parameter values are traced rather than compiled in;
- ``StructuralKey`` compares objects built by closures (an optax optimiser made
  by ``optax.adam(1e-2)`` in each call) by what they compute: code and captured
  values, not identity.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
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


def traced_floats(tree):
    """``tree`` with its Python float leaves as weakly typed JAX scalars (same dtype promotion as
    the float; traced by ``jit_by_arrays`` instead of keying a new compilation per value).
    Python ints and bools stay as they are: they may be sizes or flags."""
    return jax.tree.map(lambda x: jnp.asarray(x) if type(x) is float else x, tree)


class _Unkeyable(Exception):
    pass


_MAX_DEPTH = 12


def _fingerprint(obj, depth, seen):
    """A hashable value equal for objects that compute the same thing (see ``StructuralKey``)."""
    if depth > _MAX_DEPTH:
        raise _Unkeyable
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, type, types.ModuleType)):
        return (type(obj), obj)
    if id(obj) in seen:  # a closure that refers to itself
        return ("cycle", seen[id(obj)])
    seen = {**seen, id(obj): len(seen)}
    rec = lambda x: _fingerprint(x, depth + 1, seen)  # noqa: E731
    if is_array(obj):
        if isinstance(obj, jax.core.Tracer):
            raise _Unkeyable
        a = np.asarray(obj)
        return ("array", a.shape, str(a.dtype), a.tobytes())
    if isinstance(obj, (tuple, list)):  # NamedTuples too (optax's GradientTransformation): keyed by their type
        return (type(obj), tuple(rec(x) for x in obj))
    if isinstance(obj, dict):
        return (dict, tuple(sorted((repr(k), rec(v)) for k, v in obj.items())))
    if isinstance(obj, functools.partial):
        return ("partial", rec(obj.func), rec(obj.args), rec(obj.keywords))
    if isinstance(obj, types.MethodType):
        return ("method", rec(obj.__func__), rec(obj.__self__))
    if isinstance(obj, types.FunctionType):
        cells = tuple(rec(_cell_contents(c)) for c in (obj.__closure__ or ()))
        return ("function", obj.__module__, obj.__qualname__, obj.__code__, cells, rec(obj.__defaults__),
                rec(obj.__kwdefaults__))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return (type(obj), tuple((f.name, rec(getattr(obj, f.name))) for f in dataclasses.fields(obj)))
    try:  # anything else hashable compares by its own equality (identity by default)
        hash(obj)
    except TypeError:
        raise _Unkeyable from None
    return ("object", obj)


_EMPTY_CELL = ("empty cell",)


def _cell_contents(cell):
    try:
        return cell.cell_contents
    except ValueError:  # a closure variable not assigned yet
        return _EMPTY_CELL


class StructuralKey:
    """Wraps an object (e.g. an optax ``GradientTransformation``) so that it hashes and compares by
    structure: two optimisers built by ``optax.adam(1e-2)`` are equal, ``optax.adam(1e-3)`` is not.
    Objects that cannot be read so (a traced array inside, something unhashable) fall back to
    identity: correct, but a new object then compiles anew."""

    __slots__ = ("obj", "_key")

    def __init__(self, obj: Any):
        self.obj = obj
        try:
            self._key = _fingerprint(obj, 0, {})
            hash(self._key)
        except (_Unkeyable, TypeError, RecursionError):
            self._key = ("identity", id(obj))

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, StructuralKey) and (self.obj is other.obj or self._key == other._key)

    def __repr__(self):
        return f"StructuralKey({self.obj!r})"
