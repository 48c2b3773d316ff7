"""The README's "Troubleshooting" remedy, and what `import ssmppl` does on a small machine.

Each case runs in a fresh process (the settings act when jax creates its CPU client and when SciPy's
OpenBLAS loads), with the thread variables that this test process carries (tests/conftest.py sets
them) removed. The workload is tests/repro_lapack_deadlock.py's kernel, which deadlocks in every
run with jax 0.10.2's default 2-thread pool on a 2-core machine; a deadlocked child would hang, so
each child has a timeout far above its normal run time.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parent.parent
THREAD_VARIABLES = ("PJRT_NPROC", "NPROC", "OPENBLAS_NUM_THREADS")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and SciPy's OpenBLAS")

# Run after the code under test: one batched-LAPACK workload (optional), then the thread counts.
PROBE = """
import ctypes, glob, json, os, sys
if {run_kernel}:
    sys.path.insert(0, {tests!r})
    import repro_lapack_deadlock
    repro_lapack_deadlock._child("kernel", 10)
import jax.numpy as jnp
jnp.linalg.cholesky(jnp.eye(3) * 2.0).block_until_ready()  # starts the CPU client, loads SciPy's OpenBLAS
import scipy
blas = ctypes.CDLL(glob.glob(os.path.dirname(scipy.__file__) + ".libs/libscipy_openblas*.so")[0])
names = [open(f"/proc/self/task/{{t}}/comm").read().strip() for t in os.listdir("/proc/self/task")]
ssmppl = sys.modules.get("ssmppl")
print("PROBE", json.dumps({{"pool": names.count("tf_XLAEigen"), "openblas": blas.scipy_openblas_get_num_threads(),
                           "settings": getattr(ssmppl, "CPU_THREAD_SETTINGS", None)}}))
"""


def _run(code: str, env: dict[str, str] | None = None, cores: int | None = None, run_kernel: bool = False,
         timeout: float = 180) -> dict:
    full_env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    allowed = sorted(os.sched_getaffinity(0))
    if cores is not None and len(allowed) < cores:
        pytest.skip(f"needs {cores} usable cores")
    preexec = (lambda: os.sched_setaffinity(0, allowed[:cores])) if cores else None
    script = code + PROBE.format(run_kernel=run_kernel, tests=str(ROOT / "tests"))
    out = subprocess.run([sys.executable, "-c", script], env=full_env, capture_output=True, text=True,
                         timeout=timeout, preexec_fn=preexec, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    if run_kernel:
        assert "\nok\n" in out.stdout
    return json.loads(out.stdout.split("PROBE ", 1)[1])


def _readme_remedy() -> str:
    """The Python code block of the README's Troubleshooting section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Troubleshooting section has one Python block"
    return blocks[0]


def test_readme_remedy_runs_batched_lapack_without_deadlock():
    # two cores, as where the deadlock was measured; the remedy must hold whatever ssmppl decides
    probe = _run(_readme_remedy(), cores=2, run_kernel=True)
    assert probe["pool"] == 1 and probe["openblas"] == 1
    assert probe["settings"] == []  # the README's lines set both variables before ssmppl looked


def test_import_sets_one_thread_pools_on_a_small_machine():
    probe = _run("import ssmppl\n", cores=2, run_kernel=True)
    assert probe == {"pool": 1, "openblas": 1, "settings": ["PJRT_NPROC", "OPENBLAS_NUM_THREADS"]}


def test_import_keeps_the_callers_choice():
    probe = _run("import ssmppl\n", env={"PJRT_NPROC": "2", "OPENBLAS_NUM_THREADS": "2"}, cores=2)
    assert probe == {"pool": 2, "openblas": 2, "settings": []}
    # a computation before the import fixes jax's pool: ssmppl leaves it (and says so)
    probe = _run("import jax.numpy as jnp\njnp.ones(2).block_until_ready()\nimport ssmppl\n", cores=2)
    assert probe["pool"] == 2 and probe["settings"] == ["OPENBLAS_NUM_THREADS"]


def test_nothing_is_set_on_a_larger_machine(monkeypatch):
    from ssmppl import cpu_threads

    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: cpu_threads.SMALL_MACHINE_CORES + 1)
    assert cpu_threads.limit_cpu_threads() == []
    assert not any(name in os.environ for name in THREAD_VARIABLES)
