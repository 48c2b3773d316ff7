"""latency: time to result, as a user meets it. Each workflow runs in a fresh process
(``latency_child.py``): start-up, the first call, a second identical call, new data of the same
shape, a new length; wall and CPU seconds, XLA compilations and compile seconds per stage.

  log_likelihood           seed 003's model (2-d state, 10 channels, T = 100), Kalman()  vs a jitted dynamax filter
  log_likelihood parallel  the same with Kalman(parallel=True)                            vs dynamax's parallel filter
  float params             the local-level model, log_likelihood at 8 Python-float variances (no peer)
  fit_sgd                  200 Adam epochs, a new optax.adam(1e-2) object per call       vs dynamax's fit_sgd
  fit_em                   50 EM iterations, 13-d state, 1 channel, T = 100             vs dynamax's fit_em
  sample_posterior         seed003_bayesian_model, 4 chains x (500 + 500), to_arviz      vs NumPyro's MCMC(NUTS(marginalize(model)))
  Nile fit                 local level on the Nile series: fit_mle, fit_em (600 iter.)   vs statsmodels' UnobservedComponents.fit
  demo (--demo)            `ssmppl demo` twice, sharing a fresh compilation-cache folder

``--before PATH`` also runs every ssmppl workflow with ``PYTHONPATH=PATH`` (an older checkout,
e.g. a ``git worktree`` of the commit before a change) in the same run. Checks: the libraries'
first-call values agree (log-likelihoods 1e-6 relative; posterior means of q within 0.02;
Nile variances within 1% of statsmodels' MLE for fit_mle).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from . import harness

TITLE = "Time to result: fresh processes, first and repeat calls"
PEERS = ("dynamax", "statsmodels", "optax")
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "latency_child.py")
SIZES = {"log_likelihood": 100, "log_likelihood parallel": 100, "float params": 100, "fit_sgd": 100, "fit_em": 100,
         "sample_posterior": 100, "Nile fit": 0}
SHORT = {"sample_posterior": 30}
STAGES = ("start-up (imports)", "first call", "second identical call", "new data, same shape", "new length")


def arguments(p):
    p.add_argument("--scenarios", nargs="*", help="default: all (names as in the module docstring, quoted); "
                   "none: only --demo")
    p.add_argument("--before", metavar="PATH", help="also run ssmppl from this checkout (PYTHONPATH), labelled 'before'")
    p.add_argument("--demo", action="store_true", help="also time `ssmppl demo`, twice (compilation cache)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child process")


def child(scenario, impl, size, pythonpath=None, timeout=1800, short=False):
    env = dict(os.environ, **({"LATENCY_SHORT": "1"} if short else {}))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, CHILD, scenario, impl, str(size)], capture_output=True, text=True,
                             env=env, timeout=timeout, cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        return dict(stages=[], values={}, error=f"timed out after {timeout:.0f} s", process=time.perf_counter() - t0)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return dict(stages=[], values={}, error=f"exit {out.returncode}: {out.stderr.strip()[-300:]}",
                    process=time.perf_counter() - t0)
    res = json.loads(lines[-1])
    res["process"] = time.perf_counter() - t0
    if res["error"]:
        print(out.stderr[-2000:], file=sys.stderr)
    return res


def demo_runs(pythonpath, label, report, timeout):
    """`ssmppl demo` twice with one fresh cache folder (the second run loads what the first compiled)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    cache = tempfile.mkdtemp(prefix="ssmppl-cache-")
    env["SSMPPL_CACHE_DIR"] = cache
    rows = []
    for run in ("first run", "second run"):
        out_dir = tempfile.mkdtemp(prefix="ssmppl-demo-")
        t0 = time.perf_counter()
        # what the `ssmppl` console script runs (an older checkout on PYTHONPATH has no installed script)
        p = subprocess.run([sys.executable, "-c", "import sys; from ssmppl.cli import main; sys.exit(main())", "demo",
                            "--out", out_dir], capture_output=True, text=True, env=env, timeout=timeout,
                           cwd=tempfile.gettempdir())
        wall = time.perf_counter() - t0
        cached = "compilation cache" in p.stdout
        rows.append([f"demo ({label})", run, f"{wall:.1f}" if p.returncode == 0 else f"failed (exit {p.returncode})",
                     "yes" if cached else "no"])
        report.log(f"    demo {label} {run}: {wall:.1f} s, exit {p.returncode}")
        if p.returncode:
            print(p.stderr[-2000:], file=sys.stderr)
        shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    return rows


def fmt(stage):
    if stage is None:
        return "–"
    return f"{stage['wall']:.2f} ({stage['compiles']})"


def run(args, report):
    from .latency_child import SCENARIOS

    import ssmppl

    names = list(SCENARIOS) if args.scenarios is None else args.scenarios
    # children import the ssmppl this process runs (the checkout under test), whatever is installed
    versions = [("after", os.path.dirname(os.path.dirname(os.path.abspath(ssmppl.__file__))))] + ([("before", os.path.abspath(args.before))] if args.before else [])
    results = {}
    for name in names:
        size = SHORT.get(name, SIZES[name]) if args.short else SIZES[name]
        for impl in SCENARIOS[name]:
            for label, path in (versions if impl.startswith("ssmppl") else [("", versions[0][1])]):
                key = (name, impl, label)
                res = child(name, impl, size, path, args.timeout, args.short)
                results[key] = res
                got = {s["stage"]: s for s in res["stages"]}
                report.log(f"    {name} / {impl} {label}: " + ", ".join(
                    f"{s}: {fmt(got.get(s))}" for s in STAGES if s in got) + (f"  ERROR {res['error']}" if res["error"]
                                                                             else ""))
        report.case_done()
        _tables(results, names, report)
        _checks(results, name, report, 0.05 if args.short else 0.02)
    if args.demo:
        rows = []
        for label, path in versions:
            rows += demo_runs(path, label or "after", report, args.timeout)
        report.table("`ssmppl demo`, whole process", ["version", "run", "wall s", "cache on"], rows,
                     "Each run a new process; the second shares the first one's compilation-cache folder "
                     "(`SSMPPL_CACHE_DIR`; a checkout without the cache compiles again).")
    return results


def _tables(results, names, report):
    rows = []
    extra = sorted({s["stage"] for r in results.values() for s in r["stages"]} - set(STAGES))
    for (name, impl, label), res in results.items():
        got = {s["stage"]: s for s in res["stages"]}
        rows.append([name, impl + (f" ({label})" if label else ""),
                     *[fmt(got.get(s)) for s in STAGES + tuple(extra)],
                     f"{got['first call']['compile_s']:.1f}" if "first call" in got else "–",
                     res["error"] or ""])
    report.table("Wall seconds per stage (XLA compilations in parentheses)",
                 ["workflow", "implementation", *STAGES, *extra, "first call: compile s", "error"], rows,
                 "Each implementation in one fresh process: start-up = interpreter start and imports (jax, ssmppl, "
                 "the peer); every later stage is one call, timed with its result blocked on. Compilations = XLA "
                 "backend compilations inside the stage (JAX's monitoring events); compile s = seconds of tracing, "
                 "lowering and compiling (union of JAX's compile spans). 'second identical call': the same "
                 "arguments again; 'new data': same shapes, new values (and a new key); 'new length': T + 20. "
                 "float64. ssmppl's fit_sgd gets a new `optax.adam(1e-2)` object in every call.", left=2)
    ratio_rows = []
    for name in names:
        ours = [(k, r) for k, r in results.items() if k[0] == name and k[1].startswith("ssmppl")]
        peers_ = [(k, r) for k, r in results.items() if k[0] == name and not k[1].startswith("ssmppl")]
        for (_, impl, label), r in ours:
            for (_, peer, _), q in peers_:
                a, b = ({s["stage"]: s["wall"] for s in x["stages"]} for x in (r, q))
                ratio_rows.append([name, impl + (f" ({label})" if label else ""), peer] + [
                    f"{a[s] / b[s]:.2f}" if s in a and s in b and b[s] > 0 else "–" for s in STAGES[1:]])
    if ratio_rows:
        report.table("Ratios ssmppl / peer (wall; < 1: ssmppl is faster)",
                     ["workflow", "ssmppl", "peer", *STAGES[1:]], ratio_rows, left=3)


def _checks(results, name, report, q_tol):
    vals = {k[1:]: r["values"] for k, r in results.items() if k[0] == name and not r["error"]}
    if name.startswith("log_likelihood"):
        ref = vals.get(("dynamax", ""), {}).get("first")
        for (impl, label), v in vals.items():
            if impl.startswith("ssmppl") and ref is not None:
                rel = abs(v["first"] - ref) / abs(ref)
                report.check(rel < 1e-6, f"{name}: ssmppl {label} {v['first']:.10g}, dynamax {ref:.10g} (rel. {rel:.1e})")
    if name == "sample_posterior":
        ref = vals.get(("numpyro", ""), {}).get("q_mean")
        for (impl, label), v in vals.items():
            if impl.startswith("ssmppl") and ref is not None:
                report.check(abs(v["q_mean"] - ref) < q_tol, f"{name}: posterior mean of q, ssmppl {label} "
                             f"{v['q_mean']:.4f}, NumPyro {ref:.4f} (tol {q_tol:g})")
    if name == "Nile fit":
        ref = vals.get(("statsmodels", ""), {}).get("variances")
        for (impl, label), v in vals.items():
            if impl.startswith("ssmppl") and ref is not None:
                rel = max(abs(a - b) / b for a, b in zip(v["variances"], ref))
                ok = rel < 0.01 if "mle" in impl else True  # EM after 600 iterations: reported, not required
                report.check(ok, f"{name}: {impl} {label} variances (obs, level) "
                                 f"{v['variances'][0]:.1f}, {v['variances'][1]:.1f}; statsmodels {ref[0]:.1f}, "
                                 f"{ref[1]:.1f} (max rel. {rel:.1e}" + (", tol 1e-2)" if "mle" in impl else ", no tol)"))
