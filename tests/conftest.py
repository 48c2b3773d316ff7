import os

# jax 0.10 on CPU splits a batched LAPACK call (vmapped Cholesky, triangular solve, eigh, ...) over
# XLA's intra-op thread pool and blocks the calling thread until the pieces are done; XLA runs
# independent operations on that same pool, so when every pool thread is in such a call the process
# deadlocks at 0% CPU (tests/repro_lapack_deadlock.py; README, "Troubleshooting"). XLA's CPU client
# sizes that pool from NPROC, and a one-thread pool never splits a batch. Unlike pinning the process
# to one core (what this file did before), this leaves the other core to XLA's compiler and to
# NumPy/SciPy. It must be set before jax creates its CPU client; an NPROC set by the caller wins.
os.environ.setdefault("NPROC", "1")

import contextlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402


@contextlib.contextmanager
def _x64(enabled: bool):
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", enabled)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def x64():
    """Float64 for correctness tests (restored afterwards: float32 is tested separately)."""
    with _x64(True):
        yield


@pytest.fixture(scope="module")
def x64_module():
    """Float64 for a module's shared (module-scoped) fixtures and all its tests."""
    with _x64(True):
        yield


@pytest.fixture
def x32():
    """JAX's default float32, whatever a module's other fixtures set."""
    with _x64(False):
        yield
