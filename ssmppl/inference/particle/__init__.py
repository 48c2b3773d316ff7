"""Particle filters (bootstrap, guided, auxiliary) and smoothers (FFBSi, genealogy)."""

from .filters import AuxiliaryPF, BootstrapPF, GuidedPF
from .results import ParticleFilterExtras, ParticleSmoothExtras

__all__ = ["BootstrapPF", "GuidedPF", "AuxiliaryPF", "ParticleFilterExtras", "ParticleSmoothExtras"]
