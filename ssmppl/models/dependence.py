"""Static data-flow analysis of JAX functions.

The model tracer uses it to answer structural questions at trace time, without
looking at values: does the emission read the previous state? is a mean affine
in the state (its tangent does not read the state)? does a covariance read the
state? does a matrix change over time (read the scan's ``xs``)? Answers are
conservative: an output is reported as depending on an input whenever some
path through the jaxpr connects them, so an error is never missed, at the cost
of rare false alarms (e.g. ``z * 0``).
"""

from __future__ import annotations

import jax
from jax.extend import core as jex_core

from ..errors import ModelStructureError

# Call-like primitives whose sub-jaxpr maps inputs and outputs one to one: we
# look inside them. Everything else (loops, conds, custom linear solves) is
# treated as "every output reads every input", which is conservative.
_TRANSPARENT_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _sub_jaxpr(eqn):
    for key in _TRANSPARENT_PARAMS:
        sub = eqn.params.get(key)
        if sub is None:
            continue
        jaxpr = getattr(sub, "jaxpr", sub)
        if not hasattr(jaxpr, "eqns"):
            continue
        if len(jaxpr.invars) == len(eqn.invars) and len(jaxpr.outvars) == len(eqn.outvars):
            return jaxpr
    return None


def _propagate(jaxpr, in_deps):
    """Forward pass: the set of input labels that each variable reads."""
    env = {}
    for var, dep in zip(jaxpr.invars, in_deps):
        env[var] = dep

    def read(v):
        if isinstance(v, jex_core.Literal):
            return frozenset()
        return env.get(v, frozenset())  # constvars read no input

    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        sub = _sub_jaxpr(eqn)
        if sub is not None:
            outs = _propagate(sub, ins)
        else:
            union = frozenset().union(*ins) if ins else frozenset()
            outs = [union] * len(eqn.outvars)
        for var, dep in zip(eqn.outvars, outs):
            env[var] = dep
    return [read(v) for v in jaxpr.outvars]


def dependence(fn, *args):
    """Which positional arguments each output leaf of ``fn(*args)`` reads.

    Returns a list (one entry per output leaf, in ``jax.tree.leaves`` order) of
    frozensets of argument positions. Closed-over values (model parameters
    that are traced elsewhere) count as constants.
    """
    flat_args, in_tree = jax.tree.flatten(args)
    arg_of_leaf = []
    for i, a in enumerate(args):
        arg_of_leaf += [i] * len(jax.tree.leaves(a))

    def flat_fn(*leaves):
        return jax.tree.leaves(fn(*jax.tree.unflatten(in_tree, leaves)))

    closed = jax.make_jaxpr(flat_fn)(*flat_args)
    in_deps = [frozenset([arg_of_leaf[i]]) for i in range(len(flat_args))]
    return _propagate(closed.jaxpr, in_deps)


def reads(fn, argnum, *args):
    """True if any output leaf of ``fn(*args)`` reads argument ``argnum``."""
    return any(argnum in dep for dep in dependence(fn, *args))


def leaves_reading(fn, argnum, *args):
    """Per output leaf, whether it reads argument ``argnum``."""
    return [argnum in dep for dep in dependence(fn, *args)]


def derivative_reads(fn, z):
    """True if the JVP of ``fn`` at z reads its tangent, i.e. fn's derivative is not identically zero
    (False when fn reads z only through rounding, comparisons, integer casts). Raises whatever
    ``jax.jvp`` raises for a function without a JVP rule."""
    return reads(lambda z_, v: jax.jvp(fn, (z_,), (v,))[1], 1, z, z)


def require_derivative(fn, z, on_failure, on_zero: str):
    """Trace-time check for a backend that differentiates ``fn`` at z: a ``ModelStructureError`` when fn
    reads z but ``jax.jvp`` fails (message ``on_failure(error)``) or its derivative is identically zero
    (message ``on_zero``: rounding, comparisons, integer casts). Nothing when fn does not read z."""
    if not reads(fn, 0, z):
        return
    try:
        tangent_reads = derivative_reads(fn, z)
    except Exception as error:  # no JVP rule (a callback, an integer op...)
        raise ModelStructureError(on_failure(error)) from None
    if not tangent_reads:
        raise ModelStructureError(on_zero)
