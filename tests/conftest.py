import os

# jax 0.10 on CPU, on small machines (tests/repro_lapack_deadlock.py; README, "Troubleshooting"):
# - a batched LAPACK call (vmapped Cholesky, triangular solve, eigh, ...) is split over XLA's
#   intra-op thread pool while the calling pool thread waits; when every pool thread waits so, the
#   process deadlocks at 0% CPU. XLA's CPU client sizes that pool from PJRT_NPROC (or NPROC), and a
#   one-thread pool never splits a batch;
# - those LAPACK kernels call SciPy's OpenBLAS, whose own threads then compete with XLA's: calls
#   crawled tens of times slower. OPENBLAS_NUM_THREADS=1 keeps them single-threaded.
# `import ssmppl` sets both on machines with at most 2 cores; the tests set them on any machine, so
# that CI behaves the same everywhere. This replaces pinning the test process to one core, which
# also kept XLA's compiler off the other core. Values already in the environment win.
if "PJRT_NPROC" not in os.environ and "NPROC" not in os.environ:
    os.environ["PJRT_NPROC"] = "1"
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

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


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module. Every loaded XLA executable holds ~10
    memory mappings; one process running the whole suite compiles several thousand programs and
    reaches the kernel's limit of 65,530 mappings (``vm.max_map_count``), and XLA's compiler then
    segfaults (it did at ~80% of the package's tests). ``jax.clear_caches()`` unmaps them
    (measured: 300 programs, 3,495 -> 656 mappings)."""
    yield
    import gc

    jax.clear_caches()
    gc.collect()
