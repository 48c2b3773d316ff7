"""Quasi-Newton maximum likelihood with standard errors (``SSM.fit_mle``).

For models with few global parameters (variances, a few coefficients) the
likelihood surface is smooth and low-dimensional: L-BFGS with a zoom line
search converges in tens of iterations where EM or Adam need hundreds, and the
Hessian at the optimum is cheap. The whole fit (the L-BFGS ``lax.while_loop``,
the Hessian, its inverse and the delta method) is one compiled program, keyed
only on hashable settings, so a second fit with new data of the same shape or
new starting values reuses it.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from .._jit import jit_by_arrays
from ..inference.base import Backend, require_key
from .parameters import split_frozen, to_constrained, to_unconstrained
from .setup import Layout, prepare

RUNNING, CONVERGED, DIVERGED, STALLED = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class MLEResult:
    """The result of ``SSM.fit_mle``.

    params: {site: value} at the maximum (frozen sites at their given values).
    log_likelihood: log p(y | params), scalar (no prior term, whatever the sites' kind).
    num_iters: L-BFGS iterations taken. converged: the gradient tolerance was met.
    grad_norm: max |d/du| of the per-observation negative log-likelihood at the end
    (u: the unconstrained parameters).
    stderr: {site: standard errors, the site's shape} for the free sites (frozen
    sites are not estimated and are left out): sqrt of the diagonal of ``covariance``.
    covariance: (P, P) asymptotic covariance of the free sites' constrained values,
    flattened in ``labels`` order: J H^-1 J^T, H the Hessian of the negative
    log-likelihood in the unconstrained space (the observed information), J the
    Jacobian of the unconstrained-to-constrained map (the delta method). At an
    exact optimum this equals the inverse observed information in the constrained
    parameters (statsmodels' ``cov_type='oim'``). NaN if H is not positive definite.
    unconstrained_covariance: (Q, Q) H^-1 itself (Q: unconstrained scalars).
    labels: P strings ``site`` or ``site[i, j]`` naming the rows of ``covariance``.
    """

    params: dict
    log_likelihood: jax.Array
    num_iters: int
    converged: bool
    grad_norm: float
    stderr: dict
    covariance: jax.Array
    unconstrained_covariance: jax.Array
    labels: tuple

    def summary(self) -> str:
        """A table of estimates and standard errors (one row per scalar of the free sites)."""
        values = np.concatenate([np.ravel(np.asarray(self.params[k])) for k in sorted(self.stderr)])
        errors = np.concatenate([np.ravel(np.asarray(self.stderr[k])) for k in sorted(self.stderr)])
        width = max(len(s) for s in self.labels)
        lines = [f"{'':{width}s} {'estimate':>14s} {'std err':>14s}"]
        lines += [f"{s:{width}s} {v:14.6g} {e:14.6g}" for s, v, e in zip(self.labels, values, errors)]
        lines.append(f"log-likelihood {float(self.log_likelihood):.6f}; {self.num_iters} L-BFGS iterations; "
                     f"{'converged' if self.converged else 'NOT converged'} (max |gradient| {self.grad_norm:.2g})")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class _MLEPlan:
    layout: Layout
    method: Backend
    frozen: tuple
    max_iters: int
    gtol: float
    memory_size: int
    max_linesearch_steps: int


def _total_loglik(plan, free_u, fixed, key, args, kwargs):
    """log p(y | params) summed over sequences, for unconstrained free values."""
    sites = plan.layout.sites(args, kwargs)
    params = {**fixed, **to_constrained(free_u, sites)}
    n = plan.layout.num_sequences
    keys = jax.random.split(key, n) if plan.method.requires_key else None

    def one(seq_key, *a, **k):
        problem, _ = plan.layout.ssm._trace(params, a, k)
        return plan.method.log_likelihood(problem, seq_key)

    return plan.layout.per_sequence(one, args, kwargs, keys).sum()


def _fit(plan, free_u, fixed, key, num_observed, args, kwargs):
    x0, unravel = ravel_pytree(free_u)
    sites = plan.layout.sites(args, kwargs)

    def objective(x):  # per observed scalar, so that gtol does not depend on the data size
        return -_total_loglik(plan, unravel(x), fixed, key, args, kwargs) / num_observed

    solver = optax.lbfgs(memory_size=plan.memory_size,
                         linesearch=optax.scale_by_zoom_linesearch(plan.max_linesearch_steps))
    value_and_grad = optax.value_and_grad_from_state(objective)
    value0, grad0 = jax.value_and_grad(objective)(x0)

    def cond(carry):
        return (carry[2] < plan.max_iters) & (carry[6] == RUNNING)

    def body(carry):
        x, state, k, value, grad, _, _ = carry
        value, grad = value_and_grad(x, state=state)
        updates, new_state = solver.update(grad, state, x, value=value, grad=grad, value_fn=objective)
        x_new = optax.apply_updates(x, updates)
        v_new = optax.tree_utils.tree_get(new_state, "value")
        g_new = optax.tree_utils.tree_get(new_state, "grad")
        finite = jnp.isfinite(v_new) & jnp.all(jnp.isfinite(x_new)) & jnp.all(jnp.isfinite(g_new))
        gmax = jnp.max(jnp.abs(g_new))
        status = jnp.where(~finite, DIVERGED,
                           jnp.where(gmax <= plan.gtol, CONVERGED,
                                     jnp.where(v_new < value, RUNNING, STALLED)))  # no decrease: stop
        keep = finite & (v_new <= value)
        pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, old)  # noqa: E731
        return (pick(x_new, x), pick(new_state, state), k + 1, pick(v_new, value), pick(g_new, grad),
                pick(gmax, jnp.max(jnp.abs(grad))), status)

    status0 = jnp.where(~jnp.isfinite(value0), DIVERGED,
                        jnp.where(jnp.max(jnp.abs(grad0)) <= plan.gtol, CONVERGED, RUNNING))
    carry = (x0, solver.init(x0), jnp.asarray(0), value0, grad0, jnp.max(jnp.abs(grad0)), status0)
    x, _, iters, value, _, gmax, status = jax.lax.while_loop(cond, body, carry)

    # observed information of the total log-likelihood, unconstrained space
    hessian = jax.hessian(lambda z: -_total_loglik(plan, unravel(z), fixed, key, args, kwargs))(x)
    hessian = 0.5 * (hessian + hessian.T)
    eig = jnp.linalg.eigvalsh(hessian)
    # round-off makes an exactly singular H (an unidentified direction) look slightly positive
    positive = eig[0] > 100 * eig.shape[0] * jnp.finfo(eig.dtype).eps * jnp.max(jnp.abs(eig))
    cov_u = jnp.where(positive, jnp.linalg.inv(hessian), jnp.nan)
    cov_u = 0.5 * (cov_u + cov_u.T)

    def constrained_flat(z):
        return ravel_pytree(to_constrained(unravel(z), sites))[0]

    jac = jax.jacfwd(constrained_flat)(x)  # (P, Q)
    cov = jac @ cov_u @ jac.T
    free = to_constrained(unravel(x), sites)
    _, unravel_c = ravel_pytree(free)
    stderr = unravel_c(jnp.sqrt(jnp.clip(jnp.diag(cov), 0.0)) + jnp.where(positive, 0.0, jnp.nan))
    return dict(free=free, log_likelihood=-value * num_observed, num_iters=iters, status=status, grad_norm=gmax,
                stderr=stderr, covariance=cov, unconstrained_covariance=cov_u, positive=positive)


def _labels(free: dict) -> tuple:
    labels = []
    for k in sorted(free):  # ravel_pytree's order for a dict
        shape = np.shape(free[k])
        labels += [k] if shape == () else [f"{k}[{', '.join(map(str, i))}]" for i in np.ndindex(*shape)]
    return tuple(labels)


def fit_mle(ssm, params, args, kwargs, method=None, frozen=(), max_iters=200, gtol: Optional[float] = None,
            memory_size=10, max_linesearch_steps=20, key=None) -> MLEResult:
    """See ``SSM.fit_mle``."""
    if not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters must be a positive int, got {max_iters!r}")
    if gtol is None:
        gtol = 1e-6 if jnp.result_type(float) == jnp.float64 else 1e-4
    if not gtol > 0:
        raise ValueError(f"gtol must be positive, got {gtol!r}")
    layout, sites, full, frozen, num_observed = prepare(ssm, params, args, kwargs, frozen, method)
    if len(frozen) == len(sites):
        raise ValueError("every global site is frozen: nothing to fit")
    require_key(method, key, "pass key=jax.random.PRNGKey(...) to fit_mle")
    if key is None:
        key = jax.random.PRNGKey(0)
    plan = _MLEPlan(layout, method, frozen, max_iters, float(gtol), int(memory_size), int(max_linesearch_steps))
    free, fixed = split_frozen(full, frozen)
    u = to_unconstrained(free, sites)
    out = jit_by_arrays(_fit, plan, u, fixed, key, jnp.asarray(num_observed, jnp.result_type(float)), args, kwargs)

    status, iters = int(out["status"]), int(out["num_iters"])
    grad_norm = float(out["grad_norm"])
    x64_hint = "" if jnp.result_type(float) == jnp.float64 else \
        " (float32: enable float64 with jax.config.update('jax_enable_x64', True), or loosen gtol)"
    if status == DIVERGED:
        warnings.warn(f"fit_mle stopped at iteration {iters}: the log-likelihood or its gradient became non-finite; "
                      "returning the last parameters with a finite log-likelihood", RuntimeWarning, stacklevel=3)
    elif status == STALLED:
        warnings.warn(f"fit_mle stopped at iteration {iters}: the line search found no decrease while the gradient "
                      f"(max |g| {grad_norm:.3g}) is above gtol={gtol:g}{x64_hint}", RuntimeWarning, stacklevel=3)
    elif status == RUNNING:
        warnings.warn(f"fit_mle did not converge in max_iters={max_iters} iterations (max |gradient| {grad_norm:.3g}, "
                      f"gtol={gtol:g}); raise max_iters or start nearer", RuntimeWarning, stacklevel=3)
    if not bool(out["positive"]):
        warnings.warn("fit_mle: the Hessian of the negative log-likelihood is not positive definite at the estimate "
                      "(a variance at zero, an unidentified parameter, or not a maximum): standard errors are NaN",
                      RuntimeWarning, stacklevel=3)
    params_out = {**out["free"], **{k: full[k] for k in frozen}}
    return MLEResult(params={k: params_out[k] for k in full}, log_likelihood=out["log_likelihood"], num_iters=iters,
                     converged=status == CONVERGED, grad_norm=grad_norm, stderr=out["stderr"],
                     covariance=out["covariance"], unconstrained_covariance=out["unconstrained_covariance"],
                     labels=_labels(out["free"]))
