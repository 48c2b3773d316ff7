"""Reading NumPyro distributions: Gaussian moments, conditional moments, affine
structure, and log-densities with missing (NaN) components.

Backends receive NumPyro distributions, never hand-extracted matrices; the
Gaussian backends call ``gaussian_moments`` to get a flat mean and covariance.
This is where the backends meet NumPyro; the maths they assemble
(``ssmppl.maths``) sees arrays only.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from ..errors import ModelStructureError
from ..maths.gaussian import masked_gaussian_log_density
from ..models.dependence import reads

GAUSSIAN_TYPES = "Normal (scalar, batched or .to_event), MultivariateNormal, LowRankMultivariateNormal"


def family_name(d) -> str:
    """The distribution family's name, through ``.to_event``/``.expand`` wrappers."""
    while isinstance(d, (dist.Independent, dist.ExpandedDistribution)):
        d = d.base_dist
    return type(d).__name__


def is_gaussian(d) -> bool:
    while isinstance(d, (dist.Independent, dist.ExpandedDistribution)):
        d = d.base_dist
    return isinstance(d, (dist.Normal, dist.MultivariateNormal, dist.LowRankMultivariateNormal))


def gaussian_parts(d):
    """(flat mean (n,), noise, diagonal) of a Gaussian distribution: ``noise`` is the variances (n,)
    when ``diagonal`` (a batch of independent Normals, as NumPyro's log density reads it), else the
    covariance (n, n). Raises ``ModelStructureError`` for other families."""
    shape = d.batch_shape + d.event_shape
    base = d
    while isinstance(base, (dist.Independent, dist.ExpandedDistribution)):
        base = base.base_dist
    if isinstance(base, dist.Normal):
        loc = jnp.broadcast_to(base.loc, shape).reshape(-1)
        var = jnp.broadcast_to(base.scale, shape).reshape(-1) ** 2
        return loc, var.astype(loc.dtype), True
    if isinstance(base, (dist.MultivariateNormal, dist.LowRankMultivariateNormal)):
        if len(shape) != 1:
            raise ModelStructureError(
                f"a {type(base).__name__} with batch shape {tuple(d.batch_shape)} is not supported "
                "as a state or emission: use one multivariate site with event shape (n,)"
            )
        if isinstance(base, dist.MultivariateNormal):
            L = base.scale_tril
            cov = L @ jnp.swapaxes(L, -1, -2)
            if "covariance_matrix" in vars(base):
                cov = _singular_covariance_fallback(cov, base.covariance_matrix)
        else:
            W = base.cov_factor
            cov = W @ jnp.swapaxes(W, -1, -2) + jnp.diag(base.cov_diag)
        return jnp.broadcast_to(base.loc, shape), cov, False
    raise ModelStructureError(f"{type(d).__name__} is not Gaussian (supported: {GAUSSIAN_TYPES})")


def _singular_covariance_fallback(cov, given):
    """``cov`` (L L^T from NumPyro's Cholesky factor L) where L exists; where it does not (NaN), the
    ``given`` covariance matrix if it is positive semi-definite (a singular covariance: zero-variance
    directions), NaN if it is not (so that filters report an invalid covariance, as before)."""

    def psd_or_nan(given):
        w = jnp.linalg.eigvalsh(given)
        tol = 100 * jnp.finfo(given.dtype).eps * jnp.max(jnp.abs(w))
        return jnp.where(jnp.all(w >= -tol) & jnp.all(jnp.isfinite(given)), given, jnp.nan)

    return jax.lax.cond(jnp.all(jnp.isfinite(cov)), lambda g: cov, psd_or_nan, given)


def gaussian_moments(d):
    """Flat mean (n,) and covariance (n, n) of a Gaussian distribution (``gaussian_parts``, with
    independent Normals read as one diagonal covariance)."""
    loc, noise, diagonal = gaussian_parts(d)
    return loc, jnp.diag(noise) if diagonal else noise


def conditional_moments(d):
    """Flat mean (n,) and covariance (n, n) of any distribution: what moment matching uses.

    Gaussians give their exact moments (``gaussian_moments``). Other families
    (Poisson, Bernoulli, StudentT, Gamma...) give ``d.mean`` and ``d.variance``,
    independent components (a batch of scalars) as a diagonal covariance; a
    multivariate family uses its ``covariance_matrix`` when it has one and its
    variances otherwise. Raises ``ModelStructureError`` when NumPyro defines no
    mean or variance for the family.
    """
    if is_gaussian(d):
        return gaussian_moments(d)
    shape = d.batch_shape + d.event_shape
    try:
        mean, var = d.mean, d.variance
    except NotImplementedError:
        raise ModelStructureError(
            f"moment matching needs the conditional mean and variance of the site's distribution, but NumPyro "
            f"defines none for {type(d).__name__}: use a particle filter for this model"
        ) from None
    dtype = jnp.result_type(mean, float)
    mean = jnp.broadcast_to(mean, shape).reshape(-1).astype(dtype)
    base = d
    while isinstance(base, (dist.Independent, dist.ExpandedDistribution)):
        base = base.base_dist
    if base.event_shape != () and hasattr(base, "covariance_matrix"):
        try:
            cov = jnp.broadcast_to(base.covariance_matrix, shape + shape[-1:])
            if len(shape) == 1:
                return mean, cov.astype(dtype)
        except NotImplementedError:
            pass
    return mean, jnp.diag(jnp.broadcast_to(var, shape).reshape(-1).astype(dtype))


def masked_log_prob(d, y, obs_shape):
    """log p(y_observed) under ``d`` for a flat y with NaN for missing components.

    A batch of independent scalars (diagonal Gaussians included): the observed
    terms. Other Gaussian emissions: the exact marginal of the observed
    components. Anything else must be fully observed.
    """
    observed = ~jnp.isnan(y)
    base = d
    while isinstance(base, dist.Independent):
        base = base.base_dist
    y_model = jnp.reshape(jnp.where(observed, y, 0.0), obs_shape)
    mask = jnp.reshape(observed, obs_shape)
    if tuple(base.batch_shape) == tuple(obs_shape) and base.event_shape == ():
        # independent components (diagonal Gaussians included): elementwise, no factorisation
        safe = jnp.where(mask, y_model, base.mean if jnp.ndim(base.mean) else jnp.zeros_like(y_model))
        return jnp.sum(jnp.where(mask, base.log_prob(safe), 0.0))
    if is_gaussian(d):
        mean, cov = gaussian_moments(d)
        return masked_gaussian_log_density(y, mean, cov)
    return jnp.where(observed.all(), d.log_prob(jnp.reshape(jnp.nan_to_num(y), obs_shape)).sum(), jnp.nan)


def require_gaussian(d, site, role, who, remedy):
    """The one Gaussian-site check: raise ``ModelStructureError`` naming the site, its family,
    who needs a Gaussian (``who``: e.g. "Kalman()") and what to do instead (``remedy``)."""
    if not is_gaussian(d):
        raise ModelStructureError(f"{who} needs a Gaussian {role} site ({GAUSSIAN_TYPES}), but {site!r} is a "
                                  f"{family_name(d)}, not a Gaussian: {remedy}")


def affine_parts(fn, z_lin, x):
    """(A, b, cov) with mean(z) = A z + b exactly when the mean is affine in z."""
    mean = lambda z: gaussian_moments(fn(z, x))[0]
    A = jax.jacfwd(mean)(z_lin)
    b = mean(z_lin) - A @ z_lin
    return A, b, gaussian_moments(fn(z_lin, x))[1]


def check_affine(fn, z, x, site, role, hint):
    """Raise unless the Gaussian ``fn(z, x)`` has a mean affine in z and a covariance that does not read z."""
    mean = lambda z_: gaussian_moments(fn(z_, x))[0]
    if reads(lambda z_, v: jax.jvp(mean, (z_,), (v,))[1], 0, z, z):
        raise ModelStructureError(f"the mean of the {role} site {site!r} is not affine in the state. {hint}")
    if reads(lambda z_: gaussian_moments(fn(z_, x))[1], 0, z):
        raise ModelStructureError(
            f"the scale of the {role} site {site!r} depends on the state (state-dependent noise). {hint}"
        )
# -- degenerate (zero-variance) noise ----------------------------------------------------------------
# A zero scale or a singular covariance is legitimate model structure (a deterministic trend, the
# lagged components of a companion-form AR(p), an exactly observed series). The Gaussian backends
# condition on it; a backend that needs the site's density, or samples it, checks it at trace time.
# Only noise that is a constant of the model is seen (traced parameters are not concrete).


def _site_at_zero(fn, problem):
    """fn(0, xs_0) built with constants folded (so a literal zero scale is concrete), or None when
    the site's noise reads the state (then it has no single value to check)."""
    z = jnp.zeros(problem.state_dim, jnp.result_type(problem.observations, float))
    x0 = problem.xs_example()
    d = fn(z, x0)
    if not is_gaussian(d) or reads(lambda z_: gaussian_parts(fn(z_, x0))[1], 0, z):
        return None
    with jax.ensure_compile_time_eval():
        return fn(z, x0)


def noise_defect(d):
    """Why the Gaussian ``d`` has no density (``"zero variance in components [..]"`` or ``"a singular
    covariance matrix"``) when its noise is concrete; None otherwise."""
    if d is None or not is_gaussian(d):
        return None
    with jax.ensure_compile_time_eval():
        _, noise, diagonal = gaussian_parts(d)
    if isinstance(noise, jax.core.Tracer):
        return None
    noise = np.asarray(noise)
    if diagonal:
        zero = np.flatnonzero(noise == 0)
        return f"zero variance in component(s) {zero.tolist()} of {noise.size}" if zero.size else None
    try:
        np.linalg.cholesky(noise)
    except np.linalg.LinAlgError:
        return "a singular covariance matrix"
    return None


def unsamplable(d):
    """True when ``d`` is a MultivariateNormal given a singular ``covariance_matrix``: NumPyro samples
    it through its Cholesky factor, which is NaN then (known only for concrete matrices)."""
    while isinstance(d, (dist.Independent, dist.ExpandedDistribution)):
        d = d.base_dist
    if not isinstance(d, dist.MultivariateNormal) or "covariance_matrix" not in vars(d):
        return False
    L = d.scale_tril
    return not isinstance(L, jax.core.Tracer) and bool(np.isnan(np.asarray(L)).any())


def site_defects(problem, role):
    """(noise_defect, unsamplable) of the model's ``role`` site ("latent" or "emission")."""
    fn = problem.transition if role == "latent" else problem.emission
    d = _site_at_zero(fn, problem)
    return noise_defect(d), d is not None and unsamplable(d)


def density_refusal(problem, role, owner, why, advice) -> Optional[str]:
    """Why ``owner`` cannot run: the ``role`` site ("latent" or "emission") has zero-variance noise
    (when its noise is concrete) and ``owner`` needs its density because ``why``; None otherwise.
    Backends call it at trace time and again when they explain a non-finite result, where a zero
    variance given as a parameter value (traced inside the compiled filter) has become concrete."""
    defect, _ = site_defects(problem, role)
    if defect is None:
        return None
    site = problem.names.latent if role == "latent" else problem.names.obs
    what = "a deterministic state component" if role == "latent" else "a noiseless observation"
    return (f"{owner} {why}, but the {'state' if role == 'latent' else 'emission'} site {site!r} has {defect}: "
            f"{what} has no density. {advice}")


def require_density(problem, role, owner, why, advice):
    """``ModelStructureError`` with ``density_refusal``'s message when there is one."""
    message = density_refusal(problem, role, owner, why, advice)
    if message is not None:
        raise ModelStructureError(message)


def require_samplable(problem, owner):
    """``ModelStructureError`` when ``owner`` would sample a MultivariateNormal given a singular
    covariance_matrix (the transition, or the initial state)."""
    names = problem.names
    checks = [(site_defects(problem, "latent")[1], names.latent, "state")]
    if problem.initial is not None:
        checks.append((unsamplable(problem.initial), names.init, "initial-state"))
    for bad, site, role in checks:
        if bad:
            raise ModelStructureError(
                f"{owner} samples the {role} site {site!r}, a MultivariateNormal given a singular "
                "covariance_matrix: NumPyro draws it through the matrix's Cholesky factor, which does not exist "
                "(NaN). Pass scale_tril=L instead (a lower-triangular factor with zeros on its diagonal is "
                "fine), or write independent components as dist.Normal(loc, scale).to_event(1) with zero scales")
