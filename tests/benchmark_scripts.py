"""Run a benchmark suite through the runner (``python -m benchmarks.run``) in this process, for the tests
that run a suite's short mode.

``benchmarks`` is imported as a package from the repository root, so no file in benchmarks/ can
shadow an installed library (benchmarks/particles.py once replaced the `particles` library)."""

import pathlib
import sys

import jax

ROOT = str(pathlib.Path(__file__).resolve().parent.parent)


def run_suite(*argv):
    """``python -m benchmarks.run *argv`` in-process; returns the runner's Report (``.ok``, ``.results``).
    The runner sets jax_enable_x64 from the suite's dtype: restored afterwards."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from benchmarks import run

    x64 = jax.config.jax_enable_x64
    try:
        return run.main(list(argv))
    finally:
        jax.config.update("jax_enable_x64", x64)
