"""Same-data comparison of ssmppl's EnKF with DAPPER on DAPPER's Lorenz set-ups.

Two halves, one per interpreter:

  # 1. in DAPPER's venv: simulate DAPPER's truth and observations, run DAPPER's filter on them,
  #    save everything (truth at the observation times, observations, DAPPER's per-analysis RMSE)
  /work/venv-dapper/bin/python benchmarks/_dapper_same_data.py dapper --config l63_etkf \
      --seeds 1 2 3 --cycles 10000 --out /tmp/same
  # 2. in ssmppl's environment: run ssmppl's EnKF (benchmarks/da_lorenz.py's ``build``) on the
  #    saved data, several filter keys per data set
  PYTHONPATH=. python benchmarks/_dapper_same_data.py ssmppl --config l63_etkf --seeds 1 2 3 --out /tmp/same

Indexing: DAPPER's analysis ko (0..Ko) is at model step k = (ko+1) dko; ssmppl's step t produces
z_t then y_t from z_{t-1} by the same dko RK4 steps, so y[t] = DAPPER's yy[ko=t] and the truth
to compare with is DAPPER's xx[(t+1) dko]. Averaged analyses: DAPPER's ``masko`` (time > BurnIn),
used for both libraries. ``--fixed-init`` (ETKF without rotation only) also saves DAPPER's initial
ensemble and feeds it to ssmppl: both filters are then deterministic and must agree to rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# config: (DAPPER mod, DAPPER method, DAPPER kwargs, ssmppl system, EnKF kwargs)
CONFIGS = {
    "l63_etkf": ("Lorenz63.sakov2012", "EnKF", dict(upd_a="Sqrt", N=10, infl=1.02, rot=True),
                 "l63", dict(num_members=10, variant="etkf", inflation=1.02, rotate=True)),
    "l63_enkf": ("Lorenz63.sakov2012", "EnKF", dict(upd_a="PertObs", N=10, infl=1.04),
                 "l63", dict(num_members=10, variant="stochastic", inflation=1.04)),
    "l96_etkf28": ("Lorenz96.sakov2008", "EnKF", dict(upd_a="Sqrt", N=28, infl=1.02, rot=True),
                   "l96", dict(num_members=28, variant="etkf", inflation=1.02, rotate=True)),
    # deterministic (no rotation) variants, for the exact --fixed-init check
    "l63_etkf_norot": ("Lorenz63.sakov2012", "EnKF", dict(upd_a="Sqrt", N=10, infl=1.02),
                       "l63", dict(num_members=10, variant="etkf", inflation=1.02)),
    "l96_etkf28_norot": ("Lorenz96.sakov2008", "EnKF", dict(upd_a="Sqrt", N=28, infl=1.02),
                         "l96", dict(num_members=28, variant="etkf", inflation=1.02)),
}


def _path(out, config, seed, cycles):
    return os.path.join(out, f"{config}_s{seed}_K{cycles}.npz")


def run_dapper(config, seed, cycles, out, fixed_init):
    """DAPPER: set_seed, simulate, filter; save truth at obs times, obs, DAPPER's RMSE series."""
    import importlib
    import time
    import warnings

    import numpy as np

    warnings.filterwarnings("ignore")
    import dapper.tools.progressbar as pb
    from dapper.dpr_config import rc

    rc.liveplotting = False
    pb.disable_progbar = True
    pb.disable_user_interaction = True
    rc.comps["error_only"] = True
    import dapper.da_methods as da
    from dapper.tools.seeding import set_seed

    mod, method, kwargs = CONFIGS[config][:3]
    HMM = importlib.import_module("dapper.mods." + mod).HMM.copy()
    HMM.tseq.Ko = cycles
    set_seed(seed)
    xx, yy = HMM.simulate()
    yy = np.stack([np.asarray(v, float) for v in yy])
    extra = {}
    if fixed_init:
        E0 = HMM.X0.sample(kwargs["N"])
        HMM.X0.sample = lambda N, E0=E0: E0.copy()  # the filter starts from this ensemble
        extra["E0"] = E0
    xp = getattr(da, method)(**kwargs)
    t0 = time.perf_counter()
    xp.assimilate(HMM, xx, yy, liveplots=False)
    tseq = HMM.tseq
    err_a = np.asarray(xp.stats.err.rms.a, float)
    np.savez(_path(out, config, seed, cycles), truth=xx[tseq.kko], y=yy, masko=np.asarray(tseq.masko),
             err_a=err_a, **extra)
    keep = np.asarray(tseq.masko)
    return dict(config=config, seed=seed, lib="dapper", rmse_a=float(err_a[keep].mean()),
                last1000=float(err_a[-1000:].mean()), sec=time.perf_counter() - t0)


def run_ssmppl(config, seed, cycles, out, keys, fixed_init):
    """ssmppl on DAPPER's saved data, filter keys 0..keys-1: per key the averaged RMSE."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from da_lorenz import build

    data = np.load(_path(out, config, seed, cycles))
    system, settings = CONFIGS[config][3:]
    ssm, method = build(system, settings)
    truth, y, keep = jnp.asarray(data["truth"]), jnp.asarray(data["y"]), np.asarray(data["masko"])
    if fixed_init:
        import ssmppl.inference.ensemble as ens

        E0 = jnp.asarray(data["E0"])
        ens._initial_ensemble = lambda problem, key, N, dtype: E0.astype(dtype)

    @jax.jit
    def errors(key):
        res = ssm.filter({}, y=y, method=method, key=key)
        return jnp.sqrt(((res.filtered_means - truth) ** 2).mean(-1))

    rows = []
    for k in range(keys):
        err = np.asarray(errors(jax.random.PRNGKey(1000 * seed + k)))
        row = dict(config=config, seed=seed, key=k, lib="ssmppl", rmse_a=float(np.nan_to_num(err[keep], nan=1e3).mean()),
                   last1000=float(np.nan_to_num(err[-1000:], nan=1e3).mean()))
        if fixed_init:
            d = np.abs(err - data["err_a"])
            first = int(np.argmax(d > 1e-6)) if (d > 1e-6).any() else -1
            row.update(first_mismatch=first, max_diff_first100=float(d[:100].max()))
        rows.append(row)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("lib", choices=["dapper", "ssmppl"])
    p.add_argument("--config", nargs="+", default=["l63_etkf", "l63_enkf", "l96_etkf28"], choices=list(CONFIGS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cycles", type=int, default=10000, help="DAPPER's Ko (Ko + 1 analyses)")
    p.add_argument("--keys", type=int, default=4, help="ssmppl filter keys per data set")
    p.add_argument("--fixed-init", action="store_true")
    p.add_argument("--out", default="/tmp/dapper_same_data")
    p.add_argument("--json", default=None, help="append result rows (JSON lines)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for config in args.config:
        for seed in args.seeds:
            if args.lib == "dapper":
                rows = [run_dapper(config, seed, args.cycles, args.out, args.fixed_init)]
            else:
                rows = run_ssmppl(config, seed, args.cycles, args.out, args.keys, args.fixed_init)
            for r in rows:
                print(json.dumps(r), flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
