"""Ensemble Kalman filters and smoother (EnKF, EnKS) with inflation and localisation."""

from .enkf import EnKF
from .inflation import RTPP, RTPS, Adaptive, Additive, Multiplicative
from .localization import Localization
from .results import EnsembleFilterExtras, EnsembleSmoothExtras

__all__ = ["EnKF", "Localization", "Multiplicative", "Additive", "RTPS", "RTPP", "Adaptive", "EnsembleFilterExtras",
           "EnsembleSmoothExtras"]
