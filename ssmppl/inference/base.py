"""The interface every inference backend implements.

A backend is a small frozen dataclass holding only its settings. It receives a
``StateSpace`` (distributions and observations read off the user's model, see
``ssmppl.models.tracing``) and a PRNG key, and returns result pytrees. Methods
run inside ``jit``; they must be pure JAX.

What a backend can do beyond filtering is declared once, in its
``capabilities`` (a frozenset of ``Capability``), and read in one place,
``require``: the facade, learning and Bayesian code call it before using a
capability, and the refusal lists, by generation from the declarations, the
backends that have it. A declared capability must come with its method
(checked when the class is defined); an undeclared one is refused by name.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Callable, ClassVar, Optional

import jax
import jax.numpy as jnp

from ..errors import CapabilityError, ModelStructureError
from ..models.dependence import reads
from ..models.tracing import StateSpace
from ..results import FilterResult, Forecast, SmoothResult
from .validation import first_nonfinite_step, overflow_hint


class Capability(enum.Enum):
    """What a backend may provide beyond ``filter``; the value says what it is, for messages."""

    LIKELIHOOD = "likelihood"
    SMOOTH = "smoother"
    SAMPLE_STATES = "path sampler"
    FORECAST = "forecast"
    POSTERIOR_PREDICTIVE = "posterior predictive"


# The method each capability needs a backend to implement.
_METHOD = {
    Capability.LIKELIHOOD: "filter",  # log_likelihood and log_predictive read the filter's result by default
    Capability.SMOOTH: "smooth",
    Capability.SAMPLE_STATES: "sample_states",
    Capability.FORECAST: "forecast",
    Capability.POSTERIOR_PREDICTIVE: "posterior_predictive",
}

_REGISTRY: list = []  # public backend classes, in definition order


def backends_with(capability: Capability) -> list:
    """Names of the public backends that declare ``capability`` (in definition order)."""
    return [cls.__name__ for cls in _REGISTRY if capability in cls.capabilities]


def refusal(method, capability: Capability, needed_by: str) -> str:
    """The one message for a backend asked for a capability it does not declare."""
    others = ", ".join(backends_with(capability)) or "none"
    return (f"{type(method).__name__} has no {capability.value} (Capability.{capability.name}), which "
            f"{needed_by} needs. Backends with one: {others}")


def require_key(method, key, how: str = "pass key=jax.random.PRNGKey(...)"):
    """The one missing-key error: a sampling backend (``requires_key``) needs a key; returns it."""
    if method.requires_key and key is None:
        raise ValueError(f"{type(method).__name__} samples: {how}")
    return key


def require(method, *capabilities: Capability, needed_by: str):
    """Raise ``CapabilityError`` unless ``method`` declares every capability; return it."""
    if not isinstance(method, Backend):
        raise TypeError(f"method must be an ssmppl backend such as Kalman(), got {method!r}")
    for capability in capabilities:
        if capability not in method.capabilities:
            raise CapabilityError(refusal(method, capability, needed_by))
    return method


@dataclasses.dataclass(frozen=True)
class Backend:
    """Base class: override ``filter`` at least, and declare ``capabilities``.

    ``capabilities``: what the backend provides beyond filtering (``Capability``);
    each needs its method overridden (``LIKELIHOOD``: a filter result with
    ``log_predictive`` and ``marginal_loglik``).
    ``requires_key``: sampling backends (particle, ensemble) set it to True and
    get a ``jax.random`` key; exact backends get ``None``.
    ``noisy_likelihood``: the log-likelihood is the log of a random (unbiased)
    estimate, so ``sample_posterior`` runs particle marginal Metropolis-Hastings.
    """

    capabilities: ClassVar[frozenset] = frozenset()
    requires_key: ClassVar[bool] = False
    noisy_likelihood: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for capability in cls.capabilities:
            name = _METHOD[capability]
            if getattr(cls, name) is getattr(Backend, name):
                raise TypeError(f"{cls.__name__} declares {capability.name} but does not implement {name}()")
        if not cls.__name__.startswith("_"):
            _REGISTRY.append(cls)

    def _refuse(self, capability: Capability, needed_by: str):
        raise CapabilityError(refusal(self, capability, needed_by))

    def filter(self, problem: StateSpace, key=None) -> FilterResult:
        """Filter the model's observations: a ``FilterResult`` with ``filtered_means (T, dz)``,
        ``filtered_covariances (T, dz, dz)``, the one-step predicted moments and, for a backend
        declaring ``LIKELIHOOD``, ``marginal_loglik`` and ``log_predictive (T,)``. Every backend
        implements it; ``key`` is ``None`` unless ``requires_key``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement filter()")

    def _key(self, key):
        """The key of a sampling backend, or an error saying one is needed."""
        return require_key(self, key)

    def diagnose(self, problem: StateSpace, result) -> Optional[str]:
        """Outside jit, on a concrete filter result whose parameters passed ``validation``: why it
        is unusable (a message naming the first non-finite step), or None. Data the dtype cannot
        hold are blamed before the backend's numerics, which ``explain`` describes."""
        step = first_nonfinite_step(result)
        if step is None:
            return None
        hint = overflow_hint(problem.observations, step, problem.names.obs)
        if hint:
            return f"{type(self).__name__}: the filter is not finite from step {step} on{hint}"
        return self.explain(problem, result, step)

    def result_warnings(self, result: FilterResult, problem: Callable[[], StateSpace]) -> tuple:
        """Outside jit, on a concrete filter result that is finite: ``Warning`` instances for a result
        that is finite but not to be trusted (an ensemble that diverged, an unstable analysis), each
        naming the setting to change. ``problem()`` traces the model's ``StateSpace`` (only call it if
        needed). ``SSM.filter`` and ``SSM.smooth`` emit them. Default: none."""
        return ()

    def explain(self, problem: StateSpace, result, step: int) -> str:
        """The backend's own account of a result that is not finite from ``step`` (1-based) on."""
        return f"{type(self).__name__}: the filter is not finite from step {step} on"

    def smooth(self, problem: StateSpace, key=None) -> SmoothResult:
        """Filter and smooth (``SMOOTH``): a ``SmoothResult`` with ``smoothed_means (T, dz)``,
        ``smoothed_covariances (T, dz, dz)``, ``smoothed_cross_covariances (T-1, dz, dz)`` and the
        filter's result as ``.filtered``. Raises ``CapabilityError`` unless declared."""
        self._refuse(Capability.SMOOTH, "smooth")

    def log_likelihood(self, problem: StateSpace, key=None):
        """Scalar log p(y_{1:T}) (``LIKELIHOOD``; an estimate for sampling backends). By default the
        filter's ``marginal_loglik``; raises ``CapabilityError`` unless declared."""
        if Capability.LIKELIHOOD not in self.capabilities:
            self._refuse(Capability.LIKELIHOOD, "log_likelihood")
        return self.filter(problem, key).marginal_loglik

    def log_predictive(self, problem: StateSpace, key=None):
        """(T,) one-step-ahead log predictive densities; they sum to the marginal log-likelihood."""
        if Capability.LIKELIHOOD not in self.capabilities:
            self._refuse(Capability.LIKELIHOOD, "log_predictive")
        return self.filter(problem, key).log_predictive

    def sample_states(self, problem: StateSpace, key):
        """One draw (T, dz) of the latent path z_{1:T} from p(z_{1:T} | y_{1:T})."""
        self._refuse(Capability.SAMPLE_STATES, "sample_states")

    def forecast(self, problem: StateSpace, filtered: FilterResult, num_steps: int, key=None) -> Forecast:
        """Moments of the ``num_steps`` states and emissions after the data (``FORECAST``), from the
        filter's result: a ``Forecast`` with ``state_means (H, dz)``, ``state_covariances (H, dz, dz)``,
        ``emission_means (H, dy)``, ``emission_covariances (H, dy, dy)``. Raises ``CapabilityError``
        unless declared."""
        self._refuse(Capability.FORECAST, "forecast")

    def posterior_predictive(self, problem: StateSpace, smoothed: SmoothResult):
        """Means and standard deviations (T, dy) of y_t under the smoothed state."""
        self._refuse(Capability.POSTERIOR_PREDICTIVE, "posterior_predictive")


ALL_CAPABILITIES = frozenset(Capability)


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
