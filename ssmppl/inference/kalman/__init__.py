"""The exact Kalman backend (sequential, square-root, parallel-in-time)."""

from .backend import Kalman, linear_gaussian_params

__all__ = ["Kalman", "linear_gaussian_params"]
