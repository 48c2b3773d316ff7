"""Inference backends. Each is a marginaliser: it integrates the latent path out."""

from .base import Backend
from .kalman import Kalman, linear_gaussian_params
from .nonlinear import EKF, UKF, GaussHermite, MomentMatching
from .particle import AuxiliaryPF, BootstrapPF, GuidedPF, ParticleFilterResult, ParticleSmoothResult
from .results import FilterResult, Forecast, SmoothResult

__all__ = ["Backend", "Kalman", "EKF", "UKF", "GaussHermite", "MomentMatching", "BootstrapPF", "GuidedPF",
           "AuxiliaryPF", "linear_gaussian_params", "FilterResult", "SmoothResult", "Forecast", "ParticleFilterResult",
           "ParticleSmoothResult"]
