"""Gaussian-approximation backends for nonlinear and non-Gaussian models.

``EKF``, ``UKF`` and ``GaussHermite`` handle Gaussian sites whose mean (and
covariance) may be any function of the state; ``MomentMatching`` handles any
site distribution with a conditional mean and variance (Poisson, Bernoulli,
Student-t, Gamma...). Each is a marginaliser like ``Kalman()``: the filter's
one-step predictive densities give the (approximate) marginal likelihood used by
``marginalize``, ``fit_sgd`` and ``sample_posterior``, and the smoother's
Gaussian marginals and cross-covariances drive ``fit_em``. On a linear Gaussian
model each equals the Kalman filter and RTS smoother.

State-dependent noise (a site's scale is a function of the state): the EKF
evaluates it at the linearisation point (the predicted or filtered mean); the
sigma-point rules average the conditional covariance over their points, the
standard treatment of E[Sigma(z)] in sigma-point filters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import jax.numpy as jnp

from ...maths.gaussian_filter import (
    GaussianModel,
    Site,
    gaussian_emission_moments,
    gaussian_filter,
    gaussian_forecast,
    gaussian_sample_states,
    gaussian_smoother,
)
from ...models.dependence import reads, require_derivative
from ...models.tracing import StateSpace
from ..base import ALL_CAPABILITIES, Backend, check_forecastable
from ..distributions import conditional_moments, gaussian_moments, is_gaussian, masked_log_prob, require_gaussian
from .rules import RULES, GaussHermiteCubature, TaylorLinearization, UnscentedTransform

_NON_GAUSSIAN_HINT = (
    "use MomentMatching(rule=UKF()) (moment matching with the site's conditional mean and variance) "
    "or a particle filter for non-Gaussian sites"
)


def _check_gaussian(d, site, role, backend):
    require_gaussian(d, site, role, f"{backend}()", _NON_GAUSSIAN_HINT)


def _check_differentiable(mean_fn, z, site, role):
    """Refuse a conditional mean whose Jacobian is identically zero although it reads the state
    (rounding, comparisons, integer casts): the EKF would silently ignore the state there."""
    require_derivative(
        mean_fn, z,
        lambda error: (f"EKF() differentiates the mean of the {role} site {site!r}, which failed "
                       f"({type(error).__name__}: {error}). Use UKF() or GaussHermite(), which need no derivatives"),
        f"EKF() linearises by differentiation, but the mean of the {role} site {site!r} depends on the "
        "state only through non-differentiable operations (rounding, comparisons, integer casts), so its "
        "Jacobian is zero. Use UKF() or GaussHermite(), which need no derivatives")


@dataclasses.dataclass(frozen=True)
class _GaussianApproximation(Backend):
    """Shared machinery: subclasses say which rule, which moments, which checks."""

    capabilities = ALL_CAPABILITIES
    gaussian_sites_only: ClassVar[bool] = True  # False: any site with a conditional mean and variance

    def _name(self):
        return type(self).__name__

    @property
    def rule(self):
        """The backend's Gaussian-filter rule (one of ``RULES``)."""
        raise NotImplementedError

    def _rule(self, n: int):
        return self.rule.build(n)

    def _moments(self, d):
        return gaussian_moments(d)

    def _check_site(self, d, mean_fn, z, site, role):
        _check_gaussian(d, site, role, self._name())

    @property
    def _iterations(self):
        return self.rule.iterations

    def _quadrature(self, problem, rule) -> bool:
        return False

    def _model(self, problem: StateSpace):
        """The ``GaussianModel`` of ``problem``, with trace-time structure checks."""
        names = problem.names
        dz = problem.state_dim
        dtype = jnp.result_type(problem.observations, float)
        z = jnp.zeros(dz, dtype)
        x0 = problem.xs_example()
        moments = self._moments
        for fn, site, role in ((problem.transition, names.latent, "latent"), (problem.emission, names.obs, "emission")):
            self._check_site(fn(z, x0), lambda z_, fn=fn: moments(fn(z_, x0))[0], z, site, role)
        if problem.initial is None:
            m0, P0 = problem.initial_value.astype(dtype), jnp.zeros((dz, dz), dtype)
        else:
            if self.gaussian_sites_only:
                _check_gaussian(problem.initial, names.init, "initial-state", self._name())
            m0, P0 = moments(problem.initial)
            m0, P0 = jnp.broadcast_to(m0, (dz,)).astype(dtype), jnp.asarray(P0, dtype)

        def noise_reads(fn):
            return reads(lambda z_: moments(fn(z_, x0))[1], 0, z)

        trans_noise, emis_noise = noise_reads(problem.transition), noise_reads(problem.emission)
        return GaussianModel(
            transition=lambda xs_t: Site(lambda z_: moments(problem.transition(z_, xs_t)), trans_noise),
            emission=lambda xs_t: Site(lambda z_: moments(problem.emission(z_, xs_t)), emis_noise),
            emission_log_prob=lambda z_, xs_t, y: masked_log_prob(problem.emission(z_, xs_t), y, problem.obs_shape),
            initial_mean=m0,
            initial_covariance=P0,
            xs=problem.xs,
            observations=problem.observations.astype(dtype),
        )

    def filter(self, problem, key=None):
        model = self._model(problem)
        rule = self._rule(problem.state_dim)
        return gaussian_filter(model, rule, self._iterations, None, self._quadrature(problem, rule))[0]

    def smooth(self, problem, key=None):
        model = self._model(problem)
        rule = self._rule(problem.state_dim)
        return gaussian_smoother(model, rule, self._iterations, self._quadrature(problem, rule))

    def sample_states(self, problem, key):
        """A draw from the filter's Gaussian approximation of the path posterior
        (backward sampling with the statistically linearised transitions)."""
        return gaussian_sample_states(self._model(problem), self._rule(problem.state_dim), key, self._iterations)

    def forecast(self, problem, filtered, num_steps, key=None):
        check_forecastable(problem)
        x0 = problem.xs_example()
        return gaussian_forecast(self._model(problem), self._rule(problem.state_dim), filtered.filtered_means[-1],
                                 filtered.filtered_covariances[-1], x0, num_steps)

    def posterior_predictive(self, problem, smoothed):
        means, covs = gaussian_emission_moments(self._model(problem), self._rule(problem.state_dim),
                                                smoothed.smoothed_means, smoothed.smoothed_covariances)
        return means, jnp.sqrt(jnp.diagonal(covs, axis1=-2, axis2=-1))


@dataclasses.dataclass(frozen=True)
class EKF(_GaussianApproximation):
    """Extended Kalman filter and smoother: first-order Taylor linearisation of the
    transition and emission means at the current estimate.

    iterations: 1 gives the EKF. With iterations = k > 1 the update relinearises
    the emission at the new posterior mean k times (the iterated EKF, a
    Gauss–Newton search for the mode of p(z_t | y_{1:t})), and the smoother runs
    k Gauss–Newton passes (iterated extended RTS smoother): each pass relinearises
    the whole model at the previous pass's smoothed means. The log predictive
    densities are those of the last linearisation. Needs differentiable means.
    """

    iterations: int = 1

    def __post_init__(self):
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"EKF(iterations=...) must be an integer >= 1, got {self.iterations!r}")

    @property
    def rule(self):
        return TaylorLinearization(self.iterations)

    def _check_site(self, d, mean_fn, z, site, role):
        super()._check_site(d, mean_fn, z, site, role)
        _check_differentiable(mean_fn, z, site, role)


@dataclasses.dataclass(frozen=True)
class UKF(_GaussianApproximation):
    """Unscented Kalman filter and unscented RTS smoother.

    2n + 1 sigma points m and m +- sqrt(n + lambda) L e_i (L the Cholesky factor
    of the covariance), lambda = alpha^2 (n + kappa) - n; mean weights
    lambda / (n + lambda) (centre) and 1 / (2 (n + lambda)); the centre's
    covariance weight adds 1 - alpha^2 + beta. ``kappa=None`` means
    max(0, 3 - n): Julier's choice where it keeps every weight non-negative. With
    alpha = 1, beta = 0, kappa = 0 this is the spherical cubature rule. A negative
    centre weight can make a predicted covariance indefinite: it is repaired
    (negative eigenvalues set to zero) before its factor is taken.
    """

    alpha: float = 1.0
    beta: float = 0.0
    kappa: Optional[float] = None

    def __post_init__(self):
        if not self.alpha > 0:
            raise ValueError(f"UKF(alpha=...) must be positive, got {self.alpha!r}")

    @property
    def rule(self):
        return UnscentedTransform(self.alpha, self.beta, self.kappa)


@dataclasses.dataclass(frozen=True)
class GaussHermite(_GaussianApproximation):
    """Gauss–Hermite (product-rule) cubature filter and smoother: order^n points,
    exact for polynomials of degree <= 2 order - 1 in each coordinate. For small
    states only (refused beyond 100,000 points; use UKF() there)."""

    order: int = 3

    def __post_init__(self):
        if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 1:
            raise ValueError(f"GaussHermite(order=...) must be an integer >= 1, got {self.order!r}")

    @property
    def rule(self):
        return GaussHermiteCubature(self.order)


_PREDICTIVE = (None, "gaussian", "quadrature")


@dataclasses.dataclass(frozen=True)
class MomentMatching(_GaussianApproximation):
    """Assumed density filtering (conditional-moments Gaussian filter and smoother).

    For sites of any distribution with a conditional mean and variance (Poisson,
    Bernoulli, Student-t, Gamma...): the update matches the first two moments of
    (z_t, y_t) computed by ``rule`` from the emission's conditional mean E[y|z]
    and variance Var[y|z]; a non-Gaussian transition enters through its
    conditional mean and variance likewise. Gaussian sites are treated exactly as
    by ``rule`` itself.

    rule: a Gaussian-filter rule, how the Gaussian expectations are computed:
    ``TaylorLinearization(...)``, ``UnscentedTransform(...)`` or ``GaussHermiteCubature(...)``
    (an ``EKF()``, ``UKF()`` or ``GaussHermite()`` backend stands for its own ``.rule``).
    predictive: how log p(y_t | y_{1:t-1}) is approximated for a
    non-Gaussian emission. "quadrature": log sum_i w_i p(y_t | z_i) over the
    rule's points of the predicted Gaussian of z_t (a proper density or
    probability mass for y_t; needs non-negative weights). "gaussian":
    log N(y_t; E[y_t], Cov[y_t]) with the matched moments, as dynamax's
    conditional-moments filter does. None (default): "quadrature" for sigma-point
    rules, "gaussian" for EKF(). Gaussian emissions always use the Gaussian
    form, which is exact for linear models.
    """

    rule: Any = UnscentedTransform()
    predictive: Optional[str] = None  # not `log_predictive`: that is the Backend method

    gaussian_sites_only = False

    def __post_init__(self):
        if isinstance(self.rule, (EKF, UKF, GaussHermite)):
            object.__setattr__(self, "rule", self.rule.rule)
        if not isinstance(self.rule, RULES):
            raise TypeError(f"MomentMatching(rule=...) must be a rule ({', '.join(r.__name__ for r in RULES)}) "
                            f"or an EKF(), UKF() or GaussHermite() backend, got {self.rule!r}")
        if self.predictive not in _PREDICTIVE:
            raise ValueError(f"MomentMatching(predictive=...) must be one of {_PREDICTIVE}, got {self.predictive!r}")
        if self.predictive == "quadrature" and isinstance(self.rule, TaylorLinearization):
            raise ValueError("predictive='quadrature' needs a sigma-point rule (UKF() or GaussHermite()); "
                             "EKF() has no points: use predictive='gaussian'")

    def _moments(self, d):
        return conditional_moments(d)

    def _check_site(self, d, mean_fn, z, site, role):
        if isinstance(self.rule, TaylorLinearization):
            _check_differentiable(mean_fn, z, site, role)

    def _quadrature(self, problem, rule):
        if self.predictive == "gaussian" or isinstance(self.rule, TaylorLinearization):
            return False
        x0 = problem.xs_example()
        if is_gaussian(problem.emission(jnp.zeros(problem.state_dim, problem.observations.dtype), x0)):
            return False
        if not rule.points.nonnegative:
            if self.predictive == "quadrature":
                raise ValueError(
                    f"predictive='quadrature' needs non-negative weights, but {self.rule} has a negative one "
                    "for this state dimension: use GaussHermite(), UKF(kappa=0), or predictive='gaussian'"
                )
            return False
        return True
