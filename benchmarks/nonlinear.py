"""nonlinear: EKF, UKF and Gauss-Hermite filters, ssmppl against dynamax.

Two chaotic models, ssmppl's built-in ones, one RK4 step per observation, additive Gaussian noise
(process noise 0.1, observation noise 1 per component), z_0 ~ N(a point on the attractor, I):

  l63  models.lorenz63(dt=0.01, steps_per_obs=1), all three components observed, T = 10,000
  l96  models.lorenz96(dim=40, dt=0.05, observe=every other component), dz x dy = 40 x 20, T = 1,000

  ssmppl   SSM(model).filter(params, y, method=EKF() / UKF() / GaussHermite(order=3)) (the public
           API), and the backend jitted directly ('ssmppl raw'):
           jax.jit(lambda p, y: method.filter(ssm.state_space(p, y)))
  dynamax  extended_kalman_filter, unscented_kalman_filter (alpha = 1, beta = 0, kappa = max(0, 3 - n):
           ssmppl's UKF() weights), conditional_moments_gaussian_filter with GHKFIntegrals(order=3), each
           jax.jit-ed with the parameters as arguments; the same vector fields and ``models.rk4_step``,
           Q = q^2 I and R = r^2 I as full matrices

Gauss-Hermite at dz = 40 needs 3^40 ~ 1.2e19 points in both libraries: reported infeasible. dynamax's
initial state emits y_1, so it starts from the moments of z_1 that the same method predicts from
N(m0, P0) with dynamax's own prediction step. Check: the log-likelihoods agree (1e-6 relative in
float64, 1e-3 in float32).
"""

from __future__ import annotations

import collections
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import ssmppl
from ssmppl.models import lorenz96_vector_field, rk4_step

from . import harness, peers

TITLE = "Nonlinear Gaussian filters: ssmppl vs dynamax"
PEERS = ("dynamax",)
SETUPS = {"l63": dict(dz=3, every=1, T=10_000, dt=0.01, short_T=200, name="Lorenz-63"),
          "l96": dict(dz=40, every=2, T=1_000, dt=0.05, short_T=50, name="Lorenz-96")}
METHODS = {"ekf": "EKF", "ukf": "UKF", "gh": "Gauss–Hermite (3)"}
GH_ORDER, GH_MAX_POINTS = 3, 100_000


def arguments(p):
    p.add_argument("--setups", nargs="+", choices=list(SETUPS), help="default both (--short: l63)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--T", type=int, help="override T for every setup")
    p.add_argument("--profile", action="store_true", help="also print HLO op counts of ssmppl raw vs dynamax")
    p.set_defaults(max_reps=7)


def vector_field(name):
    """(vector field f(x, theta), theta) of a setup."""
    if name == "l63":
        f = harness.ssmppl_internals().lorenz63_vector_field
        return (lambda x, th: f(x, th["sigma"], th["rho"], th["beta"])), {"sigma": 10.0, "rho": 28.0, "beta": 8.0 / 3}
    return (lambda x, th: lorenz96_vector_field(x, th["forcing"])), {"forcing": 8.0}


def problem(name, T, seed):
    """(model, params, y, m0, observed indices or None): data simulated in float64 (whatever --dtype),
    z_0's mean a point on the attractor (2,000 RK4 steps from near (1, ..., 1))."""
    s = SETUPS[name]
    dz, dt = s["dz"], s["dt"]
    idx = None if s["every"] == 1 else np.arange(0, dz, s["every"])
    dy = dz if idx is None else len(idx)
    vf, theta = vector_field(name)
    rng = np.random.default_rng([seed, dz, T])
    x = np.ones(dz) + 0.01 * rng.standard_normal(dz)
    z0 = rng.standard_normal(dz)
    noise = rng.standard_normal((T, dz + dy))  # per step: dz process then dy observation noises
    with jax.enable_x64(True):
        th = {k: jnp.float64(v) for k, v in theta.items()}
        f = lambda z: rk4_step(lambda v: vf(v, th), z, dt)  # noqa: E731

        @jax.jit
        def simulate(x, z0, noise):
            m0 = jax.lax.fori_loop(0, 2000, lambda _, v: f(v), x)

            def step(z, e):
                z = f(z) + 0.1 * e[:dz]
                return z, (z if idx is None else z[idx]) + e[dz:]

            return m0, jax.lax.scan(step, m0 + z0, noise)[1]

        m0, y = (np.asarray(a) for a in simulate(x, z0, noise))
    common = dict(dt=dt, steps_per_obs=1, process_noise=0.1, obs_noise=1.0, initial_mean=m0, initial_scale=1.0)
    if name == "l63":
        model = ssmppl.models.lorenz63(**theta, **common)
    else:
        model = ssmppl.models.lorenz96(dim=dz, forcing=theta["forcing"], observe=tuple(map(int, idx)), **common)
    return model, dict(process_noise=0.1, obs_noise=1.0, **theta), y, m0, idx


def gh_feasible(dz):
    return GH_ORDER ** dz <= GH_MAX_POINTS


def dynamax_filters(name, m0, idx):
    """{method: fn(params, y) -> dynamax posterior}, the parameters traced (arguments, not constants)."""
    from dynamax.generalized_gaussian_ssm import inference as gg
    from dynamax.generalized_gaussian_ssm.models import ParamsGGSSM
    from dynamax.nonlinear_gaussian_ssm import inference_ekf as ekf
    from dynamax.nonlinear_gaussian_ssm import inference_ukf as ukf
    from dynamax.nonlinear_gaussian_ssm.models import ParamsNLGSSM

    s = SETUPS[name]
    dz, dt = s["dz"], s["dt"]
    vf, theta = vector_field(name)
    w = dict(alpha=1.0, beta=0.0, kappa=float(max(0, 3 - dz)))
    gh = gg.GHKFIntegrals(order=GH_ORDER)

    def pieces(a, method):
        """f, h, Q, R and dynamax's initial moments: the method's prediction of z_1 from N(m0, I)."""
        th = {k: a[k] for k in theta}
        f = lambda z: rk4_step(lambda x: vf(x, th), z, dt)  # noqa: E731
        h = (lambda z: z) if idx is None else (lambda z: z[idx])
        Q = a["process_noise"] ** 2 * jnp.eye(dz, dtype=a["process_noise"].dtype)
        R = a["obs_noise"] ** 2 * jnp.eye(dz if idx is None else len(idx), dtype=Q.dtype)
        mean, P0, u, f2 = jnp.asarray(m0, Q.dtype), jnp.eye(dz, dtype=Q.dtype), jnp.zeros((1,), Q.dtype), lambda z, _: f(z)
        if method == "ekf":
            m1, P1 = ekf._predict(mean, P0, f2, jax.jacfwd(f2), Q, u)
        elif method == "ukf":
            lamb = ukf._compute_lambda(w["alpha"], w["kappa"], dz)
            m1, P1 = ukf._predict(mean, P0, f2, Q, lamb, *ukf._compute_weights(dz, w["alpha"], w["beta"], lamb), u)[:2]
        else:
            m1, P1 = gg._predict(mean, P0, f2, Q, u, gh.gaussian_expectation, gh.gaussian_cross_covariance)[:2]
        return f, h, Q, R, m1, P1

    def run_ekf(a, y):
        f, h, Q, R, m1, P1 = pieces(a, "ekf")
        return ekf.extended_kalman_filter(ParamsNLGSSM(m1, P1, f, Q, h, R), y)

    def run_ukf(a, y):
        f, h, Q, R, m1, P1 = pieces(a, "ukf")
        return ukf.unscented_kalman_filter(ParamsNLGSSM(m1, P1, f, Q, h, R), y, ukf.UKFHyperParams(**w))

    def run_gh(a, y):
        f, h, Q, R, m1, P1 = pieces(a, "gh")
        return gg.conditional_moments_gaussian_filter(ParamsGGSSM(m1, P1, f, Q, h, lambda z: R), gh, y)

    return {"ekf": run_ekf, "ukf": run_ukf, **({"gh": run_gh} if gh_feasible(dz) else {})}


def hlo_op_counts(fn, *a):
    """Counts of HLO instructions by opcode in the optimized module of ``jax.jit(fn)``."""
    counts = collections.Counter()
    for line in jax.jit(fn).lower(*a).compile().as_text().splitlines():
        m = re.match(r"\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*\S+\s+([\w\-]+)\(", line)
        if m:
            counts[m.group(1)] += 1
    return counts


def case(name, args, report):
    T = args.T or SETUPS[name]["short_T" if args.short else "T"]
    model, p, ys, m0, idx = problem(name, T, args.seed)
    dtype = harness.numpy_dtype(args)
    params = {k: jnp.asarray(v, dtype) for k, v in p.items()}
    y = jnp.asarray(ys, dtype)
    ssm = ssmppl.SSM(model)
    methods = {"ekf": ssmppl.EKF(), "ukf": ssmppl.UKF(), "gh": ssmppl.GaussHermite(order=GH_ORDER)}
    raw = {m: (lambda mm: lambda p_, y_: mm.filter(ssm.state_space(p_, y_)))(methods[m]) for m in methods}
    dmx = dynamax_filters(name, m0, idx) if peers.optional("dynamax", report) else {}
    impls = {}
    for m in args.methods:
        if m == "gh" and not gh_feasible(SETUPS[name]["dz"]):
            continue
        impls[f"{m} ssmppl"] = lambda m=m: ssm.filter(params, y, method=methods[m])
        impls[f"{m} ssmppl raw"] = lambda f=jax.jit(raw[m]): f(params, y)
        if m in dmx:
            impls[f"{m} dynamax"] = lambda f=jax.jit(dmx[m]): f(params, y)
    rtol = 1e-3 if args.dtype == "float32" else 1e-6

    def check(results):
        out = []
        for m in args.methods:
            a, raw_, b = (results.get(f"{m} {lib}") for lib in ("ssmppl", "ssmppl raw", "dynamax"))
            if a is None:
                continue
            ll = float(a.marginal_loglik)
            if raw_ is not None:
                d = abs(float(raw_.marginal_loglik) - ll)
                out.append((f"{m} ssmppl raw", d <= rtol * abs(ll), f"{m}: ssmppl raw backend vs public API "
                            f"log-likelihood difference {d:.1e}"))
            if b is not None:
                rel = abs(ll - float(b.marginal_loglik)) / abs(float(b.marginal_loglik))
                out.append((f"{m} dynamax", np.isfinite(ll) and rel <= rtol,
                            f"{m}: log-likelihood ssmppl {ll:.10g}, dynamax {float(b.marginal_loglik):.10g}, relative "
                            f"difference {rel:.1e} (tolerance {rtol:g}); max |filtered mean difference| "
                            f"{float(jnp.max(jnp.abs(a.filtered_means - b.filtered_means))):.1e}"))
        return out

    if args.profile:
        for m in args.methods:
            if m in dmx and f"{m} ssmppl" in impls:
                c = {lib: hlo_op_counts(f, params, y) for lib, f in (("ssmppl raw", raw[m]), ("dynamax", dmx[m]))}
                ops = sorted(set(c["ssmppl raw"]) | set(c["dynamax"]), key=lambda o: -c["ssmppl raw"][o] - c["dynamax"][o])
                report.log(f"    profile {name} {m}: HLO instructions ssmppl raw / dynamax: total "
                           f"{sum(c['ssmppl raw'].values())} / {sum(c['dynamax'].values())}; "
                           + ", ".join(f"{o} {c['ssmppl raw'][o]}/{c['dynamax'][o]}" for o in ops[:25]))
    return harness.Case(SETUPS[name]["name"], impls, check), T


HEADER = ["model", "dz×dy, T", "method", "ssmppl ms", "ssmppl µs/step", "ssmppl raw ms", "dynamax ms", "dmx/ssm",
          "dmx/ssm raw", "first call s (ssmppl / raw / dynamax)"]
CPU_HEADER = ["model", "dz×dy, T", "method", "ssmppl CPU ms", "ssmppl raw CPU ms", "dynamax CPU ms", "dmx/ssm",
              "dmx/ssm raw"]
LEGEND = (
    "Times are median wall-clock milliseconds of one whole filter over T steps, after one untimed first call "
    "(its time, mostly tracing and XLA compilation, is the last column). The timed calls of one model are "
    "interleaved round-robin, at least 2 each, until ~{min_time:g} s or {max_reps} calls. `dmx/ssm` = dynamax "
    "time / ssmppl time: > 1 means ssmppl is faster. 'ssmppl' = the public API `SSM(model).filter(params, y, "
    "method=...)` (jit inside, plus a NaN check on the result); 'ssmppl raw' = the backend jitted directly. "
    "dynamax: `extended_kalman_filter`, `unscented_kalman_filter` (the weights of ssmppl's `UKF()`), "
    "`conditional_moments_gaussian_filter` with `GHKFIntegrals(order=3)`, each jitted with the parameter arrays "
    "as arguments. µs/step = ssmppl time / T.")
CPU_LEGEND = ("The same calls in CPU seconds of this process (median), which other processes sharing the core "
              "stretch less than wall time; on an idle machine the two tables agree.")


def table_rows(done, field):
    rows = []
    for name, T, res in done:
        s = SETUPS[name]
        dy = s["dz"] if s["every"] == 1 else len(range(0, s["dz"], s["every"]))
        size = f"{s['dz']}×{dy}, {T:,}"
        for m, label in METHODS.items():
            a, raw, d = (res.get(f"{m} {lib}") for lib in ("ssmppl", "ssmppl raw", "dynamax"))
            if a is None:
                if m == "gh" and not gh_feasible(s["dz"]) and field == "median":
                    txt = f"infeasible: {GH_ORDER}^{s['dz']} ≈ {float(GH_ORDER ** s['dz']):.1e} points"
                    rows.append([s["name"], size, label, txt, "–", "–", txt, "–", "–", "–"])
                continue
            good = lambda r: r is not None and r.ok  # noqa: E731
            ms = lambda r: harness.fmt_ms(getattr(r, field)) if good(r) else ("–" if r is None else  # noqa: E731
                                                                               "wrong" if r.wrong else "failed")
            ratio = lambda x, y: f"{getattr(x, field) / getattr(y, field):.2f}" if good(x) and good(y) else "–"  # noqa
            if field == "median":
                first = " / ".join(f"{r.first.wall:.1f}" if good(r) else "–" for r in (a, raw, d))
                rows.append([s["name"], size, label, ms(a), f"{1e6 * a.median / T:.1f}" if good(a) else "–", ms(raw),
                             ms(d), ratio(d, a), ratio(d, raw), first])
            else:
                rows.append([s["name"], size, label, ms(a), ms(raw), ms(d), ratio(d, a), ratio(d, raw)])
    return rows


def run(args, report):
    done = []
    for name in args.setups or (["l63"] if args.short else list(SETUPS)):
        c, T = case(name, args, report)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            done.append((name, T, harness.measure(c, args, report)))
        report.table("Wall time", HEADER, table_rows(done, "median"),
                     LEGEND.format(min_time=args.min_time, max_reps=args.max_reps))
        report.table("CPU time", CPU_HEADER, table_rows(done, "cpu_median"), CPU_LEGEND)
        report.case_done()
    return done
