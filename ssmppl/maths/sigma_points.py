"""Gaussian integration rules: points and weights for E[g(z)], z ~ N(m, P).

A rule is a set of unit points u_i (points of N(0, I)) with weights; the points
of N(m, P) are m + L u_i for the lower Cholesky factor L of P (the factor
dynamax uses, so results agree point for point). Rules are built with NumPy at
trace time: their sizes are static.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
from numpy.polynomial.hermite_e import hermegauss

MAX_POINTS = 100_000


class SigmaPoints(NamedTuple):
    """unit (k, n) points of N(0, I); mean_weights (k,) for E[g]; cov_weights (k,)
    for Cov[g] (they differ only in the unscented transform's centre weight)."""

    unit: np.ndarray
    mean_weights: np.ndarray
    cov_weights: np.ndarray

    @property
    def nonnegative(self) -> bool:
        return bool(np.all(self.mean_weights >= 0) and np.all(self.cov_weights >= 0))


def unscented_kappa(n: int, kappa):
    """kappa=None: Julier's 3 - n, clipped at 0 so that no weight is negative for n > 3."""
    return max(0.0, 3.0 - n) if kappa is None else float(kappa)


def unscented_points(n: int, alpha: float, beta: float, kappa) -> SigmaPoints:
    """The 2n + 1 points of the scaled unscented transform (Julier 2002; Särkkä 2013, eq. 5.75).

    lambda = alpha^2 (n + kappa) - n; points 0 and +- sqrt(n + lambda) e_i;
    mean weights lambda / (n + lambda) and 1 / (2 (n + lambda)); the centre's
    covariance weight adds 1 - alpha^2 + beta.
    """
    kappa = unscented_kappa(n, kappa)
    lam = alpha**2 * (n + kappa) - n
    if n + lam <= 0:
        raise ValueError(f"UKF(alpha={alpha}, kappa={kappa}) gives n + lambda = {n + lam} <= 0 for n = {n}: "
                         "increase alpha or kappa")
    eye = np.sqrt(n + lam) * np.eye(n)
    unit = np.concatenate([np.zeros((1, n)), eye, -eye])
    w = np.full(2 * n + 1, 1.0 / (2 * (n + lam)))
    wm = w.copy()
    wm[0] = lam / (n + lam)
    wc = wm.copy()
    wc[0] += 1.0 - alpha**2 + beta
    return SigmaPoints(unit, wm, wc)


def gauss_hermite_points(n: int, order: int) -> SigmaPoints:
    """The product Gauss–Hermite rule: order^n points, exact for polynomials of
    degree <= 2 order - 1 in each coordinate."""
    if order ** n > MAX_POINTS:
        raise ValueError(
            f"GaussHermite(order={order}) on a {n}-dimensional state needs {order}^{n} points "
            f"(more than {MAX_POINTS}): use UKF(), whose 2n + 1 points grow linearly with the dimension"
        )
    nodes, weights = hermegauss(order)
    weights = weights / weights.sum()
    unit = np.array(list(itertools.product(nodes, repeat=n))).reshape(-1, n)
    w = np.prod(np.array(list(itertools.product(weights, repeat=n))).reshape(-1, n), axis=1)
    return SigmaPoints(unit, w, w)
