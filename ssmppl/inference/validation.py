"""Checks of a model's parameters and data, the same for every backend.

A backend should never be blamed (or blame its own numerics) for a negative
variance, a non-positive-definite covariance or NaN in a matrix. The facade
computes these checks next to every concrete result, inside the same compiled
function, and raises before asking the backend to explain a failure:

- ``parameter_checks(problem, outer_values, constraints)``: per site and
  distribution argument, per step, whether the value is invalid (traceable);
- ``invalid_input_message(checks)``: the error text naming each site, parameter
  and step (outside jit).

Singular noise is valid state-space structure: a zero scale and a positive
semi-definite covariance pass; only negative scales, NaN and indefinite
matrices fail.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints

from ..models.dependence import reads

# How a failed check reads in a message, per distribution argument: (what, what is wrong).
_WHY = {
    "loc": ("mean", "NaN"),
    "scale": ("scale", "negative or NaN"),
    "scale_tril": ("covariance", "NaN or not positive semi-definite"),
    "cov_factor": ("covariance factor", "NaN"),
    "cov_diag": ("variances", "negative or NaN"),
}
_ROLE = {"latent": "transition", "emission": "emission", "initial-state": "initial-state"}


def _unwrap(d):
    while isinstance(d, (dist.Independent, dist.ExpandedDistribution)):
        d = d.base_dist
    return d


def _psd_bad(M):
    """True if the symmetric matrices M (..., n, n) are NaN or have a clearly negative eigenvalue."""
    finite = jnp.isfinite(M).all(axis=(-2, -1))
    eig = jnp.linalg.eigvalsh(jnp.where(finite[..., None, None], M, 0.0))
    tol = 1e3 * jnp.finfo(M.dtype).eps * jnp.maximum(jnp.abs(eig).max(-1), 1.0)
    return ~finite | (eig.min(-1) < -tol)


def distribution_checks(d) -> dict:
    """{argument name: scalar bool, True if invalid} for one NumPyro distribution."""
    base = _unwrap(d)
    if isinstance(base, dist.Normal):
        return {"loc": ~jnp.isfinite(base.loc).all(), "scale": ~(jnp.asarray(base.scale) >= 0).all()}
    if isinstance(base, dist.MultivariateNormal):
        if "covariance_matrix" in vars(base):  # as given: singular is allowed, indefinite is not
            return {"loc": ~jnp.isfinite(base.loc).all(), "scale_tril": _psd_bad(base.covariance_matrix).any()}
        # given by a factor (or a precision): NaN there means NaN or an indefinite matrix
        return {"loc": ~jnp.isfinite(base.loc).all(), "scale_tril": ~jnp.isfinite(base.scale_tril).all()}
    if isinstance(base, dist.LowRankMultivariateNormal):
        return {"loc": ~jnp.isfinite(base.loc).all(), "cov_factor": ~jnp.isfinite(base.cov_factor).all(),
                "cov_diag": ~(base.cov_diag >= 0).all()}
    out = {}
    for name, constraint in getattr(base, "arg_constraints", {}).items():
        value = base.__dict__.get(name)  # only arguments given, not lazily derived ones
        if value is None or not jnp.issubdtype(jnp.result_type(value), jnp.inexact):
            continue
        try:  # a dependent constraint (e.g. Uniform's bounds) cannot be checked alone: NaN check only
            ok = jnp.asarray(constraint(value), bool)
        except (ValueError, NotImplementedError):
            ok = jnp.ones((), bool)
        out[name] = ~(ok & ~jnp.isnan(value)).all()
    return out


def global_checks(value, constraint) -> jax.Array:
    """True if a global site's value is NaN or outside its constraint (positive and positive
    definite read as non-negative and positive semi-definite: singular noise is allowed)."""
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.inexact):
        return jnp.zeros((), bool)
    bad = jnp.isnan(value).any()
    if constraint is constraints.positive:
        return bad | (value < 0).any()
    if constraint is constraints.positive_definite:
        return bad | _psd_bad(value).any()
    if constraint is None or constraint is constraints.real:
        return bad
    try:
        return bad | ~jnp.asarray(constraint(value), bool).all()
    except Exception:  # a constraint that cannot be evaluated on this value: NaN check only
        return bad


def _per_step(fn, z, problem):
    """fn(z, x_t)'s checks: once when the distribution does not read the inputs, else per step (T,)."""
    x0 = problem.xs_example()
    if problem.xs is None or not reads(lambda x: jax.tree.leaves(fn(z, x)), 0, x0):
        return distribution_checks(fn(z, x0))
    return jax.vmap(lambda x: distribution_checks(fn(z, x)))(problem.xs)


def parameter_checks(problem, outer_sites: Optional[dict] = None) -> dict:
    """{label: bool array (() or (T,)), True where invalid}; traceable.

    The transition and emission are checked at the initial state's mean (their
    noise rarely reads the state; where it does, the filter's own checks apply).
    ``outer_sites``: the model's global site messages, checked against their
    constraints. Observations that are +-inf are invalid (NaN marks missing data).
    """
    names = problem.names
    dtype = jnp.result_type(problem.observations, float)
    checks = {}
    if problem.initial is not None:
        for arg, bad in distribution_checks(problem.initial).items():
            checks[("site", names.init, "initial-state", arg)] = bad
        try:
            mean = jnp.reshape(problem.initial.mean, (-1,))
        except NotImplementedError:  # a family without a mean: check the steps at zero
            mean = jnp.zeros(problem.state_dim)
        z = jnp.broadcast_to(jnp.nan_to_num(mean), (problem.state_dim,))
    else:
        z = problem.initial_value
    z = z.astype(dtype)
    for fn, site, role in ((problem.transition, names.latent, "latent"), (problem.emission, names.obs, "emission")):
        for arg, bad in _per_step(fn, z, problem).items():
            checks[("site", site, role, arg)] = bad
    for name, msg in (outer_sites or {}).items():
        if name == names.init or msg.get("value") is None:
            continue
        constraint = msg["kwargs"].get("constraint") if msg["type"] == "param" else getattr(msg["fn"], "support", None)
        label = getattr(constraint, "__class__", type(None)).__name__.lstrip("_")
        checks[("global", name, msg["type"], label)] = global_checks(msg["value"], constraint)
    checks[("observations", names.obs, "", None)] = jnp.isinf(problem.observations).any(-1)
    return checks


def _steps(bad) -> str:
    bad = np.asarray(bad)
    if bad.ndim == 0:
        return ""
    steps = [int(i) + 1 for i in np.nonzero(bad)[0]]
    more = f" (and {len(steps) - 5} more)" if len(steps) > 5 else ""
    return f" at steps {steps[:5]}{more}"


def invalid_input_message(checks: dict) -> Optional[str]:
    """The error for concrete ``parameter_checks``, or None when every check passed."""
    problems = []
    for (kind, name, role, arg), bad in checks.items():
        if not np.asarray(bad).any():
            continue
        if kind == "global":
            problems.append(f"parameter {name!r} (a global {role} site) is NaN or outside its support ({arg})")
        elif kind == "observations":
            problems.append(f"observations of site {name!r} are +-inf{_steps(bad)}")
        else:
            what, why = _WHY.get(arg, (f"argument {arg!r}", "invalid (NaN or outside its constraint)"))
            problems.append(f"the {_ROLE[role]} {what} of site {name!r} is {why}{_steps(bad)}")
    if not problems:
        return None
    return ("invalid model input: " + "; ".join(problems) + ". NaN is allowed only in observations (missing "
            "data); scales must be non-negative and covariances positive semi-definite")


def first_nonfinite_step(result) -> Optional[int]:
    """1-based first step whose log predictive density or filtered mean is not finite, or None."""
    rows = [np.asarray(result.filtered_means).reshape(len(result.filtered_means), -1)]
    log_predictive = getattr(result, "log_predictive", None)
    if log_predictive is not None:
        rows.append(np.asarray(log_predictive).reshape(-1, 1))
    bad = np.zeros(rows[0].shape[0], bool)
    for r in rows:
        bad |= ~np.isfinite(r).all(axis=-1)
    return int(np.argmax(bad)) + 1 if bad.any() else None


def overflow_hint(observations, step: int, site: str) -> str:
    """Why a finite observation can still break a filter: its square overflows the dtype."""
    y = np.asarray(observations)[step - 1]
    limit = float(np.sqrt(np.finfo(y.dtype).max))
    largest = float(np.nanmax(np.abs(y))) if np.isfinite(y).any() else 0.0
    if largest < 1e-3 * limit:
        return ""
    return (f"; the observations of site {site!r} there reach |y| = {largest:.3g}, whose squares overflow {y.dtype} "
            f"(limit ~{limit:.3g}): rescale the data, or enable float64")
