"""kalman: the exact Kalman filter / RTS smoother against dynamax and statsmodels.

For each size (T, dz, dy) one random stable linear Gaussian model (spectral radius of F = 0.95)
and one data set (numpy, fixed seed); every implementation filters and smooths the same data:

  ssmppl seq / par   SSM(models.linear_gaussian_ssm(dz, dy)).filter / smooth(params, y,
                     method=Kalman(parallel=False / True))
  dynamax seq / par  jax.jit(lgssm_filter / lgssm_smoother), sequential and parallel_inference
  statsmodels        KalmanSmoother.filter() / .smooth() (Cython, always float64), in a child
                     process that times its own calls: its smoother keeps ~25 T x dz x dz arrays
                     (~20 GB at T = 1e5, dz = 32), and an out-of-memory kill there costs only its
                     columns

ssmppl's z_0 precedes y_1; dynamax and statsmodels start at the state that emits y_1 and get
its moments (F m0 + b, F P0 F' + Q). Check: every log-likelihood within 1e-6 relative of
ssmppl's sequential filter (1e-3 in float32).
"""

from __future__ import annotations

import multiprocessing
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

import ssmppl

from . import harness, peers

TITLE = "Kalman filter / RTS smoother: ssmppl vs dynamax and statsmodels"
PEERS = ("dynamax", "statsmodels")
SIZES = {"small": [1_000, 10_000], "full": [1_000, 10_000, 100_000]}
DIMS = [(2, 10), (32, 32)]


def arguments(p):
    p.add_argument("--sizes", choices=sorted(SIZES), default="full", help="'small': T = 1e3, 1e4 (--short: 1e3)")
    p.add_argument("--T", type=int, nargs="+", help="explicit T values (override --sizes)")
    p.add_argument("--dims", nargs="+", help="(dz, dy) pairs as DZxDY, e.g. 2x10 32x32")
    p.add_argument("--ops", nargs="+", choices=["filter", "smoother"], default=["filter", "smoother"])
    p.add_argument("--skip", nargs="+", default=[], choices=["dynamax", "statsmodels", "parallel"])
    p.add_argument("--single-shot", type=float, default=60.0, help="a call slower than this is not repeated")


def random_lgssm(rng, dz, dy):
    """A random stable linear Gaussian SSM in ssmppl's dict (numpy float64): spectral radius of F = 0.95."""
    A = rng.standard_normal((dz, dz))
    W = rng.standard_normal((dz, dz)) / np.sqrt(dz)
    V = rng.standard_normal((dy, dy)) / np.sqrt(dy)
    return {
        "initial_mean": rng.standard_normal(dz),
        "initial_cov": np.eye(dz),
        "F": 0.95 * A / np.max(np.abs(np.linalg.eigvals(A))),
        "b": 0.1 * rng.standard_normal(dz),
        "Q": 0.1 * (W @ W.T + np.eye(dz)),
        "H": rng.standard_normal((dy, dz)) / np.sqrt(dz),
        "d": 0.1 * rng.standard_normal(dy),
        "R": 0.2 * (V @ V.T + np.eye(dy)),
    }


def simulate(rng, p, T):
    """Emissions (T, dy), with z_0 ~ N(m0, P0) before y_1."""
    dz = p["F"].shape[0]
    eps_z = rng.standard_normal((T, dz)) @ np.linalg.cholesky(p["Q"]).T
    eps_y = rng.standard_normal((T, p["H"].shape[0])) @ np.linalg.cholesky(p["R"]).T
    z = p["initial_mean"] + np.linalg.cholesky(p["initial_cov"]) @ rng.standard_normal(dz)
    zs = np.empty((T, dz))
    for t in range(T):
        z = zs[t] = p["F"] @ z + p["b"] + eps_z[t]
    return zs @ p["H"].T + p["d"] + eps_y


def shifted_initial(p):
    """Moments of z_1, the state that emits y_1: the peers' initial state (numpy or jax arrays)."""
    F = p["F"]
    P1 = F @ p["initial_cov"] @ F.T + p["Q"]
    return F @ p["initial_mean"] + p.get("b", 0.0), 0.5 * (P1 + P1.T)


def dynamax_params(p, dtype):
    from dynamax.linear_gaussian_ssm.inference import (ParamsLGSSM, ParamsLGSSMDynamics, ParamsLGSSMEmissions,
                                                       ParamsLGSSMInitial)

    a = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    m1, P1 = shifted_initial(p)
    dz, dy = p["F"].shape[0], p["H"].shape[0]
    return ParamsLGSSM(
        initial=ParamsLGSSMInitial(mean=a(m1), cov=a(P1)),
        dynamics=ParamsLGSSMDynamics(weights=a(p["F"]), bias=a(p["b"]), input_weights=a(np.zeros((dz, 0))),
                                     cov=a(p["Q"])),
        emissions=ParamsLGSSMEmissions(weights=a(p["H"]), bias=a(p["d"]), input_weights=a(np.zeros((dy, 0))),
                                       cov=a(p["R"])))


def _statsmodels_child(conn, p, ys):
    """Child process: serve statsmodels filter / smoother calls on one data set, timed here."""
    try:  # if memory runs out, the kernel kills this process rather than the benchmark
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    from statsmodels.tsa.statespace.kalman_smoother import (SMOOTHER_STATE, SMOOTHER_STATE_AUTOCOV,
                                                            SMOOTHER_STATE_COV, KalmanSmoother)

    dz, dy = p["F"].shape[0], p["H"].shape[0]
    ks = KalmanSmoother(k_endog=dy, k_states=dz, k_posdef=dz)
    ks.bind(np.ascontiguousarray(ys, dtype=np.float64))
    ks.design, ks.obs_intercept, ks.obs_cov = p["H"], p["d"][:, None], p["R"]
    ks.transition, ks.state_intercept, ks.selection, ks.state_cov = p["F"], p["b"][:, None], np.eye(dz), p["Q"]
    ks.initialize_known(*shifted_initial(p))
    # ssmppl's smoother outputs: smoothed moments and lag-one cross-covariances (not the disturbances)
    ks.smoother_output = SMOOTHER_STATE | SMOOTHER_STATE_COV | SMOOTHER_STATE_AUTOCOV
    done = set()
    while (op := conn.recv()) is not None:
        t0, c0 = time.perf_counter(), time.process_time()
        r = ks.filter() if op == "filter" else ks.smooth()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out = None
        if op not in done:  # the first call's results, for the check
            done.add(op)
            out = dict(marginal_loglik=float(r.llf),
                       smoothed_means=np.asarray(r.smoothed_state).T if op == "smoother" else None)
        del r
        # statsmodels keeps its Cython filter (and its T x dz x dz arrays) between calls: drop them, outside
        # the timed region, so that every call allocates afresh as the JAX implementations do
        ks._kalman_filters.clear()
        ks._kalman_smoothers.clear()
        conn.send((wall, cpu, out))


class StatsmodelsWorker:
    def __init__(self, p, ys, timeout):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_statsmodels_child, args=(child, p, ys), daemon=True)
        self.proc.start()
        child.close()
        self.timeout = timeout

    def call(self, op):
        try:
            self.conn.send(op)
            if not self.conn.poll(self.timeout):
                self.proc.kill()
                raise TimeoutError(f"no answer within --watchdog {self.timeout:g} s")
            wall, cpu, out = self.conn.recv()
        except (EOFError, OSError):  # the worker died
            self.proc.join(5)
            if self.proc.exitcode == -9:
                raise MemoryError("statsmodels worker killed (SIGKILL: out of memory)") from None
            raise RuntimeError(f"statsmodels worker died, exit code {self.proc.exitcode}") from None
        return harness.Timed(wall, out and types.SimpleNamespace(**out), cpu)

    def close(self):
        if self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()


def case(T, dz, dy, args, report):
    """The case of one size: implementations on one data set, and the log-likelihood check."""
    rng = np.random.default_rng([args.seed, T, dz, dy])
    p = random_lgssm(rng, dz, dy)
    ys = simulate(rng, p, T)
    dtype = harness.numpy_dtype(args)
    ssm = ssmppl.SSM(ssmppl.models.linear_gaussian_ssm(dz, dy))
    params = {k: jnp.asarray(v, dtype) for k, v in p.items()}
    y = jnp.asarray(ys, dtype)
    impls, worker = {}, None
    for mode in ("seq", "par"):
        method = ssmppl.Kalman(parallel=mode == "par")
        impls[f"ssmppl {mode} filter"] = lambda m=method: ssm.filter(params, y, method=m)
        impls[f"ssmppl {mode} smoother"] = lambda m=method: ssm.smooth(params, y, method=m)
    if "dynamax" not in args.skip and peers.optional("dynamax", report):
        from dynamax.linear_gaussian_ssm import inference, parallel_inference

        dp = dynamax_params(p, dtype)
        for mode, module in (("seq", inference), ("par", parallel_inference)):
            f, s = jax.jit(module.lgssm_filter), jax.jit(module.lgssm_smoother)
            impls[f"dynamax {mode} filter"] = lambda f=f: f(dp, y)
            impls[f"dynamax {mode} smoother"] = lambda s=s: s(dp, y)
    if "statsmodels" not in args.skip and peers.optional("statsmodels", report):
        worker = StatsmodelsWorker(p, ys, args.watchdog)
        impls["statsmodels seq filter"] = lambda: worker.call("filter")
        impls["statsmodels seq smoother"] = lambda: worker.call("smoother")
    impls = {k: v for k, v in impls.items()
             if k.split()[2] in args.ops and not ("parallel" in args.skip and k.split()[1] == "par")}
    rtol = 1e-3 if args.dtype == "float32" else 1e-6

    def check(results):
        ref = "ssmppl seq filter" if "ssmppl seq filter" in results else "ssmppl seq smoother"
        ll = {k: float(r.marginal_loglik) for k, r in results.items()}
        rel = {k: abs(v - ll[ref]) / max(abs(ll[ref]), 1e-300) for k, v in ll.items()}
        out = [(k, False, f"{k}: log-likelihood {ll[k]:.10g} is {rel[k]:.1e} from {ref}'s {ll[ref]:.10g} "
                          f"(relative; tolerance {rtol:g})") for k in rel if not rel[k] <= rtol]
        out.append((None, not out, f"max relative log-likelihood difference vs {ref} = {max(rel.values()):.2e} "
                                   f"(tolerance {rtol:g})"))
        sm = {k: np.asarray(r.smoothed_means) for k, r in results.items() if k.endswith("smoother")}
        if "ssmppl seq smoother" in sm:
            out.append((None, True, "max |smoothed mean - ssmppl seq| = " + ", ".join(
                f"{k.rsplit(' ', 1)[0]} {np.max(np.abs(v - sm['ssmppl seq smoother'])):.1e}" for k, v in sm.items())))
        return out

    statsmodels = {k for k in impls if k.startswith("statsmodels")}  # nothing to compile: no untimed first call
    return harness.Case(f"T={T}, {dz}×{dy}", impls, check, warm=set(impls) - statsmodels), worker


HEADER = ["T", "dz×dy", "op", "ssmppl seq", "dynamax seq", "dmx/ssm seq", "ssmppl par", "dynamax par", "dmx/ssm par",
          "statsmodels", "sm/ssm seq", "ssmppl seq µs/step"]

LEGEND = (
    "Times are best-of-k wall-clock milliseconds; the JAX implementations get one untimed first call "
    "(compilation) before; statsmodels compiles nothing, so its first call is a timed one. The timed calls of "
    "one size are interleaved round-robin, each until ~{min_time:g} s or {max_reps} calls, at least 2; `*` = a "
    "single call slower than {single:g} s, measured once. Ratios are peer time / ssmppl time: > 1 means ssmppl "
    "is faster. 'seq' = sequential scan, 'par' = parallel-in-time associative scan (Särkkä & García-Fernández); "
    "'smoother' = filter + RTS smoother. statsmodels is float64 always (Cython, conventional filter); its "
    "smoother computes smoothed states, covariances and lag-one autocovariances; it runs in a child process "
    "pinned like this one and its calls are timed there. µs/step = ssmppl sequential time / T. OOM = killed "
    "for lack of memory.")


def table_rows(done, single_shot):
    def cell(r):
        if r is None:
            return "–"
        if not r.ok:
            return "wrong" if r.wrong else ("OOM" if "emory" in r.error or "RESOURCE_EXHAUSTED" in r.error
                                           else "failed")
        return harness.fmt_ms(r.min) + ("*" if len(r.calls) == 1 and r.min > single_shot else "")

    def ratio(a, b):
        return f"{a.min / b.min:.2f}" if a is not None and b is not None and a.ok and b.ok else "–"

    rows = []
    for (T, dz, dy), res in done:
        for op in ("filter", "smoother"):
            g = lambda name: res.get(f"{name} {op}")  # noqa: E731
            if not any(g(n) for n in ("ssmppl seq", "ssmppl par")):
                continue
            ss, ds, sp, dp, sm = (g(n) for n in ("ssmppl seq", "dynamax seq", "ssmppl par", "dynamax par",
                                                 "statsmodels seq"))
            rows.append([f"{T:.0e}".replace("e+0", "e"), f"{dz}×{dy}", op, cell(ss), cell(ds), ratio(ds, ss),
                         cell(sp), cell(dp), ratio(dp, sp), cell(sm), ratio(sm, ss),
                         f"{1e6 * ss.min / T:.2f}" if ss is not None and ss.ok else "–"])
    return rows


def run(args, report):
    Ts = args.T or ([1_000] if args.short else SIZES[args.sizes])
    dims = [tuple(int(x) for x in s.lower().split("x")) for s in args.dims] if args.dims else DIMS
    legend = LEGEND.format(min_time=args.min_time, max_reps=args.max_reps, single=args.single_shot)
    done = []
    for T in Ts:
        for dz, dy in dims:
            c, worker = case(T, dz, dy, args, report)
            try:
                done.append(((T, dz, dy), harness.measure(c, args, report, single_shot=args.single_shot)))
            finally:
                if worker:
                    worker.close()
            report.table("Kalman filter / RTS smoother, times in ms", HEADER, table_rows(done, args.single_shot),
                         legend)
            report.case_done()
    return done
