"""Closed-form M-step of the built-in linear Gaussian SSM (``ssmppl.models.linear_gaussian_ssm``).

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

import jax
import jax.numpy as jnp

from ..inference.linear_gaussian import _symmetrize


def _outer(a, b):
    return a[..., :, None] * b[..., None, :]


def _regressor_moments(m, P, u):
    """E[x] (T, k) and Cov[x] (T, k, k) of x = [z, 1, u] with z ~ N(m, P)."""
    T, dz = m.shape
    ones = jnp.ones((T, 1), m.dtype)
    Ex = jnp.concatenate([m, ones] + ([u] if u is not None else []), axis=1)
    k = Ex.shape[1]
    Cx = jnp.zeros((T, k, k), m.dtype).at[:, :dz, :dz].set(P)
    return Ex, Cx


def dynamics_statistics(m0, P0, C0, m, P, C, u):
    """Sums over t = 1..T for z_t | x_t = [z_{t-1}, 1, u_t] (one sequence).

    m0, P0: smoothed z_0; C0 = Cov[z_0, z_1]; m, P (T, dz[, dz]); C (T-1, dz, dz) = Cov[z_t, z_{t+1}].
    Returns (S_xx, S_yx, S_yy, n).
    """
    m_prev = jnp.concatenate([m0[None], m[:-1]])
    P_prev = jnp.concatenate([P0[None], P[:-1]])
    cross = jnp.concatenate([C0[None], C])  # Cov[z_{t-1}, z_t]
    Ex, Cx = _regressor_moments(m_prev, P_prev, u)
    dz = m.shape[1]
    Syx = _outer(m, Ex).sum(0).at[:, :dz].add(jnp.swapaxes(cross, -1, -2).sum(0))
    Sxx = (_outer(Ex, Ex) + Cx).sum(0)
    Syy = (_outer(m, m) + P).sum(0)
    return Sxx, Syx, Syy, jnp.asarray(m.shape[0], m.dtype)


def emission_statistics(m, P, y, u, H, d, D, R):
    """Sums over observed steps for y_t | x_t = [z_t, 1, u_t] (one sequence), the
    missing components of partly observed steps completed under the current (H, d, D, R)."""
    observed = ~jnp.isnan(y)
    y0 = jnp.where(observed, y, 0.0)
    dy = y.shape[1]
    eye = jnp.eye(dy, dtype=m.dtype)

    def completion(o):
        # G maps the observed components to the conditional mean of all of them: rows of
        # observed components are unit vectors, missing rows are R_mo R_oo^{-1}.
        both = o[:, None] & o[None, :]
        R_oo = jnp.where(both, R, 0.0) + jnp.diag(jnp.where(o, 0.0, 1.0).astype(R.dtype))
        G = jnp.linalg.solve(R_oo, jnp.where(o[:, None], R.T, 0.0)).T
        return G, R - G @ R

    # lax.map, not vmap: batched LAPACK calls can stall jax 0.10's CPU thread pool.
    G, cond_cov = jax.lax.map(completion, observed)
    mean_y = m @ H.T + d + (u @ D.T if u is not None else 0.0)
    Ey = jnp.einsum("tij,tj->ti", eye - G, mean_y) + jnp.einsum("tij,tj->ti", G, y0)
    L = jnp.einsum("tij,jk->tik", eye - G, H)
    Ex, Cx = _regressor_moments(m, P, u)
    w = observed.any(1).astype(m.dtype)  # fully missing steps are left out
    dz = m.shape[1]
    LP = jnp.einsum("tik,tkl->til", L, P)
    Syx = jnp.einsum("t,tij->ij", w, _outer(Ey, Ex).at[:, :, :dz].add(LP))
    Sxx = jnp.einsum("t,tij->ij", w, _outer(Ex, Ex) + Cx)
    Syy = jnp.einsum("t,tij->ij", w, _outer(Ey, Ey) + jnp.einsum("tik,tlk->til", LP, L) + cond_cov)
    return Sxx, Syx, Syy, w.sum()


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
        out[cov_name] = _symmetrize(resid / n)
    return out


def closed_form_mstep(params, frozen, stats_dyn, stats_emis, init_moments, input_dim):
    """New parameters of the built-in LGSSM from summed statistics.

    init_moments: (B, dz) smoothed initial means and (B, dz, dz) covariances.
    """
    du = input_dim
    new = dict(params)
    dz = params["F"].shape[0]
    dyn_blocks = [("F", dz), ("b", 1)] + ([("B", du)] if du else [])
    emis_blocks = [("H", dz), ("d", 1)] + ([("D", du)] if du else [])
    new.update(solve_regression(*stats_dyn, dyn_blocks, "Q", params, frozen))
    new.update(solve_regression(*stats_emis, emis_blocks, "R", params, frozen))
    m0s, P0s = init_moments
    if "initial_mean" not in frozen:
        new["initial_mean"] = m0s.mean(0)
    if "initial_cov" not in frozen:
        dev = m0s - new["initial_mean"]
        new["initial_cov"] = _symmetrize((P0s + _outer(dev, dev)).mean(0))
    return new
