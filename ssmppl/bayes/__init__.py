"""Bayesian inference for state-space models: NUTS (NumPyro, blackjax), PMMH, SVI, posterior paths, ArviZ."""

from .nuts import DivergenceWarning, sample_posterior
from .pmmh import PMMHWarning
from .posterior import Posterior

__all__ = ["Posterior", "sample_posterior", "DivergenceWarning", "PMMHWarning"]
