"""Reproduce jax 0.10's CPU deadlock in batched LAPACK calls, and test remedies for it.

A standalone script (pytest does not collect it: no ``test_`` prefix; tests/test_cpu_threads.py
uses its kernel):

    python tests/repro_lapack_deadlock.py                          # kernel workload, every config, 10 runs each
    python tests/repro_lapack_deadlock.py --workload kalman --n 30 --reps 5 \
        --configs default,OPENBLAS_NUM_THREADS=1,PJRT_NPROC=1+OPENBLAS_NUM_THREADS=1,pinned
    python tests/repro_lapack_deadlock.py --list                   # the configs

The bug. jaxlib 0.10's LAPACK kernels (``lapack_dpotrf_ffi``, ``lapack_dtrsm_ffi``, ...) split a
batch over XLA's intra-op thread pool (``tf_XLAEigen``, one thread per core) and block the calling
thread on a counter until every piece is done (``jax::ParallelBatchMap``). XLA's CPU executor runs
independent operations of one program concurrently *on that same pool*. When every pool worker is
inside such a batched call, each waits for pieces that only a free worker could run: the process
stops, at 0% CPU, for good (gdb: every ``tf_XLAEigen`` thread in ``absl::BlockingCounter::Wait``
under ``jax::ParallelBatchMap`` / ``lapack_d*_ffi`` / ``xla::cpu::CustomCallThunk``). A batch is
split only when its work is large enough (1000 Cholesky factorisations of 32 x 32 are split in two
on a 2-thread pool; 100 of 8 x 8 are not), and with a one-thread pool it is never split.

A second problem shows in the Kalman workloads: the LAPACK kernels call SciPy's OpenBLAS, which
starts its own threads (one per core) inside XLA's pool threads; they compete for the cores and
OpenBLAS spins while it waits, so calls crawl (tens of times slower, at full CPU) instead of
stopping. ``OPENBLAS_NUM_THREADS=1`` removes that. The table's last column shows it (seconds per
call after the compiling one; compare configs within one invocation, whose runs are interleaved).

Workloads (each a loop of ``--n`` calls of one jitted function, after one compiling call):

- ``kernel``: pure JAX, 4 independent chains of vmapped Cholesky + triangular solve on a batch of
  1000 32 x 32 matrices in one jitted program (compiles in about a second);
- ``kalman``: ``SSM(models.linear_gaussian_ssm(32, 32)).filter(params, y, method=Kalman(parallel=True))``
  with T = 1000 (compiles in 15-60 s on a shared 2-core machine); ``kalman_smoother``: the same
  with ``.smooth``. These import ssmppl, which on a machine with at most 2 cores sets
  PJRT_NPROC=1 and OPENBLAS_NUM_THREADS=1 where they are unset: there "default" is ssmppl's
  default, and jax's own is e.g. ``PJRT_NPROC=2+OPENBLAS_NUM_THREADS=2`` on 2 cores.

Each run is a subprocess. The verdict does not depend on how loaded the machine is: a run that
stops consuming CPU for ``--idle`` seconds (default 15) before finishing is a *deadlock* (a loaded
machine slows a live process down but still gives it CPU time); ``--timeout`` (default 600 s) only
guards against a live run that never ends (reported as *timeout*, not as a deadlock).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A config is one or more parts joined by "+": a name below, or an environment assignment VAR=value
# (e.g. "NPROC=1+OPENBLAS_NUM_THREADS=1"). XLA_FLAGS parts are appended to any XLA_FLAGS already set.
PARTS = {
    "default": {},
    "pinned": {},  # sched_setaffinity to one core, like `taskset -c 0` (what tests/conftest.py did)
    "multi_thread_eigen=false": {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"},
    "concurrency_scheduler=false": {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=false"},
    "use_thunk_runtime=false": {"XLA_FLAGS": "--xla_cpu_use_thunk_runtime=false"},  # accepted, "no longer supported"
    "async_dispatch=false": {"JAX_CPU_ENABLE_ASYNC_DISPATCH": "false"},
}
# NPROC (or PJRT_NPROC) sizes XLA's intra-op pool; OPENBLAS_NUM_THREADS the threads of the OpenBLAS
# (SciPy's) that jaxlib's LAPACK kernels call.
DEFAULT_CONFIGS = ["default", "pinned", "NPROC=1", "NPROC=4", "NPROC=8", "multi_thread_eigen=false",
                   "concurrency_scheduler=false", "use_thunk_runtime=false", "async_dispatch=false"]


def _config(name: str) -> tuple[dict[str, str], bool]:
    """(environment changes, pin to one core) of a config name."""
    env: dict[str, str] = {}
    pin = False
    for part in name.split("+"):
        if part in PARTS:
            extra = PARTS[part]
            pin = pin or part == "pinned"
        elif "=" in part and part.split("=", 1)[0].isidentifier():
            extra = dict([part.split("=", 1)])
        else:
            raise SystemExit(f"unknown config part {part!r}: a name in {list(PARTS)} or VAR=value")
        for key, value in extra.items():
            env[key] = (env.get(key, "") + " " + value).strip() if key == "XLA_FLAGS" else value
    return env, pin


def _child(workload: str, n: int) -> None:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    if workload == "kernel":
        from jax.scipy.linalg import solve_triangular

        B, d, K = 1000, 32, 4

        def chain(A, v):
            return solve_triangular(jnp.linalg.cholesky(A), v, lower=True)

        @jax.jit
        def f(As, vs):
            return sum(jax.vmap(chain)(As[k] * (k + 1), vs[k]).sum() for k in range(K))

        M = jax.random.normal(jax.random.PRNGKey(0), (K, B, d, d))
        args = (M @ jnp.swapaxes(M, -1, -2) + d * jnp.eye(d), jax.random.normal(jax.random.PRNGKey(1), (K, B, d, 3)))
    elif workload in ("kalman", "kalman_smoother"):
        sys.path.insert(0, ROOT)  # this checkout's ssmppl, not an installed one
        from ssmppl import SSM, Kalman, models

        T = 1000
        ssm = SSM(models.linear_gaussian_ssm(32, 32))
        params = ssm.init_params(jax.random.PRNGKey(0), T=T)
        _, y = ssm.sample(jax.random.PRNGKey(1), params, T=T)
        if workload == "kalman":
            f = jax.jit(lambda p, y: ssm.filter(p, y, method=Kalman(parallel=True)).marginal_loglik)
        else:
            f = jax.jit(lambda p, y: ssm.smooth(p, y, method=Kalman(parallel=True)).smoothed_means)
        args = (params, y)
    else:
        raise SystemExit(f"unknown workload {workload!r}")
    print("pool threads:", sum(open(f"/proc/self/task/{t}/comm").read().strip() == "tf_XLAEigen"
                               for t in os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else "?",
          flush=True)
    start, cpu0 = time.time(), time.process_time()
    for i in range(n + 1):  # call 0 compiles
        jax.block_until_ready(f(*args))
        print(f"call {i} done at {time.time() - start:.2f} s, cpu {time.process_time() - cpu0:.2f} s", flush=True)
    print("ok", flush=True)


def _cpu_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, all threads
    except (OSError, IndexError, ValueError):
        return None


def _run_once(workload: str, n: int, config: str, idle: float, timeout: float) -> tuple[str, str, float, float | None]:
    extra, pin = _config(config)
    env = dict(os.environ)
    for key, value in extra.items():
        env[key] = (env.get(key, "") + " " + value).strip() if key == "XLA_FLAGS" else value
    preexec = None
    if pin:
        core = min(os.sched_getaffinity(0))
        preexec = lambda: os.sched_setaffinity(0, {core})  # noqa: E731
    cmd = [sys.executable, os.path.abspath(__file__), "--child", workload, "--n", str(n)]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec)
        start = last_change = time.time()
        last_ticks = _cpu_ticks(proc.pid)
        verdict, max_idle = None, 0.0
        while proc.poll() is None:
            time.sleep(1.0)
            now, ticks = time.time(), _cpu_ticks(proc.pid)
            if ticks != last_ticks:
                last_ticks, last_change = ticks, now
            max_idle = max(max_idle, now - last_change)
            if now - last_change > idle:
                verdict = "deadlock"
            if now - start > timeout:
                verdict = verdict or "timeout"
            if verdict:
                proc.kill()
                proc.wait()
                break
        out.seek(0)
        lines = [line for line in out.read().splitlines() if line.strip()]
    calls = [line for line in lines if line.startswith("call ")]
    progress = calls[-1] if calls else "no call finished"
    # the calls after the compiling one: wall seconds per call, and the share of a core they used
    walls = [float(c.split(" at ")[1].split(" s")[0]) for c in calls]
    cpus = [float(c.split(", cpu ")[1].split(" s")[0]) for c in calls if ", cpu " in c]
    rate, per_call = "", None
    if len(walls) > 1 and len(cpus) == len(walls) and walls[-1] > walls[0]:
        per_call = (walls[-1] - walls[0]) / (len(walls) - 1)
        rate = f"; {per_call:.3f} s/call at {100 * (cpus[-1] - cpus[0]) / (walls[-1] - walls[0]):.0f}% CPU"
    detail = f"{progress}{rate}; longest 0%-CPU stretch {max_idle:.0f} s"
    if verdict:
        return verdict, f"{detail}; killed at {time.time() - start:.0f} s", max_idle, None
    if proc.returncode == 0 and lines and lines[-1] == "ok":
        return "ok", detail, max_idle, per_call
    return "error", (lines[-1] if lines else f"exit code {proc.returncode}")[:200], max_idle, None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", default="kernel", choices=["kernel", "kalman", "kalman_smoother"])
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="comma-separated configs (see --list)")
    p.add_argument("--reps", type=int, default=10, help="runs per config")
    p.add_argument("--n", type=int, default=None, help="calls per run after the compiling one "
                   "(default 100 for kernel, 5 for the Kalman workloads)")
    p.add_argument("--idle", type=float, default=15.0, help="seconds without CPU use that make a deadlock")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before a live run is abandoned")
    p.add_argument("--list", action="store_true", help="print the configs and exit")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    n = args.n if args.n is not None else (100 if (args.child or args.workload) == "kernel" else 5)
    if args.child:
        _child(args.child, n)
        return
    if args.list:
        for name in DEFAULT_CONFIGS:
            extra, pin = _config(name)
            print(f"{name}: env {extra or '{}'}{', pinned to one core' if pin else ''}")
        print('parts join with "+"; a part may also be VAR=value, e.g. NPROC=1+OPENBLAS_NUM_THREADS=1')
        return
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        _config(c)  # fail early on a typo
    print(f"workload {args.workload}, {n} calls per run, {args.reps} runs per config, "
          f"{len(os.sched_getaffinity(0))} cores available, deadlock = {args.idle:.0f} s at 0% CPU", flush=True)
    # runs interleaved over the configs (round-robin), so that a change of machine load hits all alike
    counts: dict[str, dict[str, int]] = {c: {} for c in configs}
    stall = dict.fromkeys(configs, 0.0)  # the longest 0%-CPU stretch of the runs that were not deadlocked
    per_call: dict[str, list[float]] = {c: [] for c in configs}
    for rep in range(args.reps):
        for config in configs:
            verdict, detail, max_idle, seconds = _run_once(args.workload, n, config, args.idle, args.timeout)
            counts[config][verdict] = counts[config].get(verdict, 0) + 1
            if verdict != "deadlock":
                stall[config] = max(stall[config], max_idle)
            if seconds is not None:
                per_call[config].append(seconds)
            print(f"  {config} run {rep + 1}: {verdict} ({detail})", flush=True)
    print("\n| config | deadlocks | ok | other | longest 0%-CPU stretch in the other runs | s/call, median (min-max) |")
    print("|---|---:|---:|---|---:|---|")
    for config in configs:
        c = counts[config]
        other = ", ".join(f"{k} {v}" for k, v in c.items() if k not in ("deadlock", "ok")) or "-"
        live = args.reps - c.get("deadlock", 0)
        t = sorted(per_call[config])
        times = f"{t[len(t) // 2]:.3g} ({t[0]:.3g}-{t[-1]:.3g})" if t else "-"
        print(f"| {config} | {c.get('deadlock', 0)}/{args.reps} | {c.get('ok', 0)}/{args.reps} | {other} | "
              f"{f'{stall[config]:.0f} s' if live else '-'} | {times} |")

if __name__ == "__main__":
    main()
