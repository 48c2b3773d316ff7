"""Reference posteriors for nonlinear / non-Gaussian SSMs (test and benchmark oracles).

Independent of ssmppl's filters: nothing here imports ``ssmppl``. Conventions
follow ssmppl: z_0 is the state *before* the first observation; y_t is emitted
by z_t, t = 1..T; results are indexed t = 1..T.

* ``grid_filter_smoother_1d``: a deterministic grid (point-mass) filter and
  smoother for a scalar state, in numpy float64. The transition density is a
  dense G x G matrix of masses on the grid (rows renormalised, so the only
  approximation is the grid itself); forward recursion gives
  E[z_t | y_{1:t}], the backward (Rauch-Tung-Striebel form for densities)
  recursion E[z_t | y_{1:T}], and the normalising constants the log-likelihood.
  With a fine grid covering the posterior these are exact to quadrature
  accuracy (spectral for smooth densities).
* ``bootstrap_particle_filter``: a vectorised JAX bootstrap particle filter
  with systematic resampling at every step, for transitions
  z_t = f(z_{t-1}) + N(0, Q) and any emission log-density.
* ``ffbsi_smoother``: forward-filtering backward-simulation (Godsill, Doucet &
  West 2004). Transition noise that is nearly degenerate (the pendulum's
  integrated white-noise Q) makes the backward kernel sharp: only particles
  whose f(z_t)[0] lies in a narrow window around z_{t+1}[0] have non-negligible
  backward weight. Sorting by f(z_t)[0] makes that window a contiguous range,
  and the exact categorical draw is made over it (O(M W) per step instead of
  O(M N)); wider windows use exact rejection sampling within the window (Douc,
  Garivier, Moulines & Olsson 2011), empty ones the weights over all N.
* ``replicated_reference``: independent replicates of the above, the average
  as the reference and the standard error across replicates as its Monte
  Carlo error.

Also the two models used by the nonlinear accuracy benchmark, in plain
JAX/numpy (for simulation and the references): the pendulum and the Poisson
AR(1) log-rate model.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

# ---------------------------------------------------------------------------
# 1-d grid filter and smoother
# ---------------------------------------------------------------------------


def grid_filter_smoother_1d(grid, log_prior0, log_transition, log_emission):
    """Point-mass filter and smoother on a uniform 1-d grid (numpy, float64).

    grid: (G,) uniformly spaced points.
    log_prior0: (G,) log density (up to a constant) of z_0 on the grid.
    log_transition: function (z_prev (G, 1), z (1, G)) -> (G, G) log p(z | z_prev),
        normalised in z (its constant matters only through the row renormalisation).
    log_emission: (T, G) log p(y_t | z_t = grid); rows of zeros for missing y_t.
        Its normalising constants must be included: they enter the log-likelihood.

    Returns a dict with filtered / predicted / smoothed means and variances (T,)
    and ``loglik`` = log p(y_{1:T}) (the grid quadrature of it).
    """
    grid = np.asarray(grid, np.float64)
    dx = grid[1] - grid[0]
    logK = np.asarray(log_transition(grid[:, None], grid[None, :]), np.float64)
    # transition masses: density * dx, each row renormalised on the grid
    K = np.exp(logK - logK.max(axis=1, keepdims=True))
    row = K.sum(axis=1, keepdims=True)
    K = K / row
    lp0 = np.asarray(log_prior0, np.float64)
    p = np.exp(lp0 - lp0.max())
    p /= p.sum()
    log_emission = np.asarray(log_emission, np.float64)
    T = log_emission.shape[0]
    filt = np.empty((T, grid.size))
    pred = np.empty((T, grid.size))
    loglik = 0.0
    for t in range(T):
        q = p @ K
        pred[t] = q
        le = log_emission[t]
        c = le.max()
        u = q * np.exp(le - c)
        s = u.sum()
        loglik += np.log(s) + c
        p = u / s
        filt[t] = p
    # backward: p(z_t | y_{1:T}) = p(z_t | y_{1:t}) sum_j K[., j] p(z_{t+1}=j | y) / pred_{t+1}(j)
    smooth = np.empty_like(filt)
    smooth[-1] = filt[-1]
    for t in range(T - 2, -1, -1):
        ratio = np.divide(smooth[t + 1], pred[t + 1], out=np.zeros(grid.size), where=pred[t + 1] > 0)
        s = filt[t] * (K @ ratio)
        smooth[t] = s / s.sum()

    def moments(w):
        m = w @ grid
        v = w @ grid**2 - m**2
        return m, v

    fm, fv = moments(filt)
    pm, pv = moments(pred)
    sm, sv = moments(smooth)
    return dict(filtered_means=fm, filtered_variances=fv, predicted_means=pm, predicted_variances=pv,
                smoothed_means=sm, smoothed_variances=sv, loglik=float(loglik), grid_step=float(dx),
                edge_mass=float(max(filt[:, :5].sum(1).max(), filt[:, -5:].sum(1).max(),
                                    smooth[:, :5].sum(1).max(), smooth[:, -5:].sum(1).max())))


def gaussian_log_transition(mean_fn, sd):
    """log N(z; mean_fn(z_prev), sd^2) as a function of (z_prev, z)."""

    def log_k(zp, z):
        return -0.5 * ((z - mean_fn(zp)) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)

    return log_k


# ---------------------------------------------------------------------------
# particle filter and FFBSi smoother (JAX)
# ---------------------------------------------------------------------------


def _systematic(key, w):
    """Systematic resampling indices (N,) for normalised weights w (N,)."""
    N = w.shape[0]
    u = (jax.random.uniform(key, dtype=w.dtype) + jnp.arange(N, dtype=w.dtype)) / N
    cdf = jnp.cumsum(w)
    return jnp.minimum(jnp.searchsorted(cdf, u * cdf[-1]), N - 1)


@partial(jax.jit, static_argnames=("f", "log_emission", "num_particles", "store"))
def bootstrap_particle_filter(key, y, m0, P0, f, Q, log_emission, num_particles, store=False):
    """Bootstrap particle filter for z_t = f(z_{t-1}) + N(0, Q), y_t ~ p(y_t | z_t).

    f: (N, dz) -> (N, dz); log_emission(y_t, z (N, dz)) -> (N,) log p(y_t | z)
    (y_t all-NaN: missing, weight 1). Multinomial-free: systematic resampling
    before every propagation. Returns a dict with ``filtered_means`` (T, dz),
    ``filtered_second_moments`` (T, dz, dz), ``loglik`` (the unbiased
    estimator's log), ``ess`` (T,); with ``store=True`` also the weighted
    particles ``particles`` (T, N, dz) and ``log_weights`` (T, N) (normalised)
    for smoothing.
    """
    N = num_particles
    dz = m0.shape[0]
    L0 = jnp.linalg.cholesky(P0)
    LQ = jnp.linalg.cholesky(Q)
    k0, key = jax.random.split(key)
    x0 = m0 + jax.random.normal(k0, (N, dz), m0.dtype) @ L0.T
    logw0 = jnp.full((N,), -jnp.log(N), m0.dtype)

    def step(carry, inp):
        x, logw = carry
        k, y_t = inp
        k_res, k_prop = jax.random.split(k)
        idx = _systematic(k_res, jnp.exp(logw))
        x = f(x[idx]) + jax.random.normal(k_prop, (N, dz), x.dtype) @ LQ.T
        missing = jnp.all(jnp.isnan(y_t))
        ll = jnp.where(missing, 0.0, log_emission(jnp.nan_to_num(y_t), x))
        c = ll.max()
        u = jnp.exp(ll - c)
        s = u.sum()
        inc = jnp.log(s / N) + c
        logw = jnp.log(u) - jnp.log(s)
        w = u / s
        mean = w @ x
        second = (x * w[:, None]).T @ x
        out = dict(filtered_means=mean, filtered_second_moments=second, log_increment=inc,
                   ess=1.0 / jnp.sum(w**2))
        if store:
            out["particles"] = x
            out["log_weights"] = logw
        return (x, logw), out

    T = y.shape[0]
    keys = jax.random.split(key, T)
    _, out = jax.lax.scan(step, (x0, logw0), (keys, y))
    out["loglik"] = out.pop("log_increment").sum()
    return out


@partial(jax.jit, static_argnames=("f", "num_paths", "window_particles", "proposals", "max_rounds", "num_exact"))
def ffbsi_smoother(key, particles, log_weights, f, Q, num_paths, window_particles=1024, proposals=64, max_rounds=64,
                   num_exact=32, window_sd=7.0):
    """Backward simulation of ``num_paths`` paths z_{1:T} from a particle filter's output.

    particles (T, N, dz), log_weights (T, N) normalised: the filter's weighted
    particles at each t (before resampling). For each path and t < T the
    ancestor index is drawn from w_t^i N(z_{t+1}; f(z_t^i), Q) by rejection:
    propose i ~ w_t (``proposals`` at a time), accept with probability
    exp(-||L^{-1}(z_{t+1} - f(z_t^i))||^2 / 2) (the kernel over its maximum).
    Proposals are restricted to the particles whose first whitened residual
    (L lower triangular: it reads f(z_t^i)[0] only) is within ``window_sd``:
    those outside have backward weight below exp(-window_sd^2 / 2) of the
    maximum (1e-11 at 7), a truncation far below the Monte Carlo error.
    Paths not accepted after ``max_rounds`` rounds take exact categorical draws
    over all N particles (``num_exact`` of them per step at most; beyond that a
    draw among the proposals weighted by the kernel, counted in
    ``approximate_draws``; it should be 0).

    Returns a dict with ``smoothed_means`` (T, dz), ``smoothed_second_moments``
    (T, dz, dz) and per-step diagnostics (T-1,): ``wide_windows`` (paths whose
    window held more than ``window_particles``: rejection), ``window_max``,
    ``rounds`` (rejection rounds), ``fallback_draws`` (exact draws over all N)
    and ``approximate_draws`` (should be 0).
    """
    T, N, dz = particles.shape
    M, K = num_paths, proposals
    LQ = jnp.linalg.cholesky(Q)

    LQinv = jax.scipy.linalg.solve_triangular(LQ, jnp.eye(dz, dtype=LQ.dtype), lower=True)

    def log_kernel(x_next, fx):  # (..., dz) each; 0 at its maximum
        r = (x_next - fx) @ LQinv.T
        return -0.5 * jnp.sum(r**2, -1)

    kT, key = jax.random.split(key)
    idx_T = jax.random.categorical(kT, log_weights[-1], shape=(M,))
    x_T = particles[-1, idx_T]

    c = window_sd * LQ[0, 0]
    W = min(window_particles, N)

    def back(x_next, inp):
        k, x_t, logw_t = inp
        fx = f(x_t)  # (N, dz)
        # The kernel's first whitened residual reads x_t only through f(x_t)[0]: sort by it, so the
        # particles with |residual_1| < window_sd are a contiguous range, and propose from it only.
        order = jnp.argsort(fx[:, 0])
        fx_s, w_s = fx[order], jnp.exp(logw_t[order])
        cum = jnp.concatenate([jnp.zeros(1, w_s.dtype), jnp.cumsum(w_s)])
        lo = jnp.searchsorted(fx_s[:, 0], x_next[:, 0] - c)
        hi = jnp.searchsorted(fx_s[:, 0], x_next[:, 0] + c)
        c_lo, c_hi = cum[lo], cum[hi]
        empty = (hi <= lo) | (c_hi <= c_lo)

        def cond(c_):
            _, _, done, r, _ = c_
            return (r < max_rounds) & ~jnp.all(done)

        def body(c_):
            k, chosen, done, r, n_prop = c_
            k, k1, k2 = jax.random.split(k, 3)
            u = c_lo[:, None] + jax.random.uniform(k1, (M, K), cum.dtype) * (c_hi - c_lo)[:, None]
            props = jnp.clip(jnp.searchsorted(cum, u, side="right") - 1, lo[:, None], jnp.maximum(hi - 1, lo)[:, None])
            lk = log_kernel(x_next[:, None, :], fx_s[props])  # (M, K)
            acc = (jnp.log(jax.random.uniform(k2, (M, K), cum.dtype)) < lk) & ~empty[:, None]
            first = jnp.argmax(acc, axis=1)
            got = acc.any(1) & ~done
            chosen = jnp.where(got, props[jnp.arange(M), first].astype(jnp.int32), chosen)
            n_prop = n_prop + jnp.where(done, 0, K)
            return k, chosen, done | acc.any(1), r + 1, n_prop

        k, k_fb, k_apx, k_win = jax.random.split(k, 4)
        # exact categorical draw over each path's window when it holds <= W particles
        over = (hi - lo) > W
        idx = lo[:, None] + jnp.arange(W)[None, :]
        valid = idx < hi[:, None]
        idx = jnp.minimum(idx, N - 1)
        logits = jnp.where(valid, jnp.log(w_s[idx]) + log_kernel(x_next[:, None, :], fx_s[idx]), -jnp.inf)
        draw = jax.random.categorical(k_win, jnp.where(empty[:, None], 0.0, logits), axis=-1)
        chosen = idx[jnp.arange(M), draw].astype(jnp.int32)
        # wider windows: rejection sampling within the window; empty windows: exact fallback below
        init = (k, chosen, ~over | empty, 0, jnp.zeros((M,), jnp.int32))
        k, chosen, done, rounds, n_prop = jax.lax.while_loop(cond, body, init)
        done = done & ~empty
        n_fail = jnp.sum(~done)

        def exact(args):
            chosen, done = args
            (fail_idx,) = jnp.nonzero(~done, size=num_exact, fill_value=M)
            valid = fail_idx < M
            xs = x_next[jnp.minimum(fail_idx, M - 1)]  # (E, dz)
            logits = jnp.log(w_s)[None, :] + log_kernel(xs[:, None, :], fx_s[None, :, :])  # (E, N)
            draw = jax.random.categorical(k_fb, logits, axis=-1).astype(jnp.int32)
            chosen = chosen.at[jnp.where(valid, fail_idx, M)].set(draw, mode="drop")
            done = done.at[jnp.where(valid, fail_idx, M)].set(True, mode="drop")
            # any left: draw among fresh proposals weighted by the kernel (approximate; counted)
            u = jax.random.uniform(k_apx, (M, 4 * K), cum.dtype) * cum[-1]
            props = jnp.minimum(jnp.searchsorted(cum, u, side="right") - 1, N - 1)
            lk = log_kernel(x_next[:, None, :], fx_s[props])
            j = jax.random.categorical(k_apx, lk, axis=-1)
            left = ~done
            chosen = jnp.where(left, props[jnp.arange(M), j].astype(jnp.int32), chosen)
            return chosen, jnp.sum(left).astype(jnp.int32)

        chosen, n_apx = jax.lax.cond(n_fail > 0, exact, lambda a: (a[0], jnp.int32(0)), (chosen, done))
        x_t_paths = x_t[order[chosen]]
        stats = dict(fallback_draws=jnp.minimum(n_fail, num_exact), approximate_draws=n_apx, rounds=rounds,
                     wide_windows=jnp.sum(over), window_max=jnp.max(hi - lo))
        return x_t_paths, (x_t_paths, stats)

    keys = jax.random.split(key, T - 1)
    _, (paths, stats) = jax.lax.scan(back, x_T, (keys, particles[:-1], log_weights[:-1]), reverse=True)
    paths = jnp.concatenate([paths, x_T[None]], axis=0)  # (T, M, dz)
    out = dict(smoothed_means=paths.mean(1), smoothed_second_moments=jnp.einsum("tmi,tmj->tij", paths, paths) / M)
    out.update(stats)
    return out


def replicated_reference(key, y, m0, P0, f, Q, log_emission, num_particles, replicates=4,
                         smoother_particles=None, num_paths=1000, **ffbsi_kwargs):
    """Independent replicates of the particle filter (and FFBSi smoother when
    ``smoother_particles`` is given: a separate filter with that many particles
    feeds it). Returns numpy arrays: ``filtered_means`` (T, dz) = the replicates'
    average, ``filtered_means_se`` (T, dz) its standard error across replicates,
    likewise ``smoothed_means[_se]``, ``loglik`` (mean of the replicates' log
    estimates) and ``loglik_sd`` (their sd), plus FFBSi diagnostics.
    """
    fm, sm, ll, diag = [], [], [], dict(fallback_draws=0, approximate_draws=0, wide_windows=0, window_max=0)
    for r in range(replicates):
        key, k1, k2, k3 = jax.random.split(key, 4)
        out = bootstrap_particle_filter(k1, y, m0, P0, f, Q, log_emission, num_particles)
        fm.append(np.asarray(out["filtered_means"]))
        ll.append(float(out["loglik"]))
        if smoother_particles:
            pf = bootstrap_particle_filter(k2, y, m0, P0, f, Q, log_emission, smoother_particles, store=True)
            sm_out = ffbsi_smoother(k3, pf["particles"], pf["log_weights"], f, Q, num_paths, **ffbsi_kwargs)
            sm.append(np.asarray(sm_out["smoothed_means"]))
            diag["fallback_draws"] += int(sm_out["fallback_draws"].sum())
            diag["approximate_draws"] += int(sm_out["approximate_draws"].sum())
            diag["wide_windows"] += int(sm_out["wide_windows"].sum())
            diag["window_max"] = max(diag["window_max"], int(sm_out["window_max"].max()))
            del pf
    fm = np.stack(fm)
    res = dict(filtered_means=fm.mean(0), filtered_means_se=fm.std(0, ddof=1) / np.sqrt(replicates),
               loglik=float(np.mean(ll)), loglik_sd=float(np.std(ll, ddof=1)), replicates=replicates,
               num_particles=num_particles)
    if smoother_particles:
        sm = np.stack(sm)
        res.update(smoothed_means=sm.mean(0), smoothed_means_se=sm.std(0, ddof=1) / np.sqrt(replicates),
                   smoother_particles=smoother_particles, num_paths=num_paths, **diag)
    return res


# ---------------------------------------------------------------------------
# the benchmark models in plain JAX
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pendulum:
    """x_t = (angle, angular velocity):
    x_t = (a + v dt, v - g sin(a) dt) + N(0, Q), Q = q_c [[dt^3/3, dt^2/2], [dt^2/2, dt]];
    y_t = sin(a_t) + N(0, r^2); x_0 ~ N(m0, P0)."""

    dt: float = 0.0125
    g: float = 9.8
    q_c: float = 1.0
    r: float = 0.3
    m0: tuple = (math.pi / 2, 0.0)
    p0: float = 0.1  # P0 = p0 I

    @property
    def Q(self):
        dt = self.dt
        return self.q_c * jnp.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]])

    @property
    def initial(self):
        return jnp.array(self.m0), self.p0 * jnp.eye(2)

    def f(self, x):  # (..., 2)
        a, v = x[..., 0], x[..., 1]
        return jnp.stack([a + v * self.dt, v - self.g * jnp.sin(a) * self.dt], -1)

    def log_emission(self, y_t, x):  # y_t (1,) or (), x (N, 2)
        y_t = jnp.reshape(y_t, ())
        return -0.5 * ((y_t - jnp.sin(x[..., 0])) / self.r) ** 2 - jnp.log(self.r) - 0.5 * jnp.log(2 * jnp.pi)

    def simulate(self, key, T):
        m0, P0 = self.initial
        k0, k1, k2 = jax.random.split(key, 3)
        x0 = m0 + jnp.linalg.cholesky(P0) @ jax.random.normal(k0, (2,))
        LQ = jnp.linalg.cholesky(self.Q)

        def step(x, e):
            x = self.f(x) + LQ @ e
            return x, x

        _, xs = jax.lax.scan(step, x0, jax.random.normal(k1, (T, 2)))
        ys = jnp.sin(xs[:, 0]) + self.r * jax.random.normal(k2, (T,))
        return np.asarray(xs), np.asarray(ys)[:, None]


@dataclasses.dataclass(frozen=True)
class PoissonAR1:
    """Latent log-rate z_t = mu + phi (z_{t-1} - mu) + sigma eps_t, y_t ~ Poisson(exp(z_t));
    z_0 ~ N(mu, sigma^2 / (1 - phi^2)) (stationary)."""

    mu: float = 1.0
    phi: float = 0.9
    sigma: float = 0.3

    @property
    def stationary_sd(self):
        return self.sigma / math.sqrt(1 - self.phi**2)

    def simulate(self, key, T):
        k0, k1, k2 = jax.random.split(key, 3)
        z = self.mu + self.stationary_sd * float(jax.random.normal(k0, ()))
        eps = np.asarray(jax.random.normal(k1, (T,)))
        zs = np.empty(T)
        for t in range(T):
            z = self.mu + self.phi * (z - self.mu) + self.sigma * eps[t]
            zs[t] = z
        ys = np.asarray(jax.random.poisson(k2, jnp.exp(jnp.asarray(zs))), np.float64)
        return zs, ys

    def grid_reference(self, y, num_points=2000, width=8.0):
        """Grid filter/smoother on mu +- width stationary sd (+ the data's log-counts' range)."""
        y = np.asarray(y, np.float64).reshape(-1)
        s = self.stationary_sd
        lo, hi = self.mu - width * s, self.mu + width * s
        grid = np.linspace(lo, hi, num_points)
        lp0 = -0.5 * ((grid - self.mu) / s) ** 2
        log_k = gaussian_log_transition(lambda zp: self.mu + self.phi * (zp - self.mu), self.sigma)
        le = y[:, None] * grid[None, :] - np.exp(grid)[None, :] - np.asarray(gammaln(y + 1.0))[:, None]
        le = np.where(np.isnan(y)[:, None], 0.0, le)
        return grid_filter_smoother_1d(grid, lp0, log_k, le)


def rmse(a, b, axis=0):
    """Root mean square over time of a - b, per state component."""
    a, b = np.asarray(a), np.asarray(b)
    return np.sqrt(np.mean((a - b) ** 2, axis=axis))
