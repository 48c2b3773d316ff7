"""Benchmark ssmppl's exact Kalman filter / RTS smoother against dynamax and statsmodels.

For each problem size (T steps, dz state size, dy emission size) one random
stable linear Gaussian model is drawn and one data set simulated (numpy, fixed
seed); every library then filters and smooths the same data:

  ssmppl       SSM(linear_gaussian_ssm).filter/smooth, Kalman(parallel=False/True)
  dynamax      lgssm_filter/lgssm_smoother (sequential) and
               parallel_inference.lgssm_filter/lgssm_smoother, jit-compiled here
  statsmodels  KalmanSmoother.filter()/smooth() (Cython, always float64)

Conventions: in ssmppl z_0 ~ N(m0, P0) is the state *before* the first
observation; dynamax and statsmodels start from the state that emits y_1, so
they are given the shifted moments (F m0 + b, F P0 F' + Q). Before timing, the
log-likelihoods (and smoothed means) of all implementations are compared and
the check is printed.

Timing: one untimed call first (compilation for JAX), then best-of-k wall time
with ``jax.block_until_ready``. The timed calls of all implementations of one
size are interleaved round-robin, so that load from other processes on a shared
machine hits them alike; k adapts per implementation: repeat until ~``--min-time``
seconds or ``--max-reps`` reps, at least 2 reps. A call slower than
``--single-shot`` seconds is not repeated (statsmodels at T=1e5, dz=32: its
first call already counts, it does not compile) and is marked ``*``.

The process pins itself to ``--cpus`` cores (default 1) before importing numpy
and jax; see the comment on jax 0.10 below and benchmarks/README.md.

Usage:
    python benchmarks/kalman.py                       # all sizes, float64
    python benchmarks/kalman.py --sizes small         # T = 1e3, 1e4 only
    python benchmarks/kalman.py --float32 --skip-statsmodels
    python benchmarks/kalman.py --out benchmarks/results_cpu.md
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

# ---------------------------------------------------------------------------
# command line (parsed before importing numpy / jax: CPU pinning, precision and
# XLA flags must be set before those libraries start their thread pools)
# ---------------------------------------------------------------------------

SIZES = {
    "small": [1_000, 10_000],
    "full": [1_000, 10_000, 100_000],
}
DIMS = [(2, 10), (32, 32)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", choices=sorted(SIZES), default="full", help="'small': T = 1e3, 1e4 only")
    p.add_argument("--T", type=int, nargs="+", default=None, help="explicit list of T (overrides --sizes)")
    p.add_argument(
        "--dims", type=str, nargs="+", default=None, help="explicit (dz,dy) pairs as DZxDY, e.g. 2x10 32x32"
    )
    p.add_argument("--float32", action="store_true", help="run JAX code in float32 (default float64)")
    p.add_argument("--skip-statsmodels", action="store_true")
    p.add_argument("--skip-dynamax", action="store_true")
    p.add_argument("--skip-parallel", action="store_true", help="skip the parallel (associative scan) variants")
    p.add_argument("--min-time", type=float, default=1.0, help="target total timed seconds per measurement")
    p.add_argument("--max-reps", type=int, default=5)
    p.add_argument("--single-shot", type=float, default=60.0, help="calls slower than this are measured once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cpus",
        type=int,
        default=1,
        help="pin the process (JAX, BLAS, statsmodels) to this many CPU cores; 0 = all available. "
        "Default 1: see the note on jax 0.10 below",
    )
    p.add_argument(
        "--no-xla-workaround",
        action="store_true",
        help="with --cpus > 1, do not add --xla_cpu_enable_concurrency_optimized_scheduler=false to XLA_FLAGS",
    )
    p.add_argument(
        "--watchdog",
        type=float,
        default=1800.0,
        help="abort (with a traceback) if one measurement takes longer than this many seconds",
    )
    p.add_argument("--out", type=str, default=None, help="also write the results as markdown to this file")
    p.add_argument("--note", type=str, action="append", default=[], help="free-text note for the output (repeatable)")
    return p.parse_args(argv)


ARGS = parse_args()

# jax 0.10.x on CPU: batched LAPACK custom calls (the vmapped Cholesky and
# triangular solves of the *parallel* filters/smoothers, ssmppl's and dynamax's
# alike) split their batch over XLA's intra-op thread pool and block a pool
# worker until the pieces are done (jaxlib ``ParallelBatchMap``). With a small
# pool (2 cores here) two such calls can occupy every worker: the execution
# then stalls for seconds or deadlocks for good (``block_until_ready`` never
# returns; native stacks show every worker in ``BlockingCounter::Wait`` under
# ``lapack_dtrsm_ffi``). With a single core the pool has one thread and the
# batch runs inline, which is reliable. Hence the default ``--cpus 1``; with
# more cores the memory-optimised XLA scheduler below makes it rarer (it does
# not remove it: measurements may stall, and ``--watchdog`` aborts a hung run).
ALL_CPUS, CPUS_USED = pin_cpus(ARGS.cpus)
XLA_WORKAROUND = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
if (
    len(CPUS_USED) > 1
    and not ARGS.no_xla_workaround
    and "concurrency_optimized_scheduler" not in os.environ.get("XLA_FLAGS", "")
):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + XLA_WORKAROUND).strip()

import numpy as np  # noqa: E402

import faulthandler  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", not ARGS.float32)

import jax.numpy as jnp  # noqa: E402

import ssmppl  # noqa: E402

try:
    import dynamax
    from dynamax.linear_gaussian_ssm import inference as dmx_seq
    from dynamax.linear_gaussian_ssm import parallel_inference as dmx_par
    from dynamax.linear_gaussian_ssm.inference import (
        ParamsLGSSM,
        ParamsLGSSMDynamics,
        ParamsLGSSMEmissions,
        ParamsLGSSMInitial,
    )

    HAVE_DYNAMAX, DYNAMAX_ERROR = True, None
except Exception as e:  # pragma: no cover - depends on the environment
    HAVE_DYNAMAX, DYNAMAX_ERROR = False, f"{type(e).__name__}: {e}"

try:
    import statsmodels
    from statsmodels.tsa.statespace.kalman_smoother import (
        SMOOTHER_STATE,
        SMOOTHER_STATE_AUTOCOV,
        SMOOTHER_STATE_COV,
        KalmanSmoother,
    )

    HAVE_STATSMODELS, STATSMODELS_ERROR = True, None
except Exception as e:  # pragma: no cover
    HAVE_STATSMODELS, STATSMODELS_ERROR = False, f"{type(e).__name__}: {e}"

DTYPE = np.float32 if ARGS.float32 else np.float64
CHECK_RTOL = 1e-3 if ARGS.float32 else 1e-6

# ---------------------------------------------------------------------------
# problem
# ---------------------------------------------------------------------------


def random_model(rng, dz, dy):
    """A random stable LGSSM (float64 numpy): spectral radius of F = 0.95."""
    A = rng.standard_normal((dz, dz))
    F = 0.95 * A / np.max(np.abs(np.linalg.eigvals(A)))
    W = rng.standard_normal((dz, dz)) / np.sqrt(dz)
    Q = 0.1 * (W @ W.T + np.eye(dz))
    V = rng.standard_normal((dy, dy)) / np.sqrt(dy)
    R = 0.2 * (V @ V.T + np.eye(dy))
    return {
        "initial_mean": rng.standard_normal(dz),
        "initial_cov": np.eye(dz),
        "F": F,
        "b": 0.1 * rng.standard_normal(dz),
        "Q": Q,
        "H": rng.standard_normal((dy, dz)) / np.sqrt(dz),
        "d": 0.1 * rng.standard_normal(dy),
        "R": R,
    }


def simulate(rng, p, T):
    """(states (T, dz), emissions (T, dy)) with z_0 ~ N(m0, P0) before y_1."""
    dz, dy = p["H"].shape[1], p["H"].shape[0]
    LQ, LR = np.linalg.cholesky(p["Q"]), np.linalg.cholesky(p["R"])
    eps_z = rng.standard_normal((T, dz)) @ LQ.T
    eps_y = rng.standard_normal((T, dy)) @ LR.T
    z = p["initial_mean"] + np.linalg.cholesky(p["initial_cov"]) @ rng.standard_normal(dz)
    zs = np.empty((T, dz))
    F, b = p["F"], p["b"]
    for t in range(T):
        z = F @ z + b + eps_z[t]
        zs[t] = z
    ys = zs @ p["H"].T + p["d"] + eps_y
    return zs, ys


def shifted_initial(p):
    """Moments of z_1 (the state emitting y_1), the peers' initial state."""
    return p["F"] @ p["initial_mean"] + p["b"], p["F"] @ p["initial_cov"] @ p["F"].T + p["Q"]


# ---------------------------------------------------------------------------
# the implementations: each maker returns a zero-argument callable
# ---------------------------------------------------------------------------


def make_ssmppl(p, ys):
    dz, dy = p["H"].shape[1], p["H"].shape[0]
    ssm = ssmppl.SSM(ssmppl.models.linear_gaussian_ssm(dz, dy))
    params = {k: jnp.asarray(v, DTYPE) for k, v in p.items()}
    y = jnp.asarray(ys, DTYPE)
    seq, par = ssmppl.Kalman(parallel=False), ssmppl.Kalman(parallel=True)
    fns = {
        ("ssmppl", "seq", "filter"): lambda: ssm.filter(params, y, method=seq),
        ("ssmppl", "seq", "smoother"): lambda: ssm.smooth(params, y, method=seq),
        ("ssmppl", "par", "filter"): lambda: ssm.filter(params, y, method=par),
        ("ssmppl", "par", "smoother"): lambda: ssm.smooth(params, y, method=par),
    }
    out = {"ll": lambda r: float(r.marginal_loglik), "smoothed": lambda r: np.asarray(r.smoothed_means)}
    return fns, out


def make_dynamax(p, ys):
    m1, P1 = shifted_initial(p)
    a = lambda x: jnp.asarray(x, DTYPE)
    dz, dy = p["H"].shape[1], p["H"].shape[0]
    params = ParamsLGSSM(
        initial=ParamsLGSSMInitial(mean=a(m1), cov=a(P1)),
        dynamics=ParamsLGSSMDynamics(
            weights=a(p["F"]), bias=a(p["b"]), input_weights=a(np.zeros((dz, 0))), cov=a(p["Q"])
        ),
        emissions=ParamsLGSSMEmissions(
            weights=a(p["H"]), bias=a(p["d"]), input_weights=a(np.zeros((dy, 0))), cov=a(p["R"])
        ),
    )
    y = a(ys)
    jf_seq, js_seq = jax.jit(dmx_seq.lgssm_filter), jax.jit(dmx_seq.lgssm_smoother)
    jf_par, js_par = jax.jit(dmx_par.lgssm_filter), jax.jit(dmx_par.lgssm_smoother)
    fns = {
        ("dynamax", "seq", "filter"): lambda: jf_seq(params, y),
        ("dynamax", "seq", "smoother"): lambda: js_seq(params, y),
        ("dynamax", "par", "filter"): lambda: jf_par(params, y),
        ("dynamax", "par", "smoother"): lambda: js_par(params, y),
    }
    out = {"ll": lambda r: float(r.marginal_loglik), "smoothed": lambda r: np.asarray(r.smoothed_means)}
    return fns, out


def make_statsmodels(p, ys):
    dz, dy = p["H"].shape[1], p["H"].shape[0]
    m1, P1 = shifted_initial(p)
    ks = KalmanSmoother(k_endog=dy, k_states=dz, k_posdef=dz)
    ks.bind(np.ascontiguousarray(ys, dtype=np.float64))  # (T, dy) C-contiguous
    ks.design = p["H"]
    ks.obs_intercept = p["d"][:, None]
    ks.obs_cov = p["R"]
    ks.transition = p["F"]
    ks.state_intercept = p["b"][:, None]
    ks.selection = np.eye(dz)
    ks.state_cov = p["Q"]
    ks.initialize_known(m1, P1)
    # The same outputs as ssmppl's smoother: smoothed moments and lag-one
    # cross-covariances (statsmodels' default also computes disturbances).
    ks.smoother_output = SMOOTHER_STATE | SMOOTHER_STATE_COV | SMOOTHER_STATE_AUTOCOV
    fns = {
        ("statsmodels", "seq", "filter"): lambda: ks.filter(),
        ("statsmodels", "seq", "smoother"): lambda: ks.smooth(),
    }
    def cleanup():
        # statsmodels keeps its Cython filter/smoother (and their T x dz x dz work
        # arrays) on the model object between calls. Drop them after every call,
        # outside the timed region: each call then allocates its storage afresh, as
        # the JAX implementations do, and the memory is free for the next one.
        ks._kalman_filters.clear()
        ks._kalman_smoothers.clear()

    out = {
        "ll": lambda r: float(r.llf),
        "smoothed": lambda r: np.asarray(r.smoothed_state).T,
        "cleanup": cleanup,
    }
    return fns, out


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------


def block(x):
    return jax.block_until_ready(x) if not hasattr(x, "llf") else x


def timed_call(fn):
    """(seconds, result) of one call, results blocked on; aborts the process if it hangs."""
    faulthandler.dump_traceback_later(ARGS.watchdog, exit=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            result = block(fn())
            return time.perf_counter() - t0, result
    finally:
        faulthandler.cancel_dump_traceback_later()


def done_repeating(times):
    """Best-of-k stopping rule: >= 2 reps, then until ~min_time in total or max_reps."""
    if times and times[-1] > ARGS.single_shot:
        return True
    return len(times) >= 2 and (sum(times) >= ARGS.min_time or len(times) >= ARGS.max_reps)


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------


def environment():
    commit = git_rev(__file__)
    import jaxlib
    import numpyro

    versions = [
        f"python {platform.python_version()}",
        f"ssmppl {ssmppl.__version__} ({commit})",
        f"jax {jax.__version__}",
        f"jaxlib {jaxlib.__version__}",
        f"numpyro {numpyro.__version__}",
        f"numpy {np.__version__}",
        f"dynamax {dynamax.__version__}" if HAVE_DYNAMAX else "dynamax: not installed",
        f"statsmodels {statsmodels.__version__}" if HAVE_STATSMODELS else "statsmodels: not installed",
    ]
    device = device_label(jax, CPUS_USED, ALL_CPUS)
    return device, versions


def fmt_ms(entry):
    if entry is None:
        return "–"
    if isinstance(entry, str):
        return entry
    s, reps, single = entry
    ms = 1e3 * s
    txt = f"{ms:.3g}" if ms < 100 else f"{ms:,.0f}"
    return txt + ("*" if single else "")


def fmt_ratio(peer, ours):
    if not isinstance(peer, tuple) or not isinstance(ours, tuple):
        return "–"
    return f"{peer[0] / ours[0]:.2f}"


HEADER = [
    "T",
    "dz×dy",
    "op",
    "ssmppl seq",
    "dynamax seq",
    "dmx/ssm seq",
    "ssmppl par",
    "dynamax par",
    "dmx/ssm par",
    "statsmodels",
    "sm/ssm seq",
    "ssmppl seq µs/step",
]


def table_rows(results):
    rows = []
    for (T, dz, dy), r in results.items():
        for op in ("filter", "smoother"):
            ss, sp = r.get(("ssmppl", "seq", op)), r.get(("ssmppl", "par", op))
            ds, dp = r.get(("dynamax", "seq", op)), r.get(("dynamax", "par", op))
            sm = r.get(("statsmodels", "seq", op))
            per_step = f"{1e6 * ss[0] / T:.2f}" if isinstance(ss, tuple) else "–"
            rows.append(
                [
                    f"{T:.0e}".replace("e+0", "e"),
                    f"{dz}×{dy}",
                    op,
                    fmt_ms(ss),
                    fmt_ms(ds),
                    fmt_ratio(ds, ss),
                    fmt_ms(sp),
                    fmt_ms(dp),
                    fmt_ratio(dp, sp),
                    fmt_ms(sm),
                    fmt_ratio(sm, ss),
                    per_step,
                ]
            )
    return rows


LEGEND = (
    "Times are best-of-k wall-clock milliseconds after one untimed compile/warm-up call; the timed calls of "
    "all implementations of one size are interleaved round-robin (k adaptive per implementation: until "
    "~{min_time:g} s or {max_reps} reps, at least 2); `*` = a single call slower than {single:g} s, measured "
    "once. Ratios are peer time / ssmppl time: > 1 means ssmppl is faster. "
    "'seq' = sequential scan, 'par' = parallel-in-time associative scan (Särkkä & García-Fernández). "
    "'smoother' = filter + RTS smoother. statsmodels is always float64 (Cython, conventional filter); "
    "its smoother computes smoothed states, covariances and lag-one autocovariances. "
    "µs/step = ssmppl sequential time / T. All libraries are pinned to the same {cpus} core(s) "
    "(--cpus; the default 1 avoids a jax 0.10 thread-pool stall, see the script); statsmodels runs in a "
    "child process (an out-of-memory kill there costs only its columns), its calls timed inside it. "
    "OOM = killed for lack of memory."
)


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def relative(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


class LocalImpl:
    """A JAX implementation, run in this process."""

    def __init__(self, key, fn, out):
        self.key, self.fn, self.out = key, fn, out

    def call(self, want_result=False):
        """(seconds, loglik, smoothed means) of one call; the last two only if wanted."""
        dt, result = timed_call(self.fn)
        ll = self.out["ll"](result) if want_result else None
        sm = self.out["smoothed"](result) if want_result and self.key[2] == "smoother" else None
        del result
        return dt, ll, sm

    def close(self):
        pass


def _statsmodels_worker(conn, p, ys):
    """Child process: serve statsmodels filter/smoother calls (timed here) on one data set."""
    try:  # if memory runs out, let the kernel kill this process rather than the benchmark
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    fns, out = make_statsmodels(p, ys)
    while True:
        msg = conn.recv()
        if msg is None:
            return
        key, want = msg
        t0 = time.perf_counter()
        result = fns[key]()
        dt = time.perf_counter() - t0
        ll = out["ll"](result) if want else None
        sm = out["smoothed"](result) if want and key[2] == "smoother" else None
        del result
        out["cleanup"]()
        conn.send((dt, ll, sm))


class StatsmodelsWorker:
    """statsmodels in a separate process (spawned, pinned like this one).

    Its smoother keeps ~25 T x dz x dz arrays (about 20 GB at T=1e5, dz=32);
    in a child process an out-of-memory kill costs only those columns.
    """

    def __init__(self, p, ys):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_statsmodels_worker, args=(child, p, ys), daemon=True)
        self.proc.start()
        child.close()

    def impls(self):
        return [RemoteImpl(self, ("statsmodels", "seq", op)) for op in ("filter", "smoother")]

    def request(self, key, want):
        try:
            self.conn.send((key, want))
            if not self.conn.poll(ARGS.watchdog):
                self.proc.kill()
                raise TimeoutError(f"no answer within --watchdog {ARGS.watchdog:g} s")
            return self.conn.recv()
        except (EOFError, OSError):  # the worker died (BrokenPipe, ConnectionReset, EOF)
            self.proc.join(5)
            code = self.proc.exitcode
            if code == -9:
                raise MemoryError("statsmodels worker killed (SIGKILL: out of memory)") from None
            raise RuntimeError(f"statsmodels worker died, exit code {code}") from None

    def close(self):
        if self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()


class RemoteImpl:
    def __init__(self, worker, key):
        self.worker, self.key = worker, key

    def call(self, want_result=False):
        return self.worker.request(self.key, want_result)

    def close(self):
        self.worker.close()


def run_size(T, dz, dy, log):
    rng = np.random.default_rng([ARGS.seed, T, dz, dy])
    p = random_model(rng, dz, dy)
    _, ys = simulate(rng, p, T)
    impls = []
    for lib, maker, have in [("ssmppl", make_ssmppl, True), ("dynamax", make_dynamax, HAVE_DYNAMAX and not ARGS.skip_dynamax)]:
        if have:
            fns, out = maker(p, ys)
            impls += [LocalImpl(key, fn, out) for key, fn in fns.items()]
    if HAVE_STATSMODELS and not ARGS.skip_statsmodels:
        impls += StatsmodelsWorker(p, ys).impls()
    if ARGS.skip_parallel:
        impls = [im for im in impls if im.key[1] != "par"]

    timings, lls, smoothed, times = {}, {}, {}, {}

    def failed(key, e):
        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        log(f"    {'/'.join(key):28s} FAILED ({msg})")
        oom = isinstance(e, MemoryError) or any(w in msg for w in ("out of memory", "RESOURCE_EXHAUSTED"))
        timings[key] = "OOM" if oom else "failed"
        times.pop(key, None)

    # 1. One untimed call each (compilation for JAX); keep the log-likelihood and
    #    smoothed means for the agreement check.
    active = []
    for im in impls:
        try:
            first, lls[im.key], sm = im.call(want_result=True)
        except Exception as e:  # e.g. out of memory in the largest runs
            failed(im.key, e)
            continue
        if sm is not None:
            smoothed[im.key] = sm
        log(f"    {'/'.join(im.key):28s} first call {first:8.2f} s   loglik {lls[im.key]:.10g}")
        if im.key[0] == "statsmodels" and first > ARGS.single_shot:
            times[im.key] = [first]  # no compilation: this slow first call is the measurement
        else:
            times[im.key] = []
            active.append(im)

    # 2. Timed calls, interleaved round-robin over the implementations so that a
    #    change of machine load (shared machine) hits all of them alike.
    while active:
        for im in active:
            try:
                times[im.key].append(im.call()[0])
            except Exception as e:
                failed(im.key, e)
        active = [im for im in active if im.key in times and not done_repeating(times[im.key])]
    for im in impls:
        im.close()
    for key, ts in times.items():
        one = len(ts) == 1
        timings[key] = (min(ts), len(ts), one)
        log(
            f"    {'/'.join(key):28s} {1e3 * min(ts):12.3f} ms  best of {len(ts)}"
            + (" (single call)" if one else f", median {1e3 * float(np.median(ts)):.3f} ms")
        )

    # Agreement check (all on the same data; peers given the shifted initial state).
    ref = lls.get(("ssmppl", "seq", "filter"))
    ok, size_checks = True, []
    if ref is not None:
        worst = max((relative(v, ref) for v in lls.values()), default=0.0)
        ok = worst <= CHECK_RTOL
        size_checks.append(
            f"max relative log-likelihood difference vs ssmppl seq filter = {worst:.2e} "
            f"(tolerance {CHECK_RTOL:g}) -> {'OK' if ok else 'MISMATCH'}"
        )
        ms_ref = smoothed.get(("ssmppl", "seq", "smoother"))
        if ms_ref is not None:
            diffs = {"/".join(k[:2]): float(np.max(np.abs(v - ms_ref))) for k, v in smoothed.items()}
            size_checks.append(
                "max |smoothed mean - ssmppl seq| = " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
            )
    for c in size_checks:
        log("    check: " + c)
    return timings, ok, size_checks


def main():
    device, versions = environment()
    Ts = ARGS.T or SIZES[ARGS.sizes]
    dims = [tuple(int(x) for x in s.lower().split("x")) for s in ARGS.dims] if ARGS.dims else DIMS
    precision = "float32" if ARGS.float32 else "float64"
    notes = list(ARGS.note)
    if not HAVE_DYNAMAX:
        notes.append(f"dynamax not available ({DYNAMAX_ERROR}): its columns are skipped.")
    elif ARGS.skip_dynamax:
        notes.append("dynamax skipped (--skip-dynamax).")
    if not HAVE_STATSMODELS:
        notes.append(f"statsmodels not available ({STATSMODELS_ERROR}): its columns are skipped.")
    elif ARGS.skip_statsmodels:
        notes.append("statsmodels skipped (--skip-statsmodels).")
    if ARGS.float32 and HAVE_STATSMODELS and not ARGS.skip_statsmodels:
        notes.append("statsmodels runs in float64 even with --float32.")
    xla_flags = os.environ.get("XLA_FLAGS", "") or "(none)"

    start = datetime.datetime.now()
    loads = [os.getloadavg()[0]]
    header = [
        f"Kalman benchmark — {precision} — {start:%Y-%m-%d %H:%M}",
        f"device: {device}",
        "versions: " + ", ".join(versions),
        f"XLA_FLAGS: {xla_flags}",
    ]
    print("\n".join(header))
    print(f"machine 1-min load average at start: {loads[0]:.2f} ({os.cpu_count()} cores)")
    for n in notes:
        print("note: " + n)
    print(flush=True)

    results, checks, all_ok = {}, [], True
    legend = LEGEND.format(
        min_time=ARGS.min_time, max_reps=ARGS.max_reps, single=ARGS.single_shot, cpus=len(CPUS_USED)
    )

    def write_markdown(done):
        elapsed = (datetime.datetime.now() - start).total_seconds()
        rows = table_rows(results)
        md = [
            f"# Kalman filter / smoother benchmark ({precision})" + ("" if done else " — PARTIAL, still running"),
            "",
            f"- date: {start:%Y-%m-%d %H:%M}",
            f"- command: `python {' '.join(sys.argv)}`",
            f"- device: {device}",
            "- versions: " + ", ".join(versions),
            f"- XLA_FLAGS: `{xla_flags}`",
            "- 1-min load average sampled before each size: "
            + ", ".join(f"{x:.2f}" for x in loads)
            + f" (machine-wide, {os.cpu_count()} cores, this benchmark itself using {len(CPUS_USED)}: a load above "
            f"~{os.cpu_count()} means other processes competed for the cores); total {elapsed:.0f} s",
            f"- log-likelihood agreement across implementations (relative tolerance {CHECK_RTOL:g}): "
            + ("all OK" if all_ok else "MISMATCH, see the checks below"),
        ]
        md += [f"- note: {n}" for n in notes]
        md += ["", markdown_table(HEADER, rows), "", legend, "", "Checks (same data, peers given the shifted initial state):", ""]
        md += [f"- {c}" for c in checks]
        with open(ARGS.out, "w") as f:
            f.write("\n".join(md) + "\n")

    for T in Ts:
        for dz, dy in dims:
            if len(results):
                loads.append(os.getloadavg()[0])
            print(f"T={T}, dz={dz}, dy={dy}   (1-min load average {loads[-1]:.2f})", flush=True)
            timings, ok, size_checks = run_size(T, dz, dy, lambda s: print(s, flush=True))
            results[(T, dz, dy)] = timings
            checks.extend(f"T={T}, {dz}×{dy}: {c}" for c in size_checks)
            all_ok &= ok
            if ARGS.out:
                write_markdown(done=False)
    loads.append(os.getloadavg()[0])
    elapsed = (datetime.datetime.now() - start).total_seconds()

    rows = table_rows(results)
    print()
    print(f"Kalman filter / RTS smoother, {precision}, times in ms — device: {device}")
    print("versions: " + ", ".join(versions))
    print(text_table(HEADER, rows))
    print()
    print(legend)
    print("1-min load average before each size: " + ", ".join(f"{x:.2f}" for x in loads) +
          f"; total benchmark time {elapsed:.0f} s")
    if not all_ok:
        print("WARNING: some implementations disagree on the log-likelihood; see the checks above.")
    if ARGS.out:
        write_markdown(done=True)
        print(f"wrote {ARGS.out}")


if __name__ == "__main__":
    main()
