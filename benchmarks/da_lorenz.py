"""DAPPER's Lorenz benchmarks through ssmppl's EnKF: time-averaged analysis RMSE and cycles per second.

Set-ups (as DAPPER's ``mods``; see benchmarks/_dapper_reference.py):
  Lorenz-63, Sakov et al. (2012): RK4 dt = 0.01, all 3 components observed every 25 steps,
      R = 2 I, no model noise, x_0 ~ N((1.509, -1.531, 25.46), 2 I) for truth and ensemble;
      averaged over analyses at time > 16 (BurnIn).
  Lorenz-96, Sakov & Oke (2008): 40 variables, F = 8, RK4 dt = 0.05, all observed every step,
      R = I, no model noise, x_0 ~ N(e_1, 0.001 I); averaged over analyses at time > 20.
The truth is one draw from the model (``ssm.sample``), the ensemble starts from N draws of
the same x_0 distribution, as in DAPPER. RMSE_t = sqrt(mean_j (mean_a - truth)_j^2),
averaged over the analyses after burn-in, then over seeds (mean and its standard error, and the
median). A run whose RMSE over its last 1,000 cycles exceeds 1 has lost the truth ("diverged":
this happens to ETKF N=28 on Lorenz-96 in a few percent of 10,000-cycle runs, in DAPPER too, on
the same stretches of the same data: benchmarks/_dapper_same_data.py); such runs are counted
and the mean without them is reported as well.

    python benchmarks/da_lorenz.py                 # 10,000 cycles x 16 seeds, all configurations
    python benchmarks/da_lorenz.py --short         # 1,500 cycles x 1 seed (what the tests run)
    python benchmarks/da_lorenz.py --dapper /work/venv-dapper/bin/python
        # also runs DAPPER (in its own environment) on the same configurations, same machine,
        # and prints the speed ratio DAPPER time / ssmppl time per cycle

Times are per assimilation cycle (forecast + analysis), jitted, after compilation, on one
core by default (``--cpus``). ``--gpu``: one ETKF and one LETKF cycle on Lorenz-96 with
``--big-dim`` variables (default 10^6) and 20 members, time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# The tests import this file: keep its folder off sys.path afterwards (a script there must never shadow an
# installed library).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
try:
    from _common import device_label, git_rev, pin_cpus  # noqa: E402
finally:
    sys.path.remove(_HERE)

# name: (system, constructor kwargs of EnKF, DAPPER's published RMSE, DAPPER reference config)
CONFIGS = {
    "l63_etkf": ("l63", dict(num_members=10, variant="etkf", inflation=1.02, rotate=True), 0.60, "l63_etkf"),
    "l63_enkf": ("l63", dict(num_members=10, variant="stochastic", inflation=1.04), 0.65, "l63_enkf"),
    "l96_etkf": ("l96", dict(num_members=28, variant="etkf", inflation=1.02, rotate=True), 0.18, "l96_etkf28"),
    "l96_enkf": ("l96", dict(num_members=40, variant="stochastic", inflation=1.06), 0.22, "l96_enkf"),
    "l96_letkf": ("l96", dict(num_members=7, variant="letkf", inflation=1.04, rotate=True, radius=4.0), 0.22,
                  "l96_letkf"),
}
BURN_IN_TIME = {"l63": 16.0, "l96": 20.0}
CYCLE_TIME = {"l63": 0.25, "l96": 0.05}


def build(system, settings, dim=40):
    """(SSM, EnKF backend) for a configuration."""
    import numpy as np

    from ssmppl import SSM, EnKF, Localization
    from ssmppl.models import lorenz63, lorenz96

    settings = dict(settings)
    radius = settings.pop("radius", None)
    if system == "l63":
        model = lorenz63(dt=0.01, steps_per_obs=25, process_noise=0.0, obs_noise=float(np.sqrt(2.0)),
                         initial_mean=(1.509, -1.531, 25.46), initial_scale=float(np.sqrt(2.0)))
    else:
        e1 = np.zeros(dim)
        e1[0] = 1.0
        model = lorenz96(dim=dim, forcing=8.0, dt=0.05, steps_per_obs=1, process_noise=0.0, obs_noise=1.0,
                         initial_mean=e1, initial_scale=float(np.sqrt(0.001)))
        if radius is not None:
            settings["localization"] = Localization.on_ring(radius, dim)
    return SSM(model), EnKF(**settings, store_covariances=False)


def run(name, cycles, seeds, time_it=True):
    """Per seed: analysis RMSE averaged after burn-in; plus seconds per cycle (second jitted run)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    system, settings, _, _ = CONFIGS[name]
    ssm, method = build(system, settings)
    burn = int(np.floor(BURN_IN_TIME[system] / CYCLE_TIME[system] + 1e-9))  # analyses at time <= BurnIn

    @jax.jit
    def one(seed):
        key = jax.random.PRNGKey(seed)
        k_truth, k_filter = jax.random.split(key)
        truth, y = ssm.sample(k_truth, {}, T=cycles)
        res = ssm.filter({}, y=y, method=method, key=k_filter)
        err = jnp.sqrt(((res.filtered_means - truth) ** 2).mean(-1))
        err_f = jnp.sqrt(((res.predicted_means - truth) ** 2).mean(-1))
        return err[burn:].mean(), err_f[burn:].mean(), res.filtered_spread[burn:].mean(), err[-1000:].mean()

    rmse, rmse_f, spread, diverged = [], [], [], []
    for s in range(1, seeds + 1):
        a, f, sp, last = (float(v) for v in one(s))
        rmse.append(a)
        rmse_f.append(f)
        spread.append(sp)
        diverged.append(bool(last > 1.0))
    out = dict(config=name, cycles=cycles, seeds=seeds, rmse_a=rmse, rmse_f=rmse_f, spread_a=spread,
               diverged=diverged)
    if time_it:
        truth, y = jax.jit(lambda k: ssm.sample(k, {}, T=cycles))(jax.random.PRNGKey(0))
        f = jax.jit(lambda k, y: ssm.filter({}, y=y, method=method, key=k).filtered_means)
        f(jax.random.PRNGKey(1), y).block_until_ready()
        best = np.inf
        for r in range(3):
            t0 = time.perf_counter()
            f(jax.random.PRNGKey(2 + r), y).block_until_ready()
            best = min(best, time.perf_counter() - t0)
        out["sec_per_cycle"] = best / cycles
    return out


def dapper_reference(python, names, cycles, seeds):
    """Run DAPPER (its own interpreter) on the same configurations; {name: result}."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_dapper_reference.py")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dapper.json")
        configs = [CONFIGS[n][3] for n in names]
        cmd = [python, script, "--config", *configs, "--cycles", str(cycles), "--seeds", str(seeds), "--json", path]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(path) as f:
            raw = json.load(f)
    by_config = {}
    for entry in raw if isinstance(raw, list) else raw.get("results", raw):
        by_config.setdefault(entry["config"], []).append(entry)
    return by_config


def _mean_se(xs):
    import numpy as np

    xs = np.asarray(xs, float)
    return xs.mean(), (xs.std(ddof=1) / np.sqrt(len(xs)) if len(xs) > 1 else float("nan"))


def big_cycle(dim, members=20):
    """One ETKF and one LETKF cycle on Lorenz-96 with ``dim`` variables (float32): time and memory."""
    import jax
    import numpy as np

    from ssmppl import EnKF, Localization, SSM
    from ssmppl.models import lorenz96

    model = lorenz96(dim=dim, dt=0.05, process_noise=0.0, obs_noise=1.0, initial_scale=1.0)
    ssm = SSM(model)
    y = np.random.default_rng(0).normal(8.0, 3.0, (1, dim)).astype(np.float32)
    rows = []
    for name, m in [("etkf", EnKF(members, "etkf", inflation=1.02, store_covariances=False)),
                    ("letkf", EnKF(members, "letkf", inflation=1.04, localization=Localization.on_ring(4, dim),
                                   store_covariances=False))]:
        f = jax.jit(lambda k, y, m=m: ssm.filter({}, y=y, method=m, key=k).filtered_means)
        f(jax.random.PRNGKey(0), y).block_until_ready()
        t0 = time.perf_counter()
        f(jax.random.PRNGKey(1), y).block_until_ready()
        dt = time.perf_counter() - t0
        stats = jax.devices()[0].memory_stats() or {}
        rows.append((name, dt, stats.get("peak_bytes_in_use", float("nan")) / 2 ** 30))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="1,500 cycles, 1 seed")
    p.add_argument("--cycles", type=int, default=10000)
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--config", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--dapper", default=None, help="python of an environment with dapper installed")
    p.add_argument("--dapper-cycles", type=int, default=2000, help="cycles of the DAPPER timing runs")
    p.add_argument("--cpus", type=int, default=1, help="cores to use (0 = all)")
    p.add_argument("--gpu", action="store_true", help="the 10^6-variable cycle on the default device")
    p.add_argument("--big-dim", type=int, default=1_000_000)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    allowed, used = pin_cpus(0 if args.gpu else args.cpus)
    if args.short:
        args.cycles, args.seeds = 1500, 1

    import jax

    jax.config.update("jax_enable_x64", not args.gpu)

    print(f"# ssmppl {git_rev(__file__, 'ssmppl')} on {device_label(jax, used, allowed)}")
    if args.gpu:
        print(f"| L96 d = {args.big_dim}, N = 20, float32 | s per cycle | peak memory (GiB) |\n|---|---:|---:|")
        for name, dt, mem in big_cycle(args.big_dim):
            print(f"| {name} | {dt:.4f} | {mem:.2f} |")
        return
    results = [run(n, args.cycles, args.seeds) for n in args.config]
    ref = dapper_reference(args.dapper, args.config, args.dapper_cycles, 1) if args.dapper else {}
    print(f"\n{args.cycles} cycles x {args.seeds} seeds; RMSE of the analysis mean after burn-in "
          "(mean +- s.e. over seeds); time per cycle after compilation")
    print("| configuration | ssmppl RMSE | median | diverged | mean without diverged | DAPPER's figure | "
          "ssmppl ms/cycle | DAPPER ms/cycle | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    import numpy as np

    for r in results:
        m, se = _mean_se(r["rmse_a"])
        kept = [a for a, d in zip(r["rmse_a"], r["diverged"]) if not d]
        m_kept, se_kept = _mean_se(kept) if kept else (float("nan"), float("nan"))
        quoted = CONFIGS[r["config"]][2]
        ours = 1e3 * r["sec_per_cycle"]
        theirs = ref.get(CONFIGS[r["config"]][3])
        if theirs:
            t = 1e3 * min(e["sec_per_cycle"] for e in theirs)
            cells = f"{t:.3f} | {t / ours:.1f}x"
        else:
            cells = "- | -"
        print(f"| {r['config']} ({CONFIGS[r['config']][1]['num_members']} members) | {m:.4f} +- {se:.4f} | "
              f"{np.median(r['rmse_a']):.4f} | {sum(r['diverged'])}/{len(r['diverged'])} | "
              f"{m_kept:.4f} +- {se_kept:.4f} | {quoted:.2f} | {ours:.3f} | {cells} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(results=results, dapper=ref), f, indent=1)
    return results


if __name__ == "__main__":
    main()
