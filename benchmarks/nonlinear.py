"""Benchmark ssmppl's nonlinear Gaussian filters (EKF, UKF, Gauss-Hermite) against dynamax.

Two chaotic models, each written once as a NumPyro scan model (for ssmppl) whose
transition and emission mean functions are also handed to dynamax:

  l63  Lorenz-63, dz = 3, one RK4 step of dt = 0.01 per observation, all three
       components observed with Gaussian noise, T = 10,000
  l96  Lorenz-96, dz = 40, F = 8, one RK4 step of dt = 0.05, every other
       component observed (dy = 20), T = 1,000

Additive Gaussian noise with full covariance matrices Q and R in both libraries
(ssmppl: ``MultivariateNormal(rk4(z_prev), Q)`` / ``MultivariateNormal(h(z), R)``;
dynamax: ``ParamsNLGSSM`` / ``ParamsGGSSM``).

  ssmppl   SSM(model).filter(params, y, method=EKF() / UKF() / GaussHermite(order=3))
           (the public API; jit inside), and the same backend jitted directly:
           jax.jit(lambda p, y: method.filter(ssm.state_space(p, y)))
  dynamax  extended_kalman_filter, unscented_kalman_filter (same UKF weights as
           ssmppl's UKF(): alpha = 1, beta = 0, kappa = max(0, 3 - n)) and
           conditional_moments_gaussian_filter with GHKFIntegrals(order=3), each
           jax.jit-ed with the model's parameters as traced arguments (not constants)

Gauss-Hermite at dz = 40 needs 3^40 ~ 1.2e19 points in both libraries: reported as
infeasible, not run.

Conventions: ssmppl's z_0 is the state before the first observation; dynamax's
initial state emits y_1. dynamax therefore starts from the moments of z_1 that the
same method predicts from z_0 ~ N(m0, P0), computed with dynamax's own prediction
step (EKF: f(m0), J P0 J' + Q; UKF: its sigma-point prediction; GH: its quadrature
prediction). Both libraries then compute the same recursion, and their
log-likelihoods must agree (checked and printed before the timings).

Timing: ``_common.time_interleaved``: one untimed first call each (compilation;
reported separately as "first call"), then timed calls interleaved round-robin
across all implementations of one setup, medians reported.

Usage:
    taskset -c 1 python benchmarks/nonlinear.py --out benchmarks/results_nonlinear_cpu.md
    taskset -c 1 python benchmarks/nonlinear.py --float32 --out benchmarks/results_nonlinear_cpu.md --append
    python benchmarks/nonlinear.py --quick             # tiny sizes, a few seconds
    python benchmarks/nonlinear.py --setups l63 --methods ukf
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import device_label, git_rev, library_versions, pin_cpus  # noqa: E402
from _common import markdown_table, text_table, time_interleaved, write_report  # noqa: E402

SETUPS = {
    # name: (dz, observed indices step, T, dt, quick T)
    "l63": dict(dz=3, obs_every=1, T=10_000, dt=0.01, quick_T=200),
    "l96": dict(dz=40, obs_every=2, T=1_000, dt=0.05, quick_T=50),
}
METHODS = ["ekf", "ukf", "gh"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setups", nargs="+", choices=sorted(SETUPS), default=None,
                   help="default: both (--quick: l63 only; Lorenz-96's UKF alone compiles for ~30 s in dynamax)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    p.add_argument("--T", type=int, default=None, help="override T for every setup")
    p.add_argument("--quick", action="store_true",
                   help="tiny T (200 / 50), short timing, Lorenz-63 only unless --setups: seconds, mostly compilation")
    p.add_argument("--float32", action="store_true", help="run in float32 (default float64)")
    p.add_argument("--min-time", type=float, default=1.0, help="target total timed seconds per implementation")
    p.add_argument("--max-reps", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", type=int, default=1, help="pin to this many cores (0 = all); see benchmarks/README.md")
    p.add_argument("--profile", action="store_true",
                   help="also print op counts of the compiled scan bodies (ssmppl raw vs dynamax)")
    p.add_argument("--out", type=str, default=None, help="also write the results as markdown to this file")
    p.add_argument("--append", action="store_true", help="append to --out instead of overwriting it")
    p.add_argument("--note", type=str, action="append", default=[], help="free-text note for the output (repeatable)")
    args = p.parse_args(argv)
    if args.setups is None:
        args.setups = ["l63"] if args.quick else list(SETUPS)
    if args.quick:
        args.min_time, args.max_reps = min(args.min_time, 0.05), min(args.max_reps, 3)
    return args


ARGS = parse_args()
ALL_CPUS, CPUS_USED = pin_cpus(ARGS.cpus)  # before numpy / jax start their thread pools

import numpy as np  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", not ARGS.float32)

import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.contrib.control_flow import scan  # noqa: E402
from numpyro.distributions import constraints  # noqa: E402

import ssmppl  # noqa: E402
try:
    from ssmppl.inference import EKF, UKF, GaussHermite  # noqa: E402

    SSMPPL_ERROR = None
except ImportError as e:  # the backends are not in this checkout: time dynamax alone
    SSMPPL_ERROR = f"{type(e).__name__}: {e}"

from dynamax.generalized_gaussian_ssm import inference as dmx_gg  # noqa: E402
from dynamax.generalized_gaussian_ssm.models import ParamsGGSSM  # noqa: E402
from dynamax.nonlinear_gaussian_ssm import inference_ekf as dmx_ekf  # noqa: E402
from dynamax.nonlinear_gaussian_ssm import inference_ukf as dmx_ukf  # noqa: E402
from dynamax.nonlinear_gaussian_ssm.models import ParamsNLGSSM  # noqa: E402

DTYPE = np.float32 if ARGS.float32 else np.float64
PRECISION = "float32" if ARGS.float32 else "float64"
CHECK_RTOL = 1e-3 if ARGS.float32 else 1e-6
PACKAGE_DIR = os.path.dirname(os.path.abspath(ssmppl.__file__))
SSMPPL_REV = git_rev(PACKAGE_DIR, PACKAGE_DIR)
GH_ORDER = 3
GH_MAX_POINTS = 100_000  # above this the product rule is reported infeasible

# ---------------------------------------------------------------------------
# models. Lorenz-63 is ssmppl's built-in ``models.lorenz63`` (one RK4 step per
# observation); Lorenz-96 is written here the same way. dynamax gets the same
# vector fields and the same RK4 step (``models.rk4_step``).
# ---------------------------------------------------------------------------


def lorenz96_vector_field(x, forcing):
    """dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F, indices cyclic."""
    return (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + forcing


def lorenz96(dim=40, dt=0.05, forcing=8.0, process_noise=0.1, obs_noise=1.0, observe=None, initial_mean=None,
             initial_scale=1.0):
    """Lorenz-96 observed with noise, as a NumPyro scan program (global sites ``forcing``,
    ``process_noise``, ``obs_noise``: params; z_0 ~ N(initial_mean, initial_scale^2 I) known)."""
    idx = None if observe is None else jnp.asarray(observe)
    m0_init = jnp.zeros(dim) if initial_mean is None else initial_mean

    def model(y=None, T=None):
        F = numpyro.param("forcing", jnp.asarray(forcing, jnp.result_type(float)))
        q = numpyro.param("process_noise", jnp.asarray(process_noise, jnp.result_type(float)),
                          constraint=constraints.positive)
        r = numpyro.param("obs_noise", jnp.asarray(obs_noise, jnp.result_type(float)), constraint=constraints.positive)
        m0 = jnp.asarray(m0_init, jnp.result_type(float))

        def step(z_prev, y_t):
            mean = ssmppl.models.rk4_step(lambda x: lorenz96_vector_field(x, F), z_prev, dt)
            z = numpyro.sample("z", dist.Normal(mean, q).to_event(1))
            numpyro.sample("y", dist.Normal(z if idx is None else z[idx], r).to_event(1), obs=y_t)
            return z, None

        z0 = numpyro.sample("z0", dist.Normal(m0, initial_scale).to_event(1))
        scan(step, z0, y, length=T)

    model.__name__ = "lorenz96"
    return model


def _np_vector_field(name, x, theta):
    """numpy twins of the vector fields, for the (fast) simulation loop only."""
    if name == "l63":
        return np.array([theta["sigma"] * (x[1] - x[0]), x[0] * (theta["rho"] - x[2]) - x[1],
                         x[0] * x[1] - theta["beta"] * x[2]])
    return (np.roll(x, -1) - np.roll(x, 2)) * np.roll(x, 1) - x + theta["forcing"]


def _np_rk4(name, x, theta, dt):
    f = lambda v: _np_vector_field(name, v, theta)  # noqa: E731
    k1 = f(x)
    k2 = f(x + dt / 2 * k1)
    k3 = f(x + dt / 2 * k2)
    k4 = f(x + dt * k3)
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def problem_spec(name):
    s = SETUPS[name]
    dz, every = s["dz"], s["obs_every"]
    obs_idx = np.arange(0, dz, every)
    if name == "l63":
        theta = {"sigma": 10.0, "rho": 28.0, "beta": 8.0 / 3.0}
        vf = lambda x, th: ssmppl.models.lorenz.lorenz63_vector_field(x, th["sigma"], th["rho"], th["beta"])  # noqa
    else:
        theta = {"forcing": 8.0}
        vf = lambda x, th: lorenz96_vector_field(x, th["forcing"])  # noqa: E731
    return dict(name=name, dz=dz, dy=len(obs_idx), obs_idx=None if every == 1 else obs_idx, dt=s["dt"],
                theta=theta, vector_field=vf, process_noise=0.1, obs_noise=1.0, initial_scale=1.0)


def numpyro_model(spec, m0):
    """The NumPyro program ssmppl filters."""
    common = dict(dt=spec["dt"], process_noise=spec["process_noise"], obs_noise=spec["obs_noise"],
                  initial_mean=tuple(float(v) for v in m0), initial_scale=spec["initial_scale"])
    if spec["name"] == "l63":
        return ssmppl.models.lorenz63(steps_per_obs=1, observe="all", **spec["theta"], **common)
    idx = None if spec["obs_idx"] is None else tuple(int(i) for i in spec["obs_idx"])
    return lorenz96(dim=spec["dz"], forcing=spec["theta"]["forcing"], observe=idx, **common)


def make_problem(spec, T, seed):
    """(m0, params, y): z_0's mean (a point on the attractor), the model's global
    parameters and data simulated from the model (numpy float64)."""
    name, dz, dt, theta = spec["name"], spec["dz"], spec["dt"], spec["theta"]
    rng = np.random.default_rng([seed, dz, T])
    x = np.ones(dz) + 0.01 * rng.standard_normal(dz)
    for _ in range(2000):  # burn in onto the attractor (deterministic)
        x = _np_rk4(name, x, theta, dt)
    jx = jnp.asarray(x)  # the numpy twin must be the model's vector field
    assert np.allclose(_np_vector_field(name, x, theta), np.asarray(spec["vector_field"](jx, theta)), rtol=1e-5)
    params = {"process_noise": np.asarray(spec["process_noise"]), "obs_noise": np.asarray(spec["obs_noise"]),
              **{k: np.asarray(v) for k, v in theta.items()}}
    idx = np.arange(dz) if spec["obs_idx"] is None else spec["obs_idx"]
    z = x + spec["initial_scale"] * rng.standard_normal(dz)
    ys = np.empty((T, len(idx)))
    for t in range(T):
        z = _np_rk4(name, z, theta, dt) + spec["process_noise"] * rng.standard_normal(dz)
        ys[t] = z[idx] + spec["obs_noise"] * rng.standard_normal(len(idx))
    return x, params, ys


# ---------------------------------------------------------------------------
# the implementations
# ---------------------------------------------------------------------------


def ukf_weights_args(n):
    """ssmppl's UKF() defaults as dynamax UKFHyperParams: alpha = 1, beta = 0, kappa = max(0, 3 - n)."""
    return dict(alpha=1.0, beta=0.0, kappa=float(max(0, 3 - n)))


def gh_points(dz):
    return GH_ORDER**dz


def ssmppl_methods(dz):
    out = {"ekf": EKF(), "ukf": UKF()}
    if gh_points(dz) <= GH_MAX_POINTS:
        out["gh"] = GaussHermite(order=GH_ORDER)
    return out


def make_ssmppl(spec, m0, params, y):
    ssm = ssmppl.SSM(numpyro_model(spec, m0))
    fns = {}
    if SSMPPL_ERROR:
        return ssm, fns
    for name, method in ssmppl_methods(spec["dz"]).items():
        if name not in ARGS.methods:
            continue
        fns[(name, "ssmppl")] = (lambda m: lambda: ssm.filter(params, y, method=m))(method)
        raw = jax.jit((lambda m: lambda p, yy: m.filter(ssm.state_space(p, yy)))(method))
        fns[(name, "ssmppl raw")] = (lambda f: lambda: f(params, y))(raw)
    return ssm, fns


def dynamax_filters(spec, m0):
    """{method: fn(params, y) -> dynamax posterior}, params traced (arguments, not constants)."""
    dt, obs_idx, dz, vf = spec["dt"], spec["obs_idx"], spec["dz"], spec["vector_field"]
    P0 = spec["initial_scale"] ** 2 * np.eye(dz)

    def model(a):
        """dynamax's pieces from ssmppl's params: f, h, Q, R, m0, P0 (same functions as the NumPyro model)."""
        theta = {k: a[k] for k in spec["theta"]}
        f = lambda z: ssmppl.models.rk4_step(lambda x: vf(x, theta), z, dt)  # noqa: E731
        h = (lambda z: z) if obs_idx is None else (lambda z: z[obs_idx])
        dtype = a["process_noise"].dtype
        dy = dz if obs_idx is None else len(obs_idx)
        Q = a["process_noise"] ** 2 * jnp.eye(dz, dtype=dtype)
        R = a["obs_noise"] ** 2 * jnp.eye(dy, dtype=dtype)
        return f, h, Q, R, jnp.asarray(m0, dtype), jnp.asarray(P0, dtype)

    def initial_moments(f, Q, m0, P0, method):
        """Moments of z_1 predicted from z_0 ~ N(m0, P0) by dynamax's own step for this method."""
        f2, u = (lambda z, _u: f(z)), jnp.zeros((1,), Q.dtype)
        if method == "ekf":
            return dmx_ekf._predict(m0, P0, f2, jax.jacfwd(f2), Q, u)
        if method == "ukf":
            w = ukf_weights_args(dz)
            lamb = dmx_ukf._compute_lambda(w["alpha"], w["kappa"], dz)
            wm, wc = dmx_ukf._compute_weights(dz, w["alpha"], w["beta"], lamb)
            return dmx_ukf._predict(m0, P0, f2, Q, lamb, wm, wc, u)[:2]
        gh = dmx_gg.GHKFIntegrals(order=GH_ORDER)
        return dmx_gg._predict(m0, P0, f2, Q, u, gh.gaussian_expectation, gh.gaussian_cross_covariance)[:2]

    def ekf(a, y):
        f, h, Q, R, m0_, P0_ = model(a)
        m1, P1 = initial_moments(f, Q, m0_, P0_, "ekf")
        return dmx_ekf.extended_kalman_filter(ParamsNLGSSM(m1, P1, f, Q, h, R), y)

    def ukf(a, y):
        f, h, Q, R, m0_, P0_ = model(a)
        m1, P1 = initial_moments(f, Q, m0_, P0_, "ukf")
        return dmx_ukf.unscented_kalman_filter(ParamsNLGSSM(m1, P1, f, Q, h, R), y,
                                               dmx_ukf.UKFHyperParams(**ukf_weights_args(dz)))

    def gh(a, y):
        f, h, Q, R, m0_, P0_ = model(a)
        m1, P1 = initial_moments(f, Q, m0_, P0_, "gh")
        p = ParamsGGSSM(initial_mean=m1, initial_covariance=P1, dynamics_function=f, dynamics_covariance=Q,
                        emission_mean_function=h, emission_cov_function=lambda z: R)
        return dmx_gg.conditional_moments_gaussian_filter(p, dmx_gg.GHKFIntegrals(order=GH_ORDER), y)

    out = {"ekf": ekf, "ukf": ukf}
    if gh_points(dz) <= GH_MAX_POINTS:
        out["gh"] = gh
    return out


def make_dynamax(spec, m0, params, y):
    fns, jitted = {}, {}
    for name, fn in dynamax_filters(spec, m0).items():
        if name not in ARGS.methods:
            continue
        jitted[name] = jax.jit(fn)
        fns[(name, "dynamax")] = (lambda f: lambda: f(params, y))(jitted[name])
    return fns, jitted


# ---------------------------------------------------------------------------
# profiling: op counts of the compiled programs
# ---------------------------------------------------------------------------


def hlo_op_counts(compiled_text):
    """Counts of HLO instructions by opcode in an optimized HLO module (all computations)."""
    import collections
    import re

    counts = collections.Counter()
    for line in compiled_text.splitlines():
        m = re.match(r"\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*\S+\s+([\w\-]+)\(", line)
        if m:
            counts[m.group(1)] += 1
    return counts


def profile(name, raw_fn, dmx_fn, params, y, log):
    """Print the largest opcode counts of ssmppl raw vs dynamax (compiled for this size)."""
    texts = {}
    for label, fn in (("ssmppl raw", raw_fn), ("dynamax", dmx_fn)):
        texts[label] = jax.jit(fn).lower(params, y).compile().as_text()
    counts = {k: hlo_op_counts(v) for k, v in texts.items()}
    ops = sorted(set(counts["ssmppl raw"]) | set(counts["dynamax"]),
                 key=lambda o: -(counts["ssmppl raw"][o] + counts["dynamax"][o]))
    log(f"    profile {name}: HLO instruction counts (whole module) ssmppl raw / dynamax: "
        f"total {sum(counts['ssmppl raw'].values())} / {sum(counts['dynamax'].values())}")
    log("      " + ", ".join(f"{o} {counts['ssmppl raw'][o]}/{counts['dynamax'][o]}" for o in ops[:25]))
    return texts


# ---------------------------------------------------------------------------
# one setup
# ---------------------------------------------------------------------------


def relative(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def run_setup(name, log):
    spec = problem_spec(name)
    T = ARGS.T or (SETUPS[name]["quick_T"] if ARGS.quick else SETUPS[name]["T"])
    m0, p64, ys = make_problem(spec, T, ARGS.seed)
    params = {k: jnp.asarray(v, DTYPE) for k, v in p64.items()}
    y = jnp.asarray(ys, DTYPE)
    ssm, fns = make_ssmppl(spec, m0, params, y)
    dfns, djit = make_dynamax(spec, m0, params, y)
    fns.update(dfns)
    order = [k for m in METHODS for k in fns if k[0] == m]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = time_interleaved({k: fns[k] for k in order}, jax.block_until_ready, min_time=ARGS.min_time,
                               max_reps=ARGS.max_reps, log=lambda s: log(s))

    checks, ok = [], True
    for m in METHODS:
        a, b = res.get((m, "ssmppl")), res.get((m, "dynamax"))
        if not a or not b or a["error"] or b["error"]:
            continue
        ll_s, ll_d = float(a["result"].marginal_loglik), float(b["result"].marginal_loglik)
        rel = relative(ll_s, ll_d)
        dmean = float(jnp.max(jnp.abs(a["result"].filtered_means - b["result"].filtered_means)))
        good = np.isfinite(ll_s) and rel <= CHECK_RTOL
        ok &= bool(good)
        checks.append(f"{name} {m}: log-likelihood ssmppl {ll_s:.10g}, dynamax {ll_d:.10g}, relative difference "
                      f"{rel:.1e} (tolerance {CHECK_RTOL:g}) -> {'OK' if good else 'MISMATCH'}; "
                      f"max |filtered mean difference| {dmean:.1e}")
        r = res.get((m, "ssmppl raw"))
        if r and not r["error"]:
            checks.append(f"{name} {m}: ssmppl raw backend vs public API log-likelihood difference "
                          f"{abs(float(r['result'].marginal_loglik) - ll_s):.1e}")
    for c in checks:
        log("    check: " + c)
    for k in order:
        r = res[k]
        if r["error"] is None:
            log(f"    {k[0]:4s} {k[1]:11s} median {1e3 * r['median']:10.3f} ms, min {1e3 * r['min']:10.3f} ms "
                f"({len(r['times'])} reps), CPU median {1e3 * r['cpu_median']:10.3f} ms, first call {r['first']:.2f} s")
    if ARGS.profile and not SSMPPL_ERROR:
        raw_fns = {m: (lambda mm: lambda p, yy: mm.filter(ssm.state_space(p, yy)))(meth)
                   for m, meth in ssmppl_methods(spec["dz"]).items() if m in ARGS.methods}
        for m in raw_fns:
            if m in djit:
                profile(f"{name} {m}", raw_fns[m], dynamax_filters(spec, m0)[m], params, y, log)
    for r in res.values():
        r["result"] = None
    return dict(name=name, spec=spec, T=T, res=res, checks=checks, ok=ok)


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------

HEADER = ["model", "dz×dy, T", "method", "ssmppl ms", "ssmppl µs/step", "ssmppl raw ms", "dynamax ms",
          "dmx/ssm", "dmx/ssm raw", "first call s (ssmppl / raw / dynamax)"]
MODEL_NAMES = {"l63": "Lorenz-63", "l96": "Lorenz-96"}
METHOD_NAMES = {"ekf": "EKF", "ukf": "UKF", "gh": f"Gauss–Hermite ({GH_ORDER})"}


def fmt_ms(r, field="median"):
    if r is None:
        return "–"
    if r["error"]:
        return "failed"
    ms = 1e3 * r[field]
    return f"{ms:.3g}" if ms < 100 else f"{ms:,.0f}"


def table_rows(done):
    rows = []
    for s in done:
        spec, T = s["spec"], s["T"]
        size = f"{spec['dz']}×{spec['dy']}, {T:,}"
        for m in METHODS:
            if m not in ARGS.methods:
                continue
            if m == "gh" and gh_points(spec["dz"]) > GH_MAX_POINTS:
                txt = f"infeasible: {GH_ORDER}^{spec['dz']} ≈ {float(gh_points(spec['dz'])):.1e} points"
                rows.append([MODEL_NAMES[s["name"]], size, METHOD_NAMES[m], txt, "–", "–", txt, "–", "–", "–"])
                continue
            a, raw, d = (s["res"].get((m, lib)) for lib in ("ssmppl", "ssmppl raw", "dynamax"))
            good = lambda r: r is not None and not r["error"]
            ratio = lambda x, y: f"{x['median'] / y['median']:.2f}" if good(x) and good(y) else "–"
            first = " / ".join(f"{r['first']:.1f}" if good(r) else "–" for r in (a, raw, d))
            rows.append([
                MODEL_NAMES[s["name"]], size, METHOD_NAMES[m], fmt_ms(a),
                f"{1e6 * a['median'] / T:.1f}" if good(a) else "–", fmt_ms(raw), fmt_ms(d),
                ratio(d, a), ratio(d, raw), first,
            ])
    return rows


CPU_HEADER = ["model", "dz×dy, T", "method", "ssmppl CPU ms", "ssmppl raw CPU ms", "dynamax CPU ms", "dmx/ssm",
              "dmx/ssm raw"]


def cpu_rows(done):
    rows = []
    for s in done:
        spec, T = s["spec"], s["T"]
        for m in METHODS:
            if m not in ARGS.methods or (m == "gh" and gh_points(spec["dz"]) > GH_MAX_POINTS):
                continue
            a, raw, d = (s["res"].get((m, lib)) for lib in ("ssmppl", "ssmppl raw", "dynamax"))
            good = lambda r: r is not None and not r["error"]
            ratio = lambda x, y: f"{x['cpu_median'] / y['cpu_median']:.2f}" if good(x) and good(y) else "–"
            rows.append([MODEL_NAMES[s["name"]], f"{spec['dz']}×{spec['dy']}, {T:,}", METHOD_NAMES[m],
                         fmt_ms(a, "cpu_median"), fmt_ms(raw, "cpu_median"), fmt_ms(d, "cpu_median"),
                         ratio(d, a), ratio(d, raw)])
    return rows


CPU_LEGEND = (
    "The same calls measured in CPU seconds of this process (median), which other processes sharing the core "
    "stretch less than wall time; on an idle machine the two tables agree."
)

LEGEND = (
    "Times are median wall-clock milliseconds of one whole filter over T steps (float{bits}), after one untimed "
    "first call (its time, mostly tracing and XLA compilation, is the last column). The timed calls of all "
    "implementations of one model are interleaved round-robin, at least 2 each, until ~{min_time:g} s or "
    "{max_reps} calls. `dmx/ssm` = dynamax time / ssmppl time: > 1 means ssmppl is faster. 'ssmppl' = the "
    "public API `SSM(model).filter(params, y, method=...)` (jit inside, plus a NaN check on the result); "
    "'ssmppl raw' = the backend jitted directly, `jax.jit(lambda p, y: method.filter(ssm.state_space(p, y)))`. "
    "dynamax: `extended_kalman_filter`, `unscented_kalman_filter` (UKFHyperParams alpha = 1, beta = 0, "
    "kappa = max(0, 3 - n), the weights of ssmppl's `UKF()`), `conditional_moments_gaussian_filter` with "
    "`GHKFIntegrals(order={gh})`, each `jax.jit`-ed with the model's parameter arrays as arguments. "
    "µs/step = ssmppl time / T. Pinned to {cpus} core(s)."
)


def main():
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    device = device_label(jax, CPUS_USED, ALL_CPUS)
    versions = library_versions(["jax", "jaxlib", "numpyro", "dynamax", "numpy"])
    versions.insert(1, f"ssmppl {ssmppl.__version__} ({SSMPPL_REV})")
    start = datetime.datetime.now()
    command = "python " + " ".join(sys.argv)
    if len(ALL_CPUS) < (os.cpu_count() or 1):
        command += f"  (started with CPU affinity {','.join(map(str, ALL_CPUS))})"
    loads = [os.getloadavg()[0]]
    header = [
        f"Nonlinear Gaussian filters: ssmppl vs dynamax, {PRECISION} — {start:%Y-%m-%d %H:%M}",
        f"command: {command}",
        f"device: {device}",
        "versions: " + ", ".join(versions),
    ]
    print("\n".join(header))
    print(f"machine 1-min load average at start: {loads[0]:.2f} ({os.cpu_count()} cores)", flush=True)
    legend = LEGEND.format(bits=32 if ARGS.float32 else 64, min_time=ARGS.min_time, max_reps=ARGS.max_reps,
                           gh=GH_ORDER, cpus=len(CPUS_USED))
    previous = None
    if ARGS.out and ARGS.append and os.path.exists(ARGS.out):
        with open(ARGS.out) as f:
            previous = f.read()
    done = []

    def write_markdown(finished):
        elapsed = (datetime.datetime.now() - start).total_seconds()
        md = [
            f"# Nonlinear Gaussian filters: ssmppl vs dynamax ({PRECISION})"
            + ("" if finished else " — PARTIAL, still running"),
            "",
            f"- date: {start:%Y-%m-%d %H:%M}",
            f"- command: `{command}`",
            f"- device: {device}",
            "- versions: " + ", ".join(versions),
            "- 1-min load average at the start, before each further model and at the end: "
            + ", ".join(f"{x:.2f}" for x in loads)
            + f" (machine-wide, {os.cpu_count()} cores; this benchmark uses {len(CPUS_USED)}); total {elapsed:.0f} s",
            "- log-likelihood agreement ssmppl vs dynamax (relative tolerance "
            f"{CHECK_RTOL:g}): " + ("all OK" if all(s["ok"] for s in done) else "MISMATCH, see the checks"),
        ]
        md += [f"- note: {n}" for n in ARGS.note]
        if SSMPPL_ERROR:
            md.append(f"- ssmppl's nonlinear backends are not available ({SSMPPL_ERROR}): dynamax only")
        md += ["", markdown_table(HEADER, table_rows(done)), "", legend, "",
               markdown_table(CPU_HEADER, cpu_rows(done)), "", CPU_LEGEND, "", "Checks (same data, same model "
               "functions; dynamax starts from the same method's prediction of z_1):", ""]
        md += [f"- {c}" for s in done for c in s["checks"]]
        write_report(ARGS.out, "\n".join(md) + "\n", append=ARGS.append, previous=previous)

    for name in ARGS.setups:
        if done:
            loads.append(os.getloadavg()[0])
        print(f"{MODEL_NAMES[name]} (1-min load average {loads[-1]:.2f})", flush=True)
        done.append(run_setup(name, lambda s: print(s, flush=True)))
        if ARGS.out:
            write_markdown(finished=False)
    loads.append(os.getloadavg()[0])
    rev_end = git_rev(PACKAGE_DIR, PACKAGE_DIR)
    if rev_end != SSMPPL_REV:
        ARGS.note.append(f"the ssmppl checkout changed during the run: {SSMPPL_REV} at the start, {rev_end} at the end")
    print()
    print(text_table(HEADER, table_rows(done)))
    print()
    print(legend)
    print()
    print(text_table(CPU_HEADER, cpu_rows(done)))
    print(CPU_LEGEND)
    if not all(s["ok"] for s in done):
        print("WARNING: ssmppl and dynamax disagree on a log-likelihood; see the checks above.")
    if ARGS.out:
        write_markdown(finished=True)
        print(f"wrote {ARGS.out}")


if __name__ == "__main__":
    main()
