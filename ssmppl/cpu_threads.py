"""Thread settings that keep jax 0.10's CPU linear algebra from deadlocking on small machines.

Measured with ``tests/repro_lapack_deadlock.py`` on a 2-core machine (README, "Troubleshooting"):

- jaxlib 0.10 splits a batched LAPACK call (vmapped Cholesky, triangular solve, eigh, ...) over
  XLA's intra-op thread pool and blocks the calling thread until every piece is done, while XLA
  runs independent operations of one program on that same pool. When every pool thread waits so,
  the process hangs at 0% CPU for good (``Kalman(parallel=True)``, 32 x 32, T = 1000: 4 runs out
  of 4, within 10 calls). A one-thread pool never splits a batch. XLA's CPU client sizes the pool
  from ``PJRT_NPROC`` (or ``NPROC``) when it is created, at the first computation.
- The LAPACK kernels call SciPy's OpenBLAS, whose own threads then compete with XLA's for the
  cores: on a machine loaded by other processes, ``Kalman(parallel=True)`` calls took 19-85 s
  instead of 0.4-0.8 s, at full CPU. SciPy's OpenBLAS reads ``OPENBLAS_NUM_THREADS`` when it is
  loaded (jax loads it at its first LAPACK call; NumPy's own OpenBLAS, loaded with jax, is not
  affected).

``limit_cpu_threads`` (run when ssmppl is imported) sets both to 1 on machines with at most
``SMALL_MACHINE_CORES`` usable cores, where the deadlock was measured. Larger pools did not
deadlock: 4 or 8 threads on the repro's kernel (0/10 runs each), 4 on the Kalman filter (0/3).
"""

from __future__ import annotations

import os
import sys

SMALL_MACHINE_CORES = 2


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def limit_cpu_threads() -> list[str]:
    """Set ``PJRT_NPROC=1`` and ``OPENBLAS_NUM_THREADS=1`` where they can still take effect.

    Only on machines with at most ``SMALL_MACHINE_CORES`` usable cores, and never over a choice
    already made: ``PJRT_NPROC`` is left alone when it or ``NPROC`` is set, or when jax's backends
    already exist (the pool is then fixed); ``OPENBLAS_NUM_THREADS`` when it is set or SciPy's
    linear algebra is already loaded. Returns the variables it set.
    """
    if usable_cores() > SMALL_MACHINE_CORES:
        return []
    # jax first (it imports NumPy, whose own OpenBLAS then loads before OPENBLAS_NUM_THREADS is set)
    try:
        from jax._src.xla_bridge import backends_are_initialized
    except ImportError:  # another jax layout: leave the pool alone
        backends_are_initialized = None
    changed = []
    if "PJRT_NPROC" not in os.environ and "NPROC" not in os.environ:
        if backends_are_initialized is not None and not backends_are_initialized():
            os.environ["PJRT_NPROC"] = "1"
            changed.append("PJRT_NPROC")
    if "OPENBLAS_NUM_THREADS" not in os.environ and "scipy.linalg" not in sys.modules:
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
        changed.append("OPENBLAS_NUM_THREADS")
    return changed
