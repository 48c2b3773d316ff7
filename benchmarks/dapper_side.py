"""The DAPPER half of the da_lorenz suite. Runs under DAPPER's own interpreter (DAPPER is not a dependency
of ssmppl and is never imported next to it); ``python -m benchmarks.run da_lorenz --dapper PYTHON`` calls it.

    PYTHON benchmarks/dapper_side.py reference --config l96_letkf --cycles 2000 --seeds 1 --json out.json
        DAPPER's own truth, observations and filter: RMSE and time per cycle (JSON list)
    PYTHON benchmarks/dapper_side.py simulate --config l63_etkf --seeds 1 2 --cycles 10000 --out DIR [--fixed-init]
        saves DAPPER's truth at the analysis times, its observations and its per-analysis RMSE (DIR/*.npz),
        for ssmppl to filter the same data (``da_lorenz --same-data DIR``)

Set-ups: DAPPER's ``Lorenz63.sakov2012`` and ``Lorenz96.sakov2008`` HMMs with only the number of cycles
``Ko`` changed; burn-in stays DAPPER's. Times: ``xp.assimilate`` (forecast, analysis and DAPPER's
per-cycle statistics, reduced to the error with ``comps.error_only``) divided by the Ko + 1
analyses; the truth simulation is not timed. BLAS on one thread, as ssmppl's single core.
"""

import argparse
import importlib
import json
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# the da_lorenz configurations in DAPPER's terms: (mod, method, kwargs)
CONFIGS = {
    "l63_etkf": ("Lorenz63.sakov2012", "EnKF", dict(upd_a="Sqrt", N=10, infl=1.02, rot=True)),
    "l63_enkf": ("Lorenz63.sakov2012", "EnKF", dict(upd_a="PertObs", N=10, infl=1.04)),
    "l96_etkf": ("Lorenz96.sakov2008", "EnKF", dict(upd_a="Sqrt", N=28, infl=1.02, rot=True)),
    "l96_enkf": ("Lorenz96.sakov2008", "EnKF", dict(upd_a="PertObs", N=40, infl=1.06)),
    "l96_letkf": ("Lorenz96.sakov2008", "LETKF", dict(N=7, infl=1.04, rot=True, loc_rad=4)),
    # the mod's own ETKF tuning (its comments quote 0.18 for it and for the serial scheme at N=28, 1.02)
    "l96_etkf24": ("Lorenz96.sakov2008", "EnKF", dict(upd_a="Sqrt", N=24, infl=1.013, rot=True)),
    # deterministic (no rotation): with --fixed-init both libraries must agree to rounding
    "l63_etkf_norot": ("Lorenz63.sakov2012", "EnKF", dict(upd_a="Sqrt", N=10, infl=1.02)),
    "l96_etkf_norot": ("Lorenz96.sakov2008", "EnKF", dict(upd_a="Sqrt", N=28, infl=1.02)),
}


def experiment(config, cycles, seed):
    """(HMM, method object) of a configuration, DAPPER quiet and seeded (one seed: truth, obs and filter)."""
    import warnings

    warnings.filterwarnings("ignore")
    import dapper.da_methods as da
    import dapper.tools.progressbar as pb
    from dapper.dpr_config import rc
    from dapper.tools.seeding import set_seed

    rc.liveplotting, pb.disable_progbar, pb.disable_user_interaction = False, True, True
    rc.comps["error_only"] = True
    mod, method, kwargs = CONFIGS[config]
    HMM = importlib.import_module("dapper.mods." + mod).HMM.copy()
    HMM.tseq.Ko = cycles
    set_seed(seed)
    return HMM, getattr(da, method)(**kwargs)


def reference(config, cycles, seed):
    import dapper
    import numpy as np

    HMM, xp = experiment(config, cycles, seed)
    xx, yy = HMM.simulate()
    t0, c0 = time.perf_counter(), time.process_time()
    xp.assimilate(HMM, xx, yy, liveplots=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    keep = HMM.tseq.masko  # analyses after BurnIn
    n = HMM.tseq.Ko + 1
    return dict(config=config, seed=seed, cycles=cycles, rmse_a=float(np.mean(np.asarray(xp.stats.err.rms.a)[keep])),
                sec_per_cycle=wall / n, cpu_sec_per_cycle=cpu / n, dapper_version=dapper.__version__)


def simulate(config, cycles, seed, out, fixed_init):
    import numpy as np

    HMM, xp = experiment(config, cycles, seed)
    xx, yy = HMM.simulate()
    yy = np.stack([np.asarray(v, float) for v in yy])
    extra = {}
    if fixed_init:  # the filter starts from this saved ensemble
        E0 = extra["E0"] = HMM.X0.sample(CONFIGS[config][2]["N"])
        HMM.X0.sample = lambda N, E0=E0: E0.copy()
    xp.assimilate(HMM, xx, yy, liveplots=False)
    err = np.asarray(xp.stats.err.rms.a, float)
    np.savez(os.path.join(out, f"{config}_s{seed}_K{cycles}.npz"), truth=xx[HMM.tseq.kko], y=yy,
             masko=np.asarray(HMM.tseq.masko), err_a=err, **extra)
    return dict(config=config, seed=seed, rmse_a=float(err[HMM.tseq.masko].mean()))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["reference", "simulate"])
    p.add_argument("--config", nargs="+", required=True, choices=list(CONFIGS))
    p.add_argument("--cycles", type=int, default=10000, help="DAPPER's Ko")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="DAPPER refuses seed 0")
    p.add_argument("--json", help="reference: write the results here")
    p.add_argument("--out", help="simulate: folder of the saved data")
    p.add_argument("--fixed-init", action="store_true")
    args = p.parse_args()
    results = []
    for config in args.config:
        for seed in args.seeds:
            if args.command == "reference":
                results.append(reference(config, args.cycles, seed))
            else:
                os.makedirs(args.out, exist_ok=True)
                results.append(simulate(config, args.cycles, seed, args.out, args.fixed_init))
            print(json.dumps(results[-1]), flush=True)
            if args.json:  # as we go: a long run cut short stays useful
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
