"""Gaussian filters and smoothers for nonlinear models: one algorithm, several rules.

Every Gaussian-approximation filter (EKF, UKF, Gauss–Hermite, moment matching)
runs the same recursion. Given N(m, P) for a state and a site whose
distribution depends on it, a *rule* approximates the joint moments of (z, x)
where x is the site's value:

    E[x] ~ E[mu(z)],  Cov[x] ~ Cov[mu(z)] + E[Sigma(z)],  Cov[z, x] ~ Cov[z, mu(z)]

with mu(z), Sigma(z) the site's conditional mean and covariance. The Taylor
rule (EKF) linearises mu at a point; the sigma-point rules (unscented,
Gauss–Hermite) integrate with weighted points. Prediction takes the moments of
the transition; the update conditions on y with the moments of the emission
(``moment_update``, exactly the Kalman update when the moments are exact); the
RTS smoother uses the prediction's cross-covariance as its gain numerator.
For a linear Gaussian model every rule's moments are exact, so each filter is
the Kalman filter.

State-dependent noise (Sigma(z) reads z): the Taylor rule takes Sigma at its
linearisation point; the sigma-point rules average Sigma over their points.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ..results import FilterResult, Forecast
from .gaussian import factor_or_repair, moment_update, symmetrize
from .kalman import backward_sample_from_cross, rts_smoother_from_cross
from .sigma_points import SigmaPoints


class Site(NamedTuple):
    """A site at one time step: ``moments(z) -> (mean (k,), covariance (k, k))``;
    ``noise_reads_state`` is False when the covariance does not depend on z (checked
    at trace time), so the rules evaluate it once instead of at every point."""

    moments: Callable
    noise_reads_state: bool = True


@dataclasses.dataclass(frozen=True)
class TaylorRule:
    """First-order Taylor expansion of the conditional mean (the extended Kalman filter).

    ``at``: the linearisation point (default: the mean m); the iterated filter and
    smoother pass other points. The site's covariance is taken at that point.
    """

    def factor(self, P):
        return None, P

    def moments(self, site: Site, m, P, L, at=None):
        x = m if at is None else at

        def mean_with_aux(z):
            mean, cov = site.moments(z)
            return mean, (mean, cov)

        J, (mu, noise) = jax.jacfwd(mean_with_aux, has_aux=True)(x)
        mean = mu if at is None else mu + J @ (m - x)
        PJ = P @ J.T
        return mean, symmetrize(J @ PJ + noise), PJ


@dataclasses.dataclass(frozen=True, eq=False)
class PointRule:
    """A sigma-point (cubature) rule: moments as weighted sums over points m + L u_i."""

    points: SigmaPoints

    def factor(self, P):
        return factor_or_repair(P)

    def at(self, m, L):
        return m + jnp.asarray(self.points.unit, m.dtype) @ L.T

    def moments(self, site: Site, m, P, L, at=None):
        if at is not None:
            raise NotImplementedError("sigma-point rules linearise at the Gaussian itself")
        wm = jnp.asarray(self.points.mean_weights, m.dtype)
        wc = jnp.asarray(self.points.cov_weights, m.dtype)
        pts = self.at(m, L)
        if site.noise_reads_state:
            means, covs = jax.vmap(site.moments)(pts)
            noise = jnp.tensordot(wm, covs, axes=1)
        else:
            means = jax.vmap(lambda z: site.moments(z)[0])(pts)
            noise = site.moments(m)[1]
        mean = wm @ means
        dev = means - mean
        cov = symmetrize((dev.T * wc) @ dev + noise)
        cross = ((pts - m).T * wc) @ dev
        if not self.points.nonnegative:  # a negative weight can make cov indefinite
            cov = factor_or_repair(cov)[1]
        return mean, cov, cross


class GaussianModel(NamedTuple):
    """What the recursions need from a ``StateSpace``: per-step sites, the initial
    moments and the observations. ``moments_of(distribution) -> (mean, cov)``."""

    transition: Callable  # xs_t -> Site
    emission: Callable  # xs_t -> Site
    emission_log_prob: Callable  # (z, xs_t, y) -> log p(y_observed | z)
    initial_mean: jax.Array
    initial_covariance: jax.Array
    xs: object
    observations: jax.Array


def gaussian_filter(model: GaussianModel, rule, iterations: int = 1, nominal=None,
                    quadrature_log_predictive: bool = False):
    """Run the Gaussian filter. Returns (FilterResult, cross (T, dz, dz)) with
    cross[t] = Cov[z_{t-1}, z_t | y_{1:t-1}] (index 0 pairs z_0 and z_1).

    iterations > 1 (Taylor rule): the iterated update, relinearising the emission
    at the current posterior mean (Gauss–Newton on the MAP of z_t). ``nominal``
    (T + 1, dz): linearise the transition from z_{t-1} at nominal[t] and the
    emission at nominal[t + 1] (a pass of the Gauss–Newton smoother).
    ``quadrature_log_predictive``: log p(y_t | y_{1:t-1}) as log sum_i w_i p(y_t | z_i)
    over the rule's points of the predicted Gaussian, instead of the Gaussian
    N(y_t; E[y], Cov[y]) (for non-Gaussian emissions).
    """
    L0, P0 = rule.factor(model.initial_covariance)
    lin = None if nominal is None else (nominal[:-1], nominal[1:])

    def step(carry, inputs):
        m, P, L = carry
        y, xs_t, lin_t = inputs
        m_p, P_p, cross = rule.moments(model.transition(xs_t), m, P, L, None if lin_t is None else lin_t[0])
        L_p, P_p = rule.factor(P_p)
        emission = model.emission(xs_t)

        def update(at):
            y_mean, S, C = rule.moments(emission, m_p, P_p, L_p, at)
            return moment_update(m_p, P_p, y, y_mean, S, C)

        m_f, P_f, ll = update(None if lin_t is None else lin_t[1])
        if iterations > 1:  # relinearise at the new mean (Taylor rule only)
            m_f, P_f, ll = lax.fori_loop(0, iterations - 1, lambda i, state: update(state[0]), (m_f, P_f, ll))
        if quadrature_log_predictive:
            log_p = jax.vmap(lambda z: model.emission_log_prob(z, xs_t, y))(rule.at(m_p, L_p))
            ll = jax.nn.logsumexp(log_p, b=jnp.asarray(rule.points.mean_weights, log_p.dtype))
            ll = jnp.where(jnp.all(jnp.isnan(y)), 0.0, ll)  # exactly 0, not log(sum of weights)
        L_f, P_f = rule.factor(P_f)
        return (m_f, P_f, L_f), (m_f, P_f, m_p, P_p, cross, ll)

    init = (model.initial_mean, P0, L0)
    _, (mf, Pf, mp, Pp, cross, lls) = lax.scan(step, init, (model.observations, model.xs, lin))
    return FilterResult.from_steps(lls, mf, Pf, mp, Pp), cross


def gaussian_smoother(model: GaussianModel, rule, iterations: int = 1, quadrature_log_predictive=False):
    """Filter then RTS smoother; ``iterations`` > 1 (Taylor rule) adds Gauss–Newton
    passes (iterated extended RTS smoother, Bell 1994): each relinearises the
    transition and the emission at the previous pass's smoothed means. The
    returned filter fields are those of the last pass."""
    filtered, cross = gaussian_filter(model, rule, iterations, None, quadrature_log_predictive)
    smoothed = rts_smoother_from_cross(filtered, cross, model.initial_mean, model.initial_covariance)

    def gauss_newton_pass(i, smoothed):
        nominal = jnp.concatenate([smoothed.initial_smoothed_mean[None], smoothed.smoothed_means])
        filtered, cross = gaussian_filter(model, rule, 1, nominal, quadrature_log_predictive)
        return rts_smoother_from_cross(filtered, cross, model.initial_mean, model.initial_covariance)

    return lax.fori_loop(0, iterations - 1, gauss_newton_pass, smoothed) if iterations > 1 else smoothed


def gaussian_sample_states(model: GaussianModel, rule, key, iterations: int = 1):
    """One draw (T, dz) from the Gaussian approximation of p(z_{1:T} | y_{1:T}) (FFBS)."""
    filtered, cross = gaussian_filter(model, rule, iterations)
    return backward_sample_from_cross(filtered, cross[1:], key)


def gaussian_forecast(model: GaussianModel, rule, mean, covariance, xs_t, num_steps: int) -> Forecast:
    """Moments of the next ``num_steps`` states and emissions after N(mean, covariance)."""
    transition, emission = model.transition(xs_t), model.emission(xs_t)

    def step(carry, _):
        m, P = carry
        L, P = rule.factor(P)
        m, P, _ = rule.moments(transition, m, P, L)
        L, P = rule.factor(P)
        y_mean, S, _ = rule.moments(emission, m, P, L)
        return (m, P), (m, P, y_mean, S)

    _, (ms, Ps, ym, yS) = lax.scan(step, (mean, covariance), None, length=num_steps)
    return Forecast(state_means=ms, state_covariances=Ps, emission_means=ym, emission_covariances=yS)


def gaussian_emission_moments(model: GaussianModel, rule, means, covariances):
    """Moments (T, dy), (T, dy, dy) of y_t under z_t ~ N(means[t], covariances[t])."""

    def one(m, P, xs_t):
        L, P = rule.factor(P)
        y_mean, S, _ = rule.moments(model.emission(xs_t), m, P, L)
        return y_mean, S

    return jax.vmap(one)(means, covariances, model.xs)
