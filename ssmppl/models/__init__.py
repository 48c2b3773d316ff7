"""Model tracing and the built-in model library."""

from .lgssm import linear_gaussian_ssm
from .tracing import SiteNames, StateSpace

__all__ = ["linear_gaussian_ssm", "SiteNames", "StateSpace"]
