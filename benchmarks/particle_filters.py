"""particle_filters: particle filters on the stochastic-volatility model, ssmppl against Chopin's particles.

Model: ``ssmppl.models.stochastic_volatility()`` and ``particles.state_space_models.StochVol`` with
Pitt & Shephard's mu = 2 log 0.5992, rho = 0.9702, sigma = 0.178, on the daily GBP/USD returns
y = 100 diff(log rate) of ``../shared/data/GBP_vs_USD_9798.txt`` (T = 750). particles' stationary
X_0 emits Y_0; ssmppl's stationary x_0 is unobserved and x_1, stationary too, emits y_1: the same
likelihood.

1. Accuracy (N = 1,000): log p_hat of the bootstrap, guided and auxiliary filters over R runs in each
   library (ssmppl: one jax.vmap over keys; particles: a loop), against the exact value of a grid
   (point-mass) filter. Guided / auxiliary: Pitt & Shephard's proposal and look-ahead in both
   (particles' StochVol.proposal / logeta; ssmppl's GuidedPF / AuxiliaryPF with ``ps_proposal`` /
   ``ps_log_eta`` below). p_hat is unbiased: mean p_hat / p must be 1 within its standard error.
2. Speed: particle-steps per second (N T / wall time) of the bootstrap filter, systematic resampling
   when ESS < N / 2 in both; ssmppl in float64 and float32, through the API and jitted directly;
   particles' SMC(fk=Bootstrap(...), N=N).run() with its default collectors and with collect='off'.
   Checks: the two libraries' mean log p_hat agree (|z| < 4); every timed filter's log p_hat within
   3 nats of the exact value.
"""

from __future__ import annotations

import math
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import ssmppl
from ssmppl import AuxiliaryPF, BootstrapPF, GuidedPF

from . import harness, peers

TITLE = "Particle filters on the stochastic-volatility model: ssmppl vs particles"
PEERS = ("particles",)
MU, RHO, SIGMA = 2 * math.log(0.5992), 0.9702, 0.178
HERE = os.path.dirname(os.path.abspath(__file__))
DATA_FILE = os.path.join(HERE, os.pardir, os.pardir, "shared", "data", "GBP_vs_USD_9798.txt")
FILTERS = {"bootstrap": "bootstrap", "guided": "guided (Pitt & Shephard)", "auxiliary": "auxiliary (Pitt & Shephard)"}


def arguments(p):
    p.add_argument("--sizes", type=float, nargs="+", help="N of the speed table (default 1e3 1e5; --short: 1e3)")
    p.add_argument("--particles-max-n", type=float, default=1e5, help="largest N particles itself is timed at")
    p.add_argument("--accuracy-n", type=int, default=1000, help="particles per filter in the accuracy table")
    p.add_argument("--runs", type=int, help="ssmppl runs per filter (default 200; --short: 50)")
    p.add_argument("--runs-particles", type=int, help="particles runs per filter (default 100; --short: 20)")
    p.add_argument("--filters", nargs="+", choices=list(FILTERS), default=list(FILTERS))
    p.add_argument("--T", type=int, help="the first T returns only (default all 750; --short: 100)")
    p.add_argument("--grid-points", type=int, help="grid filter resolution (default 2001; --short: 1001)")
    p.add_argument("--skip", nargs="+", default=[], choices=["accuracy", "speed"])


def returns():
    """y = 100 diff(log rate) (750 returns): from ../shared/data, or else the data sets shipped with particles."""
    if os.path.exists(DATA_FILE):
        rates = np.loadtxt(DATA_FILE, skiprows=2, usecols=(3,), comments="(C)")
        return 100.0 * np.diff(np.log(rates)), os.path.relpath(os.path.abspath(DATA_FILE), os.path.join(HERE, os.pardir))
    from particles import datasets

    try:
        return np.asarray(datasets.GBP_vs_USD_9798().data, np.float64).ravel(), "particles.datasets.GBP_vs_USD_9798"
    except OSError as e:
        raise FileNotFoundError(f"{DATA_FILE} is absent and particles ships no data files ({e})") from None


def sv_params(dtype=np.float64):
    return {"mu": jnp.asarray(MU, dtype), "rho": jnp.asarray(RHO, dtype), "sigma": jnp.asarray(SIGMA, dtype)}


def ps_proposal(z_prev, xs_t, y_t, transition):
    """Pitt & Shephard's proposal: N(m + sigma^2 (y^2 exp(-m) - 1) / 2, sigma^2), the transition N(m, sigma^2)
    times the first-order expansion of log p(y | x) = -x/2 - y^2 exp(-x)/2 around x = m."""
    m, s = transition.loc, transition.scale
    return dist.Normal(m + 0.5 * s**2 * (y_t**2 * jnp.exp(-m) - 1.0), s)


def ps_log_eta(z_prev, xs_t, y_t, transition):
    """log of the integral of N(x; m, sigma^2) times that expanded emission density (particles' logeta up to
    a constant): log N(y; 0, exp(m)) + a^2 sigma^2 / 2 with a = (y^2 exp(-m) - 1) / 2."""
    m, s = transition.loc, transition.scale
    a = 0.5 * (y_t**2 * jnp.exp(-m) - 1.0)
    return -0.5 * math.log(2 * math.pi) - 0.5 * m - 0.5 * y_t**2 * jnp.exp(-m) + 0.5 * a**2 * s**2


def grid_loglik(y, points=2001, width=10.0):
    """Exact log p(y) to quadrature accuracy: a point-mass filter on ``points`` over mu +- width stationary sd;
    x_0 stationary, Gaussian transition masses renormalised per row, times N(y_t; 0, exp(x)) each step."""
    sd0 = SIGMA / math.sqrt(1 - RHO**2)
    grid = np.linspace(MU - width * sd0, MU + width * sd0, points)
    K = np.exp(-0.5 * ((grid[None, :] - (MU + RHO * (grid[:, None] - MU))) / SIGMA) ** 2)
    K /= K.sum(axis=1, keepdims=True)
    p = np.exp(-0.5 * ((grid - MU) / sd0) ** 2)
    p /= p.sum()
    ll = 0.0
    for yt in np.asarray(y, np.float64):
        le = -0.5 * math.log(2 * math.pi) - 0.5 * grid - 0.5 * yt**2 * np.exp(-grid)
        u = (p @ K) * np.exp(le - le.max())
        ll += math.log(u.sum()) + le.max()
        p = u / u.sum()
    return ll


def ssmppl_logliks(name, y, N, R, seed):
    """(R,) log p_hat of ssmppl's filter, vmapped over R keys."""
    method = {"bootstrap": BootstrapPF(N), "guided": GuidedPF(N, proposal=ps_proposal),
              "auxiliary": AuxiliaryPF(N, proposal=ps_proposal, log_eta=ps_log_eta)}[name]
    ssm = ssmppl.SSM(ssmppl.models.stochastic_volatility())
    f = jax.jit(jax.vmap(lambda k, p, yy: method.log_likelihood(ssm.state_space(p, yy), k), (0, None, None)))
    return np.asarray(f(jax.random.split(jax.random.PRNGKey(seed), R), sv_params(), jnp.asarray(y)), np.float64)


def particles_fk(name, y):
    from particles import state_space_models as pssm

    cls = {"bootstrap": pssm.Bootstrap, "guided": pssm.GuidedPF, "auxiliary": pssm.AuxiliaryPF}[name]
    return cls(ssm=pssm.StochVol(mu=MU, rho=RHO, sigma=SIGMA), data=np.asarray(y, np.float64))


def particles_logliks(name, y, N, R, seed):
    """(R,) log p_hat of particles' filter over R sequential runs (numpy's global generator)."""
    import particles

    np.random.seed(seed)
    out = np.empty(R)
    for r in range(R):
        pf = particles.SMC(fk=particles_fk(name, y), N=N, collect="off")
        pf.run()
        out[r] = pf.logLt
    return out


def summarize(ll, exact):
    ll = np.asarray(ll, np.float64)
    ratio = np.exp(ll - exact)
    return dict(R=ll.size, mean=ll.mean(), sd=ll.std(ddof=1), bias=ll.mean() - exact, ratio=ratio.mean(),
                ratio_se=ratio.std(ddof=1) / math.sqrt(ll.size), lost=int(np.sum(ll < exact - 10)), median=np.median(ll))


ACC_HEADER = ["filter", "library", "runs", "mean log p̂", "sd", "mean − exact", "−sd²/2", "mean p̂/p ± se",
              "runs < exact − 10", "median log p̂"]
CMP_HEADER = ["filter", "ssmppl − particles", "se", "z", "sd ratio ssmppl / particles"]
ACC_LEGEND = (
    "N = {N:,} particles, T = {T} returns. Exact log p(y) = {exact:.4f} from a grid filter with {G} points over "
    "mu ± 10 stationary sd ({coarse:.4f} with half as many). `mean p̂/p ± se`: p̂ is unbiased, so this must be 1 "
    "within a few se; `mean − exact` is negative by about Var[log p̂]/2 (column −sd²/2). `runs < exact − 10`: "
    "runs that lost the track. Both libraries: systematic resampling when ESS < N/2. The auxiliary filter's p̂ is "
    "heavy-tailed on these data (Pitt & Shephard's look-ahead misleads it at the large return y_144 in ~10% of "
    "runs): its sd and mean p̂/p describe the sample, not the distribution. Comparison: difference of the mean "
    "log p̂ with its standard error sqrt(sd₁²/R₁ + sd₂²/R₂) and z = difference / se.")


def accuracy(y, exact, coarse, args, report):
    R, Rp, G = args.runs or (50 if args.short else 200), args.runs_particles or (20 if args.short else 100), args.grid
    rows, cmp = [], []
    for name in args.filters:
        s = {}
        for lib, fn, n in (("ssmppl", ssmppl_logliks, R), ("particles", particles_logliks, Rp)):
            t0 = time.perf_counter()
            s[lib] = summarize(fn(name, y, args.accuracy_n, n, args.seed), exact)
            report.log(f"  {name:9s} {lib:9s} R = {n:3d}: mean {s[lib]['mean']:.3f}, sd {s[lib]['sd']:.3f}, p_hat/p "
                       f"{s[lib]['ratio']:.3f} +- {s[lib]['ratio_se']:.3f} ({time.perf_counter() - t0:.1f} s)")
            rows.append([FILTERS[name], lib, str(n), f"{s[lib]['mean']:.3f}", f"{s[lib]['sd']:.3f}",
                         f"{s[lib]['bias']:+.3f}", f"{-s[lib]['sd'] ** 2 / 2:+.3f}",
                         f"{s[lib]['ratio']:.3f} ± {s[lib]['ratio_se']:.3f}", str(s[lib]["lost"]),
                         f"{s[lib]['median']:.3f}"])
        a, b = s["ssmppl"], s["particles"]
        d, se = a["mean"] - b["mean"], math.sqrt(a["sd"] ** 2 / a["R"] + b["sd"] ** 2 / b["R"])
        cmp.append([FILTERS[name], f"{d:+.3f}", f"{se:.3f}", f"{d / se:+.2f}", f"{a['sd'] / b['sd']:.2f}"])
        report.check(abs(d / se) < 4, f"{name}: mean log p_hat ssmppl - particles = {d:+.3f} +- {se:.3f} (|z| < 4)")
        report.table("Log-likelihood estimates (accuracy)", ACC_HEADER, rows, ACC_LEGEND.format(
            N=args.accuracy_n, T=len(y), exact=exact, coarse=coarse, G=G))
        report.table("ssmppl − particles", CMP_HEADER, cmp, left=1)
    report.case_done()


SPEED_HEADER = ["N", "implementation", "precision", "median s", "particle-steps / s", "× particles default",
                "× particles collect='off'", "CPU s", "× particles default (CPU)", "first call s"]
SPEED_LEGEND = (
    "Bootstrap filter, systematic resampling when ESS < N/2, T = {T}. Median wall time of one whole filter after "
    "one untimed first call (compilation for ssmppl; last column), calls interleaved round-robin (≥ 2 each, until "
    "~{min_time:g} s or {max_reps} calls). particle-steps/s = N·T / time. `× particles ...` = particles' time / "
    "this time (> 1: faster than particles). ssmppl = `ssm.log_likelihood(params, y, method=BootstrapPF(N), "
    "key=key)` (jit inside); ssmppl raw = `jax.jit(lambda p, y, k: BootstrapPF(N).log_likelihood(ssm.state_space(p, "
    "y), k))`; float32 rows get float32 params and data. particles (numpy, float64): `SMC(fk=Bootstrap(ssm="
    "StochVol(...), data=y), N=N).run()` with its defaults (no particle history; collectors ESS, log-likelihood and "
    "resampling flags) and with `collect='off'`; not timed above N = {pmax:,}. CPU s = the process's CPU seconds "
    "per call (median).")


def speed(y, exact, args, report):
    import particles

    ssm = ssmppl.SSM(ssmppl.models.stochastic_volatility())
    T, rows = len(y), []
    for N in [int(n) for n in args.sizes or ([1e3] if args.short else [1e3, 1e5])]:
        key, impls = jax.random.PRNGKey(args.seed), {}
        for dtype, tag in ((np.float64, "float64"), (np.float32, "float32")):
            params, yy, method = sv_params(dtype), jnp.asarray(y, dtype), BootstrapPF(N)
            impls[f"ssmppl {tag}"] = lambda p=params, v=yy, m=method: ssm.log_likelihood(p, v, method=m, key=key)
            raw = jax.jit(lambda p, v, k, m=method: m.log_likelihood(ssm.state_space(p, v), k))
            impls[f"ssmppl raw {tag}"] = lambda f=raw, p=params, v=yy: f(p, v, key)
        if N <= args.particles_max_n:
            fk = particles_fk("bootstrap", y)

            def run_particles(collect):
                pf = particles.SMC(fk=fk, N=N, collect=collect)
                pf.run()
                return pf.logLt

            impls["particles default"] = lambda: run_particles(None)
            impls["particles collect='off'"] = lambda: run_particles("off")

        def check(results):
            return [(k, abs(float(v) - exact) < 3.0, f"{k}: log p_hat {float(v):.3f}, exact {exact:.3f} (tolerance 3 nats)")
                    for k, v in results.items()]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = harness.measure(harness.Case(f"N = {N:,}", impls, check), args, report)
        base = [res.get("particles default"), res.get("particles collect='off'")]
        good = lambda r: r is not None and r.ok  # noqa: E731
        for k, r in res.items():
            lib, tag = (k.rsplit(" ", 1) if k.startswith("ssmppl") else (k, "float64"))
            if not good(r):
                rows.append([f"{N:,}", lib, tag, "wrong" if r.wrong else "failed"] + ["–"] * 6)
                continue
            rows.append([f"{N:,}", lib if lib.startswith("ssmppl") else f"particles ({k.split(' ', 1)[1]})", tag,
                         f"{r.median:.4g}", f"{N * T / r.median:.3g}",
                         *[f"{b.median / r.median:.2f}" if good(b) else "–" for b in base], f"{r.cpu_median:.4g}",
                         f"{base[0].cpu_median / r.cpu_median:.2f}" if good(base[0]) else "–",
                         f"{r.first.wall:.2f}"])
        report.table("Speed (bootstrap filter)", SPEED_HEADER, rows, SPEED_LEGEND.format(
            T=T, min_time=args.min_time, max_reps=args.max_reps, pmax=int(args.particles_max_n)))
        report.case_done()


def run(args, report):
    peers.require("particles")
    y, source = returns()
    y = y[: args.T or (100 if args.short else None)]
    report.note(f"data: `{source}`, y = 100 diff(log rate), T = {len(y)}; mu = 2 log 0.5992, rho = {RHO}, "
                f"sigma = {SIGMA}")
    args.grid = args.grid_points or (1001 if args.short else 2001)
    t0 = time.perf_counter()
    exact, coarse = grid_loglik(y, args.grid), grid_loglik(y, (args.grid + 1) // 2)
    report.log(f"  grid filter: log p(y) = {exact:.6f} ({args.grid} points; {coarse:.6f} with half), "
               f"{time.perf_counter() - t0:.1f} s")
    if "accuracy" not in args.skip:
        accuracy(y, exact, coarse, args, report)
    if "speed" not in args.skip:
        speed(y, exact, args, report)
    return exact
