"""Covariance inflation for ensemble filters, applied to the analysis anomalies after each update.

Each kind maps (prior anomalies A_f (N, d), analysis anomalies A_a (N, d), key,
state) to new analysis anomalies; anomalies have zero mean over members, and
every kind keeps them so (the analysis mean is unchanged).

  Multiplicative(factor)   A_a <- factor A_a: the covariance scales by factor^2
                           (DAPPER's convention); ``inflation=1.02`` means this.
  Additive(variance)       A_a <- A_a + E, E (N, d) Gaussian with per-component
                           variance ``variance``, re-centred over members.
  RTPP(alpha)              relaxation to prior perturbations (Zhang et al. 2004):
                           A_a <- (1 - alpha) A_a + alpha A_f.
  RTPS(alpha)              relaxation to prior spread (Whitaker & Hamill 2012): each
                           component's anomalies scale by alpha s_f / s_a + 1 - alpha.
  Adaptive(...)            multiplicative with a factor estimated from the innovations
                           (Li, Kalnay & Miyoshi 2009): lambda^2 = (d'd - m) / tr(S'S/(N-1))
                           in observation space whitened by R, relaxed over time with weight
                           ``relaxation`` (factor^2 <- (1 - w) factor^2 + w lambda^2), then
                           clipped to [1, max_factor^2]. The single-step estimates are noisy
                           and often below 1; clipping them before the average would bias
                           the factor upwards, so only the average is clipped.

Several kinds combine as a tuple, applied in order.
"""

from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp


def _number(owner, name, value, low, high=None, low_open=False):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        bound += f" and <= {high}" if high is not None else ""
        raise ValueError(f"{owner}({name}=...) must be a number {bound}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Multiplicative:
    """Multiplicative inflation: the analysis anomalies times ``factor`` >= 1, so the covariance
    scales by ``factor**2`` (DAPPER's convention); ``EnKF(inflation=1.02)`` means ``Multiplicative(1.02)``."""

    factor: float = 1.0

    def __post_init__(self):
        _number("Multiplicative", "factor", self.factor, 1.0)

    def apply(self, A_f, A_a, key, info):
        return A_a * self.factor


@dataclasses.dataclass(frozen=True)
class Additive:
    """Additive inflation: Gaussian noise E (N, d) with per-component ``variance`` >= 0 added to the
    analysis anomalies, re-centred over members (the analysis mean is unchanged)."""

    variance: float = 0.0

    def __post_init__(self):
        _number("Additive", "variance", self.variance, 0.0)

    def apply(self, A_f, A_a, key, info):
        noise = jax.random.normal(key, A_a.shape, A_a.dtype) * jnp.sqrt(jnp.asarray(self.variance, A_a.dtype))
        return A_a + noise - noise.mean(0)


@dataclasses.dataclass(frozen=True)
class RTPP:
    """Relaxation to prior perturbations (Zhang et al. 2004): A_a <- (1 - alpha) A_a + alpha A_f,
    ``alpha`` in [0, 1]."""

    alpha: float = 0.5

    def __post_init__(self):
        _number("RTPP", "alpha", self.alpha, 0.0, 1.0)

    def apply(self, A_f, A_a, key, info):
        return (1.0 - self.alpha) * A_a + self.alpha * A_f


@dataclasses.dataclass(frozen=True)
class RTPS:
    """Relaxation to prior spread (Whitaker & Hamill 2012): each component's analysis anomalies scale by
    alpha s_f / s_a + 1 - alpha (s_f, s_a the prior and analysis spreads), ``alpha`` in [0, 1]; a component
    the analysis collapsed (s_a = 0) is left as it is."""

    alpha: float = 0.5

    def __post_init__(self):
        _number("RTPS", "alpha", self.alpha, 0.0, 1.0)

    def apply(self, A_f, A_a, key, info):
        s_f = jnp.sqrt((A_f ** 2).sum(0))
        s_a = jnp.sqrt((A_a ** 2).sum(0))
        # a component the analysis collapsed (s_a = 0) cannot be rescaled: leave it
        scale = jnp.where(s_a > 0, self.alpha * s_f / jnp.where(s_a > 0, s_a, 1.0) + 1.0 - self.alpha, 1.0)
        return A_a * scale


@dataclasses.dataclass(frozen=True)
class Adaptive:
    """Adaptive multiplicative inflation from the innovations (Li, Kalnay & Miyoshi 2009): each cycle's
    estimate lambda^2 = (d'd - m) / tr(S'S / (N-1)) (whitened observation space) is averaged into
    factor^2 with weight ``relaxation``, starting from ``initial``, and the average is clipped to
    [1, ``max_factor``^2]. At most one per filter."""

    initial: float = 1.0
    relaxation: float = 0.05
    max_factor: float = 2.0

    def __post_init__(self):
        _number("Adaptive", "initial", self.initial, 1.0)
        _number("Adaptive", "relaxation", self.relaxation, 0.0, 1.0)
        _number("Adaptive", "max_factor", self.max_factor, 1.0)

    def apply(self, A_f, A_a, key, info):
        return A_a * info["adaptive_factor"]


INFLATIONS = (Multiplicative, Additive, RTPP, RTPS, Adaptive)


def as_inflation(value, owner: str) -> tuple:
    """Normalise the ``inflation=`` setting: a number (multiplicative factor), a kind, or a tuple of kinds."""
    if value is None:
        return ()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if value < 1.0:
            raise ValueError(
                f"{owner}(inflation={value!r}): a multiplicative inflation factor must be >= 1 (it multiplies the "
                "anomalies; a factor below 1 deflates the ensemble and makes it collapse). Use 1.0 for none"
            )
        return (Multiplicative(float(value)),) if value != 1.0 else ()
    kinds = value if isinstance(value, tuple) else (value,)
    for k in kinds:
        if not isinstance(k, INFLATIONS):
            raise TypeError(f"{owner}(inflation=...) takes a number >= 1 or instances of "
                            f"{[c.__name__ for c in INFLATIONS]} (or a tuple of them), got {k!r}")
    if sum(isinstance(k, Adaptive) for k in kinds) > 1:
        raise ValueError(f"{owner}(inflation=...): at most one Adaptive inflation")
    return kinds


def adaptive_of(kinds):
    return next((k for k in kinds if isinstance(k, Adaptive)), None)


def update_adaptive(kind: Adaptive, factor, dd, m, trace_ss, N):
    """New adaptive factor from one step's whitened innovation d'd, observed count m and tr(S'S)."""
    lam2 = (dd - m) / jnp.maximum(trace_ss / (N - 1), jnp.finfo(dd.dtype).tiny)
    new2 = jnp.clip((1 - kind.relaxation) * factor ** 2 + kind.relaxation * lam2, 1.0, kind.max_factor ** 2)
    return jnp.where(m > 0, jnp.sqrt(new2), factor)


def inflate(kinds, A_f, A_a, key, info):
    keys = jax.random.split(key, max(len(kinds), 1))
    for k, kind in zip(keys, kinds):
        A_a = kind.apply(A_f, A_a, k, info)
    return A_a
