"""Inference backends. Each is a marginaliser: it integrates the latent path out."""

from .base import Backend
from .kalman import Kalman, linear_gaussian_params
from .nonlinear import EKF, UKF, GaussHermite, MomentMatching
from .particle import BootstrapPF, ParticleFilterResult
from .results import FilterResult, Forecast, SmoothResult

__all__ = ["Backend", "Kalman", "EKF", "UKF", "GaussHermite", "MomentMatching", "BootstrapPF", "linear_gaussian_params",
           "FilterResult", "SmoothResult", "Forecast", "ParticleFilterResult"]
