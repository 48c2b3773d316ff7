"""Benchmark parameter learning (EM, SGD) for a linear Gaussian SSM: ssmppl against dynamax.

Both libraries fit the same model to the same data in the same process:

  EM   ssmppl   SSM(linear_gaussian_ssm(dz, dy)).fit_em(params, ys, num_iters=N, progress_bar=False)
       dynamax  LinearGaussianSSM(dz, dy).fit_em(params, props, ys, num_iters=N, verbose=False)
  SGD  ssmppl   ssm.fit_sgd(params, ys, optimizer=optax.adam(1e-2), num_epochs=N, progress_bar=False)
       dynamax  model.fit_sgd(params, props, ys, optimizer=optax.adam(1e-2), num_epochs=N)

Setups: 'seed003' (dz=2, dy=10, T=100: the data of ``ssmppl.demo`` / ``ssmppl demo``,
true parameters ``ssmppl.demo.seed003_params``) and '32x32' (dz=dy=32, T=10,000,
a random stable model). Each simulates one data set with ``ssm.sample``; both
libraries start from dynamax's ``initialize`` parameters (F = 0.99 I, Q = R = 0.1 I,
H ~ N(0, 1), zero biases, initial N(0, I)), converted to ssmppl's dict.

Conventions: ssmppl's z_0 ~ N(m0, P0) is the state *before* the first
observation; dynamax's initial state is the one that emits y_1. dynamax is given
the shifted moments (F m0 + b, F P0 F' + Q), so both start from the same
distribution of the data: their first log-likelihoods (EM) and losses (SGD)
agree to rounding, and the script checks it. The parameterisations still differ
(ssmppl learns the moments of z_0 and T transitions, dynamax those of z_1 and
T-1 transitions; the unconstrained spaces of the covariances differ for SGD), so
after N iterations the log-likelihoods are close, not equal.

Timing excludes compilation by taking a difference. dynamax builds a new jitted
function inside every ``fit_em`` / ``fit_sgd`` call, so *every* call of it
re-traces and re-compiles (seconds); ssmppl compiles once per distinct
``num_iters`` (with ``progress_bar=False`` a fit is one compiled chunk of
``num_iters`` iterations). So each fit runs at a small N1 and a large N2:
ssmppl once untimed at each N (compilation), dynamax once untimed at N1 (one-off
start-up costs); then the timed calls, interleaved across libraries and N,
``--reps`` rounds; each time is the best over the rounds and ends in
``jax.block_until_ready``. From those,

    seconds per iteration = (t(N2) - t(N1)) / (N2 - N1)     (it/s = its inverse)
    per-call overhead     = t(N1) - N1 * seconds per iteration

The overhead is what a call costs besides its iterations: for dynamax mostly
its re-compilation, for ssmppl the model tracing and set-up in Python. N1, N2
may differ between the libraries (seed003 SGD: dynamax's epochs are a Python
loop, 10x slower than ssmppl's or more, so it runs fewer). To show that both do the
same work, the table gives each library's log-likelihood after K iterations,
K = the smaller N2: exact, at the parameters returned by a fit of K iterations,
or read off the longer fit's own curve at entry K (the parameters after K
updates).

The process pins itself to ``--cpus`` cores (default 1) before importing jax:
see benchmarks/README.md (jax 0.10 thread-pool stalls) and use ``taskset -c K``
to choose which core on a shared machine.

Usage:
    python benchmarks/learning.py                                    # both setups, ~10 min on one core
    python benchmarks/learning.py --setups seed003                   # the small setup only
    taskset -c 1 python benchmarks/learning.py --out benchmarks/results_learning_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import device_label, git_rev, pin_cpus  # noqa: E402
from _common import markdown_table, text_table  # noqa: E402

# Per setup: sizes, the (N1, N2) iteration counts per operation and library, timed rounds.
# N2 - N1 is chosen so that the iterations take several seconds, above the jitter of the
# per-call overhead (dynamax's re-compilation varies by a second or more on a loaded
# machine); dynamax's SGD epochs (a Python loop) are ~10-100x slower than ssmppl's at
# seed003, so there ssmppl runs more of them. N1 >= 2: XLA simplifies a loop of one
# iteration (and then constant-folds dynamax's closed-over data), so a one-iteration fit
# compiles differently and would bias the difference.
SETUPS = {
    "seed003": dict(dz=2, dy=10, T=100, reps=3,
                    em={"ssmppl": (10, 3010), "dynamax": (10, 3010)},
                    sgd={"ssmppl": (5, 1005), "dynamax": (5, 105)}),
    "32x32": dict(dz=32, dy=32, T=10_000, reps=3,
                  em={"ssmppl": (2, 8), "dynamax": (2, 8)},
                  sgd={"ssmppl": (2, 8), "dynamax": (2, 8)}),
}
LIBS = ("ssmppl", "dynamax")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    p.add_argument("--ops", nargs="+", choices=["em", "sgd"], default=["em", "sgd"])
    p.add_argument("--reps", type=int, default=None, help="timed rounds per setup (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", type=int, default=1, help="pin to this many CPU cores (default 1); 0 = all allowed")
    p.add_argument("--watchdog", type=float, default=900.0, help="abort with a traceback if one call hangs this long")
    p.add_argument("--out", type=str, default=None, help="also write the results as markdown to this file")
    p.add_argument("--note", type=str, action="append", default=[], help="free-text note for the output (repeatable)")
    return p.parse_args(argv)


ARGS = parse_args()
ALL_CPUS, CPUS_USED = pin_cpus(ARGS.cpus)  # before numpy / jax start their thread pools

import faulthandler  # noqa: E402

import numpy as np  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import ssmppl  # noqa: E402
import ssmppl.learning.em  # noqa: E402,F401  (imported now: the code measured is the code at the start)
import ssmppl.learning.sgd  # noqa: E402,F401
from ssmppl import SSM  # noqa: E402
from ssmppl.demo import seed003_params  # noqa: E402
from ssmppl.models import linear_gaussian_ssm  # noqa: E402

PACKAGE_DIR = os.path.dirname(os.path.abspath(ssmppl.__file__))
SSMPPL_REV = git_rev(PACKAGE_DIR, PACKAGE_DIR)  # "+dirty": uncommitted changes in the package itself

import dynamax  # noqa: E402
from dynamax.linear_gaussian_ssm import LinearGaussianSSM  # noqa: E402

LR = 1e-2

# ---------------------------------------------------------------------------
# problem
# ---------------------------------------------------------------------------


def random_stable_params(rng, dz, dy):
    """A random LGSSM in ssmppl's dict (spectral radius of F = 0.95)."""
    A = rng.standard_normal((dz, dz))
    W = rng.standard_normal((dz, dz)) / np.sqrt(dz)
    V = rng.standard_normal((dy, dy)) / np.sqrt(dy)
    p = {
        "initial_mean": rng.standard_normal(dz),
        "initial_cov": np.eye(dz),
        "F": 0.95 * A / np.max(np.abs(np.linalg.eigvals(A))),
        "b": 0.1 * rng.standard_normal(dz),
        "Q": 0.1 * (W @ W.T + np.eye(dz)),
        "H": rng.standard_normal((dy, dz)) / np.sqrt(dz),
        "d": 0.1 * rng.standard_normal(dy),
        "R": 0.2 * (V @ V.T + np.eye(dy)),
    }
    return {k: jnp.asarray(v) for k, v in p.items()}


def make_problem(name, seed):
    s = SETUPS[name]
    dz, dy, T = s["dz"], s["dy"], s["T"]
    k_true, k_data, k_init = jax.random.split(jax.random.PRNGKey(seed), 3)
    ssm = SSM(linear_gaussian_ssm(dz, dy))
    if name == "seed003":
        true = seed003_params(k_true)
    else:
        true = random_stable_params(np.random.default_rng([seed, dz, dy, T]), dz, dy)
    _, ys = ssm.sample(k_data, true, T=T)
    ys = jax.block_until_ready(jnp.asarray(ys, jnp.float64))

    model = LinearGaussianSSM(dz, dy)
    dparams, props = model.initialize(k_init)
    sparams = {
        "initial_mean": dparams.initial.mean,
        "initial_cov": dparams.initial.cov,
        "F": dparams.dynamics.weights,
        "b": dparams.dynamics.bias,
        "Q": dparams.dynamics.cov,
        "H": dparams.emissions.weights,
        "d": dparams.emissions.bias,
        "R": dparams.emissions.cov,
    }
    # dynamax's initial state emits y_1: give it the moments of ssmppl's z_1.
    F, b, Q = sparams["F"], sparams["b"], sparams["Q"]
    m1 = F @ sparams["initial_mean"] + b
    P1 = F @ sparams["initial_cov"] @ F.T + Q
    dparams = dparams._replace(initial=dparams.initial._replace(mean=m1, cov=0.5 * (P1 + P1.T)))
    return ssm, sparams, model, dparams, props, ys


# ---------------------------------------------------------------------------
# the four fits: each returns (fitted params, curve); curve[0] is at the start
# ---------------------------------------------------------------------------


def fits(ssm, sparams, model, dparams, props, ys):
    opt = optax.adam(LR)  # one optimiser object, reused: ssmppl caches its compiled fit per optimiser

    return {
        ("em", "ssmppl"): lambda n: ssm.fit_em(sparams, ys, num_iters=n, progress_bar=False),
        ("em", "dynamax"): lambda n: model.fit_em(dparams, props, ys, num_iters=n, verbose=False),
        ("sgd", "ssmppl"): lambda n: ssm.fit_sgd(sparams, ys, optimizer=opt, num_epochs=n, progress_bar=False),
        ("sgd", "dynamax"): lambda n: model.fit_sgd(dparams, props, ys, optimizer=opt, num_epochs=n),
    }


def timed(fn, n):
    faulthandler.dump_traceback_later(ARGS.watchdog, exit=True)
    try:
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(n))
        return time.perf_counter() - t0, out
    finally:
        faulthandler.cancel_dump_traceback_later()


def run_setup(name, log):
    s = SETUPS[name]
    reps = ARGS.reps or s["reps"]
    ssm, sparams, model, dparams, props, ys = make_problem(name, ARGS.seed)
    num_observed = ys.size
    fns = fits(ssm, sparams, model, dparams, props, ys)
    ll_dynamax_jit = jax.jit(lambda p, y: model.marginal_log_prob(p, y))
    exact_ll = {"ssmppl": lambda p: float(ssm.log_likelihood(p, ys)), "dynamax": lambda p: float(ll_dynamax_jit(p, ys))}
    rows, checks = [], []
    for op in ARGS.ops:
        ns = s[op]
        calls = [(lib, n) for lib in LIBS for n in ns[lib]]
        times = {c: [] for c in calls}
        outs = {}
        # Untimed: ssmppl compiles once per N; dynamax re-compiles in every call anyway,
        # and one call takes its one-off start-up costs (first traces of its helpers) out.
        for lib, n in [("ssmppl", ns["ssmppl"][0]), ("ssmppl", ns["ssmppl"][1]), ("dynamax", ns["dynamax"][0])]:
            dt, outs[lib, n] = timed(fns[op, lib], n)
            log(f"    {op:3s} {lib:7s} N={n:<5d} untimed first call {dt:8.2f} s")
        for r in range(reps):  # interleaved: N1 of both libraries, then N2 of both
            for i in (0, 1):
                for lib in LIBS:
                    n = ns[lib][i]
                    dt, outs[lib, n] = timed(fns[op, lib], n)
                    times[lib, n].append(dt)
                    log(f"    {op:3s} {lib:7s} N={n:<5d} round {r + 1}/{reps}  {dt:8.3f} s")

        # log-likelihood after K iterations, K = the smaller N2: exact at the returned parameters
        # where N2 = K, else read off the longer fit's curve (entry K is at the parameters after K
        # updates: log p(y) for EM, -loss * number of observations for SGD)
        K = min(ns[lib][1] for lib in LIBS)
        to_ll = (lambda c: c) if op == "em" else (lambda c: -c * num_observed)
        res = {}
        for lib in LIBS:
            n1, n2 = ns[lib]
            t1, t2 = min(times[lib, n1]), min(times[lib, n2])
            per_iter = (t2 - t1) / (n2 - n1)
            params_out, curve = outs[lib, n2]
            curve = np.asarray(curve)
            ll = exact_ll[lib](params_out) if n2 == K else float(to_ll(curve[K]))
            res[lib] = dict(per_iter=per_iter, overhead=t1 - n1 * per_iter, n1=n1, n2=n2, ll=ll, curve=to_ll(curve),
                            times={n1: times[lib, n1], n2: times[lib, n2]})
            log(f"    {op:3s} {lib:7s} {per_iter * 1e3:10.3f} ms/iteration, overhead {res[lib]['overhead']:.3f} s/call, "
                f"log-lik after {K} iterations {ll:.10g}")
        a, b = res["ssmppl"]["curve"], res["dynamax"]["curve"]
        what = "log-likelihood" if op == "em" else "log-likelihood (-loss x number of observations)"
        rel = lambda x, y: abs(x - y) / max(abs(y), 1e-300)
        checks.append(f"{name} {op.upper()}: starting {what}: ssmppl {a[0]:.12g}, dynamax {b[0]:.12g} "
                      f"(relative difference {rel(a[0], b[0]):.1e})")
        ks = [k for k in (1, 10, 100, 1000) if k < min(len(a), len(b))]
        if ks:
            checks.append(f"{name} {op.upper()}: {what} after k iterations (ssmppl / dynamax): "
                          + "; ".join(f"k={k}: {a[k]:.6f} / {b[k]:.6f}" for k in ks))
        rows.append((name, op, K, reps, res))
        for c in checks[-2:]:
            log("    check: " + c)
    return rows, checks


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------

HEADER = [
    "setup", "op", "N1→N2", "ssmppl it/s", "dynamax it/s", "ssmppl/dynamax",
    "ssmppl s/call", "dynamax s/call", "K", "ssmppl loglik after K", "dynamax loglik after K", "rel. diff",
]


def fmt_rate(per_iter):
    if not per_iter > 0:
        return "n/a"
    r = 1.0 / per_iter
    return f"{r:,.0f}" if r >= 100 else f"{r:.3g}"


def table_rows(rows):
    out = []
    for name, op, K, reps, res in rows:
        s, d = res["ssmppl"], res["dynamax"]
        ns = f"{s['n1']}→{s['n2']}"
        if (s["n1"], s["n2"]) != (d["n1"], d["n2"]):
            ns = f"{ns} / {d['n1']}→{d['n2']}"
        s_ = SETUPS[name]
        ratio = d["per_iter"] / s["per_iter"] if s["per_iter"] > 0 and d["per_iter"] > 0 else float("nan")
        out.append([
            f"{name} ({s_['dz']}×{s_['dy']}, T={s_['T']:,})",
            "EM iterations" if op == "em" else "SGD epochs",
            ns,
            fmt_rate(s["per_iter"]),
            fmt_rate(d["per_iter"]),
            f"{ratio:.2f}",
            f"{s['overhead']:.2f}",
            f"{d['overhead']:.2f}",
            f"{K:,}",
            f"{s['ll']:.6f}",
            f"{d['ll']:.6f}",
            f"{abs(s['ll'] - d['ll']) / max(abs(d['ll']), 1e-300):.1e}",
        ])
    return out


LEGEND = (
    "it/s = iterations (EM) or epochs (SGD, one full-data gradient step each) per second, from the "
    "difference of the best-of-rounds wall times of fits with N2 and N1 iterations: "
    "(N2 - N1) / (t(N2) - t(N1)). This excludes compilation, which dynamax repeats in every call "
    "(`fit_em` / `fit_sgd` jit a new function each time) and ssmppl does once per distinct N "
    "(untimed first calls). ssmppl/dynamax = ratio of it/s: > 1 means ssmppl is faster. "
    "s/call = per-call overhead t(N1) - N1 / (it/s): dynamax's is mostly its re-compilation, ssmppl's its "
    "Python set-up (model tracing); timing noise can make a small one negative. The calls are interleaved "
    "across libraries and N; on a loaded machine compare the ratios of one run rather than absolute rates. "
    "N1→N2: the two fit lengths (ssmppl / dynamax where they differ: at seed003 dynamax's SGD epochs are a "
    "Python loop, 10x slower or more, and run fewer). Loglik after K = log p(y) after K = the smaller N2 "
    "iterations: the exact log-likelihood at the parameters a fit of K iterations returned, or for the "
    "longer fit the entry K of its own curve (EM log-likelihoods; SGD -loss x number of observations). "
    "Both start from the same distribution of the data (dynamax given the moments of ssmppl's z_1; the "
    "starting values agree to ~1e-11, see the checks) but are parameterised differently (z_0 and T "
    "transitions vs z_1 and T-1 transitions; for SGD also different unconstrained covariance "
    "parameterisations), so after K iterations they are close, not identical. "
    "SGD: `optax.adam({lr:g})`, one optimiser object reused across calls. float64. "
    "All on the same {cpus} pinned core(s)."
)


def environment():
    import jaxlib
    import numpyro

    versions = [
        f"python {platform.python_version()}",
        f"ssmppl {ssmppl.__version__} ({SSMPPL_REV})",
        f"jax {jax.__version__}",
        f"jaxlib {jaxlib.__version__}",
        f"numpyro {numpyro.__version__}",
        f"optax {optax.__version__}",
        f"dynamax {dynamax.__version__}",
        f"numpy {np.__version__}",
    ]
    return device_label(jax, CPUS_USED, ALL_CPUS), versions


def main():
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    device, versions = environment()
    start = datetime.datetime.now()
    command = "python " + " ".join(sys.argv)
    if len(ALL_CPUS) < (os.cpu_count() or 1):  # started with a restricted affinity, e.g. under taskset
        command += f"  (started with CPU affinity {','.join(map(str, ALL_CPUS))}, as by `taskset -c {','.join(map(str, ALL_CPUS))}`)"
    cores = f"{len(CPUS_USED)} (core id(s) {', '.join(map(str, CPUS_USED))})"
    loads = [os.getloadavg()[0]]
    header = [
        f"Learning benchmark (EM, SGD), float64 — {start:%Y-%m-%d %H:%M}",
        f"command: {command}",
        f"device: {device}",
        f"cores pinned: {cores}",
        "versions: " + ", ".join(versions),
        f"XLA_FLAGS: {os.environ.get('XLA_FLAGS', '') or '(none)'}",
    ]
    print("\n".join(header))
    print(f"machine 1-min load average at start: {loads[0]:.2f} ({os.cpu_count()} cores)")
    for n in ARGS.note:
        print("note: " + n)
    print(flush=True)
    legend = LEGEND.format(lr=LR, cpus=len(CPUS_USED))
    all_rows, all_checks = [], []

    def write_markdown(done):
        elapsed = (datetime.datetime.now() - start).total_seconds()
        md = [
            "# Parameter learning benchmark: ssmppl vs dynamax (float64)" + ("" if done else " — PARTIAL, still running"),
            "",
            f"- date: {start:%Y-%m-%d %H:%M}",
            f"- command: `{command}`",
            f"- device: {device}",
            f"- cores pinned: {cores}",
            "- versions: " + ", ".join(versions),
            f"- XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '') or '(none)'}`",
            "- 1-min load average at the start, before each further setup and at the end: " + ", ".join(f"{x:.2f}" for x in loads)
            + f" (machine-wide, {os.cpu_count()} cores, this benchmark using {len(CPUS_USED)}: a load above "
            f"~{len(CPUS_USED)} means other processes competed); total {elapsed:.0f} s",
        ]
        md += [f"- note: {n}" for n in ARGS.note]
        md += ["", markdown_table(HEADER, table_rows(all_rows)), "", legend, "", "Checks (same data, same starting distribution):", ""]
        md += [f"- {c}" for c in all_checks]
        md += ["", "Timed calls, wall seconds per round (the table uses the best of each):", ""]
        for name, op, K, reps, res in all_rows:
            for lib in LIBS:
                md.append(f"- {name} {op.upper()} {lib}: " + "; ".join(
                    f"N={n}: " + ", ".join(f"{t:.3f}" for t in ts) for n, ts in res[lib]["times"].items()))
        with open(ARGS.out, "w") as f:
            f.write("\n".join(md) + "\n")

    for name in ARGS.setups:
        s = SETUPS[name]
        if all_rows:
            loads.append(os.getloadavg()[0])
        print(f"{name}: dz={s['dz']}, dy={s['dy']}, T={s['T']}   (1-min load average {loads[-1]:.2f})", flush=True)
        rows, checks = run_setup(name, lambda m: print(m, flush=True))
        all_rows += rows
        all_checks += checks
        if ARGS.out:
            write_markdown(done=False)
    loads.append(os.getloadavg()[0])
    elapsed = (datetime.datetime.now() - start).total_seconds()
    rev_end = git_rev(PACKAGE_DIR, PACKAGE_DIR)
    if rev_end != SSMPPL_REV:
        ARGS.note.append(f"the ssmppl checkout changed during the run: {SSMPPL_REV} at the start (the code "
                         f"measured), {rev_end} at the end")
        print("note: " + ARGS.note[-1])

    print()
    print("\n".join(header))
    print(text_table(HEADER, table_rows(all_rows)))
    print()
    print(legend)
    for c in all_checks:
        print("check: " + c)
    print("1-min load average at the start, before each setup and at the end: " + ", ".join(f"{x:.2f}" for x in loads)
          + f"; total benchmark time {elapsed:.0f} s")
    if ARGS.out:
        write_markdown(done=True)
        print(f"wrote {ARGS.out}")


if __name__ == "__main__":
    main()
