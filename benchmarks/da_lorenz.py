"""da_lorenz: DAPPER's Lorenz benchmarks through ssmppl's EnKF, against DAPPER.

Set-ups (as DAPPER's ``mods``):
  Lorenz-63, Sakov et al. (2012): RK4 dt = 0.01, all 3 components observed every 25 steps, R = 2 I,
      no model noise, x_0 ~ N((1.509, -1.531, 25.46), 2 I) for truth and ensemble; burn-in time 16.
  Lorenz-96, Sakov & Oke (2008): 40 variables, F = 8, RK4 dt = 0.05, all observed every step, R = I,
      no model noise, x_0 ~ N(e_1, 0.001 I); burn-in time 20.
The truth is one draw from the model (``ssm.sample``), the ensemble N draws of the same x_0 law.
RMSE_t = sqrt(mean_j (analysis mean - truth)_j^2), averaged over the analyses after burn-in, then
over seeds (mean +- s.e., median). A run whose RMSE over its last 1,000 cycles exceeds 1 has lost
the truth ("diverged"; ETKF N=28 on Lorenz-96 in a few percent of 10,000-cycle runs, DAPPER's
too, on the same stretches of the same data); the mean without such runs is reported too. Check:
the median RMSE within TOLERANCE of DAPPER's published figure.

Time per cycle (forecast + analysis), jitted, after compilation, best of 3; DAPPER (``--dapper
PYTHON``: its own virtualenv) is timed by ``dapper_side.py`` on the same core. ``--same-data DIR``
filters DAPPER's own simulated data instead (``dapper_side.py simulate``). ``--big-dim D``: one ETKF
and one LETKF cycle on Lorenz-96 with D variables and 20 members, time and peak memory (for a GPU).
"""

from __future__ import annotations

import glob
import json
import os
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from ssmppl import SSM, EnKF, Localization
from ssmppl.models import lorenz63, lorenz96

from . import harness, peers

TITLE = "DAPPER's Lorenz benchmarks through ssmppl's EnKF"
# name: (system, EnKF kwargs, DAPPER's published RMSE)
CONFIGS = {
    "l63_etkf": ("l63", dict(num_members=10, variant="etkf", inflation=1.02, rotate=True), 0.60),
    "l63_enkf": ("l63", dict(num_members=10, variant="stochastic", inflation=1.04), 0.65),
    "l96_etkf": ("l96", dict(num_members=28, variant="etkf", inflation=1.02, rotate=True), 0.18),
    "l96_enkf": ("l96", dict(num_members=40, variant="stochastic", inflation=1.06), 0.22),
    "l96_letkf": ("l96", dict(num_members=7, variant="letkf", inflation=1.04, rotate=True, radius=4.0), 0.22),
    # deterministic, for the same-data comparison from a fixed initial ensemble (--fixed-init)
    "l63_etkf_norot": ("l63", dict(num_members=10, variant="etkf", inflation=1.02), None),
    "l96_etkf_norot": ("l96", dict(num_members=28, variant="etkf", inflation=1.02), None),
}
DEFAULT = ["l63_etkf", "l63_enkf", "l96_etkf", "l96_enkf", "l96_letkf"]
# Over 1,500 cycles one run's RMSE scatters around its long-run value with sd ~0.005 (Lorenz-96) and ~0.06
# (Lorenz-63, heavy-tailed): the tolerances are ~5 of those above DAPPER's figure.
TOLERANCE = {"l63": 0.3, "l96": 0.03}
BURN_IN_TIME, CYCLE_TIME = {"l63": 16.0, "l96": 20.0}, {"l63": 0.25, "l96": 0.05}


def arguments(p):
    p.add_argument("--config", nargs="+", default=DEFAULT, choices=list(CONFIGS))
    p.add_argument("--cycles", type=int, help="default 10,000 (--short: 1,500)")
    p.add_argument("--seeds", type=int, help="default 16 (--short: 1)")
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--dapper", help="python of a virtualenv with DAPPER: also time DAPPER on the same core")
    p.add_argument("--dapper-cycles", type=int, default=2000, help="cycles of DAPPER's timing runs")
    p.add_argument("--same-data", metavar="DIR", help="filter DAPPER's data saved in DIR (simulated first if --dapper)")
    p.add_argument("--keys", type=int, default=4, help="--same-data: ssmppl filter keys per data set")
    p.add_argument("--fixed-init", action="store_true", help="--same-data: start from DAPPER's initial ensemble")
    p.add_argument("--big-dim", type=int, help="one ETKF and one LETKF cycle at this dimension instead (GPU)")


def build(name, dim=40):
    """(SSM, EnKF backend) of a configuration."""
    system, settings, _ = CONFIGS[name]
    settings = dict(settings)
    radius = settings.pop("radius", None)
    if system == "l63":
        model = lorenz63(dt=0.01, steps_per_obs=25, process_noise=0.0, obs_noise=float(np.sqrt(2.0)),
                         initial_mean=(1.509, -1.531, 25.46), initial_scale=float(np.sqrt(2.0)))
    else:
        model = lorenz96(dim=dim, forcing=8.0, dt=0.05, steps_per_obs=1, process_noise=0.0, obs_noise=1.0,
                         initial_mean=np.eye(dim)[0], initial_scale=float(np.sqrt(0.001)))
        if radius is not None:
            settings["localization"] = Localization.on_ring(radius, dim)
    return SSM(model), EnKF(**settings, store_covariances=False)


def run_config(name, cycles, seeds, timing, args, report):
    """Per seed the analysis RMSE after burn-in (and forecast RMSE, spread, divergence); ms per cycle."""
    system = CONFIGS[name][0]
    ssm, method = build(name)
    burn = int(np.floor(BURN_IN_TIME[system] / CYCLE_TIME[system] + 1e-9))  # analyses at time <= BurnIn

    @jax.jit
    def one(seed):
        k_truth, k_filter = jax.random.split(jax.random.PRNGKey(seed))
        truth, y = ssm.sample(k_truth, {}, T=cycles)
        res = ssm.filter({}, y=y, method=method, key=k_filter)
        err = jnp.sqrt(((res.filtered_means - truth) ** 2).mean(-1))
        return err[burn:].mean(), res.filtered_spread[burn:].mean(), err[-1000:].mean()

    runs = np.array([[float(v) for v in one(s)] for s in range(1, seeds + 1)])
    out = dict(config=name, cycles=cycles, rmse_a=runs[:, 0].tolist(), spread_a=runs[:, 1].tolist(),
               diverged=(runs[:, 2] > 1.0).tolist())
    if timing:
        _, y = jax.jit(lambda k: ssm.sample(k, {}, T=cycles))(jax.random.PRNGKey(0))
        f = jax.jit(lambda k, y: ssm.filter({}, y=y, method=method, key=k).filtered_means)
        keys = iter(jax.random.split(jax.random.PRNGKey(1), 10))
        r = harness.measure(harness.Case(name, {"ssmppl": lambda: f(next(keys), y)}), args, report, min_reps=3,
                            max_reps=3, min_time=0.0)["ssmppl"]
        out["sec_per_cycle"] = r.min / cycles if r.ok else float("nan")
    median = float(np.median(out["rmse_a"]))
    if CONFIGS[name][2] is not None:
        tol = TOLERANCE[system]
        report.check(median < CONFIGS[name][2] + tol, f"{name}: median analysis RMSE {median:.4f} over {seeds} "
                     f"seed(s) x {cycles} cycles, DAPPER's figure {CONFIGS[name][2]} (tolerance +{tol})")
    return out


def mean_se(xs):
    xs = np.asarray(xs, float)
    return (xs.mean(), xs.std(ddof=1) / np.sqrt(len(xs))) if len(xs) > 1 else ((xs.mean(), float("nan")) if len(xs)
                                                                               else (float("nan"),) * 2)


def dapper_reference(names, args):
    """{name: DAPPER's results} from dapper_side.py on the same core."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dapper.json")
        peers.dapper(args.dapper, "reference", "--config", *names, "--cycles", args.dapper_cycles, "--json", path)
        with open(path) as f:
            return {e["config"]: e for e in json.load(f)}


HEADER = ["configuration", "ssmppl RMSE", "median", "diverged", "mean without diverged", "DAPPER's figure",
          "ssmppl ms/cycle", "DAPPER ms/cycle", "speed-up"]
LEGEND = (
    "{cycles:,} cycles x {seeds} seeds; RMSE of the analysis mean after DAPPER's burn-in (mean +- s.e. over "
    "seeds); 'diverged': RMSE over the run's last 1,000 cycles above 1. Times per assimilation cycle (forecast "
    "of all members + analysis), after compilation, best of 3; DAPPER's loop with its error-only statistics, "
    "{dapper_cycles:,} cycles, timed in its own interpreter on the same core.")


def same_data(args, report):
    """ssmppl's EnKF on DAPPER's saved truth and observations, ``--keys`` filter keys per data set."""
    seeds = list(range(1, (args.seeds or 2) + 1))
    cycles = args.cycles or 10000
    if args.dapper:
        peers.dapper(args.dapper, "simulate", "--config", *args.config, "--seeds", *seeds, "--cycles", cycles,
                     "--out", args.same_data, *(["--fixed-init"] if args.fixed_init else []))
    rows, ensemble = [], harness.ssmppl_internals().ensemble_module
    saved_initial = ensemble.initial_draws
    for name in args.config:
        ssm, method = build(name)
        files = sorted(glob.glob(os.path.join(args.same_data, f"{name}_s*_K{cycles}.npz")),
                       key=lambda f: int(re.search(r"_s(\d+)_", f).group(1)))
        dapper_runs, ours, mismatch = [], [], []
        for path in files:
            data = np.load(path)
            truth, y, keep = jnp.asarray(data["truth"]), jnp.asarray(data["y"]), np.asarray(data["masko"])
            if args.fixed_init:  # DAPPER's initial ensemble instead of a draw (internal hook, restored below)
                E0 = jnp.asarray(data["E0"])
                ensemble.initial_draws = lambda p, k, N, dt, E0=E0: E0.astype(dt)
            errors = jax.jit(lambda k: jnp.sqrt(((ssm.filter({}, y=y, method=method, key=k).filtered_means - truth)
                                                 ** 2).mean(-1)))
            dapper_runs.append((data["err_a"][keep].mean(), data["err_a"][-1000:].mean()))
            seed = int(re.search(r"_s(\d+)_", path).group(1))
            for k in range(args.keys):
                err = np.nan_to_num(np.asarray(errors(jax.random.PRNGKey(1000 * seed + k))), nan=1e3)
                ours.append((err[keep].mean(), err[-1000:].mean()))
                d = np.abs(err - data["err_a"])
                mismatch.append(f"{d[:100].max():.1e} / {int(np.argmax(d > 1e-6)) if (d > 1e-6).any() else -1}")
        if not files:
            report.check(False, f"{name}: no data in {args.same_data} (simulate it with --dapper)")
            continue
        cell = lambda runs: "{:.4f} +- {:.4f} ({} runs, {} diverged)".format(  # noqa: E731
            *mean_se([a for a, last in runs if last <= 1.0]), len(runs), sum(last > 1.0 for _, last in runs))
        rows.append([name, str(len(files)), cell(dapper_runs), f"{cell(ours)}, {args.keys} keys per seed"])
        if args.fixed_init:
            report.check(True, f"{name}, same initial ensemble: max |RMSE difference| over the first 100 analyses / "
                               f"first analysis where it exceeds 1e-6 (-1: never), per run: {', '.join(mismatch)}")
    ensemble.initial_draws = saved_initial
    report.table("Same data in both libraries", ["configuration", "data seeds", "DAPPER", "ssmppl"], rows,
                 f"DAPPER's own truth and observations, {cycles:,} cycles, fed to both filters; RMSE of the analysis "
                 "mean after burn-in, mean +- s.e. over the runs that did not diverge.", left=1)
    return rows


def big_cycle(args, report):
    """One ETKF and one LETKF cycle on Lorenz-96 with --big-dim variables and 20 members: time and memory."""
    dim = args.big_dim
    ssm = SSM(lorenz96(dim=dim, dt=0.05, process_noise=0.0, obs_noise=1.0, initial_scale=1.0))
    y = np.random.default_rng(0).normal(8.0, 3.0, (1, dim)).astype(harness.numpy_dtype(args))
    methods = {"etkf": EnKF(20, "etkf", inflation=1.02, store_covariances=False),
               "letkf": EnKF(20, "letkf", inflation=1.04, localization=Localization.on_ring(4, dim),
                             store_covariances=False)}
    rows = []
    for name, m in methods.items():
        f = jax.jit(lambda k, y, m=m: ssm.filter({}, y=y, method=m, key=k).filtered_means)
        r = harness.measure(harness.Case(f"d = {dim}", {name: lambda: f(jax.random.PRNGKey(1), y)}), args, report,
                            min_reps=1, max_reps=1, min_time=0.0)[name]
        peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", float("nan")) / 2 ** 30
        rows.append([name, f"{r.min:.4f}" if r.ok else "failed", f"{peak:.2f}"])
    report.table(f"Lorenz-96, d = {dim}, N = 20", ["filter", "s per cycle", "peak memory (GiB)"], rows, left=1)
    return rows


def run(args, report):
    if args.big_dim:
        return big_cycle(args, report)
    if args.same_data:
        return same_data(args, report)
    cycles, seeds = args.cycles or (1500 if args.short else 10000), args.seeds or (1 if args.short else 16)
    results, rows = [], []
    for name in args.config:
        results.append(run_config(name, cycles, seeds, not args.no_timing, args, report))
        report.case_done()
    ref = dapper_reference(args.config, args) if args.dapper else {}
    for v in sorted({e["dapper_version"] for e in ref.values()}):
        report.note(f"DAPPER {v} (`{args.dapper}`), timed by dapper_side.py on the same core(s), BLAS on one thread")
    for r in results:
        m, se = mean_se(r["rmse_a"])
        mk, sek = mean_se([a for a, d in zip(r["rmse_a"], r["diverged"]) if not d])
        ours, theirs = 1e3 * r.get("sec_per_cycle", float("nan")), ref.get(r["config"])
        t = 1e3 * theirs["sec_per_cycle"] if theirs else None
        rows.append([f"{r['config']} ({CONFIGS[r['config']][1]['num_members']} members)", f"{m:.4f} +- {se:.4f}",
                     f"{np.median(r['rmse_a']):.4f}", f"{sum(r['diverged'])}/{len(r['diverged'])}",
                     f"{mk:.4f} +- {sek:.4f}", f"{CONFIGS[r['config']][2]}", "-" if np.isnan(ours) else f"{ours:.3f}",
                     "-" if t is None else f"{t:.3f}", "-" if t is None or np.isnan(ours) else f"{t / ours:.1f}x"])
    report.table("RMSE and time per cycle", HEADER, rows, LEGEND.format(cycles=cycles, seeds=seeds,
                                                                         dapper_cycles=args.dapper_cycles), left=1)
    return results
