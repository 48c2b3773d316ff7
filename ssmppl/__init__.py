"""ssmppl: state-space models written as NumPyro programs, with pluggable inference backends."""

from . import diagnostics, inference, models
from .errors import ModelStructureError, ObservationShapeError
from .inference import (EKF, UKF, AuxiliaryPF, BootstrapPF, EnKF, EnSF, GaussHermite, GuidedPF, Kalman,
                        Localization, MomentMatching)
from .marginal import marginalize
from .ssm import SSM

__version__ = "0.1.0"

__all__ = ["SSM", "marginalize", "Kalman", "EKF", "UKF", "GaussHermite", "MomentMatching", "BootstrapPF", "GuidedPF",
           "AuxiliaryPF", "EnKF", "EnSF", "Localization", "diagnostics", "inference", "models", "ModelStructureError",
           "ObservationShapeError"]
