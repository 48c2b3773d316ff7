"""The exact Kalman backend: linear Gaussian models read off NumPyro distributions."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ...errors import ModelStructureError
from ...maths.kalman import (
    LinearGaussianParams,
    backward_sample,
    emission_moments,
    kalman_filter,
    kalman_forecast,
    params_at,
    rts_smoother,
    sqrt_kalman_filter,
    time_varying,
)
from ...maths.gaussian import masked_emission
from ...maths.parallel_kalman import parallel_kalman_filter, parallel_rts_smoother
from ...models.dependence import leaves_reading
from ...models.tracing import StateSpace
from ..base import ALL_CAPABILITIES, Backend
from ..distributions import affine_parts, check_affine, gaussian_moments, require_gaussian

_NONLINEAR_HINT = (
    "Kalman() is exact only for linear Gaussian models; use a nonlinear filter from "
    "ssmppl.inference (EKF(), UKF() or GaussHermite()) for this model"
)


_NON_GAUSSIAN_HINT = (
    "Kalman() is exact only for linear Gaussian models; use MomentMatching(rule=UKF()) from ssmppl.inference "
    "(moment matching with the site's conditional mean and variance) or a particle filter for non-Gaussian sites"
)


def _check_gaussian(d, site, role):
    require_gaussian(d, site, role, "Kalman()", _NON_GAUSSIAN_HINT)


def _materialise(fn, xs, x0):
    """fn(x0)'s leaves, replaced by per-step values (leading axis T) where they read the inputs."""
    static = fn(x0)
    if xs is None:
        return static
    varying = leaves_reading(fn, 0, x0)
    if not any(varying):
        return static
    per_step = jax.vmap(fn)(xs)
    return tuple(p if v else s for s, p, v in zip(static, per_step, varying))


def linear_gaussian_params(problem: StateSpace) -> LinearGaussianParams:
    """Read F, c, Q, H, d, R (and the initial moments) off the model's distributions.

    Structure checks run at trace time on the first step's inputs: non-Gaussian
    sites, non-affine means or state-dependent noise raise ``ModelStructureError``.
    A matrix that does not read the scan's inputs is kept time-invariant.
    """
    names = problem.names
    dz = problem.state_dim
    x0 = problem.xs_example()
    dtype = jnp.result_type(problem.observations, float)
    z0 = jnp.zeros(dz, dtype)
    sites = ((problem.transition, names.latent, "latent"), (problem.emission, names.obs, "emission"))
    for fn, site, role in sites:  # non-Gaussian first: its advice differs
        _check_gaussian(fn(z0, x0), site, role)
    for fn, site, role in sites:
        check_affine(fn, z0, x0, site, role, _NONLINEAR_HINT)
    F, c, Q = _materialise(lambda x: affine_parts(problem.transition, z0, x), problem.xs, x0)
    H, d, R = _materialise(lambda x: affine_parts(problem.emission, z0, x), problem.xs, x0)
    if problem.initial is None:
        m0, P0 = problem.initial_value, jnp.zeros((dz, dz), dtype)
    else:
        require_gaussian(problem.initial, names.init, "initial-state", "Kalman()", _NONLINEAR_HINT)
        m0, P0 = gaussian_moments(problem.initial)
    params = LinearGaussianParams(m0, P0, F, c, Q, H, d, R)
    dtype = jnp.result_type(dtype, *params)
    return LinearGaussianParams(*(jnp.asarray(p, dtype) for p in params))


@dataclasses.dataclass(frozen=True)
class Kalman(Backend):
    """Exact Kalman filter and Rauch–Tung–Striebel smoother.

    parallel: run filter and smoother in parallel in time (associative scan,
    Särkkä & García-Fernández 2021): O(log T) depth, for accelerators. The
    sequential version is faster on CPU.

    square_root (sequential only): carry covariance factors updated by QR
    (array algorithm) instead of covariances. It stays finite
    where the covariance form's innovation Cholesky breaks down in float32
    (diffuse priors such as P0 = 1e6 I, tiny observation noise). ``None``
    (default) picks it for float32 models and the covariance form, a little
    faster, for float64.
    """

    parallel: bool = False
    square_root: Optional[bool] = None

    capabilities = ALL_CAPABILITIES

    def _use_square_root(self, dtype):
        if self.square_root is None:
            return not self.parallel and jnp.dtype(dtype) == jnp.float32
        if self.square_root and self.parallel:
            raise ValueError("Kalman(parallel=True) has no square-root form: use one of the two")
        return self.square_root

    def _run(self, problem, smooth):
        params = linear_gaussian_params(problem)
        ys = problem.observations.astype(params.F.dtype)
        if self.parallel:
            filtered = parallel_kalman_filter(params, ys)
            return parallel_rts_smoother(params, filtered) if smooth else filtered
        if self._use_square_root(params.F.dtype):
            filtered, factors = sqrt_kalman_filter(params, ys)
        else:
            filtered, factors = kalman_filter(params, ys), None
        return rts_smoother(params, filtered, factors) if smooth else filtered

    def filter(self, problem, key=None):
        return self._run(problem, smooth=False)

    def smooth(self, problem, key=None):
        return self._run(problem, smooth=True)

    def sample_states(self, problem, key):
        """Exact draw by forward filtering, backward sampling."""
        return backward_sample(linear_gaussian_params(problem), self.filter(problem), key)

    def forecast(self, problem, filtered, num_steps, key=None):
        params = linear_gaussian_params(problem)
        varying = [n for n, v in zip(params._fields, time_varying(params)) if v and n not in ("initial_mean", "initial_covariance")]
        if varying:
            raise ModelStructureError(
                f"cannot forecast: {varying} change over time through the scan's inputs, whose future values are "
                "unknown. Extend the inputs over the forecast horizon, pad the observations with NaN and call "
                "ssm.filter instead"
            )
        return kalman_forecast(params, filtered.filtered_means[-1], filtered.filtered_covariances[-1], num_steps)

    def explain(self, problem, result, step):
        """Parameters passed validation (singular noise is allowed): a non-finite Kalman result then
        comes from an exact observation that has no density. The parallel filter conditions each
        step on the previous state alone, so it needs H Q H^T + R positive definite on the observed
        components; the sequential one needs the predicted H P H^T + R to be."""
        params = linear_gaussian_params(problem)
        names = problem.names
        ys = problem.observations

        def singular(M):
            eig = np.linalg.eigvalsh(np.nan_to_num(np.asarray(M)))
            return eig.min(-1) <= 1e-10 * np.abs(eig).max(-1)

        def steps_of(bad):
            return [int(i) + 1 for i in np.flatnonzero(bad)[:5]]

        msg = f"Kalman: the filter is not finite from step {step} on"
        if self.parallel:
            def element_innovation(t, y):
                p = params_at(params, t)
                _, H0, _, R0, _ = masked_emission(y, p.H, p.d, p.R)
                return H0 @ p.Q @ H0.T + R0

            bad = singular(jax.vmap(element_innovation)(jnp.arange(ys.shape[0]), ys))
            if bad.any():
                return (f"{msg}: Kalman(parallel=True) conditions each step's observation on the previous state "
                        "alone, which needs H Q H^T + R (over the observed components) positive definite, and it is "
                        f"singular at steps {steps_of(bad)}: a component of site {names.obs!r} is observed exactly "
                        f"(zero variance) and gets no transition noise from site {names.latent!r}. The sequential "
                        "Kalman() only needs the predicted H P H^T + R positive definite")
        R = params.R if time_varying(params).R else params.R[None]
        bad = singular(R)
        if bad.any():
            where = f" at steps {steps_of(bad)}" if bad.shape[0] > 1 else ""
            return (f"{msg}: the emission covariance of site {names.obs!r} is singular (components observed exactly)"
                    f"{where}. That is allowed, but where the past also predicts such a component exactly (zero "
                    "predicted variance) the observation has no density")
        return msg

    def posterior_predictive(self, problem, smoothed):
        params = linear_gaussian_params(problem)
        means, covs = emission_moments(params, smoothed.smoothed_means, smoothed.smoothed_covariances)
        return means, jnp.sqrt(jnp.diagonal(covs, axis1=-2, axis2=-1))
