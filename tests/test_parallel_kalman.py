"""Parallel-in-time Kalman filter / RTS smoother against the sequential kernels
and against a brute-force joint Gaussian."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmppl.maths.kalman import LinearGaussianParams, kalman_filter, rts_smoother
from ssmppl.maths.parallel_kalman import parallel_kalman_filter, parallel_rts_smoother

RTOL = 1e-8
ATOL_SCALE = 1e-10

FILTER_FIELDS = (
    "marginal_loglik",
    "log_predictive",
    "filtered_means",
    "filtered_covariances",
    "predicted_means",
    "predicted_covariances",
)
SMOOTH_FIELDS = FILTER_FIELDS + (
    "smoothed_means",
    "smoothed_covariances",
    "smoothed_cross_covariances",
    "initial_smoothed_mean",
    "initial_smoothed_covariance",
    "initial_cross_covariance",
)


@pytest.fixture(autouse=True, scope="module")
def _x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def _spd(rng, n, lead=()):
    A = rng.normal(size=lead + (n, n))
    return A @ np.swapaxes(A, -1, -2) / n + 0.2 * np.eye(n)


def _random_params(rng, dz, dy, T=None, P0_zero=False, singular_F=False):
    """Random stable model; with T given, every F, c, Q, H, d, R carries a time axis."""
    lead = () if T is None else (T,)
    F = 0.9 * np.linalg.qr(rng.normal(size=lead + (dz, dz)))[0]
    if singular_F:
        F[..., :, 0] = 0.0  # rank dz - 1
    return LinearGaussianParams(
        initial_mean=jnp.asarray(rng.normal(size=dz)),
        initial_covariance=jnp.zeros((dz, dz)) if P0_zero else jnp.asarray(_spd(rng, dz)),
        F=jnp.asarray(F),
        c=jnp.asarray(0.3 * rng.normal(size=lead + (dz,))),
        Q=jnp.asarray(_spd(rng, dz, lead)),
        H=jnp.asarray(rng.normal(size=lead + (dy, dz))),
        d=jnp.asarray(rng.normal(size=lead + (dy,))),
        R=jnp.asarray(_spd(rng, dy, lead)),
    )


def _simulate(rng, params, T):
    """Draw ys (T, dy) from the model (numpy)."""
    p = [np.asarray(x) for x in params]
    m0, P0, F, c, Q, H, d, R = p
    tv = [x.ndim > n for x, n in zip(p, (1, 2, 2, 1, 2, 2, 1, 2))]
    at = lambda x, v, t: x[t] if v else x  # noqa: E731
    dz, dy = m0.shape[0], np.atleast_2d(at(H, tv[5], 0)).shape[0]
    z = m0 + (np.linalg.cholesky(P0) @ rng.normal(size=dz) if P0.any() else 0.0)
    ys = np.empty((T, dy))
    for t in range(T):
        z = at(F, tv[2], t) @ z + at(c, tv[3], t) + np.linalg.cholesky(at(Q, tv[4], t)) @ rng.normal(size=dz)
        ys[t] = at(H, tv[5], t) @ z + at(d, tv[6], t) + np.linalg.cholesky(at(R, tv[7], t)) @ rng.normal(size=dy)
    return ys


def _compare(seq, par, fields):
    """Assert par == seq field by field; returns {field: max relative error}."""
    errors = {}
    for name in fields:
        a = np.asarray(getattr(seq, name))
        b = np.asarray(getattr(par, name))
        assert a.shape == b.shape, name
        scale = max(np.max(np.abs(a)), 1e-300)
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL_SCALE * scale, err_msg=name)
        errors[name] = float(np.max(np.abs(b - a)) / scale)
    return errors


def _both(params, ys):
    seq = rts_smoother(params, kalman_filter(params, ys))
    par = parallel_rts_smoother(params, parallel_kalman_filter(params, ys))
    return seq, par


# XLA's CPU compile time dominates this file: the associative scans inline
# ~2 log2(T) copies of their combination step. These tiny test programs need no
# optimised machine code, so they are compiled with LLVM optimisation and the
# new fusion emitters off (about 4x faster to compile, same arithmetic to within
# rounding). Falls back to a plain jit where a jaxlib does not know the options.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _jit(f):
    fast, plain = jax.jit(f, compiler_options=_FAST_COMPILE), jax.jit(f)
    state = {"fast": jax.default_backend() == "cpu"}

    def call(*args):
        if state["fast"]:
            try:
                return fast(*args)
            except Exception:  # unknown option: an error in f itself re-raises below
                state["fast"] = False
        return plain(*args)

    return call


# one compilation per distinct shape (tests (a) and (c) share theirs); eager mode
# would compile each of the many small ops of the scans separately
_both_jit = _jit(_both)


# --------------------------------------------------------------------------- #
# parallel vs sequential
# --------------------------------------------------------------------------- #


def test_time_invariant_matches_sequential():
    rng = np.random.default_rng(0)
    params = _random_params(rng, dz=3, dy=2)
    ys = jnp.asarray(_simulate(rng, params, 50))
    seq, par = _both_jit(params, ys)
    _compare(seq, par, SMOOTH_FIELDS)


def test_time_varying_with_missing_matches_sequential():
    rng = np.random.default_rng(1)
    T = 40
    params = _random_params(rng, dz=2, dy=4, T=T)
    ys = _simulate(rng, params, T)
    ys[0] = np.nan  # whole steps missing, first and last included
    ys[17] = np.nan
    ys[18] = np.nan
    ys[T - 1] = np.nan
    ys[3, 1] = np.nan  # single components
    ys[9, 0] = np.nan
    ys[9, 3] = np.nan
    ys[25, 2] = np.nan
    seq, par = _both_jit(params, jnp.asarray(ys))
    _compare(seq, par, SMOOTH_FIELDS)
    # the missing steps contribute nothing to the likelihood
    np.testing.assert_array_equal(np.asarray(par.log_predictive)[[0, 17, 18, T - 1]], 0.0)


def test_point_mass_initial_state_and_singular_F():
    rng = np.random.default_rng(2)
    params = _random_params(rng, dz=3, dy=2, P0_zero=True, singular_F=True)
    ys = jnp.asarray(_simulate(rng, params, 50))  # same shapes as above: no new compilation
    seq, par = _both_jit(params, ys)
    _compare(seq, par, SMOOTH_FIELDS)
    # z_0 is known: its smoothed law is the point mass
    np.testing.assert_allclose(par.initial_smoothed_mean, params.initial_mean, rtol=1e-12)
    np.testing.assert_allclose(par.initial_smoothed_covariance, 0.0, atol=1e-12)
    assert np.all(np.isfinite(np.asarray(par.smoothed_covariances)))


def test_jit_vmap_and_grad():
    rng = np.random.default_rng(3)
    params = _random_params(rng, dz=2, dy=2)
    T = 6  # small: this test compiles forward and backward passes of both kernels
    ys = np.stack([_simulate(rng, params, T) for _ in range(3)])
    ys[1, 2] = np.nan
    ys[2, 4, 0] = np.nan
    ys = jnp.asarray(ys)

    def smooth_and_grad(filt, smooth, scale, y):
        """Smoothing results at F -> scale F and d loglik / d scale, in one forward pass."""

        def loglik(s):
            p = params._replace(F=s * params.F)
            out = filt(p, y)
            return out.marginal_loglik, out

        (_, filtered), grad = jax.value_and_grad(loglik, has_aux=True)(scale)
        return smooth(params._replace(F=scale * params.F), filtered), grad

    @_jit  # a single compilation for both kernels
    def run(ys, scale):
        batch = lambda f, s: jax.vmap(lambda y: smooth_and_grad(f, s, scale, y))(ys)  # noqa: E731
        return batch(kalman_filter, rts_smoother), batch(parallel_kalman_filter, parallel_rts_smoother)

    (seq, g_seq), (par, g_par) = run(ys, jnp.asarray(0.95))
    _compare(seq, par, SMOOTH_FIELDS)
    assert g_par.shape == (3,) and np.all(np.abs(np.asarray(g_seq)) > 1e-3)
    np.testing.assert_allclose(g_par, g_seq, rtol=RTOL)


def test_float32_stays_float32():
    rng = np.random.default_rng(4)
    p64 = _random_params(rng, dz=2, dy=3, T=6)
    params = LinearGaussianParams(*(x.astype(jnp.float32) for x in p64))
    ys = jnp.asarray(_simulate(rng, p64, 6), dtype=jnp.float32)
    out = jax.eval_shape(lambda p, y: parallel_rts_smoother(p, parallel_kalman_filter(p, y)), params, ys)
    for name in SMOOTH_FIELDS:
        assert getattr(out, name).dtype == jnp.float32, name


# --------------------------------------------------------------------------- #
# brute-force oracle
# --------------------------------------------------------------------------- #


def _joint_gaussian_posterior(params, ys):
    """Condition the explicit joint Gaussian of (z_0..z_T, y_1..y_T) on the observed ys.

    Returns (log p(y_obs), posterior mean (T+1, dz), posterior covariance
    ((T+1) dz, (T+1) dz)) with numpy only.
    """
    p = [np.asarray(x, dtype=np.float64) for x in params]
    m0, P0, F, c, Q, H, d, R = p
    T, dy = ys.shape
    dz = m0.shape[0]
    tv = [x.ndim > n for x, n in zip(p, (1, 2, 2, 1, 2, 2, 1, 2))]
    at = lambda x, v, t: x[t] if v else x  # noqa: E731

    # z = B u + a with u = (z_0 - m0, w_1, ..., w_T) ~ N(0, blockdiag(P0, Q_1..Q_T))
    nz = (T + 1) * dz
    B = np.zeros((nz, nz))
    a = np.zeros(nz)
    B[:dz, :dz] = np.eye(dz)
    a[:dz] = m0
    for t in range(1, T + 1):
        Ft = at(F, tv[2], t - 1)
        rows, prev = slice(t * dz, (t + 1) * dz), slice((t - 1) * dz, t * dz)
        B[rows] = Ft @ B[prev]
        B[rows, rows] += np.eye(dz)
        a[rows] = Ft @ a[prev] + at(c, tv[3], t - 1)
    U = np.zeros((nz, nz))
    U[:dz, :dz] = P0
    for t in range(1, T + 1):
        U[t * dz : (t + 1) * dz, t * dz : (t + 1) * dz] = at(Q, tv[4], t - 1)
    Szz = B @ U @ B.T

    # y = Hb z + dvec + v, v ~ N(0, blockdiag(R_1..R_T))
    Hb = np.zeros((T * dy, nz))
    dvec = np.zeros(T * dy)
    Rb = np.zeros((T * dy, T * dy))
    for t in range(1, T + 1):
        r = slice((t - 1) * dy, t * dy)
        Hb[r, t * dz : (t + 1) * dz] = at(H, tv[5], t - 1)
        dvec[r] = at(d, tv[6], t - 1)
        Rb[r, r] = at(R, tv[7], t - 1)
    mu_y = Hb @ a + dvec
    Syy = Hb @ Szz @ Hb.T + Rb
    Szy = Szz @ Hb.T

    obs = ~np.isnan(ys.reshape(-1))
    if not obs.any():
        return 0.0, a.reshape(T + 1, dz), Szz
    yo = ys.reshape(-1)[obs]
    Soo = Syy[np.ix_(obs, obs)]
    r = yo - mu_y[obs]
    sign, logdet = np.linalg.slogdet(Soo)
    assert sign > 0
    loglik = -0.5 * (r @ np.linalg.solve(Soo, r) + logdet + obs.sum() * np.log(2 * np.pi))
    K = np.linalg.solve(Soo, Szy[:, obs].T).T
    mean = a + K @ r
    cov = Szz - K @ Szy[:, obs].T
    return loglik, mean.reshape(T + 1, dz), 0.5 * (cov + cov.T)


@pytest.mark.parametrize("P0_zero", [False, True])
def test_brute_force_joint_gaussian(P0_zero):
    rng = np.random.default_rng(5 + P0_zero)
    T, dz, dy = 5, 2, 3
    params = _random_params(rng, dz=dz, dy=dy, T=T, P0_zero=P0_zero)
    ys = _simulate(rng, params, T)
    ys[2] = np.nan
    ys[4, 1] = np.nan
    loglik, mean, cov = _joint_gaussian_posterior(params, ys)
    block = lambda s, t: cov[s * dz : (s + 1) * dz, t * dz : (t + 1) * dz]  # noqa: E731
    expected = dict(
        marginal_loglik=loglik,
        smoothed_means=mean[1:],
        smoothed_covariances=np.stack([block(t, t) for t in range(1, T + 1)]),
        smoothed_cross_covariances=np.stack([block(t, t + 1) for t in range(1, T)]),
        initial_smoothed_mean=mean[0],
        initial_smoothed_covariance=block(0, 0),
        initial_cross_covariance=block(0, 1),
    )
    # filtering quantities: condition on the prefixes y_1..y_t (later steps made missing)
    prefix = []
    for t in range(T + 1):
        ys_t = ys.copy()
        ys_t[t:] = np.nan
        ll_t, mean_t, cov_t = _joint_gaussian_posterior(params, ys_t)
        prefix.append((ll_t, mean_t[t], cov_t[t * dz : (t + 1) * dz, t * dz : (t + 1) * dz]))
    lls = np.array([ll for ll, _, _ in prefix])
    expected.update(
        log_predictive=np.diff(lls),
        filtered_means=np.stack([m for _, m, _ in prefix[1:]]),
        filtered_covariances=np.stack([P for _, _, P in prefix[1:]]),
    )
    predicted = []
    for t in range(1, T + 1):  # z_t | y_1..y_{t-1}
        ys_t = ys.copy()
        ys_t[t - 1 :] = np.nan
        _, mean_t, cov_t = _joint_gaussian_posterior(params, ys_t)
        predicted.append((mean_t[t], cov_t[t * dz : (t + 1) * dz, t * dz : (t + 1) * dz]))
    expected.update(
        predicted_means=np.stack([m for m, _ in predicted]),
        predicted_covariances=np.stack([P for _, P in predicted]),
    )
    seq, par = _both_jit(params, jnp.asarray(ys))
    for result in (par, seq):  # the sequential kernel is checked against the oracle too
        for name, value in expected.items():
            got = np.asarray(getattr(result, name))
            scale = max(np.max(np.abs(value)), 1.0)
            np.testing.assert_allclose(got, value, rtol=1e-9, atol=1e-11 * scale, err_msg=name)
