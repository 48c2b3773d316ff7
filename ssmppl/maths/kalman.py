"""Exact filtering and smoothing for linear Gaussian state-space models.

Model (t = 1..T; z_0 is the state before the first observation):

    z_0 ~ N(m0, P0)
    z_t = F_t z_{t-1} + c_t + N(0, Q_t)
    y_t = H_t z_t + d_t + N(0, R_t)

Every matrix may be time-invariant (no leading axis) or time-varying (leading
axis T); the functions below pick ``X[t]`` only for the time-varying ones, so a
time-invariant model costs exactly what a hand-written filter costs.

Missing observations are NaN entries of ``ys`` (whole steps or single
components). They are handled by conditioning on the observed components only:
the rows of H for missing components are zeroed, the corresponding rows and
columns of R replaced by the identity, and their dummy contribution removed from
the log-likelihood, which is exactly what a filter that skips them computes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

from ..results import FilterResult, Forecast, SmoothResult
from .gaussian import LOG_2PI, gaussian_update, masked_emission, predict, psd_factor, symmetrize, tria



class LinearGaussianParams(NamedTuple):
    """Parameters of a linear Gaussian SSM (dz state size, dy emission size).

    initial_mean (dz,), initial_covariance (dz, dz); F (dz, dz), c (dz,),
    Q (dz, dz), H (dy, dz), d (dy,), R (dy, dy), each optionally with a leading
    time axis of length T.
    """

    initial_mean: jax.Array
    initial_covariance: jax.Array
    F: jax.Array
    c: jax.Array
    Q: jax.Array
    H: jax.Array
    d: jax.Array
    R: jax.Array


_BASE_NDIM = LinearGaussianParams(1, 2, 2, 1, 2, 2, 1, 2)


def time_varying(params: LinearGaussianParams) -> LinearGaussianParams:
    """Per field, True when it carries a leading time axis."""
    return LinearGaussianParams(*(jnp.ndim(p) > n for p, n in zip(params, _BASE_NDIM)))


def params_at(params: LinearGaussianParams, t) -> LinearGaussianParams:
    """The matrices of step ``t`` (time-invariant ones are returned as they are)."""
    return LinearGaussianParams(
        *(p[t] if tv else p for p, tv in zip(params, time_varying(params)))
    )


def kalman_filter(params: LinearGaussianParams, ys: jax.Array) -> FilterResult:
    """Sequential Kalman filter. ``ys`` (T, dy), NaN for missing entries."""
    T = ys.shape[0]

    def step(carry, inputs):
        m, P = carry
        t, y = inputs
        p = params_at(params, t)
        m_pred, P_pred = predict(m, P, p.F, p.c, p.Q)
        m_filt, P_filt, ll = gaussian_update(m_pred, P_pred, y, p.H, p.d, p.R)
        return (m_filt, P_filt), (m_filt, P_filt, m_pred, P_pred, ll)

    init = (params.initial_mean, params.initial_covariance)
    _, (mf, Pf, mp, Pp, lls) = lax.scan(step, init, (jnp.arange(T), ys))
    return FilterResult.from_steps(lls, mf, Pf, mp, Pp)


def smoother_gain(cross, P_pred, L_pred=None):
    """G = Cov[z_t, z_{t+1} | y_{1:t}] P_pred^{-1}, by triangular solves with a factor of P_pred.

    ``cross`` (dz, dz) is P_filt F^T for a linear transition (the nonlinear
    filters pass their approximation). ``L_pred`` (any lower-triangular L with
    L L^T = P_pred, e.g. from the square-root filter) avoids re-factorising.
    """
    L = jnp.linalg.cholesky(P_pred) if L_pred is None else L_pred
    X = solve_triangular(L, cross.T, lower=True)
    return solve_triangular(L, X, lower=True, trans="T").T


def linear_smoother_gain(P_filt, F, P_pred, L_pred=None):
    """``smoother_gain`` for a linear transition F (dz, dz)."""
    return smoother_gain(P_filt @ F.T, P_pred, L_pred)


def rts_step(m_f, P_f, cross, m_p_next, P_p_next, m_s_next, P_s_next, L_p_next=None):
    """One backward RTS step: smoothed moments of z_t and Cov[z_t, z_{t+1} | y_{1:T}]."""
    G = smoother_gain(cross, P_p_next, L_p_next)
    m_s = m_f + G @ (m_s_next - m_p_next)
    P_s = symmetrize(P_f + G @ (P_s_next - P_p_next) @ G.T)
    return m_s, P_s, G @ P_s_next


def linear_rts_step(m_f, P_f, F, m_p_next, P_p_next, m_s_next, P_s_next, L_p_next=None):
    """``rts_step`` for a linear transition F (dz, dz)."""
    return rts_step(m_f, P_f, P_f @ F.T, m_p_next, P_p_next, m_s_next, P_s_next, L_p_next)


def rts_smoother(params: LinearGaussianParams, filtered: FilterResult, predicted_factors=None) -> SmoothResult:
    """Rauch–Tung–Striebel smoother over the output of ``kalman_filter``.

    Also smooths back to the initial state z_0 (needed by EM's initial-state
    M-step) and returns Cov[z_t, z_{t+1} | y] for consecutive states.
    ``predicted_factors`` (T, dz, dz): triangular factors of the predicted
    covariances from ``sqrt_kalman_filter``, used instead of Cholesky factors.
    """
    F = params.F if time_varying(params).F else params.F[None]
    previous = jnp.concatenate([params.initial_covariance[None], filtered.filtered_covariances[:-1]])
    cross = previous @ jnp.swapaxes(F, -1, -2)
    return rts_smoother_from_cross(filtered, cross, params.initial_mean, params.initial_covariance,
                                   predicted_factors)


def rts_smoother_from_cross(filtered: FilterResult, cross, initial_mean, initial_covariance,
                            predicted_factors=None) -> SmoothResult:
    """RTS smoother given the filter's one-step cross-covariances.

    ``cross`` (T, dz, dz): cross[t] = Cov[z_{t-1}, z_t | y_{1:t-1}] for t = 1..T
    (index 0 pairs z_0 with z_1): P_{t-1|t-1} F_t^T for a linear model, the
    statistical linearisation's value for the nonlinear filters.
    """
    Lp = predicted_factors
    T = filtered.filtered_means.shape[0]

    def step(carry, t):
        m_s_next, P_s_next = carry
        m_s, P_s, c = rts_step(
            filtered.filtered_means[t],
            filtered.filtered_covariances[t],
            cross[t + 1],
            filtered.predicted_means[t + 1],
            filtered.predicted_covariances[t + 1],
            m_s_next,
            P_s_next,
            None if Lp is None else Lp[t + 1],
        )
        return (m_s, P_s), (m_s, P_s, c)

    last = (filtered.filtered_means[-1], filtered.filtered_covariances[-1])
    _, (ms, Ps, cs) = lax.scan(step, last, jnp.arange(T - 1), reverse=True)
    ms = jnp.concatenate([ms, last[0][None]], axis=0)
    Ps = jnp.concatenate([Ps, last[1][None]], axis=0)
    m0, P0, c0 = rts_step(
        initial_mean,
        initial_covariance,
        cross[0],
        filtered.predicted_means[0],
        filtered.predicted_covariances[0],
        ms[0],
        Ps[0],
        None if Lp is None else Lp[0],
    )
    return SmoothResult(
        filtered=filtered,
        smoothed_means=ms,
        smoothed_covariances=Ps,
        smoothed_cross_covariances=cs,
        initial_smoothed_mean=m0,
        initial_smoothed_covariance=P0,
        initial_cross_covariance=c0,
    )


def backward_sample(params: LinearGaussianParams, filtered: FilterResult, key) -> jax.Array:
    """One draw of z_{1:T} | y_{1:T} (forward filtering, backward sampling), (T, dz)."""
    F = params.F[1:] if time_varying(params).F else params.F
    cross = filtered.filtered_covariances[:-1] @ jnp.swapaxes(F, -1, -2)
    return backward_sample_from_cross(filtered, cross, key)


def backward_sample_from_cross(filtered: FilterResult, cross: jax.Array, key) -> jax.Array:
    """FFBS draw (T, dz) given ``cross`` (T-1, dz, dz) = Cov[z_t, z_{t+1} | y_{1:t}].

    z_T ~ N(m_{T|T}, P_{T|T}), then z_t | z_{t+1}, y_{1:t} ~ N(m_{t|t} + G_t (z_{t+1}
    - m_{t+1|t}), P_{t|t} - G_t P_{t+1|t} G_t^T) with the smoother gain G_t. The
    conditional covariances may be singular (deterministic state components), so
    they are factored by ``psd_factor``.
    """
    T, dz = filtered.filtered_means.shape
    noise = jax.random.normal(key, (T, dz), filtered.filtered_means.dtype)

    def draw(mean, cov, eps):
        return mean + psd_factor(cov) @ eps

    def step(z_next, t):
        m_f, P_f = filtered.filtered_means[t], filtered.filtered_covariances[t]
        P_p = filtered.predicted_covariances[t + 1]
        G = smoother_gain(cross[t], P_p)
        z = draw(m_f + G @ (z_next - filtered.predicted_means[t + 1]), symmetrize(P_f - G @ P_p @ G.T), noise[t])
        return z, z

    z_last = draw(filtered.filtered_means[-1], filtered.filtered_covariances[-1], noise[-1])
    if T == 1:  # no backward step (a scan of length 0 still traces its body, which indexes the empty cross)
        return z_last[None]
    _, zs = lax.scan(step, z_last, jnp.arange(T - 1), reverse=True)
    return jnp.concatenate([zs, z_last[None]], axis=0)


def emission_moments(params: LinearGaussianParams, means, covariances, include_noise=True):
    """Moments of y_t = H_t z_t + d_t (+ noise) under z_t ~ N(means[t], covariances[t]).

    ``means`` (T, dz), ``covariances`` (T, dz, dz) -> (T, dy), (T, dy, dy).
    """
    T = means.shape[0]

    def one(t, m, P):
        p = params_at(params, t)
        S = p.H @ P @ p.H.T + (p.R if include_noise else 0.0)
        return p.H @ m + p.d, symmetrize(S)

    return jax.vmap(one)(jnp.arange(T), means, covariances)


def kalman_forecast(params: LinearGaussianParams, mean, covariance, num_steps: int) -> Forecast:
    """Propagate N(mean, covariance) ``num_steps`` transitions ahead (time-invariant params)."""
    if any(time_varying(params)):
        raise ValueError("kalman_forecast needs time-invariant matrices")

    def step(carry, _):
        m, P = predict(*carry, params.F, params.c, params.Q)
        return (m, P), (m, P)

    _, (ms, Ps) = lax.scan(step, (mean, covariance), None, length=num_steps)
    ym, yP = jax.vmap(lambda m, P: (params.H @ m + params.d, symmetrize(params.H @ P @ params.H.T + params.R)))(ms, Ps)
    return Forecast(state_means=ms, state_covariances=Ps, emission_means=ym, emission_covariances=yP)


# -- square-root form ------------------------------------------------------------
# Covariances are carried as factors P = L L^T and updated by QR decompositions of
# "pre-arrays", never by forming H P H^T + R: conditioning is that of the
# factors (the square root of the covariances'), so a diffuse prior (P0 = 1e6 I)
# or a tiny observation noise stays finite in float32, where the covariance
# form's Cholesky of the innovation covariance breaks down.


def sqrt_predict(m, L, F, c, LQ):
    """Square-root transition: mean F m + c (n,) and a factor (n, n) of F L L^T F^T + LQ LQ^T, by QR of
    [F L, LQ] (``tria``)."""
    return F @ m + c, tria(jnp.concatenate([F @ L, LQ], axis=1))


def sqrt_update(m, L, y, H, d, R, LR):
    """Square-root measurement update (NaN entries of y missing).

    ``LR`` is a factor of R used when every component is observed; otherwise the
    factor of the masked R is recomputed for this step, by ``psd_factor`` as ``LR``
    was: the observed block of R may be singular (a component observed exactly).
    """
    y0, H0, d0, R0, n_obs = masked_emission(y, H, d, R)
    observed_all = n_obs == y.shape[0]
    LR0 = lax.cond(observed_all, lambda: LR, lambda: psd_factor(R0))
    dy, dz = H0.shape
    pre = jnp.block([[LR0, H0 @ L], [jnp.zeros((dz, dy), L.dtype), L]])
    post = tria(pre)
    S_half, K_bar, L_new = post[:dy, :dy], post[dy:, :dy], post[dy:, dy:]
    v = y0 - H0 @ m - d0
    w = solve_triangular(S_half, v, lower=True)
    log_det = 2.0 * jnp.sum(jnp.log(jnp.abs(jnp.diag(S_half))))
    ll = -0.5 * (w @ w + log_det + n_obs * LOG_2PI)
    return m + K_bar @ w, L_new, ll


def sqrt_kalman_filter(params: LinearGaussianParams, ys: jax.Array):
    """Square-root Kalman filter. Returns (FilterResult, predicted factors (T, dz, dz))."""
    tv = time_varying(params)
    T = ys.shape[0]
    LQ = jax.vmap(psd_factor)(params.Q) if tv.Q else psd_factor(params.Q)
    LR = jax.vmap(psd_factor)(params.R) if tv.R else psd_factor(params.R)

    def step(carry, inputs):
        m, L = carry
        t, y = inputs
        p = params_at(params, t)
        m_pred, L_pred = sqrt_predict(m, L, p.F, p.c, LQ[t] if tv.Q else LQ)
        m_filt, L_filt, ll = sqrt_update(m_pred, L_pred, y, p.H, p.d, p.R, LR[t] if tv.R else LR)
        return (m_filt, L_filt), (m_filt, L_filt, m_pred, L_pred, ll)

    init = (params.initial_mean, psd_factor(params.initial_covariance))
    _, (mf, Lf, mp, Lp, lls) = lax.scan(step, init, (jnp.arange(T), ys))
    outer = lambda L: L @ jnp.swapaxes(L, -1, -2)
    result = FilterResult.from_steps(lls, mf, outer(Lf), mp, outer(Lp))
    return result, Lp
