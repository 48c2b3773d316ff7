import os

# jax 0.10 on CPU runs batched LAPACK calls (vmapped Cholesky / triangular solves) on its
# intra-op pool and blocks a worker while they wait; with 2 cores two such calls can take
# every worker and deadlock (see benchmarks/README.md). One core gives a one-thread pool,
# where batches run inline. Pin before jax creates its CPU client.
if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

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
