"""Inference backends. Each is a marginaliser: it integrates the latent path out.

Layout: ``base`` (the contract every backend implements), ``validation`` (checks of
parameters and data shared by all), ``distributions`` (reading NumPyro distributions),
``samples`` (sample-based steps shared by the particle, ensemble and score filters),
and one subpackage per family, each assembling the pure maths of ``ssmppl.maths``
into backends.
"""

from ..results import FilterResult, Forecast, Result, SmoothResult
from .base import Backend, Capability
from .ensemble import (RTPP, RTPS, Adaptive, Additive, EnKF, EnsembleFilterExtras, EnsembleSmoothExtras, Localization,
                       Multiplicative)
from .gaussian_filters import (EKF, UKF, GaussHermite, GaussHermiteCubature, MomentMatching, TaylorLinearization,
                               UnscentedTransform)
from .kalman import Kalman, linear_gaussian_params
from .particle import AuxiliaryPF, BootstrapPF, GuidedPF, ParticleFilterExtras, ParticleSmoothExtras
from .score_filter import EnSF

# What the facade uses when no method is given: exact where the model allows, and it says so where not.
DEFAULT_BACKEND = Kalman()
"""The backend ``SSM``'s methods use when no ``method=`` is given: ``Kalman()``."""

__all__ = ["Backend", "Capability", "DEFAULT_BACKEND",
           "Kalman", "EKF", "UKF", "GaussHermite", "MomentMatching", "BootstrapPF", "GuidedPF", "AuxiliaryPF", "EnKF",
           "EnSF",
           "TaylorLinearization", "UnscentedTransform", "GaussHermiteCubature",
           "Localization", "Multiplicative", "Additive", "RTPS", "RTPP", "Adaptive",
           "FilterResult", "SmoothResult", "Forecast", "Result",
           "ParticleFilterExtras", "ParticleSmoothExtras", "EnsembleFilterExtras", "EnsembleSmoothExtras",
           "linear_gaussian_params"]
