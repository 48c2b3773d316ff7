"""The interface every inference backend implements.

A backend is a small frozen dataclass holding only its settings. It receives a
``StateSpace`` (distributions and observations read off the user's model, see
``ssmppl.models.tracing``) and a PRNG key, and returns result pytrees. Methods
run inside ``jit``; they must be pure JAX.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..errors import ModelStructureError
from ..models.dependence import reads
from ..models.tracing import StateSpace
from .results import FilterResult, Forecast, SmoothResult


@dataclasses.dataclass(frozen=True)
class Backend:
    """Base class: override ``filter`` at least.

    ``requires_key``: sampling backends (particle, ensemble) set it to True and
    get a ``jax.random`` key; exact backends get ``None``.
    ``noisy_likelihood``: the log-likelihood is the log of a random (unbiased)
    estimate, so ``sample_posterior`` runs particle marginal Metropolis-Hastings.
    """

    requires_key = False
    provides_likelihood = True
    noisy_likelihood = False  # True: log_likelihood is a random estimate (particle filters): PMMH, not HMC

    def filter(self, problem: StateSpace, key=None) -> FilterResult:
        raise NotImplementedError

    def _key(self, key):
        """The key of a sampling backend, or an error saying one is needed."""
        if key is None:
            raise ValueError(f"{type(self).__name__} samples: pass key=jax.random.PRNGKey(...)")
        return key

    def diagnose(self, result) -> "str | None":
        """Outside jit, on a concrete result: a message explaining why it is unusable, or None."""
        return None

    def smooth(self, problem: StateSpace, key=None) -> SmoothResult:
        raise NotImplementedError(f"{type(self).__name__} has no smoother")

    def log_likelihood(self, problem: StateSpace, key=None):
        return self.filter(problem, key).marginal_loglik

    def log_predictive(self, problem: StateSpace, key=None):
        """(T,) one-step-ahead log predictive densities; they sum to the marginal log-likelihood."""
        return self.filter(problem, key).log_predictive

    def sample_states(self, problem: StateSpace, key):
        """One draw (T, dz) of the latent path z_{1:T} from p(z_{1:T} | y_{1:T})."""
        raise NotImplementedError(f"{type(self).__name__} cannot sample latent paths")

    def forecast(self, problem: StateSpace, filtered: FilterResult, num_steps: int, key=None) -> Forecast:
        raise NotImplementedError(f"{type(self).__name__} cannot forecast")

    def posterior_predictive(self, problem: StateSpace, smoothed: SmoothResult):
        """Means and standard deviations (T, dy) of y_t under the smoothed state."""
        raise NotImplementedError(f"{type(self).__name__} has no posterior predictive")


def check_forecastable(problem: StateSpace):
    """Forecasting needs the step's distributions not to read the scan's inputs (unknown in the future)."""
    if problem.xs is None:
        return
    z, x0 = jnp.zeros(problem.state_dim, problem.observations.dtype), problem.xs_example()
    for fn, site in ((problem.transition, problem.names.latent), (problem.emission, problem.names.obs)):
        if reads(lambda x: jax.tree.leaves(fn(z, x)), 0, x0):
            raise ModelStructureError(
                f"cannot forecast: the distribution of site {site!r} reads the scan's inputs, whose future values "
                "are unknown. Extend the inputs over the forecast horizon, pad the observations with NaN and call "
                "ssm.filter (or Posterior.predictive) instead"
            )
