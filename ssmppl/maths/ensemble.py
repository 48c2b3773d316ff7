"""Ensemble Kalman analyses and ensemble statistics (pure JAX, no NumPyro).

Shapes: an ensemble X (N, d) of N members; S (N, m) the members' predicted
observations, centred and scaled by R^{-1/2}; d (m,) the scaled innovation.
Each analysis returns the analysis mean (d,) and anomalies (N, d). The variants
and their equations are described in ``ssmppl.inference.ensemble.enkf``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import cho_solve, solve_triangular


def _inv_sqrt(w):
    return w ** -0.5, -0.5 * w ** -1.5


def _ensrf_fn(w):  # 1 / (w + sqrt(w))
    s = jnp.sqrt(w)
    f = 1.0 / (w + s)
    return f, -(1.0 + 0.5 / s) * f ** 2


_MATRIX_FUNCTIONS = {"inv_sqrt": _inv_sqrt, "ensrf": _ensrf_fn}


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def symmetric_function(M, name: str):
    """f(M) for symmetric positive-definite M (..., n, n); f by name: "inv_sqrt" (M^{-1/2}) or "ensrf"
    ((M + M^{1/2})^{-1}). Differentiated by the Daleckii-Krein formula, with f' where eigenvalues meet."""
    w, V = jnp.linalg.eigh(M)
    f, _ = _MATRIX_FUNCTIONS[name](w)
    return (V * f[..., None, :]) @ jnp.swapaxes(V, -1, -2)


@symmetric_function.defjvp
def _symmetric_function_jvp(name, primals, tangents):
    (M,), (dM,) = primals, tangents
    w, V = jnp.linalg.eigh(M)
    f, fp = _MATRIX_FUNCTIONS[name](w)
    Vt = jnp.swapaxes(V, -1, -2)
    gap = w[..., :, None] - w[..., None, :]
    close = jnp.abs(gap) <= jnp.sqrt(jnp.finfo(w.dtype).eps) * jnp.max(jnp.abs(w), -1)[..., None, None]
    _, fp_mid = _MATRIX_FUNCTIONS[name](0.5 * (w[..., :, None] + w[..., None, :]))
    divided = jnp.where(close, fp_mid, (f[..., :, None] - f[..., None, :]) / jnp.where(close, 1.0, gap))
    out = (V * f[..., None, :]) @ Vt
    return out, V @ (divided * (Vt @ dM @ V)) @ Vt


def gaussian_predictive(S, d, num_observed, log_det_r):
    """log N(y; mean, S^T S/(N-1) + R) and the innovation chi^2 for whitened S (N, m), d (m,).

    Factorises the smaller of M = (N-1) I_N + S S^T (then the determinant lemma and Woodbury's
    identity) and C = I_m + S^T S / (N-1). Returns (log predictive, chi2)."""
    N, m = S.shape
    if m < N:
        L = jnp.linalg.cholesky(jnp.eye(m, dtype=S.dtype) + S.T @ S / (N - 1))
        u = solve_triangular(L, d, lower=True)
        chi2 = u @ u
        log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
    else:
        L = jnp.linalg.cholesky((N - 1) * jnp.eye(N, dtype=S.dtype) + S @ S.T)
        u = solve_triangular(L, S @ d, lower=True)
        chi2 = d @ d - u @ u
        log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L))) - N * jnp.log(N - 1.0)
    log_pred = -0.5 * (num_observed * jnp.log(2 * jnp.pi) + log_det_r + log_det + chi2)
    return log_pred, chi2


def centre(X):
    """Ensemble mean (d,) and anomalies (N, d) of members X (N, d)."""
    mean = X.mean(0)
    return mean, X - mean


def etkf_weights(S, d):
    """ETKF weights for whitened S (N, m), d (m,): the mean weights w (N,) and the transform T (N, N)."""
    N = S.shape[0]
    M = (N - 1) * jnp.eye(N, dtype=S.dtype) + S @ S.T
    w = cho_solve((jnp.linalg.cholesky(M), True), S @ d)
    return w, jnp.sqrt(N - 1.0) * symmetric_function(M, "inv_sqrt")


def etkf_analysis(X, S, d):
    """ETKF analysis of members X (N, d) with whitened S (N, m), d (m,): the analysis mean (d,) and
    anomalies (N, d), mean + w A and T A (``etkf_weights``)."""
    mean, A = centre(X)
    w, T = etkf_weights(S, d)
    return mean + w @ A, T @ A


def stochastic_analysis(X, S, d, key, observed, taper_xy=None, taper_yy=None):
    """Perturbed observations e_i ~ N(0, I) (whitened), centred and rescaled by sqrt(N/(N-1)) so their
    sample covariance is unbiased (as DAPPER); the gain uses the unperturbed S."""
    N, m = S.shape
    mean, A = centre(X)
    e = jax.random.normal(key, S.shape, S.dtype) * observed
    e = (e - e.mean(0)) * jnp.sqrt(N / (N - 1.0))
    innov = d[None, :] - S - e  # (N, m): whitened y - h(x_i) - e_i
    SS = S.T @ S / (N - 1)
    if taper_xy is None and N <= m:  # ensemble space: M = (N-1) I + S S^T
        M = (N - 1) * jnp.eye(N, dtype=S.dtype) + S @ S.T
        X_a = X + cho_solve((jnp.linalg.cholesky(M), True), S @ innov.T).T @ A
    else:  # observation space: C = I + (taper o) S^T S / (N-1)
        C = (SS if taper_yy is None else taper_yy * SS) + jnp.eye(m, dtype=S.dtype)
        coef = cho_solve((jnp.linalg.cholesky(C), True), innov.T).T  # (N, m)
        if taper_xy is None:
            X_a = X + (coef @ S.T) @ A / (N - 1)
        else:
            X_a = X + coef @ (taper_xy * (A.T @ S) / (N - 1)).T
    return centre(X_a)


def ensrf_analysis(X, S, d, taper_xy=None, taper_yy=None):
    """Batch square-root analysis in observation space (Whitaker & Hamill 2002) of members X (N, d) with
    whitened S (N, m), d (m,): the analysis mean (d,) and anomalies (N, d). C = I + S^T S / (N-1) (m, m);
    ``taper_xy`` (d, m) and ``taper_yy`` (m, m) localise P H^T and H P H^T when given."""
    N, m = S.shape
    mean, A = centre(X)
    SS = S.T @ S / (N - 1)
    C = (SS if taper_yy is None else taper_yy * SS) + jnp.eye(m, dtype=S.dtype)
    Z = symmetric_function(C, "ensrf")  # (C + C^{1/2})^{-1}
    Cinv_d = cho_solve((jnp.linalg.cholesky(C), True), d)
    if taper_xy is None:
        return mean + (S @ Cinv_d) @ A / (N - 1), A - S @ Z @ (S.T @ A) / (N - 1)
    K = taper_xy * (A.T @ S) / (N - 1)  # localised P H^T (c, m)
    return mean + K @ Cinv_d, A - S @ Z @ K.T


def serial_analysis(X, S, d, Yw, observed, taper_xy=None, taper_yy=None):
    """One scalar (whitened, so unit-variance) observation at a time; the predicted observations are
    updated as part of the state, so later observations see earlier ones."""
    N, m = S.shape
    mean, A = centre(X)
    y_mean = Yw.mean(0)
    y_obs = d + y_mean

    def one(carry, j):
        mean, A, y_mean, Y = carry
        s = Y[:, j]
        c = s @ s / (N - 1) + 1.0
        innov = y_obs[j] - y_mean[j]
        k_x = A.T @ s / ((N - 1) * c)
        k_y = Y.T @ s / ((N - 1) * c)
        if taper_xy is not None:
            k_x, k_y = k_x * taper_xy[:, j], k_y * taper_yy[:, j]
        alpha = 1.0 / (1.0 + jnp.sqrt(1.0 / c))
        on = observed[j]
        mean = mean + jnp.where(on, k_x * innov, 0.0)
        y_mean = y_mean + jnp.where(on, k_y * innov, 0.0)
        A = A - jnp.where(on, alpha * jnp.outer(s, k_x), 0.0)
        Y = Y - jnp.where(on, alpha * jnp.outer(s, k_y), 0.0)
        return (mean, A, y_mean, Y), None

    (mean, A, _, _), _ = lax.scan(one, (mean, A, y_mean, S), jnp.arange(m))
    return mean, A


def letkf_analysis(X, S, d, obs_index, obs_taper, block: int = 2048):
    """Per state component i, the ETKF on the observations obs_index[i] (K,) with R^{-1} scaled by
    obs_taper[i] (K,): mean and anomalies (N, d). Components are processed in blocks of ``block``."""
    mean, A = centre(X)
    root = jnp.sqrt(obs_taper)

    def local(args):
        idx, r, a, mu = args
        w, T = etkf_weights(S[:, idx] * r, d[idx] * r)
        return mu + w @ a, T @ a

    new_mean, new_A = lax.map(local, (obs_index, root, A.T, mean), batch_size=min(block, X.shape[1]))
    return new_mean, new_A.T


def random_rotation(key, N, dtype):
    """A random N x N orthogonal matrix that fixes the vector of ones (so anomalies keep zero mean)."""
    basis = np.linalg.qr(np.concatenate([np.ones((N, 1)), np.eye(N)[:, 1:]], axis=1))[0][:, 1:]  # (N, N-1) _|_ 1
    Q, R = jnp.linalg.qr(jax.random.normal(key, (N - 1, N - 1), dtype))
    Q = Q * jnp.sign(jnp.diagonal(R))  # Haar-distributed
    B = jnp.asarray(basis, dtype)
    return B @ Q @ B.T + jnp.full((N, N), 1.0 / N, dtype)


def anomaly_moments(A, covariances=True):
    """Per-component variances (d,) and, if ``covariances``, the covariance (d, d) (else None) of
    members with anomalies A (N, d): the sample moments, (N-1) denominator."""
    N = A.shape[0]
    var = (A ** 2).sum(0) / (N - 1)
    cov = A.T @ A / (N - 1) if covariances else None
    return var, cov


def smoothing_products(G, lag=None):
    """(T+1, N, N) products P_s with X_{s|.} = P_s X_s^a, s = 0..T, from the transforms G (T, N, N)
    (G[t-1] is G_t): all of G_{s+1..T} (lag None) or G_{s+1..s+lag}."""
    T, N, _ = G.shape
    eye = jnp.eye(N, dtype=G.dtype)
    if lag is None:
        def back(P, G_s):
            return P @ G_s, P

        first, P = lax.scan(back, eye, G, reverse=True)  # P[s-1] = G_T ... G_{s+1} for s = 1..T
        return jnp.concatenate([first[None], P])
    G_pad = jnp.concatenate([G, jnp.broadcast_to(eye, (lag, N, N))])

    def forward(P, l):  # P_s <- G_{s+l} P_s for all s at once
        return jnp.einsum("sij,sjk->sik", lax.dynamic_slice_in_dim(G_pad, l, T + 1), P), None

    P, _ = lax.scan(forward, jnp.broadcast_to(eye, (T + 1, N, N)), jnp.arange(lag))
    return P
