"""Inference backends. Each is a marginaliser: it integrates the latent path out."""

from .base import Backend
from .kalman import Kalman, linear_gaussian_params
from .results import FilterResult, Forecast, SmoothResult

__all__ = ["Backend", "Kalman", "linear_gaussian_params", "FilterResult", "SmoothResult", "Forecast"]
