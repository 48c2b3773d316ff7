"""Closed-form M-step of linear Gaussian SSMs (``ssmppl.models.linear_gaussian_ssm`` carries one).

Both conditionals are multivariate linear regressions, z_t on x_t = [z_{t-1}, 1, u_t]
with coefficients [F, b, B] and noise Q, and y_t on [z_t, 1, u_t] with [H, d, D]
and noise R. Given the smoothed moments, expected sufficient statistics
S_xx = sum E[x x^T], S_yx = sum E[y x^T], S_yy = sum E[y y^T] give the maximiser
W = S_yx S_xx^{-1} and noise (S_yy - W S_xy - S_yx W^T + W S_xx W^T) / n.
With some coefficient blocks frozen, the free blocks regress the residual of the
frozen ones; a frozen noise covariance does not change the coefficients (all
outputs share the regressors, so least squares is the maximiser for any noise).

Partly observed emissions are exact EM too: the missing components are latent
variables, completed by their conditional mean given z_t and the observed
components under the current parameters; fully missing steps are left out.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from ..results import SmoothResult, lagged_moments
from .gaussian import masked_covariance, symmetrize


def _regressors(m, u):
    """E[x] (T, k) of x = [z, 1, u] with E[z] = m; Cov[x] is P in the top-left block only."""
    ones = jnp.ones((m.shape[0], 1), m.dtype)
    return jnp.concatenate([m, ones] + ([u] if u is not None else []), axis=1)


def _second_moment(Ex, P, weights=None):
    """sum_t w_t E[x_t x_t^T] (k, k), the covariance P_t filling the state block."""
    w = jnp.ones(Ex.shape[0], Ex.dtype) if weights is None else weights
    dz = P.shape[-1]
    return ((Ex * w[:, None]).T @ Ex).at[:dz, :dz].add(jnp.einsum("t,tij->ij", w, P))


def dynamics_statistics(smoothed: SmoothResult, u):
    """Sums over t = 1..T for z_t | x_t = [z_{t-1}, 1, u_t] (one sequence; u (T, du) or None).

    Returns (S_xx, S_yx, S_yy, n).
    """
    m, P = smoothed.smoothed_means, smoothed.smoothed_covariances
    m_prev, P_prev, cross = lagged_moments(smoothed)
    Ex = _regressors(m_prev, u)
    dz = m.shape[1]
    Syx = (m.T @ Ex).at[:, :dz].add(jnp.swapaxes(cross, -1, -2).sum(0))  # + sum_t Cov[z_t, z_{t-1}]
    Sxx = _second_moment(Ex, P_prev)
    Syy = m.T @ m + P.sum(0)
    return Sxx, Syx, Syy, jnp.asarray(m.shape[0], m.dtype)


def _completion(o, R):
    """G (dy, dy) mapping observed components to the conditional mean of all of them
    (observed rows: unit vectors; missing rows: R_mo R_oo^{-1}) and the conditional
    covariance R - G R of the missing ones."""
    G = jnp.linalg.solve(masked_covariance(R, o), jnp.where(o[:, None], R.T, 0.0)).T
    return G, R - G @ R


def emission_statistics(m, P, y, u, H, d, D, R):
    """Sums over observed steps for y_t | x_t = [z_t, 1, u_t] (one sequence).

    Fully observed steps enter with y_t itself; in partly observed ones the missing
    components are completed under the current (H, d, D, R) (exact EM: they are
    latent); fully missing steps are left out.
    """
    observed = ~jnp.isnan(y)
    y0 = jnp.where(observed, y, 0.0)
    full = observed.all(1)
    partial = observed.any(1) & ~full
    Ex = _regressors(m, u)
    dz, dy = m.shape[1], y.shape[1]
    w_full = full.astype(m.dtype)
    Syx = (y0 * w_full[:, None]).T @ Ex
    Syy = (y0 * w_full[:, None]).T @ y0
    Sxx = _second_moment(Ex, P, observed.any(1).astype(m.dtype))

    def add_partial(sums, inputs):
        # A scan with a cond: the completion's solve runs only on partly observed steps
        # (and no batched LAPACK call, which can stall jax 0.10's CPU thread pool).
        o, y0_t, Ex_t, P_t, is_partial = inputs

        def terms(_):
            G, cond_cov = _completion(o, R)
            mean = H @ Ex_t[:dz] + d + (D @ Ex_t[dz + 1:] if u is not None else 0.0)
            Ey = mean + G @ (y0_t - mean)
            LP = (H - G @ H) @ P_t
            return (jnp.outer(Ey, Ex_t).at[:, :dz].add(LP),
                    jnp.outer(Ey, Ey) + LP @ (H - G @ H).T + cond_cov)

        zeros = (jnp.zeros((dy, Ex_t.shape[0]), m.dtype), jnp.zeros((dy, dy), m.dtype))
        syx, syy = jax.lax.cond(is_partial, terms, lambda _: zeros, None)
        return (sums[0] + syx, sums[1] + syy), None

    (Syx, Syy), _ = jax.lax.scan(add_partial, (Syx, Syy), (observed, y0, Ex, P, partial))
    return Sxx, Syx, Syy, observed.any(1).sum().astype(m.dtype)


def solve_regression(Sxx, Syx, Syy, n, blocks, cov_name, current, frozen):
    """Maximise over the free coefficient blocks, then the noise covariance.

    blocks: [(name or None, size)] covering the regressor; a None name or a
    frozen one keeps ``current[name]`` (None: the block is absent, coefficient 0).
    Returns {name: new value} for the free names.
    """
    out = {}
    sizes = [s for _, s in blocks]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    free = [(n_, st, s) for (n_, s), st in zip(blocks, starts) if n_ is not None and n_ not in frozen]
    fixed = [(n_, st, s) for (n_, s), st in zip(blocks, starts) if n_ is not None and n_ in frozen]

    def cols(spec):
        return jnp.concatenate([jnp.arange(st, st + s) for _, st, s in spec]) if spec else jnp.zeros(0, int)

    W = jnp.zeros((Syx.shape[0], sum(sizes)), Syx.dtype)
    for name, st, s in fixed:
        W = W.at[:, st:st + s].set(jnp.reshape(current[name], (Syx.shape[0], s)))
    if free:
        fc, xc = cols(free), cols(fixed)
        target = Syx[:, fc] - (W[:, xc] @ Sxx[xc][:, fc] if len(fixed) else 0.0)
        W_free = jnp.linalg.solve(Sxx[fc][:, fc], target.T).T
        W = W.at[:, fc].set(W_free)
        for name, st, s in free:
            out[name] = jnp.reshape(W[:, st:st + s], jnp.shape(current[name]))
    if cov_name not in frozen:
        resid = Syy - W @ Syx.T - Syx @ W.T + W @ Sxx @ W.T
        out[cov_name] = symmetrize(resid / n)
    return out


@dataclasses.dataclass(frozen=True)
class LinearGaussianMStep:
    """The exact M-step of z_t ~ N(F z_{t-1} + b + B u_t, Q), y_t ~ N(H z_t + d + D u_t, R),
    z_0 ~ N(m0, P0), for a model that carries it as ``model.closed_form_m_step``.

    ``sites``: {role: the model's global site name}, roles ``F, b, Q, H, d, R,
    initial_mean, initial_cov`` and, with inputs, ``B, D`` (kept as sorted pairs: hashable). ``inputs(problem)``: the
    (T, du) inputs u_t read off the traced problem, or None without inputs.
    EM calls ``statistics`` on each sequence's smoother output and ``update`` on the
    statistics stacked over sequences (leading axis B).
    """

    sites: tuple
    inputs: Optional[Callable] = None

    def __post_init__(self):
        object.__setattr__(self, "sites", tuple(sorted(dict(self.sites).items())))

    def statistics(self, params, problem, smoothed):
        s = dict(self.sites)
        u = None if self.inputs is None else self.inputs(problem)
        D = params[s["D"]] if u is not None else None
        return (dynamics_statistics(smoothed, u),
                emission_statistics(smoothed.smoothed_means, smoothed.smoothed_covariances, problem.observations, u,
                                    params[s["H"]], params[s["d"]], D, params[s["R"]]),
                (smoothed.initial_smoothed_mean, smoothed.initial_smoothed_covariance))

    def update(self, params, frozen, statistics):
        s = dict(self.sites)
        dyn, emis, (m0s, P0s) = statistics
        summed = lambda stats: jax.tree.map(lambda x: x.sum(0), stats)
        role_frozen = {role for role, name in s.items() if name in frozen}
        role_params = {role: params[name] for role, name in s.items()}
        dz = role_params["F"].shape[0]
        du = 0 if self.inputs is None else role_params["B"].shape[1]
        dyn_blocks = [("F", dz), ("b", 1)] + ([("B", du)] if du else [])
        emis_blocks = [("H", dz), ("d", 1)] + ([("D", du)] if du else [])
        new = solve_regression(*summed(dyn), dyn_blocks, "Q", role_params, role_frozen)
        new.update(solve_regression(*summed(emis), emis_blocks, "R", role_params, role_frozen))
        if "initial_mean" not in role_frozen:
            new["initial_mean"] = m0s.mean(0)
        if "initial_cov" not in role_frozen:
            mean = new.get("initial_mean", role_params["initial_mean"])
            dev = m0s - mean
            new["initial_cov"] = symmetrize(P0s.mean(0) + dev.T @ dev / dev.shape[0])
        return {**params, **{s[role]: value for role, value in new.items()}}
