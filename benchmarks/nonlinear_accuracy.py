"""nonlinear_accuracy: ssmppl's Gaussian filters and smoothers against reference posteriors.

Accuracy, not speed. For each model and regime, ``datasets`` data sets are simulated (fixed seeds)
and every backend filters and smooths them (``SSM(model).smooth(params, y, method=...)``). Their
filtered and smoothed means are compared with a reference posterior computed independently
(``tests/reference_posteriors.py``):

  poisson   ``models.poisson_ar1``: z_t = mu + phi (z_{t-1} - mu) + sigma eps_t, y_t ~ Poisson(exp(z_t)).
            Reference: a 2,000-point grid filter / smoother (its error estimated against 1,000 points),
            which also gives the exact log-likelihood. Backends: MomentMatching(rule=EKF()),
            rule=EKF(iterations=5), rule=UKF(), rule=GaussHermite(order=3 / 5).
  pendulum  ``models.pendulum`` (Euler step 0.0125, g = 9.8, q_c = 1, y_t = sin(angle_t) + N(0, r^2)).
            Reference: the average of ``replicates`` bootstrap particle filters (``pf_particles`` each)
            and FFBSi smoothers; its Monte Carlo error is the standard error across replicates.
            Backends: EKF(), EKF(iterations=3 / 5), UKF(), GaussHermite(order=3 / 5).

Regimes: poisson "standard" (mu = 1, phi = 0.9, sigma = 0.3) and "low counts" (mu = -1, phi = 0.95,
sigma = 0.5); pendulum "standard" (r = 0.3) and "informative" (r = 0.1). RMSE over t of (backend
mean - reference mean) per state component, averaged over the data sets; 'beats EKF' counts the data
sets where a backend beat the EKF. Check: every backend's means are finite.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import ssmppl
from ssmppl import EKF, UKF, GaussHermite, MomentMatching
from ssmppl.models import pendulum, poisson_ar1

from . import harness

TITLE = "Accuracy of the Gaussian filters and smoothers against reference posteriors"
POISSON = {"standard": dict(mu=1.0, phi=0.9, sigma=0.3), "low counts": dict(mu=-1.0, phi=0.95, sigma=0.5)}
PENDULUM = {"standard": dict(r=0.3), "informative": dict(r=0.1)}
FULL = dict(datasets=4, poisson_T=200, grid=2000, pendulum_T=300, pf_particles=50_000, replicates=4,
            ffbsi_particles=5000, ffbsi_paths=1000)
SHORT = dict(datasets=2, poisson_T=100, grid=1000, pendulum_T=100, pf_particles=20_000, replicates=3,
             ffbsi_particles=2000, ffbsi_paths=300)


def arguments(p):
    p.add_argument("--models", nargs="+", default=["poisson", "pendulum"], choices=["poisson", "pendulum"])
    p.add_argument("--datasets", type=int, help="data sets per regime (default 4; --short: 2)")


def references():
    """tests/reference_posteriors.py, loaded by path (tests/ is not a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "reference_posteriors.py")
    spec = importlib.util.spec_from_file_location("reference_posteriors", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # (dataclasses look it up there)
    spec.loader.exec_module(module)
    return module


def backends(model):
    if model == "poisson":
        return {"MM(EKF)": MomentMatching(rule=EKF()), "MM(EKF, 5 iterations)": MomentMatching(rule=EKF(iterations=5)),
                "MM(UKF)": MomentMatching(rule=UKF()), "MM(GH 3)": MomentMatching(rule=GaussHermite(order=3)),
                "MM(GH 5)": MomentMatching(rule=GaussHermite(order=5))}
    return {"EKF": EKF(), "EKF (3 iterations)": EKF(iterations=3), "EKF (5 iterations)": EKF(iterations=5),
            "UKF": UKF(), "GH 3": GaussHermite(order=3), "GH 5": GaussHermite(order=5)}


def reference(ref, model, regime, seed, cfg, log):
    """(truth, y, params, reference dict with filtered_means, smoothed_means, loglik, and its own error)."""
    if model == "poisson":
        truth = ref.PoissonAR1(**POISSON[regime])
        z, y = truth.simulate(jax.random.PRNGKey(seed), cfg["poisson_T"])
        r = truth.grid_reference(y, num_points=cfg["grid"])
        coarse = truth.grid_reference(y, num_points=cfg["grid"] // 2)
        r["filtered_se"] = [float(ref.rmse(r["filtered_means"], coarse["filtered_means"]))]
        r["smoothed_se"] = [float(ref.rmse(r["smoothed_means"], coarse["smoothed_means"]))]
        return z[:, None], jnp.asarray(y), {k: jnp.asarray(v) for k, v in POISSON[regime].items()}, r
    truth = ref.Pendulum(**PENDULUM[regime])
    x, y = truth.simulate(jax.random.PRNGKey(seed), cfg["pendulum_T"])
    t0 = time.perf_counter()
    r = ref.replicated_reference(jax.random.PRNGKey(10_000 + seed), jnp.asarray(y), *truth.initial, truth.f, truth.Q,
                                 truth.log_emission, cfg["pf_particles"], replicates=cfg["replicates"],
                                 smoother_particles=cfg["ffbsi_particles"], num_paths=cfg["ffbsi_paths"])
    log(f"      reference: {time.perf_counter() - t0:.1f} s (FFBSi: {r['wide_windows']} wide windows, "
        f"{r['fallback_draws']} full-weight draws, {r['approximate_draws']} approximate draws)")
    rms = lambda se: np.sqrt(np.mean(np.asarray(se) ** 2, axis=0)).tolist()  # noqa: E731
    r["filtered_se"], r["smoothed_se"] = rms(r["filtered_means_se"]), rms(r["smoothed_means_se"])
    return x, jnp.asarray(y[:, 0]), {}, r


def data_set(ref, model, regime, seed, cfg, args, report):
    """One data set: every backend's RMSEs against the reference and against the truth."""
    truth, y, params, r = reference(ref, model, regime, seed, cfg, report.log)
    ssm = SSMS.setdefault((model, regime), ssmppl.SSM(poisson_ar1(**POISSON[regime]) if model == "poisson"
                                                      else pendulum(**PENDULUM[regime])))
    rmse = lambda a, b: np.atleast_1d(ref.rmse(np.asarray(a).reshape(len(b), -1), np.asarray(b).reshape(len(b), -1)))  # noqa
    impls = {name: (lambda m=m: ssm.smooth(params, y, method=m)) for name, m in backends(model).items()}

    def check(results):
        bad = [(name, False, f"{name}: non-finite filtered or smoothed means") for name, res in results.items()
               if not (np.isfinite(res.filtered_means).all() and np.isfinite(res.smoothed_means).all())]
        return bad or [(None, True, f"filtered and smoothed means of all {len(results)} backends finite")]

    res = harness.measure(harness.Case(f"{model} / {regime} / data set {seed}", impls, check), args, report,
                          timing=False)
    metrics = {}
    for name, out in res.items():
        if not out.ok:
            metrics[name] = dict(error=out.error)
            continue
        fm, sm = out.result.filtered_means, out.result.smoothed_means
        metrics[name] = dict(filtered_rmse=rmse(fm, r["filtered_means"]), smoothed_rmse=rmse(sm, r["smoothed_means"]),
                             loglik_error=float(out.result.marginal_loglik) - float(r["loglik"]),
                             filtered_rmse_truth=rmse(fm, truth), smoothed_rmse_truth=rmse(sm, truth))
    reference_row = dict(filtered_mc_error=r["filtered_se"], smoothed_mc_error=r["smoothed_se"],
                         filtered_rmse_truth=rmse(r["filtered_means"], truth),
                         smoothed_rmse_truth=rmse(r["smoothed_means"], truth))
    return dict(model=model, regime=regime, seed=seed, metrics=metrics, reference=reference_row)


SSMS = {}  # one SSM per (model, regime): its compiled filters are reused across data sets


def summarise(cases):
    """Rows per (model, regime, backend): RMSEs averaged over the data sets, plus the reference's error."""
    groups = {}
    for c in cases:
        groups.setdefault((c["model"], c["regime"]), []).append(c)
    rows = []
    for (model, regime), cs in groups.items():
        names = list(cs[0]["metrics"])
        ekf = names[0]  # EKF / MM(EKF)
        for name in names:
            ms = [c["metrics"][name] for c in cs]
            if any("error" in m for m in ms):
                rows.append([model, regime, name, "failed: " + next(m["error"] for m in ms if "error" in m)[:60]]
                            + [""] * 5)
                continue
            mean = lambda k: _fmt(np.mean([m[k] for m in ms], axis=0))  # noqa: E731
            beats = "" if name == ekf else "/".join(str(sum(
                sum(c["metrics"][name][f"{k}_rmse"]) < sum(c["metrics"][ekf][f"{k}_rmse"]) for c in cs))
                for k in ("filtered", "smoothed")) + f" of {len(cs)}"
            rows.append([model, regime, name, mean("filtered_rmse"), mean("smoothed_rmse"),
                         f"{np.mean([m['loglik_error'] for m in ms]):+.3f}", mean("filtered_rmse_truth"),
                         mean("smoothed_rmse_truth"), beats])
        ref = lambda k: _fmt(np.mean([c["reference"][k] for c in cs], axis=0))  # noqa: E731
        rows.append([model, regime, "(reference MC/grid error)", ref("filtered_mc_error"), ref("smoothed_mc_error"), "",
                     ref("filtered_rmse_truth"), ref("smoothed_rmse_truth"), ""])
    return rows


def _fmt(v):
    v = np.atleast_1d(v)
    return " / ".join(f"{x:.4f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}" for x in v)


def per_data_set(cases, model):
    cs = [c for c in cases if c["model"] == model]
    names = list(cs[0]["metrics"])
    rows = [[c["model"], c["regime"], str(c["seed"])]
            + ["failed" if "error" in c["metrics"][n] else
               f"{_fmt(c['metrics'][n]['filtered_rmse'])} ; {_fmt(c['metrics'][n]['smoothed_rmse'])}" for n in names]
            + [f"{_fmt(c['reference']['filtered_mc_error'])} ; {_fmt(c['reference']['smoothed_mc_error'])}"] for c in cs]
    return ["model", "regime", "seed"] + names + ["reference error"], rows


HEADER = ["model", "regime", "backend", "filtered RMSE vs ref", "smoothed RMSE vs ref", "loglik - ref",
          "filtered RMSE vs truth", "smoothed RMSE vs truth", "beats EKF (filt/smooth)"]
LEGEND = (
    "RMSEs are averaged over the data sets; pendulum entries are angle / velocity. The reference row gives the "
    "reference's own error: for the Poisson grid the RMS difference between the 2000- and 1000-point grids; for "
    "the pendulum the RMS over time of the standard error of the replicate average. 'beats EKF' counts the data "
    "sets where the backend's RMSE vs the reference (summed over components) is below the EKF's (MM(EKF) for "
    "Poisson). 'loglik - ref': backend log-likelihood minus the grid's exact one (Poisson) or the particle "
    "filters' average log estimate (pendulum). Settings: {cfg}.")


def run(args, report):
    ref = references()
    cfg = dict(SHORT if args.short else FULL, **({"datasets": args.datasets} if args.datasets else {}))
    cases = []
    for model in args.models:
        for regime in (POISSON if model == "poisson" else PENDULUM):
            for seed in range(cfg["datasets"]):
                cases.append(data_set(ref, model, regime, seed, cfg, args, report))
            report.table("Averages over the data sets", HEADER, summarise(cases), LEGEND.format(cfg=cfg))
            report.case_done()
        report.table(f"Per data set: {model} (RMSE vs the reference, filtered ; smoothed)", *per_data_set(cases, model))
    return cases
