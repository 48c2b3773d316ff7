"""Inference backends. Each is a marginaliser: it integrates the latent path out."""

from .base import Backend, Capability
from .ensemble import EnKF, EnsembleFilterExtras, EnsembleSmoothExtras
from .inflation import RTPP, RTPS, Adaptive, Additive, Multiplicative
from .kalman import Kalman, linear_gaussian_params
from .localization import Localization
from .nonlinear import (EKF, UKF, GaussHermite, GaussHermiteCubature, MomentMatching, TaylorLinearization,
                        UnscentedTransform)
from .particle import AuxiliaryPF, BootstrapPF, GuidedPF, ParticleFilterExtras, ParticleSmoothExtras
from .results import FilterResult, Forecast, Result, SmoothResult
from .score_filter import EnSF

# What the facade uses when no method is given: exact where the model allows, and it says so where not.
DEFAULT_BACKEND = Kalman()

__all__ = ["Backend", "Capability", "DEFAULT_BACKEND", "Kalman", "EKF", "UKF", "GaussHermite", "MomentMatching", "TaylorLinearization", "UnscentedTransform", "GaussHermiteCubature", "BootstrapPF", "GuidedPF",
           "AuxiliaryPF", "EnKF", "EnSF", "Localization", "Multiplicative", "Additive", "RTPS", "RTPP", "Adaptive",
           "EnsembleFilterExtras", "EnsembleSmoothExtras", "linear_gaussian_params", "FilterResult", "SmoothResult",
           "Forecast", "ParticleFilterExtras", "ParticleSmoothExtras", "Result"]
