"""Model tracing and the built-in model library."""

from .lgssm import linear_gaussian_ssm
from .local_level import local_level
from .tracing import SiteNames, StateSpace

__all__ = ["linear_gaussian_ssm", "local_level", "SiteNames", "StateSpace"]
