"""Reading NumPyro distributions: Gaussian moments, conditional moments, affine
structure, and log-densities with missing (NaN) components.

Backends receive NumPyro distributions, never hand-extracted matrices; the
Gaussian backends call ``gaussian_moments`` to get a flat mean and covariance.
This is where the backends meet NumPyro; the maths they assemble
(``ssmppl.maths``) sees arrays only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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
        else:
            W = base.cov_factor
            cov = W @ jnp.swapaxes(W, -1, -2) + jnp.diag(base.cov_diag)
        return jnp.broadcast_to(base.loc, shape), cov, False
    raise ModelStructureError(f"{type(d).__name__} is not Gaussian (supported: {GAUSSIAN_TYPES})")


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
