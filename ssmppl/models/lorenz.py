"""Lorenz systems observed with noise, as ordinary NumPyro programs, and a small RK4 integrator."""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.distributions import constraints

from ._sites import check_priors, global_site

LORENZ63_SITES = ("sigma", "rho", "beta", "process_noise", "obs_noise")
LORENZ96_SITES = ("forcing", "process_noise", "obs_noise")
OPERATORS = ("identity", "arctan")

# arctan(v) = v + v^3 q(v^2) on |v| <= tan(pi/8): q's coefficients fitted here (weighted least squares
# iterated to equal ripple) to 5e-9 absolute, 4e-8 relative error, below float32's resolution.
_ATAN_Q = (-0.333327568, 0.199718816, -0.138244718, 0.0790263949)
_TAN_PI_8 = 0.41421356237309503


@jax.custom_jvp
def arctan(x):
    """Elementwise arctan that vectorises: in float32 (and narrower) a range reduction to |v| <= tan(pi/8)
    and a degree-9 odd polynomial (within 3 float32 ulp, 1.5e-7 absolute, of the exact value); in float64
    ``jnp.arctan``.

    Why: XLA's CPU arctan is scalar code (about 7 ns per element, 13x NumPy's); the EnSF likelihood
    score evaluates h and its derivative on N * d elements at each of hundreds of reverse steps, and
    this form makes the whole analysis ~2x faster on CPU. The derivative is the exact 1 / (1 + x^2).
    NaN stays NaN; +-inf maps to +-pi/2.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating) or jnp.finfo(x.dtype).bits > 32:
        return jnp.arctan(x)
    a = jnp.abs(x)
    big = a > 1.0
    u = jnp.where(big, 1.0 / jnp.where(big, a, 1.0), a)  # in [0, 1]
    mid = u > _TAN_PI_8
    v = jnp.where(mid, (u - 1.0) / (u + 1.0), u)  # arctan(u) = pi/4 + arctan((u - 1) / (u + 1))
    s = v * v
    q = _ATAN_Q[0] + s * (_ATAN_Q[1] + s * (_ATAN_Q[2] + s * _ATAN_Q[3]))
    r = jnp.where(mid, jnp.pi / 4, 0.0) + (v + v * s * q)
    r = jnp.where(big, jnp.pi / 2 - r, r)
    return jnp.where(x < 0, -r, r).astype(x.dtype)


@arctan.defjvp
def _arctan_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return arctan(x), dx / (1 + x * x)


def rk4_step(f: Callable, x, dt):
    """One classical Runge–Kutta (RK4) step of dx/dt = f(x) (autonomous), step size dt."""
    k1 = f(x)
    k2 = f(x + (dt / 2) * k1)
    k3 = f(x + (dt / 2) * k2)
    k4 = f(x + dt * k3)
    return x + (dt / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


def integrate(f: Callable, x, dt, num_steps: int):
    """``num_steps`` RK4 steps of size dt from x (a ``fori_loop``: differentiable, vmappable)."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if num_steps == 1:
        return rk4_step(f, x, dt)
    return jax.lax.fori_loop(0, num_steps, lambda _, x: rk4_step(f, x, dt), x)


def lorenz63_vector_field(x, sigma, rho, beta):
    """dx/dt of the Lorenz-63 system at x = (x, y, z)."""
    return jnp.stack([sigma * (x[1] - x[0]), x[0] * (rho - x[2]) - x[1], x[0] * x[1] - beta * x[2]])


def lorenz96_vector_field(x, forcing):
    """dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F of the Lorenz-96 system, indices cyclic.

    x: (..., d) with d >= 4, the last axis the ring (leading axes are batch axes, so
    an ensemble (N, d) works directly as well as under ``vmap``); forcing: a scalar
    (or anything broadcasting against x). Three rolls: O(d) time and memory.
    """
    x = jnp.asarray(x)
    advection = (jnp.roll(x, -1, axis=-1) - jnp.roll(x, 2, axis=-1)) * jnp.roll(x, 1, axis=-1)
    return advection - x + forcing


def _check_positive_int(name, value, minimum=1, why=""):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {kind}{why}, got {value!r}")
    return int(value)


def _observed_indices(observe, dim):
    if isinstance(observe, str):
        if observe != "all":
            raise ValueError(f'observe must be "all" or a sequence of state indices, got {observe!r}')
        return None
    idx = tuple(int(i) for i in observe)
    if not idx or any(not 0 <= i < dim for i in idx) or len(set(idx)) != len(idx):
        raise ValueError(f"observe must list distinct state indices in [0, {dim}), got {observe!r}")
    return idx


def observation_operator(dim: int, observe: Union[str, Sequence[int]] = "all", every: int = 1,
                         operator: str = "identity"):
    """The mean of the observations, ``h(z)`` with z (..., dim), and its size dy.

    ``observe``: "all" or a sequence of distinct state indices; ``every=k``: the
    components 0, k, 2k, ... Either way h gathers with a constant index array, not a
    strided slice: XLA's CPU code for a strided slice's gradient fused with elementwise
    math is scalar, which made EnSF's likelihood score 3.7x slower. Giving both (indices
    and ``every > 1``) is ambiguous, so it is an error.
    ``operator``: "identity" (h(z) = z[selected]) or "arctan" (h(z) = arctan(z[selected]),
    the EnSF benchmark's). Returns ``(h, dy)``.
    """
    idx = _observed_indices(observe, dim)
    every = _check_positive_int("every", every, why=" (observe components 0, every, 2*every, ...)")
    if idx is not None and every != 1:
        raise ValueError(f"give either observe=<indices> or every=<k>, not both (got observe={observe!r}, "
                         f"every={every}); for every k-th of some indices pass those indices")
    if operator not in OPERATORS:
        raise ValueError(f"operator must be one of {OPERATORS}, got {operator!r}")
    if idx is None and every == 1:
        select, dy = (lambda z: z), dim
    else:
        index = np.arange(0, dim, every) if idx is None else np.asarray(idx)
        select, dy = (lambda z: z[..., index]), len(index)
    if operator == "arctan":
        return (lambda z: arctan(select(z))), dy
    return select, dy


def _is_deterministic(process_noise, priors) -> bool:
    """Whether the transition is a point mass: process_noise == 0 (a python value), no prior on it."""
    if "process_noise" in priors:
        return False
    value = np.asarray(process_noise, dtype=float)
    if value.ndim != 0 or not value >= 0:
        raise ValueError(f"process_noise must be a scalar >= 0 (0: deterministic transition), got {process_noise!r}")
    return float(value) == 0.0


def _transition_site(mean, q):
    """The latent site ``z``: a point mass at ``mean`` when q is None (no process noise)."""
    if q is None:
        return numpyro.sample("z", dist.Delta(mean, event_dim=1))
    return numpyro.sample("z", dist.Normal(mean, q).to_event(1))


def _observed_flow(f, dt, steps_per_obs, q, h, r, m0, initial_scale, y, T):
    """The scan shared by the Lorenz models: z0 ~ N(m0, initial_scale^2 I); z_t = RK4 flow of f over
    one observation interval (+ N(0, q^2 I) if q is not None); y_t ~ N(h(z_t), r^2 I)."""

    def step(z_prev, y_t):
        z = _transition_site(integrate(f, z_prev, dt, steps_per_obs), q)
        numpyro.sample("y", dist.Normal(h(z), r).to_event(1), obs=y_t)
        return z, None

    z0 = numpyro.sample("z0", dist.Normal(m0, initial_scale).to_event(1))
    scan(step, z0, y, length=T)


def lorenz63(dt: float = 0.01, steps_per_obs: int = 10, sigma: float = 10.0, rho: float = 28.0,
             beta: float = 8.0 / 3.0, obs_noise: float = 1.0, process_noise: float = 0.1,
             observe: Union[str, Sequence[int]] = "all", initial_mean=(1.0, 1.0, 1.0), initial_scale: float = 1.0,
             priors: Optional[Mapping] = None, every: int = 1, operator: str = "identity"):
    """A NumPyro model of the Lorenz-63 system observed with Gaussian noise

        z_0 ~ N(initial_mean, initial_scale^2 I)            (known: not fitted)
        z_t ~ N(Phi(z_{t-1}), process_noise^2 I)
        y_t ~ N(h(z_t), obs_noise^2 I)

    where Phi is ``steps_per_obs`` RK4 steps of size ``dt`` (``integrate``) of
    dx/dt = sigma (y - x), dy/dt = x (rho - z) - y, dz/dt = x y - beta z; the
    observations are ``dt * steps_per_obs`` time units apart and the process noise
    is added once per observation interval. ``h`` (see ``observation_operator``):
    ``observe`` "all" (dy = 3) or a sequence of state indices, e.g. ``(0,)`` for x
    only; or ``every=k`` for components 0, k, ...; ``operator`` "identity" or
    "arctan" (h = arctan of the selected components).

    ``process_noise=0`` (a python number, no prior on it) makes the transition
    deterministic, z_t = Phi(z_{t-1}) (a ``Delta`` site), and the model then has
    no ``process_noise`` site at all (a positive-constrained param at 0 would be
    -inf unconstrained); a value passed for it in ``params`` is ignored.

    ``model(y=None, T=None)`` with ``y`` (T, dy) (NaN = missing). Sites in the
    scan: ``z`` (the state, shape (3,)) and ``y``; ``z0`` is the initial state.
    Global sites ``sigma``, ``rho``, ``beta``, ``process_noise``, ``obs_noise``
    (standard deviations), all positive, are ``numpyro.param`` with the keyword
    values as initial values; ``priors={"rho": dist.Normal(28.0, 2.0), ...}``
    makes the named sites ``numpyro.sample`` sites with those priors instead.
    """
    priors = check_priors(priors, LORENZ63_SITES, "lorenz63")
    h, _ = observation_operator(3, observe, every, operator)
    steps_per_obs = _check_positive_int("steps_per_obs", steps_per_obs)
    deterministic = _is_deterministic(process_noise, priors)

    def model(y=None, T=None):
        s = global_site("sigma", sigma, constraints.positive, priors)
        rh = global_site("rho", rho, constraints.positive, priors)
        b = global_site("beta", beta, constraints.positive, priors)
        q = None if deterministic else global_site("process_noise", process_noise, constraints.positive, priors)
        r = global_site("obs_noise", obs_noise, constraints.positive, priors)
        m0 = jnp.asarray(initial_mean, jnp.result_type(float))
        _observed_flow(lambda x: lorenz63_vector_field(x, s, rh, b), dt, steps_per_obs, q, h, r, m0, initial_scale,
                       y, T)

    model.__name__ = "lorenz63"
    return model


def lorenz96(dim: int = 40, forcing: float = 8.0, dt: float = 0.05, steps_per_obs: int = 1, obs_noise: float = 1.0,
             process_noise: float = 0.0, observe: Union[str, Sequence[int]] = "all", every: int = 1,
             operator: str = "identity", initial_mean=None, initial_scale: float = 1.0,
             priors: Optional[Mapping] = None):
    """A NumPyro model of the Lorenz-96 system (``dim`` variables on a ring) observed with Gaussian noise

        z_0 ~ N(initial_mean, initial_scale^2 I)            (known: not fitted)
        z_t = Phi(z_{t-1})                                  (process_noise = 0, the default)
        z_t ~ N(Phi(z_{t-1}), process_noise^2 I)            (process_noise > 0 or a prior on it)
        y_t ~ N(h(z_t), obs_noise^2 I)

    where Phi is ``steps_per_obs`` RK4 steps of size ``dt`` of
    dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F (``lorenz96_vector_field``);
    every step is O(dim), so the model scales to dim ~ 10^6. ``h`` (see
    ``observation_operator``): ``observe`` "all" or a sequence of state indices, or
    ``every=k`` for components 0, k, 2k, ... (dy = ceil(dim / k)); ``operator``
    "identity" or "arctan" (h = arctan of the selected components).

    ``process_noise=0`` (a python number, no prior on it): the transition is the
    point mass ``Delta(Phi(z_{t-1}))`` (ensemble forecasts are then exact model
    runs) and the model has no ``process_noise`` site (a positive-constrained param
    at 0 would be -inf unconstrained; a value passed for it in ``params`` is ignored).

    ``initial_mean``: a scalar or a (dim,) array; by default the fixed point F
    (the ``forcing`` keyword's value) everywhere plus 0.01 on component 0, so that
    a run started at the mean leaves the (unstable) fixed point.

    ``model(y=None, T=None)`` with ``y`` (T, dy) (NaN = missing). Sites in the scan:
    ``z`` (the state, shape (dim,)) and ``y``; ``z0`` is the initial state. Global
    sites: ``forcing`` (real), ``process_noise`` and ``obs_noise`` (positive standard
    deviations), ``numpyro.param`` with the keyword values as initial values, or
    ``numpyro.sample`` sites with ``priors={"forcing": dist.Normal(8.0, 1.0), ...}``.
    """
    priors = check_priors(priors, LORENZ96_SITES, "lorenz96")
    dim = _check_positive_int("dim", dim, 4, " (the ring needs x_(i-2), x_(i-1), x_i, x_(i+1) distinct)")
    h, _ = observation_operator(dim, observe, every, operator)
    steps_per_obs = _check_positive_int("steps_per_obs", steps_per_obs)
    if not np.ndim(dt) == 0 or not float(dt) > 0:
        raise ValueError(f"dt must be a positive number, got {dt!r}")
    deterministic = _is_deterministic(process_noise, priors)
    if initial_mean is None:
        m0_host = np.full(dim, float(forcing))
        m0_host[0] += 0.01  # off the fixed point x = F, which is unstable for F = 8
    else:
        m0_host = np.asarray(initial_mean, dtype=float)
        if m0_host.ndim > 1 or m0_host.size not in (1, dim):
            raise ValueError(f"initial_mean must be a scalar or have shape ({dim},), got shape {m0_host.shape}")
        m0_host = np.broadcast_to(m0_host.reshape(-1), (dim,))

    def model(y=None, T=None):
        F = global_site("forcing", forcing, constraints.real, priors)
        q = None if deterministic else global_site("process_noise", process_noise, constraints.positive, priors)
        r = global_site("obs_noise", obs_noise, constraints.positive, priors)
        m0 = jnp.asarray(m0_host, jnp.result_type(float))
        _observed_flow(lambda x: lorenz96_vector_field(x, F), dt, steps_per_obs, q, h, r, m0, initial_scale, y, T)

    model.__name__ = "lorenz96"
    return model
