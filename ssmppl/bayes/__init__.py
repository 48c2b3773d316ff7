"""Bayesian inference for state-space models: NUTS (NumPyro, blackjax), SVI, posterior paths, ArviZ."""

from .nuts import DivergenceWarning, sample_posterior
from .posterior import Posterior

__all__ = ["Posterior", "sample_posterior", "DivergenceWarning"]
