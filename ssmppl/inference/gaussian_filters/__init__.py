"""Gaussian-approximation backends (EKF, UKF, Gauss-Hermite, moment matching) and their rules."""

from .backends import EKF, UKF, GaussHermite, MomentMatching
from .rules import RULES, GaussHermiteCubature, TaylorLinearization, UnscentedTransform

__all__ = ["EKF", "UKF", "GaussHermite", "MomentMatching", "RULES", "TaylorLinearization", "UnscentedTransform",
           "GaussHermiteCubature"]
