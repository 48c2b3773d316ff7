"""Gaussian-filter rules: how a filter computes E[f(z)] and Cov[z, f(z)] under N(m, P).

A rule is a small frozen settings object; ``build(n)`` gives the engine for an
n-dimensional state (``ssmppl.maths.gaussian_filter``'s ``TaylorRule`` or
``PointRule``). ``EKF``, ``UKF`` and ``GaussHermite`` each hold one, and
``MomentMatching(rule=...)`` takes any of them.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from ...maths.gaussian_filter import PointRule, TaylorRule
from ...maths.sigma_points import gauss_hermite_points, unscented_points


@dataclasses.dataclass(frozen=True)
class TaylorLinearization:
    """First-order Taylor expansion at the mean (the EKF's rule); ``iterations`` > 1
    relinearises at the updated mean (iterated EKF, and Gauss-Newton smoother passes)."""

    iterations: int = 1

    def __post_init__(self):
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"iterations must be an integer >= 1, got {self.iterations!r}")

    def build(self, n: int) -> TaylorRule:
        """The rule's engine for an n-dimensional Gaussian."""
        return TaylorRule()


@dataclasses.dataclass(frozen=True)
class UnscentedTransform:
    """The unscented transform's 2n + 1 sigma points (see ``UKF``)."""

    alpha: float = 1.0
    beta: float = 0.0
    kappa: Optional[float] = None
    iterations = 1

    def __post_init__(self):
        if not self.alpha > 0:
            raise ValueError(f"alpha must be positive, got {self.alpha!r}")

    def build(self, n: int) -> PointRule:
        return PointRule(unscented_points(n, self.alpha, self.beta, self.kappa))


@dataclasses.dataclass(frozen=True)
class GaussHermiteCubature:
    """The Gauss-Hermite product rule with order^n points (see ``GaussHermite``)."""

    order: int = 3
    iterations = 1

    def __post_init__(self):
        if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 1:
            raise ValueError(f"order must be an integer >= 1, got {self.order!r}")

    def build(self, n: int) -> PointRule:
        return PointRule(gauss_hermite_points(n, self.order))


RULES = (TaylorLinearization, UnscentedTransform, GaussHermiteCubature)
