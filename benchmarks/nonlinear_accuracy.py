"""Accuracy of ssmppl's Gaussian-approximation filters and smoothers against reference posteriors.

For each model and regime, ``datasets`` data sets are simulated (fixed seeds) and
every backend filters and smooths them through the public API
(``SSM(model).smooth(params, y, method=...)``). Their filtered means
E[z_t | y_{1:t}] and smoothed means E[z_t | y_{1:T}] are compared with a reference
posterior computed independently (``tests/reference_posteriors.py``):

  poisson   ``models.poisson_ar1``: z_t = mu + phi (z_{t-1} - mu) + sigma eps_t,
            y_t ~ Poisson(exp(z_t)). Reference: a 2000-point grid filter/smoother
            over mu +- 8 stationary sd (exact up to quadrature error, which is
            estimated by a 1000-point grid and reported), which also gives the exact
            log-likelihood. Backends: MomentMatching(rule=EKF()), rule=EKF(iterations=5),
            rule=UKF(), rule=GaussHermite(order=3 / 5); the sigma-point ones use the
            quadrature log predictive (the default).
  pendulum  ``models.pendulum``: angle/velocity, Euler step dt = 0.0125, g = 9.8,
            q_c = 1, y_t = sin(angle_t) + N(0, r^2). Reference: the average of
            ``replicates`` independent bootstrap particle filters (``pf_particles``
            each, systematic resampling) for the filtered means, and of as many
            FFBSi smoothers (``ffbsi_particles`` forward particles, ``ffbsi_paths``
            backward paths, exact windowed backward kernel) for the smoothed means.
            Its Monte Carlo error is the standard error across replicates, reported
            as an RMS over time next to the RMSEs (an RMSE much larger than it is a
            real approximation error). Backends: EKF(), EKF(iterations=3 / 5), UKF(),
            GaussHermite(order=3 / 5).

Regimes: poisson "standard" (mu = 1, phi = 0.9, sigma = 0.3: counts around 3) and
"low counts" (mu = -1, phi = 0.95, sigma = 0.5: mostly 0/1 counts, a strongly
non-Gaussian likelihood); pendulum "standard" (dynamax's demo: r = 0.3, z_0 ~
N((pi/2, 0), 0.1 I)) and "informative" (r = 0.1: the observation is precise
relative to the curvature of sin, where linearising once at the predicted mean
is worst and the iterated EKF should help).

RMSE: root mean square over t = 1..T of (backend mean - reference mean), per state
component, then averaged over the data sets (``rmse_sd``: the sd across data
sets). ``best_of`` counts in how many data sets a backend beat the EKF.

Usage:
    taskset -c 1 python benchmarks/nonlinear_accuracy.py --out benchmarks/results_nonlinear_accuracy.md
    taskset -c 1 python benchmarks/nonlinear_accuracy.py --quick      # small sizes, about a minute
    taskset -c 1 python benchmarks/nonlinear_accuracy.py --models poisson

From Python (the issue's notebook): ``rows = accuracy_table(models=("poisson",), quick=True)``
returns the table as a list of dicts; ``format_table(rows)`` renders it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from _common import git_rev, library_versions, markdown_table, text_table, write_report  # noqa: E402

POISSON_REGIMES = {
    "standard": dict(mu=1.0, phi=0.9, sigma=0.3),
    "low counts": dict(mu=-1.0, phi=0.95, sigma=0.5),
}
PENDULUM_REGIMES = {
    "standard": dict(r=0.3),
    "informative": dict(r=0.1),
}
FULL = dict(datasets=4, poisson_T=200, grid=2000, pendulum_T=300, pf_particles=50_000, replicates=4,
            ffbsi_particles=5000, ffbsi_paths=1000)
QUICK = dict(datasets=2, poisson_T=100, grid=1000, pendulum_T=100, pf_particles=20_000, replicates=3,
             ffbsi_particles=2000, ffbsi_paths=300)


def poisson_backends():
    from ssmppl.inference import EKF, UKF, GaussHermite, MomentMatching

    return {
        "MM(EKF)": MomentMatching(rule=EKF()),
        "MM(EKF, 5 iterations)": MomentMatching(rule=EKF(iterations=5)),
        "MM(UKF)": MomentMatching(rule=UKF()),
        "MM(GH 3)": MomentMatching(rule=GaussHermite(order=3)),
        "MM(GH 5)": MomentMatching(rule=GaussHermite(order=5)),
    }


def pendulum_backends():
    from ssmppl.inference import EKF, UKF, GaussHermite

    return {
        "EKF": EKF(),
        "EKF (3 iterations)": EKF(iterations=3),
        "EKF (5 iterations)": EKF(iterations=5),
        "UKF": UKF(),
        "GH 3": GaussHermite(order=3),
        "GH 5": GaussHermite(order=5),
    }


_SSMS = {}


def _ssm(model, regime):
    """One SSM per (model, regime), so that jit caches are reused across data sets."""
    import ssmppl
    from ssmppl.models import pendulum, poisson_ar1

    key = (model, regime)
    if key not in _SSMS:
        if model == "poisson":
            _SSMS[key] = ssmppl.SSM(poisson_ar1(**POISSON_REGIMES[regime]))
        else:
            _SSMS[key] = ssmppl.SSM(pendulum(**PENDULUM_REGIMES[regime]))
    return _SSMS[key]


def _run_backends(ssm, params, y, backends, log):
    """{name: (filtered means (T, dz), smoothed means (T, dz), log-likelihood)} or an error string."""
    import numpy as np

    out = {}
    for name, method in backends.items():
        try:
            res = ssm.smooth(params, y, method=method)
            out[name] = (np.asarray(res.filtered_means), np.asarray(res.smoothed_means), float(res.marginal_loglik))
        except Exception as e:  # report, go on
            out[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            log(f"      {name}: FAILED {out[name]}")
    return out


def poisson_case(regime, seed, T, grid=2000, log=print):
    """One Poisson data set: reference and backend means. Returns a dict of per-backend metrics."""
    import jax
    import jax.numpy as jnp
    from reference_posteriors import PoissonAR1, rmse

    p = POISSON_REGIMES[regime]
    truth = PoissonAR1(**p)
    z, y = truth.simulate(jax.random.PRNGKey(seed), T)
    ref = truth.grid_reference(y, num_points=grid)
    coarse = truth.grid_reference(y, num_points=grid // 2)
    ref_err_f = float(rmse(ref["filtered_means"], coarse["filtered_means"]))
    ref_err_s = float(rmse(ref["smoothed_means"], coarse["smoothed_means"]))
    ssm = _ssm("poisson", regime)
    params = {k: jnp.asarray(v) for k, v in p.items()}
    results = _run_backends(ssm, params, jnp.asarray(y), poisson_backends(), log)
    metrics = {}
    for name, r in results.items():
        if isinstance(r, str):
            metrics[name] = dict(error=r)
            continue
        fm, sm, ll = r
        metrics[name] = dict(
            filtered_rmse=[float(rmse(fm[:, 0], ref["filtered_means"]))],
            smoothed_rmse=[float(rmse(sm[:, 0], ref["smoothed_means"]))],
            loglik_error=float(ll - ref["loglik"]),
            filtered_rmse_truth=[float(rmse(fm[:, 0], z))],
            smoothed_rmse_truth=[float(rmse(sm[:, 0], z))],
        )
    reference = dict(filtered_mc_error=[ref_err_f], smoothed_mc_error=[ref_err_s],
                     filtered_rmse_truth=[float(rmse(ref["filtered_means"], z))],
                     smoothed_rmse_truth=[float(rmse(ref["smoothed_means"], z))], edge_mass=ref["edge_mass"])
    return dict(model="poisson", regime=regime, seed=seed, T=T, metrics=metrics, reference=reference)


def pendulum_case(regime, seed, T, pf_particles, replicates, ffbsi_particles, ffbsi_paths, log=print):
    """One pendulum data set: particle reference and backend means."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from reference_posteriors import Pendulum, replicated_reference, rmse

    p = PENDULUM_REGIMES[regime]
    truth = Pendulum(**p)
    x, y = truth.simulate(jax.random.PRNGKey(seed), T)
    m0, P0 = truth.initial
    t0 = time.perf_counter()
    ref = replicated_reference(jax.random.PRNGKey(10_000 + seed), jnp.asarray(y), m0, P0, truth.f, truth.Q,
                               truth.log_emission, pf_particles, replicates=replicates,
                               smoother_particles=ffbsi_particles, num_paths=ffbsi_paths)
    log(f"      reference: {time.perf_counter() - t0:.1f} s (FFBSi: {ref['wide_windows']} wide windows, "
        f"{ref['fallback_draws']} full-weight draws, {ref['approximate_draws']} approximate draws)")
    ssm = _ssm("pendulum", regime)
    results = _run_backends(ssm, {}, jnp.asarray(y[:, 0]), pendulum_backends(), log)
    metrics = {}
    for name, r in results.items():
        if isinstance(r, str):
            metrics[name] = dict(error=r)
            continue
        fm, sm, ll = r
        metrics[name] = dict(
            filtered_rmse=rmse(fm, ref["filtered_means"]).tolist(),
            smoothed_rmse=rmse(sm, ref["smoothed_means"]).tolist(),
            loglik_error=float(ll - ref["loglik"]),
            filtered_rmse_truth=rmse(fm, x).tolist(),
            smoothed_rmse_truth=rmse(sm, x).tolist(),
        )
    rms = lambda se: np.sqrt(np.mean(np.asarray(se) ** 2, axis=0)).tolist()
    reference = dict(filtered_mc_error=rms(ref["filtered_means_se"]), smoothed_mc_error=rms(ref["smoothed_means_se"]),
                     filtered_rmse_truth=rmse(ref["filtered_means"], x).tolist(),
                     smoothed_rmse_truth=rmse(ref["smoothed_means"], x).tolist(),
                     loglik_sd=ref["loglik_sd"], approximate_draws=ref["approximate_draws"])
    return dict(model="pendulum", regime=regime, seed=seed, T=T, metrics=metrics, reference=reference)


def summarise(cases):
    """Aggregate per-data-set cases into table rows (list of dicts), one per (model, regime, backend)
    plus a 'reference' row holding the reference's own error."""
    import numpy as np

    rows = []
    groups = {}
    for c in cases:
        groups.setdefault((c["model"], c["regime"]), []).append(c)
    for (model, regime), cs in groups.items():
        names = list(cs[0]["metrics"])
        ekf = next((n for n in names if n in ("EKF", "MM(EKF)")), None)
        for name in names:
            ms = [c["metrics"][name] for c in cs]
            if any("error" in m for m in ms):
                rows.append(dict(model=model, regime=regime, backend=name, datasets=len(cs),
                                 error=next(m["error"] for m in ms if "error" in m)))
                continue
            row = dict(model=model, regime=regime, backend=name, datasets=len(cs), T=cs[0]["T"])
            for key in ("filtered_rmse", "smoothed_rmse", "filtered_rmse_truth", "smoothed_rmse_truth"):
                a = np.array([m[key] for m in ms])  # (datasets, components)
                row[key] = a.mean(0).tolist()
                row[key + "_sd"] = a.std(0, ddof=1).tolist() if len(cs) > 1 else [0.0] * a.shape[1]
            row["loglik_error"] = float(np.mean([m["loglik_error"] for m in ms]))
            if ekf and name != ekf:
                for kind in ("filtered", "smoothed"):
                    # data sets where this backend's RMSE (summed over components) beats the EKF's
                    row[f"{kind}_beats_ekf"] = int(sum(
                        sum(c["metrics"][name][f"{kind}_rmse"]) < sum(c["metrics"][ekf][f"{kind}_rmse"]) for c in cs))
            rows.append(row)
        ref = dict(model=model, regime=regime, backend="reference", datasets=len(cs), T=cs[0]["T"])
        for key in ("filtered_mc_error", "smoothed_mc_error", "filtered_rmse_truth", "smoothed_rmse_truth"):
            ref[key] = np.mean([c["reference"][key] for c in cs], axis=0).tolist()
        rows.append(ref)
    return rows


def accuracy_table(models=("poisson", "pendulum"), quick=False, log=print, **overrides):
    """Run the benchmark; returns ``(rows, cases)``: summary rows (list of dicts, see
    ``summarise``) and the per-data-set results."""
    import jax

    jax.config.update("jax_enable_x64", True)
    cfg = {**(QUICK if quick else FULL), **overrides}
    cases = []
    for model in models:
        regimes = POISSON_REGIMES if model == "poisson" else PENDULUM_REGIMES
        for regime in regimes:
            for seed in range(cfg["datasets"]):
                log(f"  {model} / {regime} / data set {seed}")
                if model == "poisson":
                    cases.append(poisson_case(regime, seed, cfg["poisson_T"], cfg["grid"], log=log))
                else:
                    cases.append(pendulum_case(regime, seed, cfg["pendulum_T"], cfg["pf_particles"],
                                               cfg["replicates"], cfg["ffbsi_particles"], cfg["ffbsi_paths"], log=log))
    return summarise(cases), cases


def _fmt(v, sd=None):
    if isinstance(v, list):
        return " / ".join(_fmt(x) for x in v)
    return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def format_table(rows, markdown=False):
    header = ["model", "regime", "backend", "filtered RMSE vs ref", "smoothed RMSE vs ref",
              "loglik - ref", "filtered RMSE vs truth", "smoothed RMSE vs truth", "beats EKF (filt/smooth)"]
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["model"], r["regime"], r["backend"], "failed: " + r["error"][:60]] + [""] * 5)
        elif r["backend"] == "reference":
            body.append([r["model"], r["regime"], "(reference MC/grid error)", _fmt(r["filtered_mc_error"]),
                         _fmt(r["smoothed_mc_error"]), "", _fmt(r["filtered_rmse_truth"]),
                         _fmt(r["smoothed_rmse_truth"]), ""])
        else:
            beats = (f"{r['filtered_beats_ekf']}/{r['smoothed_beats_ekf']} of {r['datasets']}"
                     if "filtered_beats_ekf" in r else "")
            body.append([r["model"], r["regime"], r["backend"], _fmt(r["filtered_rmse"]), _fmt(r["smoothed_rmse"]),
                         f"{r['loglik_error']:+.3f}", _fmt(r["filtered_rmse_truth"]), _fmt(r["smoothed_rmse_truth"]),
                         beats])
    return (markdown_table if markdown else text_table)(header, body)


def format_cases(cases, markdown=False):
    """One table per model, one row per (regime, data set): each backend's filtered ; smoothed RMSE vs the
    reference."""
    models = list(dict.fromkeys(c["model"] for c in cases))
    if len(models) > 1:
        return "\n\n".join(format_cases([c for c in cases if c["model"] == m], markdown) for m in models)
    names = []
    for c in cases:
        names += [n for n in c["metrics"] if n not in names]
    header = ["model", "regime", "seed"] + names + ["reference error"]
    body = []
    for c in cases:
        cells = [c["model"], c["regime"], str(c["seed"])]
        for n in names:
            m = c["metrics"].get(n, {"error": "n/a"})
            cells.append("failed" if "error" in m else f"{_fmt(m['filtered_rmse'])} ; {_fmt(m['smoothed_rmse'])}")
        ref = c["reference"]
        cells.append(f"{_fmt(ref['filtered_mc_error'])} ; {_fmt(ref['smoothed_mc_error'])}")
        body.append(cells)
    return (markdown_table if markdown else text_table)(header, body)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["poisson", "pendulum"], choices=["poisson", "pendulum"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--datasets", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the markdown report here")
    ap.add_argument("--json", default=None, help="also write the rows and per-data-set results as JSON here")
    args = ap.parse_args(argv)
    overrides = {"datasets": args.datasets} if args.datasets else {}
    t0 = time.perf_counter()
    rows, cases = accuracy_table(tuple(args.models), quick=args.quick, log=lambda s: print(s, flush=True),
                                 **overrides)
    cfg = {**(QUICK if args.quick else FULL), **overrides}
    print(format_table(rows))
    print(format_cases(cases))
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(dict(config=cfg, rows=rows, cases=cases), f, indent=1)
    if args.out:
        lines = [
            "# Accuracy of the Gaussian filters and smoothers against reference posteriors",
            "",
            f"Generated by `benchmarks/nonlinear_accuracy.py{' --quick' if args.quick else ''}` on "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, ssmppl {git_rev(__file__, 'ssmppl')}, "
            f"{', '.join(library_versions(['jax', 'numpyro']))}; float64; {time.perf_counter() - t0:.0f} s.",
            "",
            f"Settings: {cfg}.",
            "",
            "RMSEs are averaged over the data sets; pendulum entries are angle / velocity. The reference row gives "
            "the reference's own error: for the Poisson grid the RMS difference between the 2000- and 1000-point "
            "grids; for the pendulum the RMS over time of the standard error of the replicate average. "
            "'beats EKF' counts the data sets where the backend's RMSE vs the reference (summed over components) "
            "is below the EKF's (MM(EKF) for Poisson). 'loglik - ref': backend log-likelihood minus the grid's "
            "exact one (Poisson) or the particle filters' average log estimate (pendulum).",
            "",
            format_table(rows, markdown=True),
            "",
            "Per data set (RMSE vs the reference, filtered ; smoothed; pendulum: angle / velocity):",
            "",
            format_cases(cases, markdown=True),
            "",
        ]
        write_report(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
