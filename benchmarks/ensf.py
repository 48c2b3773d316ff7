"""ensf: the EnSF reference benchmark (Bao, Zhang & Zhang 2024), reduced in dimension, with LETKF and ETKF.

Set-up (the reference code's L96 runs without its random "shocks" to the truth): Lorenz-96, F = 8, RK4
dt = 0.01; y = arctan(x) + N(0, sigma^2) of every component every 10 model steps; 150 analyses;
N = 20 members from N(0, I); EnSF with 500 Euler-Maruyama steps, (eps_alpha, eps_beta) =
(0.5, 0.025), the paired score; sigma in {0.05, 0.1}. The truth starts on the attractor (3 N(0, I)
run 1,000 RK4 steps). LETKF and ETKF (``EnKF``, inflation 1.1, LETKF radius 2: the best of
``--letkf-sweep``) on the same truth and observations. Score: RMSE of the analysis mean at the final
analysis, mean over replicates (seeds 0..R-1). The reference code reports 0.204 (sigma = 0.05) and
0.484 (sigma = 0.1) at d = 10^6; per-component RMSE barely depends on d. Check: EnSF within 0.1 of
those (--short, 30 analyses at d = 200: EnSF below 0.6, LETKF below 2).

Also: ``--sparse K ...`` (EnSF with every k-th component observed), ``--letkf-sweep`` (inflation x
radius), ``--variants`` (EnSF's score options at d = 1,000), and timing at ``--timing-dim`` (default
10^4): one jitted analysis (500 reverse steps, N = 20) against the same update written in NumPy, with
``models.lorenz96(operator="arctan")`` and with XLA's own ``jnp.arctan``, and one full cycle through
``ssm.filter``. float32 (as the reference runs).
"""

from __future__ import annotations

import contextlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from ssmppl import SSM, EnKF, EnSF, Localization
from ssmppl.diagnostics import rmse
from ssmppl.models import integrate, lorenz96, lorenz96_vector_field

from . import harness

TITLE = "EnSF reference benchmark (Lorenz-96, arctan observations)"
DTYPE = "float32"
REFERENCE = {0.05: 0.204, 0.1: 0.484}  # the reference code's final-step RMSE at d = 10^6
DT, STEPS_PER_OBS, SPIN_UP = 0.01, 10, 1000
# --short (sigma = 0.05, 30 analyses from N(0, I), about 4 RMS from the truth): EnSF has locked on, the LETKF
# is on its way
SHORT_BOUNDS = {"EnSF": 0.6, "LETKF": 2.0}
LETKF_INFLATION, LETKF_RADIUS = 1.1, 2.0  # the best final RMSE of --letkf-sweep at d = 1,000 for both sigmas


def arguments(p):
    p.add_argument("--dims", type=int, nargs="+", help="default 1000 10000 (--short: 200)")
    p.add_argument("--reps", type=int, nargs="+", help="replicates per dim (default 5 10; --short: 1)")
    p.add_argument("--cycles", type=int, help="analyses (default 150; --short: 30)")
    p.add_argument("--sigmas", type=float, nargs="+", help="default 0.05 0.1 (--short: 0.05)")
    p.add_argument("--methods", nargs="*", default=["EnSF", "LETKF", "ETKF"])
    p.add_argument("--sparse", type=int, nargs="*", help="EnSF with every k-th component observed (default 2 4 8)")
    p.add_argument("--letkf-sweep", action="store_true", help="only the LETKF inflation x radius sweep, first dim")
    p.add_argument("--variants", action="store_true", help="only EnSF's variants, first dim and sigma, seed 0")
    p.add_argument("--timing-dim", type=int, help="0: no timing (default 10000; --short: 0)")
    p.add_argument("--no-numpy", action="store_true", help="time JAX only (d = 10^6 on a GPU)")


def model_for(dim, sigma, every=1):
    return lorenz96(dim=dim, forcing=8.0, dt=DT, steps_per_obs=STEPS_PER_OBS, obs_noise=sigma, operator="arctan",
                    every=every, initial_mean=0.0, initial_scale=1.0)


def truth_and_observations(seed, dim, sigma, cycles, every=1):
    """(truth (T, d), observations of components 0, every, ...): the same truth for every ``every``."""
    f = lambda x: lorenz96_vector_field(x, 8.0)  # noqa: E731

    @jax.jit
    def simulate(key):
        k0, k_obs = jax.random.split(key)
        x0 = integrate(f, 3.0 * jax.random.normal(k0, (dim,)), DT, SPIN_UP)
        xs = jax.lax.scan(lambda x, _: (integrate(f, x, DT, STEPS_PER_OBS),) * 2, x0, None, length=cycles)[1]
        return xs, (jnp.arctan(xs) + sigma * jax.random.normal(k_obs, xs.shape))[:, ::every]

    return simulate(jax.random.PRNGKey(1000 + seed))


def method(name, dim, letkf=None, **ensf):
    inflation, radius = letkf or (LETKF_INFLATION, LETKF_RADIUS)
    if name == "EnSF":
        return EnSF(20, **dict(dict(num_steps=500, eps_alpha=0.5, eps_beta=0.025, score="paired"), **ensf))
    if name == "LETKF":
        return EnKF(20, "letkf", inflation=inflation, localization=Localization.on_ring(radius, dim),
                    store_covariances=False)
    return EnKF(20, "etkf", inflation=inflation, store_covariances=False)


def run_one(name, dim, sigma, cycles, seed, every=1, letkf=None, **ensf):
    """(analysis RMSE per cycle, RMSE over the unobserved components or None, final spread, seconds)."""
    truth, y = truth_and_observations(seed, dim, sigma, cycles, every)
    hidden = np.arange(dim) % every != 0
    start = time.perf_counter()
    try:
        res = SSM(model_for(dim, sigma, every)).filter(None, y, method=method(name, dim, letkf, **ensf),
                                                       key=jax.random.PRNGKey(seed))
    except ValueError as error:  # a diverged EnKF is refused with an explanation
        print(f"    {name}: {str(error)[:100]}...")
        return np.full(cycles, np.nan), None, np.nan, time.perf_counter() - start
    err = np.asarray(rmse(res.filtered_means, truth))
    hid = np.asarray(rmse(res.filtered_means[:, hidden], truth[:, hidden])) if every > 1 else None
    return err, hid, float(np.mean(res.filtered_spread[-1])), time.perf_counter() - start


def accuracy(dims, reps, cycles, args, report):
    rows, results = [], {}
    for dim, nrep in zip(dims, reps):
        for sigma in args.sigmas:
            for name in args.methods:
                runs = [run_one(name, dim, sigma, cycles, seed) for seed in range(nrep)]
                finals = np.array([r[0][-1] for r in runs])
                curve = np.mean([r[0] for r in runs], 0)
                results[(dim, sigma, name)] = dict(final=finals, curve=curve, seconds=[r[3] for r in runs])
                reps_txt = " ".join(f"{v:.3f}" for v in finals) if nrep <= 10 else f"({nrep} replicates)"
                rows.append([f"{dim:,}", f"{sigma:g}", name, f"{np.nanmean(finals):.3f}",
                             f"{np.nanstd(finals, ddof=1) if nrep > 1 else 0:.3f}", reps_txt,
                             f"{np.nanmean(curve[-50:]):.3f}", f"{np.mean(results[(dim, sigma, name)]['seconds']):.1f}"])
                report.log(f"  d={dim} sigma={sigma} {name}: final RMSE {np.nanmean(finals):.3f}")
                report.table("Final analysis RMSE", ["d", "sigma", "method", "final RMSE (mean)", "sd over replicates",
                                                     "replicates", "mean RMSE, last 50", "s per run"], rows,
                             f"{cycles} analyses; the reference code: {REFERENCE} at d = 10^6 (EnSF). 's per run' "
                             "includes compilation.")
                mean = np.nanmean(finals)
                if args.short and name in SHORT_BOUNDS and sigma == 0.05:
                    report.check(mean < SHORT_BOUNDS[name], f"d={dim} sigma={sigma} {name}: final RMSE {mean:.3f} "
                                 f"(tolerance {SHORT_BOUNDS[name]} after {cycles} analyses)")
                elif name == "EnSF" and cycles == 150 and sigma in REFERENCE:
                    report.check(abs(mean - REFERENCE[sigma]) < 0.1, f"d={dim} sigma={sigma} EnSF: final RMSE "
                                 f"{mean:.3f}, the reference code's {REFERENCE[sigma]} (tolerance 0.1)")
            report.case_done()
    return results


def sparse(ks, dim, nrep, sigma, cycles, report):
    rows, results = [], {}
    for k in ks:
        runs = [run_one("EnSF", dim, sigma, cycles, seed, every=k) for seed in range(nrep)]
        final, hidden = np.mean([r[0][-1] for r in runs]), np.mean([r[1][-1] for r in runs])
        results[k] = dict(final=final, hidden=hidden)
        rows.append([f"every {k}{'nd' if k == 2 else 'th'}", f"{final:.3f}", f"{hidden:.3f}",
                     f"{np.sqrt(max(0.0, k * final ** 2 - (k - 1) * hidden ** 2)):.2f}"])
        report.table(f"Sparse observations (d = {dim:,}, sigma = {sigma}, {nrep} replicates)",
                     ["observed", "final RMSE", "unobserved components", "observed components (derived)"], rows,
                     left=1)
    return results


def letkf_sweep(dim, sigmas, nrep, cycles, report, inflations=(1.02, 1.05, 1.1, 1.2, 1.4), radii=(2.0, 4.0, 8.0)):
    rows, results = [], {}
    for inflation in inflations:
        row = [f"{inflation:g}"]
        for sigma in sigmas:
            for radius in radii:
                finals = [run_one("LETKF", dim, sigma, cycles, seed, letkf=(inflation, radius))[0][-1]
                          for seed in range(nrep)]
                results[(sigma, inflation, radius)] = float(np.mean(finals))
                lost = int(np.sum(~np.isfinite(finals)))
                row.append(f"{np.mean(finals):.3f}" if not lost else f"diverged (NaN) in {lost} of {nrep}")
        rows.append(row)
        report.table(f"LETKF inflation x radius (d = {dim:,}, {nrep} replicates, final RMSE)",
                     ["inflation \\ radius"] + [f"sigma {s}: {r:g}" for s in sigmas for r in radii], rows, left=1)
    return results


def variants(dim, sigma, cycles, report):
    rows = []
    for label, kw in (("paired", {}), ("paired, clip = 1000 (the reference code's score clip)", dict(clip=1000.0)),
                      ("mixture (streamed, no (N, N, d) array)", dict(score="mixture"))):
        err, _, spread, _ = run_one("EnSF", dim, sigma, cycles, 0, **kw)
        rows.append([label, f"{err[-1]:.3f}", f"{spread:.3f}"])
        report.table(f"EnSF variants (d = {dim:,}, sigma = {sigma}, seed 0, {cycles} analyses)",
                     ["EnSF", "final RMSE", "final spread"], rows, left=1)
    return rows


def numpy_analysis(X, y, sigma, num_steps, eps_alpha, eps_beta, rng):
    """The EnSF analysis (paired score, arctan likelihood score by hand), float32, in NumPy."""
    dt = 1.0 / num_steps
    Z = rng.standard_normal(X.shape, dtype=np.float32)
    for i in range(num_steps):
        t = 1.0 - i * dt
        alpha, beta2 = 1 - (1 - eps_alpha) * t, eps_beta + (1 - eps_beta) * t
        b = -(1 - eps_alpha) / alpha
        s2 = (1 - eps_beta) - 2 * b * beta2
        score = -(Z - alpha * X) / beta2 - (1 - t) * (np.arctan(Z) - y) / (sigma ** 2 * (1 + Z * Z))
        Z = Z - np.float32(dt) * (np.float32(b) * Z - np.float32(s2) * score) \
            + np.float32(np.sqrt(dt * s2)) * rng.standard_normal(Z.shape, dtype=np.float32)
    return Z


@contextlib.contextmanager
def xla_arctan(enabled):
    """The Lorenz models' observation operator with XLA's ``jnp.arctan`` instead of ssmppl's float32
    polynomial (an internal swap, for the comparison)."""
    lorenz = harness.ssmppl_internals().lorenz_module
    saved = lorenz.arctan
    lorenz.arctan = jnp.arctan if enabled else saved
    try:
        yield
    finally:
        lorenz.arctan = saved


def timing(dim, args, report, sigma=0.05, num_steps=500):
    """ms per analysis (JAX vs NumPy) and per full cycle through ssm.filter (T = 3 minus T = 1, halved)."""
    internals = harness.ssmppl_internals()
    truth, y = truth_and_observations(0, dim, sigma, 3)
    X = (truth[0] + jax.random.normal(jax.random.PRNGKey(1), (20, dim))).astype(jnp.float32)
    prior_error = float(rmse(X.mean(0), truth[0]))
    rows = []
    for xla in (False, True):
        with xla_arctan(xla):
            ssm = SSM(model_for(dim, sigma))
            problem = ssm.state_space(None, y[:1])
            analysis = jax.jit(lambda X, y_t, key: internals.reverse_sde(
                key, X, lambda Z: internals.likelihood_score(problem, Z, None, y_t), num_steps, 0.5, 0.025))
            keys = iter(jax.random.split(jax.random.PRNGKey(2), 100))
            impls = {"JAX": lambda: analysis(X, y[0], next(keys))}
            if not args.no_numpy:
                rng = np.random.default_rng(0)
                impls["NumPy"] = lambda: numpy_analysis(np.asarray(X), np.asarray(y[0]), sigma, num_steps, 0.5, 0.025, rng)
            for T in (1, 3):
                impls[f"ssm.filter T={T}"] = lambda T=T: ssm.filter(None, y[:T], method=EnSF(20, num_steps=num_steps),
                                                                    key=next(keys)).filtered_means

            def check(results):
                # Both analyses pull the ensemble mean towards the truth. Not by much: arctan's slope at the
                # states' typical |x| ~ 5 makes sigma = 0.05 worth ~1 in x, so one analysis of a prior
                # 0.22 off gives ~0.19 (halving, the first version of this check, was never reachable).
                return [(k, (e := float(rmse(jnp.asarray(results[k]).mean(0), truth[0]))) < prior_error,
                         f"{k} analysis: RMSE of the mean {e:.3f}, prior {prior_error:.3f}")
                        for k in ("JAX", "NumPy") if k in results]

            label = "the same model with XLA's `jnp.arctan`" if xla else 'lorenz96(operator="arctan")'
            res = harness.measure(harness.Case(f"d={dim} {label}", impls, check, warm=set(impls) - {"NumPy"}), args,
                                  report, min_reps=3, max_reps=3, min_time=0.0)
        ok = lambda k: k in res and res[k].ok  # noqa: E731
        jax_ms = 1e3 * res["JAX"].min if ok("JAX") else float("nan")
        np_ms = 1e3 * res["NumPy"].min if ok("NumPy") else float("nan")
        cycle = 1e3 * (res["ssm.filter T=3"].min - res["ssm.filter T=1"].min) / 2 if ok("ssm.filter T=3") else np.nan
        gbps = 3 * 20 * dim * 4 * num_steps / (jax_ms / 1e3) / 1e9  # the floor: 3 N d float32 words per step
        rows.append([label, f"{jax_ms:.0f}", f"{np_ms:.0f}", f"{np_ms / jax_ms:.2f}", f"{cycle:.0f}", f"{gbps:.0f}"])
    report.table(f"Speed: one analysis at d = {dim:,}, N = 20, {num_steps} steps, {jax.devices()[0].device_kind}",
                 ["observation operator", "JAX (jitted) ms", "NumPy ms", "NumPy / JAX", "full cycle via ssm.filter ms",
                  "GB/s of the 3 N d words per step"], rows,
                 "Best of 3 calls, after one untimed (compiling) call for JAX. The NumPy version is the same update "
                 "written by hand (paired score, analytic arctan score, `Generator.standard_normal(float32)`).", left=1)
    return rows


def run(args, report):
    dims = args.dims or ([200] if args.short else [1000, 10000])
    reps = args.reps or ([1] if args.short else [5, 10])
    reps = reps + [reps[-1]] * (len(dims) - len(reps))
    cycles = args.cycles or (30 if args.short else 150)
    args.sigmas = args.sigmas or ([0.05] if args.short else [0.05, 0.1])
    if args.letkf_sweep:
        return letkf_sweep(dims[0], args.sigmas, reps[0], cycles, report)
    if args.variants:
        return variants(dims[0], args.sigmas[0], cycles, report)
    results = accuracy(dims, reps, cycles, args, report)
    ks = args.sparse if args.sparse is not None else ([] if args.short else [2, 4, 8])
    if ks:
        results["sparse"] = sparse(ks, dims[0], reps[0], args.sigmas[0], cycles, report)
    timing_dim = args.timing_dim if args.timing_dim is not None else (0 if args.short else 10000)
    if timing_dim:
        results["timing"] = timing(timing_dim, args, report)
    return results
