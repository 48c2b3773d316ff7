"""The ensemble score filter (EnSF)."""

from .ensf import EnSF

__all__ = ["EnSF"]
