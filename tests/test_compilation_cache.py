"""``ssmppl.enable_compilation_cache``: a second process loads the first one's compiled programs.

JAX reports a "/jax/core/compile/backend_compile_duration" event for every program on a cache hit
too (the event spans the cache look-up), so the oracle is JAX's own cache counters: the second
process misses nothing and hits once per program the first one compiled and stored.
"""

import json
import os
import subprocess
import sys


SCRIPT = r"""
import json, sys
import jax
counts = {}
def on(event, *a, **k):
    counts[event] = counts.get(event, 0) + 1
jax.monitoring.register_event_listener(on)
jax.monitoring.register_event_duration_secs_listener(lambda event, d, **k: on(event))
import ssmppl
from ssmppl.demo import seed003_params
path = ssmppl.enable_compilation_cache(sys.argv[1])
ssm = ssmppl.SSM(ssmppl.models.linear_gaussian_ssm(2, 3))
p = seed003_params(jax.random.PRNGKey(0))
p = dict(p, H=p["H"][:3], d=p["d"][:3], R=p["R"][:3, :3])
y = jax.numpy.linspace(-1.0, 1.0, 60).reshape(20, 3)
ll = ssm.log_likelihood(p, y)
print(json.dumps({"path": path, "ll": float(ll),
                  "compiles": counts.get("/jax/core/compile/backend_compile_duration", 0),
                  "hits": counts.get("/jax/compilation_cache/cache_hits", 0),
                  "misses": counts.get("/jax/compilation_cache/cache_misses", 0)}))
"""


def _run(cache_dir):
    env = dict(os.environ, JAX_ENABLE_X64="1")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(cache_dir)], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_compiles_nothing(tmp_path):
    first = _run(tmp_path)
    second = _run(tmp_path)
    assert first["path"] == str(tmp_path)
    assert first["compiles"] > 0 and first["misses"] == first["compiles"] and first["hits"] == 0
    assert any(tmp_path.iterdir())  # programs were written
    # every program of the second process's first log_likelihood came from the cache
    assert second["misses"] == 0 and second["hits"] == first["compiles"] == second["compiles"]
    assert second["ll"] == first["ll"]


def test_cli_demo_has_a_no_cache_flag(monkeypatch, tmp_path):
    """``ssmppl demo`` enables the cache unless --no-cache (the demo itself replaced by a stub)."""
    import ssmppl.demo
    from ssmppl import cli

    calls = []

    def fake_enable(path=None):
        calls.append(path)
        return "somewhere"

    stub = dict(marginal_loglik=0.0, coverage_2sd=1.0, em_iters=1, em_loglik=0.0, sgd_epochs=1, sgd_loglik=0.0,
                hmc_summary=__import__("pandas").DataFrame({"x": [1.0]}), hmc_divergences=0, hmc_max_rhat=1.0,
                hmc_truth_inside_94={}, figure="", learning_curves="", fitted_figure="", hmc_trace="",
                state_posterior="")
    monkeypatch.setattr(ssmppl.demo, "run_demo", lambda *a, **k: stub)
    monkeypatch.setattr("ssmppl.compilation_cache.enable_compilation_cache", fake_enable)
    assert cli.main(["demo", "--out", str(tmp_path), "--no-cache"]) == 0 and calls == []
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0 and calls == [None]
