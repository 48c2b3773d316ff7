"""Particle filters on the stochastic-volatility model: ssmppl against Chopin's ``particles`` library.

Model: ``ssmppl.models.stochastic_volatility()`` and ``particles.state_space_models.StochVol``
with Pitt & Shephard's values mu = 2 log 0.5992, rho = 0.9702, sigma = 0.178, on the
daily GBP/USD log-returns in percent, y = 100 diff(log rate) of
``../shared/data/GBP_vs_USD_9798.txt`` (751 rates, T = 750 returns).
``particles`` draws X_0 from the stationary law N(mu, sigma^2 / (1 - rho^2)) and
lets it emit Y_0; ssmppl draws an unobserved x_0 from the same law and lets
x_1 = transition(x_0) emit y_1. x_1 is stationary too, so both describe the same
joint law of the observed-state chain and the same likelihood.

Two tables.

1. Accuracy (N = 1,000 particles): the log-likelihood estimate log p_hat of
   the bootstrap, guided and auxiliary filters over R independent runs in each
   library (ssmppl: one ``jax.vmap`` over R keys; particles: a loop), against the
   exact log-likelihood of a fine grid (point-mass) filter. The guided and
   auxiliary filters use Pitt & Shephard's (1999) proposal and auxiliary weight
   in both libraries: particles' ``StochVol.proposal`` / ``logeta`` through
   ``GuidedPF`` / ``AuxiliaryPF``, and ssmppl's ``GuidedPF(N, proposal=...)`` /
   ``AuxiliaryPF(N, proposal=..., log_eta=...)`` with the functions
   ``ps_proposal`` / ``ps_log_eta`` below. p_hat is unbiased, E[p_hat] = p, so
   the mean of p_hat / p must be 1 within its standard error; log p_hat is
   biased downwards by about Var[log p_hat] / 2. The first step differs between
   the libraries for these two filters: particles draws X_0 from
   ``StochVol.proposal0`` (Pitt & Shephard's proposal around 0, not mu, with the
   stationary sd) and does not resample, ssmppl moves its stationary x_0 by the
   same proposal as at every later step (and may resample on the look-ahead
   weights first); the estimates stay unbiased in both, their spreads may differ.

2. Speed: particle-steps per second (N T / wall time) of the bootstrap filter,
   systematic resampling when ESS < N / 2 in both libraries. ssmppl is jit-compiled
   and timed after compilation (``block_until_ready``), float64 and float32;
   particles runs ``SMC(fk=Bootstrap(...), N=N).run()`` in its default
   configuration (``store_history=False``: no particle history; default
   collectors ESS, log-likelihood and resampling flags per step) and with
   ``collect='off'`` (no summaries; ``logLt`` is still computed), the fastest
   configuration that still gives the estimate.

Usage:
    taskset -c 1 python benchmarks/particle_filters.py --out benchmarks/results_particles_cpu.md
    python benchmarks/particle_filters.py --short                 # T = 100, small R, N = 1e3: ~1 min
    python benchmarks/particle_filters.py --sizes 1000 1000000 10000000 --particles-max-n 100000  # on a GPU
    python benchmarks/particle_filters.py --gpu                   # the same: N = 1e3 ... 1e7
    python benchmarks/particle_filters.py --skip-speed            # accuracy table only
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import warnings

# (this script was called particles.py, which shadowed the `particles` library whenever benchmarks/
# was on sys.path; keep the folder off sys.path after importing _common all the same)
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
from _common import device_label, git_rev, library_versions, pin_cpus  # noqa: E402
from _common import markdown_table, text_table, time_interleaved, write_report  # noqa: E402

sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

MU, RHO, SIGMA = 2 * math.log(0.5992), 0.9702, 0.178
DATA_FILE = os.path.join(_HERE, os.pardir, os.pardir, "shared", "data", "GBP_vs_USD_9798.txt")
FILTERS = ["bootstrap", "guided", "auxiliary"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=float, nargs="+", default=None,
                   help="numbers of particles for the speed table (default 1e3 1e5; --gpu: 1e3 1e5 1e6 1e7)")
    p.add_argument("--gpu", action="store_true", help="speed sizes up to N = 1e7 (meant for a GPU run)")
    p.add_argument("--particles-max-n", type=float, default=1e5,
                   help="largest N that the particles library is timed at (numpy on the host CPU)")
    p.add_argument("--accuracy-n", type=int, default=1000, help="particles per filter in the accuracy table")
    p.add_argument("--runs", type=int, default=200, help="independent ssmppl runs per filter (vmapped)")
    p.add_argument("--runs-particles", type=int, default=100, help="independent particles runs per filter")
    p.add_argument("--filters", nargs="+", choices=FILTERS, default=FILTERS)
    p.add_argument("--T", type=int, default=None, help="use the first T returns only (default all 750)")
    p.add_argument("--grid-points", type=int, default=2001, help="grid filter resolution")
    p.add_argument("--short", action="store_true",
                   help="T = 100, R = 50 / 20, N = 1e3 only, short timing: a quick check (tests)")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--min-time", type=float, default=1.0, help="target total timed seconds per implementation")
    p.add_argument("--max-reps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", type=int, default=1, help="pin to this many cores (0 = all); see benchmarks/README.md")
    p.add_argument("--out", type=str, default=None, help="also write the results as markdown to this file")
    p.add_argument("--append", action="store_true", help="append to --out instead of overwriting it")
    p.add_argument("--note", type=str, action="append", default=[], help="free-text note for the output")
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = [1e3, 1e5, 1e6, 1e7] if args.gpu else ([1e3] if args.short else [1e3, 1e5])
    args.sizes = [int(s) for s in args.sizes]
    if args.short:
        args.T = args.T or 100
        args.runs, args.runs_particles = min(args.runs, 50), min(args.runs_particles, 20)
        args.min_time, args.max_reps = min(args.min_time, 0.1), min(args.max_reps, 3)
        args.grid_points = min(args.grid_points, 1001)
    return args


if __name__ == "__main__":
    ARGS = parse_args()
    ALL_CPUS, CPUS_USED = pin_cpus(ARGS.cpus)  # before numpy / jax start their thread pools

import numpy as np  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # float32 rows cast their inputs

import jax.numpy as jnp  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

import particles  # noqa: E402
from particles import state_space_models as pssm  # noqa: E402

import ssmppl  # noqa: E402
from ssmppl.inference import BootstrapPF  # noqa: E402

try:
    from ssmppl.inference import AuxiliaryPF, GuidedPF  # noqa: E402

    GUIDED_ERROR = None
except ImportError as e:  # not in this checkout yet: bootstrap rows only for ssmppl
    GuidedPF = AuxiliaryPF = None
    GUIDED_ERROR = f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------


def load_returns(path=DATA_FILE):
    """y = 100 diff(log rate) of the GBP/USD file (750 returns): from ``../shared/data``,
    or else from the data sets shipped with ``particles`` (not every install has them)."""
    if os.path.exists(path):
        rates = np.loadtxt(path, skiprows=2, usecols=(3,), comments="(C)")
        return 100.0 * np.diff(np.log(rates)), os.path.relpath(os.path.abspath(path), os.path.join(_HERE, os.pardir))
    from particles import datasets

    try:
        return np.asarray(datasets.GBP_vs_USD_9798().data, np.float64).ravel(), "particles.datasets.GBP_vs_USD_9798"
    except OSError as e:
        raise FileNotFoundError(f"{path} is absent and particles ships no data files ({e})") from None


def sv_params(dtype=np.float64):
    return {"mu": jnp.asarray(MU, dtype), "rho": jnp.asarray(RHO, dtype), "sigma": jnp.asarray(SIGMA, dtype)}


def ps_proposal(z_prev, xs_t, y_t, transition):
    """Pitt & Shephard's proposal: N(x_hat, sigma^2) with x_hat the mean of the
    transition N(m, sigma^2) times exp of the first-order expansion of
    log p(y | x) = -x/2 - y^2 exp(-x)/2 around x = m, i.e.
    x_hat = m + sigma^2 (y^2 exp(-m) - 1) / 2."""
    m, s = transition.loc, transition.scale
    return dist.Normal(m + 0.5 * s**2 * (y_t**2 * jnp.exp(-m) - 1.0), s)


def ps_log_eta(z_prev, xs_t, y_t, transition):
    """log of the integral of N(x; m, sigma^2) times that expanded emission density:
    log N(y; 0, exp(m)) + a^2 sigma^2 / 2 with a = (y^2 exp(-m) - 1) / 2. (particles'
    ``StochVol.logeta`` is the same function up to a constant.)"""
    m, s = transition.loc, transition.scale
    a = 0.5 * (y_t**2 * jnp.exp(-m) - 1.0)
    return -0.5 * math.log(2 * math.pi) - 0.5 * m - 0.5 * y_t**2 * jnp.exp(-m) + 0.5 * a**2 * s**2


def grid_loglik(y, points=2001, width=10.0):
    """Exact log p(y_{1:T}) to quadrature accuracy: point-mass filter on a uniform grid of
    ``points`` over mu +- width stationary standard deviations (numpy float64). x_0 is
    stationary; every step applies the Gaussian transition (masses renormalised per row)
    and multiplies by N(y_t; 0, exp(x))."""
    sd0 = SIGMA / math.sqrt(1 - RHO**2)
    grid = np.linspace(MU - width * sd0, MU + width * sd0, points)
    K = np.exp(-0.5 * ((grid[None, :] - (MU + RHO * (grid[:, None] - MU))) / SIGMA) ** 2)
    K /= K.sum(axis=1, keepdims=True)
    p = np.exp(-0.5 * ((grid - MU) / sd0) ** 2)
    p /= p.sum()
    ll = 0.0
    for yt in np.asarray(y, np.float64):
        q = p @ K
        le = -0.5 * math.log(2 * math.pi) - 0.5 * grid - 0.5 * yt**2 * np.exp(-grid)
        c = le.max()
        u = q * np.exp(le - c)
        s = u.sum()
        ll += math.log(s) + c
        p = u / s
    return ll


def ssmppl_method(name, N):
    if name == "bootstrap":
        return BootstrapPF(N)
    if GuidedPF is None:
        return None
    if name == "guided":
        return GuidedPF(N, proposal=ps_proposal)
    return AuxiliaryPF(N, proposal=ps_proposal, log_eta=ps_log_eta)


def particles_fk(name, y):
    sv = pssm.StochVol(mu=MU, rho=RHO, sigma=SIGMA)
    cls = {"bootstrap": pssm.Bootstrap, "guided": pssm.GuidedPF, "auxiliary": pssm.AuxiliaryPF}[name]
    return cls(ssm=sv, data=np.asarray(y, np.float64))


def ssmppl_logliks(name, y, N, R, seed, dtype=np.float64):
    """(R,) log p_hat of ssmppl's filter, vmapped over R keys (float64 numpy)."""
    method = ssmppl_method(name, N)
    ssm = ssmppl.SSM(ssmppl.models.stochastic_volatility())
    f = jax.jit(jax.vmap(lambda k, p, yy: method.log_likelihood(ssm.state_space(p, yy), k), (0, None, None)))
    keys = jax.random.split(jax.random.PRNGKey(seed), R)
    return np.asarray(f(keys, sv_params(dtype), jnp.asarray(y, dtype)), np.float64)


def particles_logliks(name, y, N, R, seed):
    """(R,) log p_hat of particles' filter over R sequential runs (numpy's global generator)."""
    np.random.seed(seed)
    out = np.empty(R)
    for r in range(R):
        pf = particles.SMC(fk=particles_fk(name, y), N=N, collect="off")
        pf.run()
        out[r] = pf.logLt
    return out


def summarize(ll, exact):
    """Mean, sd, mean - exact, mean and standard error of p_hat / p (unbiased: 1), how many
    runs fall more than 10 nats below the exact value, median."""
    ll = np.asarray(ll, np.float64)
    ratio = np.exp(ll - exact)
    R = ll.size
    return dict(R=R, mean=ll.mean(), sd=ll.std(ddof=1), bias=ll.mean() - exact, ratio=ratio.mean(),
                ratio_se=ratio.std(ddof=1) / math.sqrt(R), lost=int(np.sum(ll < exact - 10)), median=np.median(ll))


def compare(a, b):
    """Difference of means a - b, its standard error and z."""
    d = a["mean"] - b["mean"]
    se = math.sqrt(a["sd"] ** 2 / a["R"] + b["sd"] ** 2 / b["R"])
    return d, se, d / se


# ---------------------------------------------------------------------------
# the two tables
# ---------------------------------------------------------------------------

FILTER_NAMES = {"bootstrap": "bootstrap", "guided": "guided (Pitt & Shephard)",
                "auxiliary": "auxiliary (Pitt & Shephard)"}


def run_accuracy(y, log):
    import time

    t0 = time.perf_counter()
    exact = grid_loglik(y, ARGS.grid_points)
    coarse = grid_loglik(y, (ARGS.grid_points + 1) // 2)
    log(f"  grid filter: log p(y) = {exact:.6f} ({ARGS.grid_points} points; {coarse:.6f} with "
        f"{(ARGS.grid_points + 1) // 2}), {time.perf_counter() - t0:.1f} s")
    rows = []
    for name in ARGS.filters:
        row = {"filter": name}
        for lib in ("ssmppl", "particles"):
            t0 = time.perf_counter()
            if lib == "ssmppl":
                if ssmppl_method(name, ARGS.accuracy_n) is None:
                    row[lib] = None
                    log(f"  {name} {lib}: not available ({GUIDED_ERROR})")
                    continue
                ll = ssmppl_logliks(name, y, ARGS.accuracy_n, ARGS.runs, ARGS.seed)
            else:
                ll = particles_logliks(name, y, ARGS.accuracy_n, ARGS.runs_particles, ARGS.seed)
            s = summarize(ll, exact)
            s["seconds"] = time.perf_counter() - t0
            row[lib] = s
            log(f"  {name:9s} {lib:9s} R = {s['R']:3d}: mean {s['mean']:.3f}, sd {s['sd']:.3f}, "
                f"mean - exact {s['bias']:+.3f}, p_hat/p {s['ratio']:.3f} +- {s['ratio_se']:.3f}, "
                f"{s['lost']} runs < exact - 10, median {s['median']:.3f} ({s['seconds']:.1f} s)")
        if row["ssmppl"] is not None:
            d, se, z = compare(row["ssmppl"], row["particles"])
            row["cmp"] = (d, se, z)
            log(f"  {name:9s} ssmppl - particles: {d:+.3f} +- {se:.3f} (z = {z:+.2f})")
        rows.append(row)
    return dict(exact=exact, coarse=coarse, rows=rows)


ACC_HEADER = ["filter", "library", "runs", "mean log p̂", "sd", "mean − exact", "−sd²/2", "mean p̂/p ± se",
              "runs < exact − 10", "median log p̂"]


def accuracy_rows(acc):
    out = []
    for row in acc["rows"]:
        for lib in ("ssmppl", "particles"):
            s = row[lib]
            if s is None:
                out.append([FILTER_NAMES[row["filter"]], lib, "not available"] + ["–"] * (len(ACC_HEADER) - 3))
                continue
            out.append([FILTER_NAMES[row["filter"]], lib, str(s["R"]), f"{s['mean']:.3f}", f"{s['sd']:.3f}",
                        f"{s['bias']:+.3f}", f"{-s['sd'] ** 2 / 2:+.3f}", f"{s['ratio']:.3f} ± {s['ratio_se']:.3f}",
                        str(s["lost"]), f"{s['median']:.3f}"])
    return out


CMP_HEADER = ["filter", "ssmppl − particles", "se", "z", "sd ratio ssmppl / particles"]


def compare_rows(acc):
    out = []
    for row in acc["rows"]:
        if "cmp" not in row:
            continue
        d, se, z = row["cmp"]
        out.append([FILTER_NAMES[row["filter"]], f"{d:+.3f}", f"{se:.3f}", f"{z:+.2f}",
                    f"{row['ssmppl']['sd'] / row['particles']['sd']:.2f}"])
    return out


def run_speed(y, log):
    T = len(y)
    ssm = ssmppl.SSM(ssmppl.models.stochastic_volatility())
    done = []
    for N in ARGS.sizes:
        calls = {}
        key = jax.random.PRNGKey(ARGS.seed)
        for dtype, tag in ((np.float64, "float64"), (np.float32, "float32")):
            params, yy = sv_params(dtype), jnp.asarray(y, dtype)
            method = BootstrapPF(N)
            calls[("ssmppl", tag)] = (lambda p, v, m: lambda: ssm.log_likelihood(p, v, method=m, key=key))(
                params, yy, method)
            raw = jax.jit((lambda m: lambda p, v, k: m.log_likelihood(ssm.state_space(p, v), k))(method))
            calls[("ssmppl raw", tag)] = (lambda f, p, v: lambda: f(p, v, key))(raw, params, yy)
        if N <= ARGS.particles_max_n:
            fk = particles_fk("bootstrap", y)

            def run_particles(collect):
                pf = particles.SMC(fk=fk, N=N, collect=collect)
                pf.run()
                return pf.logLt

            calls[("particles", "default")] = lambda: run_particles(None)
            calls[("particles", "collect='off'")] = lambda: run_particles("off")
        log(f"  N = {N:,}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = time_interleaved(calls, jax.block_until_ready, min_time=ARGS.min_time, max_reps=ARGS.max_reps,
                                   log=log)
        for k, r in res.items():
            if r["error"] is None:
                dt = np.asarray(r["result"]).dtype if k[0] != "particles" else "float64"
                log(f"    {k[0]:10s} {k[1]:14s} median {r['median']:.4f} s, {N * T / r['median']:.3g} "
                    f"particle-steps/s, log p_hat {float(r['result']):.3f} ({dt})")
            r["result"] = None
        done.append(dict(N=N, T=T, res=res))
    return done


SPEED_HEADER = ["N", "implementation", "precision", "median s", "particle-steps / s", "× particles default",
                "× particles collect='off'", "CPU s", "× particles default (CPU)", "first call s"]


def speed_rows(done):
    out = []
    for s in done:
        N, T, res = s["N"], s["T"], s["res"]
        good = lambda r: r is not None and r["error"] is None  # noqa: E731
        base = [res.get(("particles", "default")), res.get(("particles", "collect='off'"))]
        for k, r in res.items():
            if not good(r):
                out.append([f"{N:,}", k[0], k[1] if k[0] != "particles" else "float64", "failed"] + ["–"] * 6)
                continue
            ratios = [f"{b['median'] / r['median']:.2f}" if good(b) else "–" for b in base]
            cpu_ratio = f"{base[0]['cpu_median'] / r['cpu_median']:.2f}" if good(base[0]) else "–"
            out.append([f"{N:,}", k[0] if k[0] != "particles" else f"particles ({k[1]})",
                        k[1] if k[0] != "particles" else "float64", f"{r['median']:.4g}",
                        f"{N * T / r['median']:.3g}", *ratios, f"{r['cpu_median']:.4g}", cpu_ratio,
                        f"{r['first']:.2f}"])
    return out


ACC_LEGEND = (
    "N = {N:,} particles, T = {T} returns. Exact log p(y) = {exact:.4f} from a grid (point-mass) filter with "
    "{G} points over mu ± 10 stationary sd ({coarse:.4f} with half as many points). `mean p̂/p ± se`: "
    "p̂ is unbiased, so this must be 1 within a few se; `mean − exact` is negative by about Var[log p̂]/2 "
    "(column −sd²/2). `runs < exact − 10`: runs that lost the track at some step. ssmppl: `BootstrapPF(N)`, "
    "`GuidedPF(N, proposal=ps_proposal)`, `AuxiliaryPF(N, proposal=ps_proposal, log_eta=ps_log_eta)`, R runs "
    "in one `jax.vmap`; particles {version}: `SMC(fk=Bootstrap / GuidedPF / AuxiliaryPF(ssm=StochVol(...), "
    "data=y), N=N, collect='off').run()`, `logLt`, R sequential runs. Both: systematic resampling when "
    "ESS < N/2. The auxiliary filter's p̂ is heavy-tailed on these data (Pitt & Shephard's look-ahead "
    "misleads it at the large return y_144 in ~10% of runs, and rarely p̂/p is ~100): its sd, −sd²/2 and "
    "mean p̂/p ± se describe the sample, not the distribution. Comparison table: difference of the mean log p̂ with its standard error "
    "sqrt(sd₁²/R₁ + sd₂²/R₂) and z = difference / se."
)

SPEED_LEGEND = (
    "Bootstrap filter, systematic resampling when ESS < N/2, T = {T}. Median wall time of one whole filter "
    "after one untimed first call (compilation for ssmppl; last column), calls interleaved round-robin "
    "(≥ 2 each, until ~{min_time:g} s or {max_reps} calls). particle-steps/s = N·T / time. "
    "`× particles ...` = particles' time / this time (> 1: faster than particles). ssmppl = "
    "`ssm.log_likelihood(params, y, method=BootstrapPF(N), key=key)` (jit inside); ssmppl raw = "
    "`jax.jit(lambda p, y, k: BootstrapPF(N).log_likelihood(ssm.state_space(p, y), k))`; float32 rows get "
    "float32 params and data. particles {version} (numpy, float64): `SMC(fk=Bootstrap(ssm=StochVol(...), "
    "data=y), N=N).run()` with its defaults (store_history=False: no particle history is kept; collectors "
    "ESS, log-likelihood and resampling flag per step) and with `collect='off'` (no collectors). particles "
    "is not timed above N = {pmax:,}. CPU s = the process's CPU seconds per call (median), which other "
    "processes sharing the core stretch less than wall time; `× particles default (CPU)` is the ratio of "
    "those. Pinned to {cpus} core(s)."
)


def main():
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    y_all, source = load_returns()
    y = y_all[: ARGS.T] if ARGS.T else y_all
    T = len(y)
    device = device_label(jax, CPUS_USED, ALL_CPUS)
    pkg_dir = os.path.dirname(os.path.abspath(ssmppl.__file__))
    rev = git_rev(pkg_dir, pkg_dir)
    versions = library_versions(["jax", "jaxlib", "numpyro", "particles", "numpy"])
    versions.insert(1, f"ssmppl {ssmppl.__version__} ({rev})")
    pversion = library_versions(["particles"])[1].split(" ", 1)[-1]
    start = datetime.datetime.now()
    command = "python " + " ".join(sys.argv)
    if len(ALL_CPUS) < (os.cpu_count() or 1):
        command += f"  (started with CPU affinity {','.join(map(str, ALL_CPUS))})"
    loads = [os.getloadavg()[0]]
    print(f"SV particle filters: ssmppl vs particles — {start:%Y-%m-%d %H:%M}\ncommand: {command}\ndevice: {device}\n"
          f"versions: {', '.join(versions)}\ndata: {source}, T = {T}\n"
          f"machine 1-min load average at start: {loads[0]:.2f}", flush=True)
    if GUIDED_ERROR:
        ARGS.note.append(f"ssmppl's GuidedPF / AuxiliaryPF are not in this checkout ({GUIDED_ERROR}): "
                         "their ssmppl rows are missing")
    log = lambda s: print(s, flush=True)  # noqa: E731
    previous = None
    if ARGS.out and ARGS.append and os.path.exists(ARGS.out):
        with open(ARGS.out) as f:
            previous = f.read()
    acc = speed = None

    def write_markdown(finished):
        md = ["# Particle filters on the stochastic-volatility model: ssmppl vs particles"
              + ("" if finished else " — PARTIAL, still running"), "",
              f"- date: {start:%Y-%m-%d %H:%M}", f"- command: `{command}`", f"- device: {device}",
              "- versions: " + ", ".join(versions),
              f"- data: `{source}`, y = 100 diff(log rate), T = {T}; mu = 2 log 0.5992, rho = {RHO}, "
              f"sigma = {SIGMA}",
              "- 1-min load average at the start and after each table: " + ", ".join(f"{x:.2f}" for x in loads)
              + f" (machine-wide, {os.cpu_count()} cores; this benchmark uses {len(CPUS_USED)})"]
        md += [f"- note: {n}" for n in ARGS.note]
        if acc is not None:
            md += ["", "## Log-likelihood estimates (accuracy)", "", markdown_table(ACC_HEADER, accuracy_rows(acc)),
                   "", markdown_table(CMP_HEADER, compare_rows(acc)) if compare_rows(acc) else "", "",
                   ACC_LEGEND.format(N=ARGS.accuracy_n, T=T, exact=acc["exact"], coarse=acc["coarse"],
                                     G=ARGS.grid_points, version=pversion)]
        if speed is not None:
            md += ["", "## Speed (bootstrap filter)", "", markdown_table(SPEED_HEADER, speed_rows(speed)), "",
                   SPEED_LEGEND.format(T=T, min_time=ARGS.min_time, max_reps=ARGS.max_reps,
                                       pmax=int(ARGS.particles_max_n), version=pversion, cpus=len(CPUS_USED))]
        write_report(ARGS.out, "\n".join(md) + "\n", append=ARGS.append, previous=previous)

    if not ARGS.skip_accuracy:
        print(f"accuracy, N = {ARGS.accuracy_n}", flush=True)
        acc = run_accuracy(y, log)
        loads.append(os.getloadavg()[0])
        print()
        print(text_table(ACC_HEADER, accuracy_rows(acc)))
        if compare_rows(acc):
            print(text_table(CMP_HEADER, compare_rows(acc)))
        if ARGS.out:
            write_markdown(finished=ARGS.skip_speed)
    if not ARGS.skip_speed:
        print("speed (bootstrap)", flush=True)
        speed = run_speed(y, log)
        loads.append(os.getloadavg()[0])
        print()
        print(text_table(SPEED_HEADER, speed_rows(speed)))
    rev_end = git_rev(pkg_dir, pkg_dir)
    if rev_end != rev:
        ARGS.note.append(f"the ssmppl checkout changed during the run: {rev} at the start, {rev_end} at the end")
    if ARGS.out:
        write_markdown(finished=True)
        print(f"wrote {ARGS.out}")


if __name__ == "__main__":
    main()
