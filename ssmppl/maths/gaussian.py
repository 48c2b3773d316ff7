"""Gaussian conditioning with missing data, and factorisations of covariance matrices.

Pure JAX (no NumPyro): the building blocks every Gaussian filter (Kalman, EKF,
UKF, moment matching, the ensemble and particle filters' Gaussian steps) shares.
Shapes: a state z (n,), an observation y (k,) with NaN for missing components.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

LOG_2PI = 1.8378770664093453


def symmetrize(P):
    """(P + P^T) / 2 for (..., n, n) matrices."""
    return 0.5 * (P + jnp.swapaxes(P, -1, -2))


def predict(m, P, F, c, Q):
    """One transition: moments of z_t | y_{1:t-1} from those of z_{t-1} | y_{1:t-1}.

    Symmetrising here also keeps the filtered covariances symmetric across steps.
    """
    return F @ m + c, symmetrize(F @ P @ F.T + Q)


def masked_emission(y, H, d, R):
    """Emission restricted to the observed (non-NaN) components of ``y``.

    Returns (y0, H0, d0, R0, num_observed): missing rows of H and entries of y, d
    are zero, missing rows/columns of R are those of the identity, so a missing
    component contributes an independent N(0 | 0, 1) term (its dummy log-density
    is left out of the log-likelihood by ``moment_update``).
    """
    observed = ~jnp.isnan(y)
    y0 = jnp.where(observed, y, 0.0)
    H0 = jnp.where(observed[:, None], H, 0.0)
    d0 = jnp.where(observed, d, 0.0)
    return y0, H0, d0, masked_covariance(R, observed), jnp.sum(observed)


def masked_covariance(R, observed):
    """R restricted to the ``observed`` (bool (n,)) block, the identity on the others:
    invertible whenever R_oo is, and block diagonal, so its inverse holds R_oo^{-1}."""
    both = observed[:, None] & observed[None, :]
    return jnp.where(both, R, 0.0) + jnp.diag(jnp.where(observed, 0.0, 1.0).astype(R.dtype))


def masked_gaussian_log_density(y, mean, cov):
    """log N(y_o; mean_o, cov_oo) over the observed (non-NaN) components o of y (k,); 0 when
    none is observed. The one masked Gaussian density the filters' likelihoods agree with."""
    observed = ~jnp.isnan(y)
    v = jnp.where(observed, y - mean, 0.0)
    L = jnp.linalg.cholesky(masked_covariance(cov, observed))
    w = solve_triangular(L, v, lower=True)
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diag(L)))
    return -0.5 * (w @ w + log_det + jnp.sum(observed) * LOG_2PI)


def gaussian_update(m, P, y, H, d, R):
    """Condition N(m, P) on y = H z + d + N(0, R), NaN entries of y missing.

    Returns (filtered mean, filtered covariance, log p(y_observed)).
    """
    HP = H @ P
    return moment_update(m, P, y, H @ m + d, HP @ H.T + R, HP.T)


def moment_update(m, P, y, y_mean, S, C):
    """Condition N(m, P) on y given the joint Gaussian moments of (z, y).

    ``y_mean`` (dy,) = E[y], ``S`` (dy, dy) = Cov[y], ``C`` (dz, dy) = Cov[z, y]
    (for y = H z + d + noise: H m + d, H P H^T + R, P H^T; the nonlinear filters
    pass their approximations). NaN entries of y are missing: their rows are
    dropped from the conditioning. With S = L L^T, one triangular solve gives
    A = L^{-1} C^T and w = L^{-1} v (v the innovation); then m + A^T w, P - A^T A
    and the log-density follow without forming the gain.
    Returns (conditioned mean, conditioned covariance, log N(y_observed; E[y], S)).
    """
    observed = ~jnp.isnan(y)
    v = jnp.where(observed, y - y_mean, 0.0)
    C0 = jnp.where(observed[None, :], C, 0.0)
    L = jnp.linalg.cholesky(masked_covariance(S, observed))
    W = solve_triangular(L, jnp.concatenate([C0.T, v[:, None]], axis=1), lower=True)
    A, w = W[:, :-1], W[:, -1]
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diag(L)))
    ll = -0.5 * (w @ w + log_det + jnp.sum(observed) * LOG_2PI)
    return m + A.T @ w, symmetrize(P - A.T @ A), ll


def psd_factor(P):
    """A square root A (A A^T = P) of a symmetric PSD matrix, singular ones included.

    Cholesky when P is positive definite; the eigendecomposition otherwise. The
    branch is a ``lax.cond`` rather than a ``where`` so that gradients come from
    the Cholesky alone: eigh's gradient is NaN for repeated eigenvalues (P = q I).
    """
    P = symmetrize(P)

    def by_eigh(P):
        w, V = jnp.linalg.eigh(P)
        return V * jnp.sqrt(jnp.clip(w, 0.0))

    L = jnp.linalg.cholesky(P)
    return jax.lax.cond(jnp.all(jnp.isfinite(L)), lambda P: L, by_eigh, P)


def tria(A):
    """Lower-triangular L with L L^T = A A^T (A is n x m, m >= n)."""
    return jnp.linalg.qr(A.T, mode="r").T[:, : A.shape[0]]


def factor_or_repair(P):
    """(L, P): the Cholesky factor of the symmetrised P, and P itself.

    When the Cholesky fails (P lost positive-definiteness to rounding or to a
    negative sigma-point weight, or P is singular, as for a known initial state)
    P is repaired: its negative eigenvalues are set to zero, and the returned
    P is the repaired one, so the filter carries a valid covariance instead of
    NaN. ``lax.cond`` keeps the eigendecomposition (and its gradient) off the
    common path.
    """
    P = symmetrize(P)
    L = jnp.linalg.cholesky(P)

    def repair(P):
        w, V = jnp.linalg.eigh(P)
        w = jnp.clip(w, 0.0)
        return V * jnp.sqrt(w), symmetrize((V * w) @ V.T)

    return lax.cond(jnp.all(jnp.isfinite(L)), lambda P: (L, P), repair, P)
