"""Expectation-maximisation over a model's global sites.

E-step: the smoother of the chosen backend gives q(z_{0:T}) (marginals and
consecutive pairs). M-step: closed form for the built-in linear Gaussian model
(``lgssm_mstep``); for any other model a generalised step, which increases the
expected log joint (``expected_log_joint``, plus the log prior of global sample
sites: MAP-EM) with an inner optimiser in the unconstrained space, and is
accepted only if it does increase it. Each iteration records the log marginal
likelihood (plus log prior) at the parameters it starts from.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from .._jit import StructuralKey, jit_by_arrays
from ..inference.base import Backend, Capability, require_key
from .expected_log_joint import cubature_points, expected_log_joint
from .parameters import log_prior, split_frozen, to_constrained, to_unconstrained
from .progress import CONVERGED, DIVERGED, RUNNING, chunk_size, progress_mode, run_in_chunks
from .setup import Layout, prepare, tree_all_finite


@dataclasses.dataclass(frozen=True)
class _EMPlan:
    layout: Layout
    method: Backend
    frozen: tuple
    closed_form: Any  # the model's ClosedFormMStep, or None for the generalised M-step
    num_iters: int
    tol: Optional[float]
    chunk: int
    num_observed: int
    m_step_iters: int
    m_step_optimizer: Any  # None, "newton", "lbfgs" or a StructuralKey of an optax optimiser
    acceleration: Optional[str] = None  # None or "squarem"


def _e_step(plan, params, args, kwargs, key):
    """Per sequence: (log-likelihood, log prior, what the M-step needs)."""
    keys = jax.random.split(key, plan.layout.num_sequences) if plan.method.requires_key else None

    def one(seq_key, *a, **k):
        problem, outer = plan.layout.ssm._trace(params, a, k)
        smoothed = plan.method.smooth(problem, seq_key)
        if plan.closed_form is not None:
            extra = plan.closed_form.statistics(params, problem, smoothed)
        else:
            extra = cubature_points(smoothed, problem.initial is not None)
        return smoothed.marginal_loglik, log_prior(outer, problem.names), extra

    return plan.layout.per_sequence(one, args, kwargs, keys)


_NEWTON_MAX_SIZE = 300  # free scalars up to which the M-step uses exact Newton steps


def damped_newton(f, x0, num_steps):
    """Minimise f by Newton steps with Levenberg-Marquardt damping (accept only decreases).

    Exact Hessians (forward over reverse) make the inner problem converge in a few
    steps even when it is ill-conditioned (curvature in F scales with Q^{-1}),
    where first-order methods crawl. Cost: one Hessian of size (n, n) per step.
    """
    flat0, unravel = ravel_pytree(x0)
    g = lambda x: f(unravel(x))
    eye = jnp.eye(flat0.shape[0], dtype=flat0.dtype)

    def step(carry, _):
        x, value, damping = carry
        grad, hess = jax.grad(g)(x), jax.hessian(g)(x)
        scale = jnp.max(jnp.abs(jnp.diag(hess))) + 1e-12
        proposal = x - jnp.linalg.solve(hess + damping * scale * eye, grad)
        new_value = g(proposal)
        better = jnp.isfinite(new_value) & (new_value < value)
        x = jnp.where(better, proposal, x)
        value = jnp.where(better, new_value, value)
        damping = jnp.where(better, jnp.maximum(damping / 10, 1e-12), damping * 10)
        return (x, value, damping), None

    (x, _, _), _ = jax.lax.scan(step, (flat0, g(flat0), jnp.asarray(1e-6, flat0.dtype)), None, length=num_steps)
    return unravel(x)


def _optax_minimise(f, u0, num_steps, optimizer):
    if optimizer == "lbfgs":
        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(f)

        def step(carry, _):
            u, state = carry
            value, grad = value_and_grad(u, state=state)
            updates, state = opt.update(grad, state, u, value=value, grad=grad, value_fn=f)
            return (optax.apply_updates(u, updates), state), None
    else:
        opt = optimizer

        def step(carry, _):
            u, state = carry
            updates, state = opt.update(jax.grad(f)(u), state, u)
            return (optax.apply_updates(u, updates), state), None

    (u, _), _ = jax.lax.scan(step, (u0, opt.init(u0)), None, length=num_steps)
    return u


def _generalised_mstep(plan, params, points, args, kwargs):
    sites = plan.layout.sites(args, kwargs)
    free, fixed = split_frozen(params, plan.frozen)

    def negative_objective(u):
        p = {**fixed, **to_constrained(u, sites)}

        def one(pts, *a, **k):
            problem, outer = plan.layout.ssm._trace(p, a, k)
            return expected_log_joint(problem, pts), log_prior(outer, problem.names)

        values, priors = plan.layout.per_sequence(one, args, kwargs, points)
        return -(values.sum() + priors[0]) / plan.num_observed

    u0 = to_unconstrained(free, sites)
    optimizer = plan.m_step_optimizer
    if isinstance(optimizer, StructuralKey):
        optimizer = optimizer.obj
    if optimizer is None:
        size = sum(jnp.size(x) for x in jax.tree.leaves(u0))
        optimizer = "newton" if size <= _NEWTON_MAX_SIZE else "lbfgs"
    if optimizer == "newton":
        u = damped_newton(negative_objective, u0, plan.m_step_iters)
    else:
        u = _optax_minimise(negative_objective, u0, plan.m_step_iters, optimizer)
    before, after = negative_objective(u0), negative_objective(u)
    improved = jnp.isfinite(after) & (after <= before) & tree_all_finite(u)
    new = {**fixed, **to_constrained(u, sites)}
    return jax.tree.map(lambda a, b: jnp.where(improved, a, b), new, params)


def _em_map(plan, params, args, kwargs, key):
    """One EM map theta -> M(theta): (log p(y | theta) + log prior, M(theta))."""
    lls, priors, extra = _e_step(plan, params, args, kwargs, key)
    ll = lls.sum() + priors[0]
    if plan.closed_form is not None:
        return ll, plan.closed_form.update(params, plan.frozen, extra)
    return ll, _generalised_mstep(plan, params, extra, args, kwargs)


def _squarem_map(plan, params, args, kwargs, key):
    """One SQUAREM cycle (Varadhan & Roland 2008, scheme S3 with a monotone safeguard):
    (log-lik at ``params``, the next parameters). Two EM maps give theta1 = M(theta0) and
    theta2 = M(theta1); with r = theta1 - theta0, v = theta2 - 2 theta1 + theta0 and
    alpha = -max(1, |r| / |v|) the extrapolation theta0 - 2 alpha r + alpha^2 v is taken in the
    free sites' unconstrained space (a covariance's extrapolation stays positive definite) and
    stabilised by a third EM map. It is kept only if its log-likelihood is finite and at least
    theta1's; otherwise the cycle returns theta2. Either way the log-likelihood never falls below
    theta1's, so the recorded sequence stays monotone as plain EM's does."""
    sites = plan.layout.sites(args, kwargs)

    def flat(theta):
        return ravel_pytree(to_unconstrained(split_frozen(theta, plan.frozen)[0], sites))

    def extrapolate(th0, th1, th2):
        (u0, unravel), (u1, _), (u2, _) = flat(th0), flat(th1), flat(th2)
        r, v = u1 - u0, u2 - 2 * u1 + u0
        alpha = -jnp.maximum(1.0, jnp.linalg.norm(r) / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(u0.dtype).tiny))
        u = u0 - 2 * alpha * r + alpha ** 2 * v
        return {**split_frozen(th0, plan.frozen)[1], **to_constrained(unravel(u), sites)}

    def choose(c, a, b):
        return jax.tree.map(lambda x, y: jnp.where(c, x, y), a, b)

    # The three EM maps run as one loop, so the E- and M-step are traced and compiled once. Step 0
    # maps theta0 to theta1, step 1 theta1 to theta2 and then extrapolates, step 2 stabilises.
    def step(i, carry):
        x, theta1, theta2, lls = carry
        ll, out = _em_map(plan, x, args, kwargs, key)
        theta1, theta2 = choose(i == 0, out, theta1), choose(i == 1, out, theta2)
        x = jax.lax.cond(i == 1, lambda: extrapolate(params, theta1, out), lambda: out)
        return x, theta1, theta2, lls.at[i].set(ll.astype(lls.dtype))

    dtype = jnp.result_type(*jax.tree.leaves(params), float)
    stabilised, _, theta2, lls = jax.lax.fori_loop(0, 3, step, (params, params, params, jnp.full((3,), jnp.nan, dtype)))
    keep = jnp.isfinite(lls[2]) & (lls[2] >= lls[1]) & tree_all_finite(stabilised)
    return lls[0], choose(keep, stabilised, theta2)


def _em_iteration(plan, state, args, kwargs):
    params, good, prev_ll, status, count, key = state
    ll, new = (_squarem_map if plan.acceleration == "squarem" else _em_map)(plan, params, args, kwargs, key)
    ok = jnp.isfinite(ll)
    new_ok = ok & tree_all_finite(new)
    if plan.tol is None:
        converged = jnp.asarray(False)
    else:
        converged = (count > 0) & (jnp.abs(ll - prev_ll) <= plan.tol * jnp.abs(ll))
    status = jnp.where(~new_ok, DIVERGED, jnp.where(converged, CONVERGED, RUNNING)).astype(status.dtype)
    ll = ll.astype(prev_ll.dtype)
    good = jax.tree.map(lambda p, g: jnp.where(ok, p, g), params, good)
    params = jax.tree.map(lambda n, g: jnp.where(new_ok, n, g), new, good)
    return (params, good, ll, status, count + 1, key), ll


def _loglik_gradient(plan, params, key, args, kwargs):
    """Largest |d/du (log p(y | theta) + log prior) / n| over the free sites' unconstrained values u
    (n observed scalars: the scale of fit_sgd's loss), computed with EM's own backend and key."""
    sites = plan.layout.sites(args, kwargs)
    free, fixed = split_frozen(params, plan.frozen)
    keys = jax.random.split(key, plan.layout.num_sequences) if plan.method.requires_key else None

    def objective(u):
        p = {**fixed, **to_constrained(u, sites)}

        def one(seq_key, *a, **k):
            problem, outer = plan.layout.ssm._trace(p, a, k)
            return plan.method.log_likelihood(problem, seq_key), log_prior(outer, problem.names)

        lls, priors = plan.layout.per_sequence(one, args, kwargs, keys)
        return (lls.sum() + priors[0]) / plan.num_observed

    grad = jax.grad(objective)(to_unconstrained(free, sites))
    return jnp.max(jnp.abs(ravel_pytree(grad)[0]))


class EMStallWarning(RuntimeWarning):
    """EM's iterations stopped raising the log-likelihood while its gradient is not small: the
    E-step's statistics lost the precision the M-step needs (typically float32)."""


# EM "stalls" when its last _STALL_WINDOW iterations raised the log-likelihood by no more than
# _STALL_RESOLUTION float epsilons of |log-lik| (rounding level) while the largest gradient entry per
# observed scalar still exceeds _STALL_GRADIENT (a converged fit's is rounding noise, far below).
_STALL_WINDOW = 3
_STALL_RESOLUTION = 4.0
_STALL_GRADIENT = 1e-3


def stalled_at(lls, dtype, window=_STALL_WINDOW):
    """The iteration (1-based) after which the log-likelihood stopped rising, if its last ``window``
    changes were all at rounding level; else None. lls (n,) finite."""
    lls = np.asarray(lls, np.float64)
    if lls.shape[0] <= window:
        return None
    resolution = _STALL_RESOLUTION * float(jnp.finfo(dtype).eps) * np.abs(lls[-1])
    gains = np.diff(lls)
    flat = gains <= resolution
    if not flat[-window:].all():
        return None
    first = len(flat)
    while first > 0 and flat[first - 1]:
        first -= 1
    return first + 1  # iteration (1-based) whose log-likelihood was the last to rise


def _em_chunk(plan, state, start, args, kwargs):
    def body(state, i):
        active = (i < plan.num_iters) & (state[3] == RUNNING)
        return jax.lax.cond(active, lambda s: _em_iteration(plan, s, args, kwargs),
                            lambda s: (s, jnp.full((), jnp.nan, s[2].dtype)), state)

    return jax.lax.scan(body, state, start + jnp.arange(plan.chunk))


class ClosedFormMStep(Protocol):
    """An exact M-step a model carries as ``model.closed_form_m_step`` (e.g.
    ``ssmppl.models.linear_gaussian_ssm``'s): sufficient statistics per sequence, then
    the maximiser. EM never reads site names itself."""

    def statistics(self, params: dict, problem, smoothed) -> Any:
        """Expected sufficient statistics of one sequence under its smoother output."""

    def update(self, params: dict, frozen: tuple, statistics) -> dict:
        """New parameters from the statistics stacked over sequences (leading axis B)."""


def fit_em(ssm, params, args, kwargs, num_iters=100, method=None, frozen=(), tol=None, progress_bar=True,
           m_step="auto", m_step_iters=15, m_step_optimizer=None, key=None, acceleration=None):
    """See ``SSM.fit_em``."""
    if acceleration not in (None, "squarem"):
        raise ValueError(f"acceleration must be None or 'squarem', got {acceleration!r}")
    if not isinstance(num_iters, int) or num_iters < 1:
        raise ValueError(f"num_iters must be a positive int, got {num_iters!r}")
    if tol is not None and not tol >= 0:
        raise ValueError(f"tol must be a non-negative float or None, got {tol!r}")
    if not (m_step_optimizer in (None, "newton", "lbfgs") or hasattr(m_step_optimizer, "update")):
        raise ValueError(f"m_step_optimizer must be 'newton', 'lbfgs' or an optax optimiser, got {m_step_optimizer!r}")
    if m_step not in ("auto", "closed_form", "generalised"):
        raise ValueError(f"m_step must be 'auto', 'closed_form' or 'generalised', got {m_step!r}")
    require_key(method, key, "pass key=jax.random.PRNGKey(...) to fit_em")
    layout, sites, full, frozen, num_observed = prepare(ssm, params, args, kwargs, frozen, method)
    carried = getattr(ssm.model, "closed_form_m_step", None)
    if m_step == "closed_form" and carried is None:
        raise ValueError("this model carries no closed-form M-step (model.closed_form_m_step, as "
                         "ssmppl.models.linear_gaussian_ssm does); use m_step='auto' (generalised EM)")
    closed_form = carried if m_step != "generalised" else None
    if len(frozen) == len(sites):
        raise ValueError("every global site is frozen: nothing to fit")
    mode = progress_mode(progress_bar)  # a live bar in terminals and notebooks only
    plan = _EMPlan(layout, method, frozen, closed_form, num_iters,
                   None if tol is None else float(tol), chunk_size(num_iters, mode), num_observed,
                   m_step_iters, m_step_optimizer if m_step_optimizer in (None, "newton", "lbfgs")
                   else StructuralKey(m_step_optimizer), acceleration)
    dtype = jnp.result_type(*full.values(), float)
    # A sampling backend's smoother runs with the same key every iteration (common random numbers):
    # EM then climbs one fixed surrogate of the likelihood instead of a noisy one.
    key = jax.random.PRNGKey(0) if key is None else key
    state = (full, full, jnp.asarray(jnp.nan, dtype), jnp.asarray(RUNNING), jnp.asarray(0), key)

    def run_chunk(state, start):
        return jit_by_arrays(_em_chunk, plan, state, jnp.asarray(start), args, kwargs)

    state, lls = run_in_chunks(run_chunk, state, num_iters, mode, "EM", lambda s: s[3],
                               lambda v: f"log-lik {v:.4g}")
    params_out, _, _, status, count, _ = state
    lls = jnp.asarray(lls[: int(count)])
    if int(status) == DIVERGED:
        bad = int(count)
        warnings.warn(
            f"EM stopped at iteration {bad}: the log-likelihood or the M-step's parameters were not finite. "
            "Returning the last parameters with a finite log-likelihood; check the model for covariances "
            "that can become singular", RuntimeWarning, stacklevel=3)
        lls = lls[jnp.isfinite(lls)]
    else:
        # A tol-converged fit stopped at its first small change: flat at rounding level there is a stall too.
        _warn_if_stalled(plan, params_out, key, args, kwargs, lls, dtype, 1 if int(status) == CONVERGED else _STALL_WINDOW)
    # Frozen sites come back as the very objects given, bit for bit.
    params_out = {k: (full[k] if k in frozen else v) for k, v in params_out.items()}
    return params_out, lls


def _warn_if_stalled(plan, params, key, args, kwargs, lls, dtype, window):
    """EMStallWarning when EM stopped improving though the gradient is not small (one extra
    compiled gradient, only when the last iterations were flat). Backends without a deterministic,
    differentiable likelihood (particle filters: noisy; smoother-only backends) are not checked: their
    gradient cannot tell a stall from a maximum."""
    if Capability.LIKELIHOOD not in plan.method.capabilities or plan.method.noisy_likelihood:
        return
    stall = stalled_at(lls, dtype, window)
    if stall is None:
        return
    grad = float(jit_by_arrays(_loglik_gradient, plan, params, key, args, kwargs))
    if not grad > _STALL_GRADIENT:
        return
    precision = jnp.finfo(dtype)
    fix = ('enable float64 before creating any array: jax.config.update("jax_enable_x64", True)'
           if precision.bits < 64 else "rescale the data or the parameters (float64 is already on), or use fit_sgd")
    warnings.warn(
        f"EM stalled: the log-likelihood has not risen since iteration {stall} ({float(lls[stall - 1]):.6g}) "
        f"although its gradient is not small (largest entry {grad:.2e} per observed scalar, in the "
        f"unconstrained space; > {_STALL_GRADIENT:g}). In {precision.dtype} the E-step's statistics no longer "
        f"resolve the M-step's gains; {fix}, or continue with fit_sgd from these parameters",
        EMStallWarning, stacklevel=4)  # user -> SSM.fit_em -> fit_em -> here
