"""Benchmark marginalised NUTS on a linear Gaussian SSM: ssmppl against the dynamax + blackjax recipe.

Effective samples per second (ESS/s) of three samplers on the same posterior, the same data,
in the same process:

  ssmppl numpyro   SSM(model).sample_posterior(key, y, method=Kalman(), backend="numpyro", ...)
  ssmppl blackjax  the same call with backend="blackjax"
  peer             dynamax has no fit_hmc; its documented HMC (docs/notebooks/linear_gaussian_ssm/
                   lgssm_hmc.ipynb) is blackjax NUTS on ``LinearGaussianSSM.marginal_log_prob``
                   with the parameters in dynamax's unconstrained space:
                       logprob(u) = log prior(p) + marginal_log_prob(p, y) + log_det_jac_constrain(p, props),
                       p = from_unconstrained(u, props),
                   blackjax.window_adaptation(blackjax.nuts, logprob).run(...), then
                   blackjax.nuts(logprob, **tuned).step in lax.scan. The trainable parameters
                   are marked by ``props`` (dynamax.parameters.ParameterProperties); only they
                   are in the sampler's position (fixed ones are merged back in, as in
                   dynamax's fitting code). Chains: jax.jit(jax.vmap(one_chain)).

The model (ssmppl's demo model with priors, ``ssmppl.demo.seed003_bayesian_model``, restated
here so that both sides' priors sit next to each other): dz = 2, dy = 10, known emission
matrix H ~ N(0, 1) and initial state z_0 ~ N(0, I); sampled: the dynamics matrix F (4
scalars, prior N(0, 1) each), the transition scale q (Q = q^2 I, prior HalfNormal(0.5)) and
the emission scale r (R = r^2 I, prior HalfNormal(1)). Data: seed 003's truth (F = 0.99 x
rotation(pi/20), Q = 0.01 I, R = 0.1 I), simulated with ``ssm.sample``; T = 100 (default) and 1000 (opt-in).

Same posterior, same parameterisation: both sides sample (F, log q, log r). NumPyro maps the
positive priors' support with exp; the peer's q, r carry the constrainer
``tfb.Exp()``, so ``log_det_jac_constrain`` adds the same log q + log r. The priors are the
same normalised densities, so the two log densities agree exactly, not only up to a constant
(the script checks it at random points before timing). ssmppl's z_0 is the state before the
first observation; dynamax's initial state emits y_1, so the peer gets the moments of z_1:
N(F m0, F P0 F' + Q), a function of the sampled F and q.

Settings shared by the three samplers: diagonal mass matrix, target acceptance 0.8, maximum
tree depth 10, Stan's windowed adaptation, ``--num-chains`` chains vmapped on one device.
Initial points: ssmppl draws them with NumPyro's default (uniform in (-2, 2) in the
unconstrained space, per chain); the peer draws from the same distribution
(``--peer-init dynamax`` starts all chains at dynamax's ``initialize()`` values instead:
F = 0.99 I, Q = R = 0.1 I, as its notebook does).

Timing: every sampler is called ``--calls`` times per setup (default: twice at T = 100, once at
T = 1000) with different keys, interleaved across samplers. The first call includes
compilation; the second shows what a further call costs. The seconds each call spends tracing,
lowering and compiling are read from JAX's monitoring events, so every call also gives a rate
excluding compilation. ESS = the minimum over the six sampled scalars of ArviZ's bulk ESS of
that call's draws. ESS/s = ESS / wall time; ratio = ssmppl ESS/s / peer ESS/s (> 1: ssmppl is
faster).

Profile (after the timings): per-gradient cost of the two log densities (jit(vmap(value and
grad)) at the chains' positions; single position too), post-warmup leapfrog steps per draw,
and a prediction of each call's sampling time from them.

The process pins itself to ``--cpus`` cores (default 1) before importing jax: see
benchmarks/README.md (jax 0.10 thread-pool stalls); start it under ``taskset -c K`` to
choose which core on a shared machine.

Usage:
    taskset -c 1 python benchmarks/hmc.py --out benchmarks/results_hmc_cpu.md   # T = 100, ~9 min of CPU
    taskset -c 1 python benchmarks/hmc.py --setups T1000 \
        --out benchmarks/results_hmc_cpu.md --append                               # T = 1000, ~25 min, appended
    python benchmarks/hmc.py --num-warmup 1000 --num-samples 1000                 # 4 x (1000 + 1000), ~15 min
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import device_label, git_rev, pin_cpus  # noqa: E402
from _common import markdown_table, text_table  # noqa: E402

# Per setup: T, the default numbers of warmup steps / draws per chain and of calls per sampler.
# Every ssmppl call compiles for ~30 s of CPU and a T = 1000 gradient costs 10x a T = 100 one, so
# the default run is T = 100 alone, 4 x (500 + 500) twice per sampler (~9 minutes of CPU on one
# core); T = 1000 is opt-in (--setups T100 T1000, or T1000 alone: ~25 minutes of CPU for one call
# per sampler of 4 x (300 + 300); with 100 warmup steps blackjax's window adaptation had not
# converged there). --num-warmup / --num-samples / --calls override them.
SETUPS = {
    "T100": dict(T=100, num_warmup=500, num_samples=500, calls=2),
    "T1000": dict(T=1000, num_warmup=300, num_samples=300, calls=1),
}
SAMPLERS = ("ssmppl numpyro", "ssmppl blackjax", "peer")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setups", nargs="+", choices=list(SETUPS), default=["T100"],
                   help="T100 (default) and/or T1000 (opt-in: ~25 min of CPU)")
    p.add_argument("--num-warmup", type=int, default=None, help="warmup steps per chain (default: per setup)")
    p.add_argument("--num-samples", type=int, default=None, help="draws per chain (default: per setup)")
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--calls", type=int, default=None, help="calls per sampler and setup (default: per setup)")
    p.add_argument("--samplers", nargs="+", choices=["numpyro", "blackjax", "peer"],
                   default=["numpyro", "blackjax", "peer"])
    p.add_argument("--peer-init", choices=["uniform", "dynamax"], default="uniform",
                   help="peer's initial points: NumPyro's default distribution (uniform(-2, 2) unconstrained, "
                        "as ssmppl) or dynamax's initialize() values for every chain")
    p.add_argument("--no-profile", action="store_true", help="skip the per-gradient profile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", type=int, default=1, help="pin to this many CPU cores (default 1); 0 = all allowed")
    p.add_argument("--watchdog", type=float, default=1800.0, help="abort with a traceback if one call hangs this long")
    p.add_argument("--out", type=str, default=None, help="also write the results as markdown to this file")
    p.add_argument("--append", action="store_true", help="append to --out instead of overwriting it")
    p.add_argument("--note", type=str, action="append", default=[], help="free-text note for the output (repeatable)")
    return p.parse_args(argv)


ARGS = parse_args()
ALL_CPUS, CPUS_USED = pin_cpus(ARGS.cpus)  # before numpy / jax start their thread pools

import faulthandler  # noqa: E402

import numpy as np  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import arviz as az  # noqa: E402
import blackjax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import tensorflow_probability.substrates.jax.bijectors as tfb  # noqa: E402
from jax import lax  # noqa: E402
from jax.scipy.stats import norm  # noqa: E402
from numpyro.contrib.control_flow import scan  # noqa: E402
from numpyro.infer.util import potential_energy  # noqa: E402

import ssmppl  # noqa: E402
import ssmppl.bayes.nuts  # noqa: E402,F401  (imported now: the code measured is the code at the start)
from ssmppl import SSM, Kalman, marginalize  # noqa: E402
from ssmppl.demo import seed003_params  # noqa: E402
from ssmppl.models import linear_gaussian_ssm  # noqa: E402

PACKAGE_DIR = os.path.dirname(os.path.abspath(ssmppl.__file__))
SSMPPL_REV = git_rev(PACKAGE_DIR, PACKAGE_DIR)

import dynamax  # noqa: E402
from dynamax.linear_gaussian_ssm import LinearGaussianSSM  # noqa: E402
from dynamax.parameters import (  # noqa: E402
    ParameterProperties,
    from_unconstrained,
    log_det_jac_constrain,
    to_unconstrained,
)
from dynamax.utils.bijectors import RealToPSDBijector  # noqa: E402

DZ, DY = 2, 10
SITES = ("F", "q", "r")  # sampled sites; unconstrained position = (F, log q, log r)
Q_SCALE, R_SCALE = 0.5, 1.0  # HalfNormal scales of the priors of q and r

# ---------------------------------------------------------------------------
# compilation time, from JAX's monitoring events (time spans of tracing, lowering, XLA compilation)
# ---------------------------------------------------------------------------

_TRACE, _LOWER, _BACKEND = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                            "/jax/core/compile/backend_compile_duration")
_SPANS = []  # (event, start, end, function name)


def _on_span(event, start, end, **kwargs):
    if event in (_TRACE, _LOWER, _BACKEND):
        _SPANS.append((event, start, end, str(kwargs.get("fun_name", "?"))))


jax.monitoring.register_event_time_span_listener(_on_span)


def _union_length(spans):
    """Total length of a union of intervals (nested traces are counted once)."""
    total, last_end = 0.0, -math.inf
    for a, b in sorted(spans):
        if b > last_end:
            total += b - max(a, last_end)
            last_end = b
    return total


def compile_summary(spans):
    """Seconds spent tracing/lowering/compiling (union of spans), XLA compilation alone, and the
    XLA compilations (function name, seconds), longest first."""
    backend = [(n, b - a) for e, a, b, n in spans if e == _BACKEND]
    return dict(total=_union_length([(a, b) for _, a, b, _ in spans]),
                xla=sum(d for _, d in backend), compiled=sorted(backend, key=lambda x: -x[1]))


# ---------------------------------------------------------------------------
# the model: ssmppl's NumPyro program and the peer's log density
# ---------------------------------------------------------------------------


def ssmppl_model(H):
    """seed 003 with priors, as a NumPyro scan model (``ssmppl.demo.seed003_bayesian_model``)."""
    H = jnp.asarray(H)

    def model(y=None, T=None):
        F = numpyro.sample("F", dist.Normal(0.0, 1.0).expand([DZ, DZ]).to_event(2))
        q = numpyro.sample("q", dist.HalfNormal(Q_SCALE))
        r = numpyro.sample("r", dist.HalfNormal(R_SCALE))

        def step(z_prev, y_t):
            z = numpyro.sample("z", dist.Normal(F @ z_prev, q).to_event(1))
            numpyro.sample("y", dist.Normal(H @ z, r).to_event(1), obs=y_t)
            return z, None

        z0 = numpyro.sample("z0", dist.Normal(jnp.zeros(DZ), 1.0).to_event(1))
        scan(step, z0, y, length=T)

    model.__name__ = "seed003_bayesian"
    return model


def half_normal_logpdf(x, scale):
    return jnp.log(2.0) + norm.logpdf(x, 0.0, scale)


def peer_setup(H, y):
    """dynamax's recipe: parameters and ``props`` (trainable flags, constrainers), the log
    density in the unconstrained space of the trainable ones, and their unconstrained start."""
    model = LinearGaussianSSM(DZ, DY)
    base, _ = model.initialize(jax.random.PRNGKey(0), emission_weights=jnp.asarray(H))
    params = {
        "F": base.dynamics.weights,  # 0.99 I
        "q": jnp.sqrt(base.dynamics.cov[0, 0]),  # Q = 0.1 I
        "r": jnp.sqrt(base.emissions.cov[0, 0]),  # R = 0.1 I
        "H": base.emissions.weights,
        "initial_mean": jnp.zeros(DZ),  # moments of ssmppl's z_0
        "initial_cov": jnp.eye(DZ),
    }
    props = {
        "F": ParameterProperties(),
        "q": ParameterProperties(constrainer=tfb.Exp()),
        "r": ParameterProperties(constrainer=tfb.Exp()),
        "H": ParameterProperties(trainable=False),
        "initial_mean": ParameterProperties(trainable=False),
        "initial_cov": ParameterProperties(trainable=False, constrainer=RealToPSDBijector()),
    }
    initial_unc = to_unconstrained(params, props)
    is_prop = lambda x: isinstance(x, ParameterProperties)
    trainable = [k for k, p in props.items() if p.trainable]

    def to_lgssm(p):
        F, q, r = p["F"], p["q"], p["r"]
        Q = q ** 2 * jnp.eye(DZ)
        # dynamax's initial state emits y_1: the moments of ssmppl's z_1
        m1 = F @ p["initial_mean"]
        P1 = F @ p["initial_cov"] @ F.T + Q
        return base._replace(
            initial=base.initial._replace(mean=m1, cov=0.5 * (P1 + P1.T)),
            dynamics=base.dynamics._replace(weights=F, cov=Q),
            emissions=base.emissions._replace(weights=p["H"], cov=r ** 2 * jnp.eye(DY)),
        )

    def log_prior(p):
        return (norm.logpdf(p["F"]).sum() + half_normal_logpdf(p["q"], Q_SCALE)
                + half_normal_logpdf(p["r"], R_SCALE))

    def logprob(position):
        # trainable entries from the sampler's position, the others at their initial values
        unc = jax.tree.map(lambda init, prop, k: position[k] if prop.trainable else init,
                           initial_unc, props, {k: k for k in props}, is_leaf=is_prop)
        p = from_unconstrained(unc, props)
        return log_prior(p) + model.marginal_log_prob(to_lgssm(p), y) + log_det_jac_constrain(p, props)

    start = {k: initial_unc[k] for k in trainable}
    return logprob, start, props


def peer_sampler(logprob, num_warmup, num_samples):
    """One jitted function (keys (C,), positions (C, ...)) -> draws: dynamax's notebook recipe
    (window adaptation, then NUTS steps in lax.scan), chains vmapped."""

    def one_chain(key, position):
        k_warm, k_draw = jax.random.split(key)
        warmup = blackjax.window_adaptation(blackjax.nuts, logprob)
        (state, tuned), adaptation = warmup.run(k_warm, position, num_steps=num_warmup)
        kernel = blackjax.nuts(logprob, **tuned).step

        def step(state, k):
            state, info = kernel(k, state)
            return state, (state.position, info.num_integration_steps, info.is_divergent)

        _, (positions, n_steps, divergent) = lax.scan(step, state, jax.random.split(k_draw, num_samples))
        # (the warmup's leapfrog counts are returned for the profile only)
        return positions, n_steps, divergent, tuned["step_size"], adaptation.info.num_integration_steps

    return jax.jit(jax.vmap(one_chain))


def uniform_init(key, start, num_chains):
    """NumPyro's default init strategy: uniform(-2, 2) per unconstrained coordinate."""
    leaves, treedef = jax.tree.flatten(start)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.uniform(k, (num_chains,) + jnp.shape(x), minval=-2.0, maxval=2.0)
                                        for k, x in zip(keys, leaves)])


# ---------------------------------------------------------------------------
# the problem and the runs
# ---------------------------------------------------------------------------


def make_problem(T, seed):
    k_true, k_data = jax.random.split(jax.random.PRNGKey(seed))
    true = seed003_params(k_true)
    _, y = SSM(linear_gaussian_ssm(DZ, DY)).sample(k_data, true, T=T)
    return true, jax.block_until_ready(jnp.asarray(y, jnp.float64))


def scalars(draws):
    """{name: (chains, draws)} for F[i,j], q, r from constrained draws {F: (C, D, 2, 2), q, r}."""
    out = {}
    F = np.asarray(draws["F"])
    for i in range(DZ):
        for j in range(DZ):
            out[f"F[{i},{j}]"] = F[..., i, j]
    out["q"] = np.asarray(draws["q"])
    out["r"] = np.asarray(draws["r"])
    return out


def summarise(draws):
    s = scalars(draws)
    ess = {k: float(az.ess(v, method="bulk")) for k, v in s.items()}
    rhat = {k: float(az.rhat(v)) for k, v in s.items()}
    mean = {k: float(v.mean()) for k, v in s.items()}
    mcse = {k: float(az.mcse(v, method="mean")) for k, v in s.items()}
    sd = {k: float(v.std()) for k, v in s.items()}
    return dict(ess=ess, rhat=rhat, mean=mean, mcse=mcse, sd=sd, min_ess=min(ess.values()),
                min_ess_name=min(ess, key=ess.get))


def timed(fn):
    """(wall seconds, CPU seconds of this process, compile summary, result)."""
    faulthandler.dump_traceback_later(ARGS.watchdog, exit=True)
    n0 = len(_SPANS)
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        out = jax.block_until_ready(fn())
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return wall, cpu, compile_summary(_SPANS[n0:]), out
    finally:
        faulthandler.cancel_dump_traceback_later()


def run_setup(name, log):
    s = SETUPS[name]
    T = s["T"]
    num_warmup = ARGS.num_warmup or s["num_warmup"]
    num_samples = ARGS.num_samples or s["num_samples"]
    C = ARGS.num_chains
    true, y = make_problem(T, ARGS.seed)
    H = true["H"]
    model = ssmppl_model(H)
    ssm = SSM(model)
    logprob, start, props = peer_setup(H, y)

    # --- check: the two log densities at random points of the unconstrained space -------
    marginal = marginalize(model, Kalman())
    ssmppl_logdensity = jax.jit(lambda u: -potential_energy(marginal, (y,), {}, u))
    peer_logdensity = jax.jit(logprob)
    pts = uniform_init(jax.random.PRNGKey(ARGS.seed + 7), start, 5)
    checks = []
    diffs = []
    for i in range(5):
        u = jax.tree.map(lambda x: x[i], pts)
        a, b = float(ssmppl_logdensity(u)), float(peer_logdensity(u))
        diffs.append(a - b)
        log(f"    check log density at random point {i}: ssmppl {a:.10f}, peer {b:.10f}, difference {a - b:.2e}")
    spread = max(diffs) - min(diffs)
    checks.append(f"{name}: log densities at 5 random unconstrained points (uniform(-2, 2)): ssmppl - peer = "
                  + ", ".join(f"{d:.1e}" for d in diffs) + f" (spread {spread:.1e}; they are the same "
                  "normalised density)")
    if not max(abs(d) for d in diffs) < 1e-6 * max(1.0, abs(a)):
        raise SystemExit("the two log densities differ: the comparison would not be on the same posterior")

    peer_run = peer_sampler(logprob, num_warmup, num_samples)

    def run(sampler, key):
        if sampler == "peer":
            k_init, k_run = jax.random.split(key)
            init = (uniform_init(k_init, start, C) if ARGS.peer_init == "uniform"
                    else jax.tree.map(lambda x: jnp.broadcast_to(x, (C,) + jnp.shape(x)), start))
            positions, n_steps, divergent, step_size, warmup_steps = peer_run(jax.random.split(k_run, C), init)
            draws = from_unconstrained(positions, {k: props[k] for k in positions})
            return dict(draws={k: draws[k] for k in SITES}, n_steps=n_steps, divergent=divergent,
                        step_size=step_size, warmup_steps=warmup_steps)
        backend = sampler.split()[1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # divergence warnings are counted below
            post = ssm.sample_posterior(key, y, num_warmup=num_warmup, num_samples=num_samples, num_chains=C,
                                        method=Kalman(), backend=backend, progress_bar=False)
        st = post.sample_stats
        return dict(draws={k: post.samples[k] for k in SITES}, n_steps=st["n_steps"], divergent=st["diverging"],
                    step_size=np.asarray(st["step_size"])[:, -1])

    samplers = [x for x in SAMPLERS if x.split()[-1] in ARGS.samplers]
    num_calls = ARGS.calls or s["calls"]
    results = {x: [] for x in samplers}
    base_key = jax.random.PRNGKey(1000 + ARGS.seed)
    for call in range(num_calls):  # interleaved across samplers
        for i, sampler in enumerate(samplers):
            key = jax.random.fold_in(base_key, 10 * i + call)
            dt, cpu, comp, out = timed(lambda: run(sampler, key))
            summ = summarise(out["draws"])
            n_steps = np.asarray(out["n_steps"])
            r = dict(time=dt, cpu=cpu, compile=comp["total"], xla=comp["xla"], compiled=comp["compiled"],
                     n_steps=n_steps, divergent=int(np.sum(out["divergent"])),
                     step_size=np.asarray(out["step_size"]), warmup_steps=out.get("warmup_steps"), **summ)
            results[sampler].append(r)
            log(f"    {sampler:15s} call {call + 1}: {dt:7.1f} s wall, {cpu:7.1f} s CPU; compilation {comp['total']:6.1f} s "
                f"(XLA {comp['xla']:6.1f} s, {len(comp['compiled'])} compilations); min bulk ESS {summ['min_ess']:6.0f} "
                f"({summ['min_ess_name']}); ESS/s {summ['min_ess'] / dt:7.2f}, excluding compilation "
                f"{summ['min_ess'] / (dt - comp['total']):7.2f}; max R-hat {max(summ['rhat'].values()):.3f}; "
                f"leapfrog steps/draw {n_steps.mean():.2f}; divergences {r['divergent']}")

    # --- check: posterior means agree within Monte Carlo error -----------------------------
    if "peer" in results:
        for sampler in samplers:
            if sampler == "peer":
                continue
            worst, parts = 0.0, []
            for call, (a, b) in enumerate(zip(results[sampler], results["peer"])):
                zs = {k: (a["mean"][k] - b["mean"][k]) / math.hypot(a["mcse"][k], b["mcse"][k]) for k in a["mean"]}
                worst = max(worst, max(abs(z) for z in zs.values()))
                parts.append(f"call {call + 1}: max |z| {max(abs(z) for z in zs.values()):.2f}")
            a, b = results[sampler][-1], results["peer"][-1]
            means = "; ".join(f"{k} {a['mean'][k]:.4f} / {b['mean'][k]:.4f}" for k in a["mean"])
            verdict = "agree" if worst < 4 else "DISAGREE"
            checks.append(f"{name}: posterior means {sampler} / peer (call {len(results['peer'])}): {means}. "
                          f"z = difference / sqrt(mcse1^2 + mcse2^2) over the 6 scalars: " + ", ".join(parts)
                          + f" -> {verdict} within Monte Carlo error (|z| < 4)")
            log("    check: " + checks[-1])

    profile = None if ARGS.no_profile else profile_setup(name, y, marginal, logprob, start, results, num_samples, log)
    return dict(name=name, T=T, num_warmup=num_warmup, num_samples=num_samples, calls=num_calls, results=results,
                checks=checks, profile=profile)


def best_time(fn, *args, min_time=1.0, max_reps=50):
    """(best wall seconds, best CPU seconds, first-call compile summary) of a jitted call."""
    n0 = len(_SPANS)
    jax.block_until_ready(fn(*args))
    comp = compile_summary(_SPANS[n0:])
    walls, cpus = [], []
    t_start = time.perf_counter()
    while len(walls) < 3 or (time.perf_counter() - t_start < min_time and len(walls) < max_reps):
        c0, t0 = time.process_time(), time.perf_counter()
        jax.block_until_ready(fn(*args))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), comp


def profile_setup(name, y, marginal, logprob, start, results, num_samples, log):
    C = ARGS.num_chains
    pot = lambda u: -potential_energy(marginal, (y,), {}, u)
    pts = uniform_init(jax.random.PRNGKey(11), start, C)
    one = jax.tree.map(lambda x: x[0], pts)
    grads = {}
    for label, f in (("ssmppl", pot), ("peer", logprob)):
        vg = jax.value_and_grad(f)
        w1, c1, _ = best_time(jax.jit(vg), one)
        wC, cC, comp = best_time(jax.jit(jax.vmap(vg)), pts)
        grads[label] = dict(wall1=w1, cpu1=c1, wallC=wC, cpuC=cC, compile=comp["total"])
        log(f"    profile: {label:6s} value and gradient: {w1 * 1e3:.3f} ms wall / {c1 * 1e3:.3f} ms CPU (1 position), "
            f"{wC * 1e3:.3f} ms wall / {cC * 1e3:.3f} ms CPU ({C} positions, vmapped); compiling the vmapped one: "
            f"{comp['total']:.2f} s")
    rows = []
    for sampler, calls in results.items():
        last = calls[-1]
        n = last["n_steps"]  # (C, D) post-warmup leapfrog steps
        per_draw_mean = float(n.mean())
        per_draw_max = float(n.max(axis=0).mean())  # vmapped chains wait for the longest trajectory
        g = grads["peer" if sampler == "peer" else "ssmppl"]
        predicted = per_draw_max * num_samples * g["cpuC"]  # CPU seconds of the post-warmup draws
        top = ", ".join(f"{fn} {d:.1f} s" for fn, d in calls[0]["compiled"][:3])
        rows.append(dict(sampler=sampler, steps_mean=per_draw_mean, steps_max=per_draw_max,
                         step_size=float(np.mean(last["step_size"])), grad=g, predicted=predicted,
                         n_compiled=[len(c["compiled"]) for c in calls], top=top))
        log(f"    profile: {sampler:15s} post-warmup leapfrog steps per draw: mean {per_draw_mean:.2f}, max over "
            f"chains {per_draw_max:.2f}; step size {rows[-1]['step_size']:.3f}; predicted CPU seconds of the "
            f"{num_samples} draws: {predicted:.1f} s ({per_draw_max:.2f} x {g['cpuC'] * 1e3:.3f} ms per draw)")
        log(f"    profile: {sampler:15s} XLA compilations per call: {rows[-1]['n_compiled']}; longest (call 1): {top}")
        if last["warmup_steps"] is not None:  # the peer's whole call: warmup and draws
            w = np.asarray(last["warmup_steps"])  # (C, num_warmup)
            whole = (w.max(axis=0).sum() + n.max(axis=0).sum()) * g["cpuC"]
            log(f"    profile: {sampler:15s} warmup leapfrog steps per iteration: mean {w.mean():.2f}, max over chains "
                f"{w.max(axis=0).mean():.2f}; predicted CPU seconds of warmup + draws {whole:.1f} s, measured "
                f"{last['cpu']:.1f} s CPU for the whole call (compilation {last['compile']:.1f} s wall)")
    return dict(grads=grads, rows=rows)


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------

HEADER = ["setup", "sampler", "chains×(warmup+draws)", "1st call: time (s)", "compile (s)", "2nd call: time (s)",
          "compile (s)", "min ESS", "ESS/s 1st call", "ESS/s 2nd call", "ESS/s excl. compile", "ratio 1st call",
          "ratio 2nd call", "ratio excl. compile", "steps/draw", "div.", "max R-hat"]


def _rates(calls):
    first = calls[0]["min_ess"] / calls[0]["time"]
    second = calls[1]["min_ess"] / calls[1]["time"] if len(calls) > 1 else None
    excl = sum(c["min_ess"] for c in calls) / sum(c["time"] - c["compile"] for c in calls)
    return first, second, excl


def table_rows(setups):
    out = []
    for s in setups:
        res = s["results"]
        peer = _rates(res["peer"]) if "peer" in res else None
        for sampler, calls in res.items():
            rates = _rates(calls)
            fmt = lambda x: "—" if x is None else f"{x:.2f}"
            if sampler == "peer":
                ratios = ["1" if x is not None else "—" for x in rates]
            elif peer is None:
                ratios = ["n/a"] * 3
            else:
                ratios = [fmt(None if x is None or p is None else x / p) for x, p in zip(rates, peer)]
            c1 = calls[0]
            c2 = calls[1] if len(calls) > 1 else None
            out.append([
                f"seed003 (2×10, T={s['T']:,})", sampler, f"{ARGS.num_chains}×({s['num_warmup']}+{s['num_samples']})",
                f"{c1['time']:.1f}", f"{c1['compile']:.1f}",
                "—" if c2 is None else f"{c2['time']:.1f}", "—" if c2 is None else f"{c2['compile']:.1f}",
                " / ".join(f"{c['min_ess']:.0f}" for c in calls), *(fmt(x) for x in rates), *ratios,
                f"{np.mean([c['n_steps'].mean() for c in calls]):.1f}", " / ".join(str(c["divergent"]) for c in calls),
                f"{max(max(c['rhat'].values()) for c in calls):.3f}",
            ])
    return out


CPU_HEADER = ["setup", "sampler", "CPU s per call", "min ESS per call", "ESS per CPU s, 1st call",
              "ESS per CPU s, 2nd call", "ratio 1st call", "ratio 2nd call"]


def cpu_rows(setups):
    out = []
    for s in setups:
        res = s["results"]
        rate = lambda calls: [c["min_ess"] / c["cpu"] for c in calls] + [None] * (2 - len(calls))
        peer = rate(res["peer"]) if "peer" in res else None
        fmt = lambda x: "—" if x is None else f"{x:.2f}"
        for sampler, calls in res.items():
            r = rate(calls)[:2]
            if sampler == "peer":
                ratios = ["1" if x is not None else "—" for x in r]
            elif peer is None:
                ratios = ["n/a", "n/a"]
            else:
                ratios = [fmt(None if x is None or q is None else x / q) for x, q in zip(r, peer)]
            out.append([f"seed003 (2×10, T={s['T']:,})", sampler, " / ".join(f"{c['cpu']:.1f}" for c in calls),
                        " / ".join(f"{c['min_ess']:.0f}" for c in calls), *(fmt(x) for x in r), *ratios])
    return out


CPU_LEGEND = (
    "The same calls per CPU second of this process (`time.process_time`) instead of wall seconds: on a "
    "shared core, other processes stretch wall times unevenly (one call may get a third of the core, the "
    "next half of it), but hardly change the CPU seconds a call needs, so these ratios are the steadier "
    "ones here. On an idle core the two agree."
)


PROFILE_HEADER = ["setup", "sampler", "grad ms (1 pos.)", f"grad ms ({ARGS.num_chains} pos. vmapped)",
                  "steps/draw mean", "steps/draw max over chains", "step size", "predicted CPU s of the draws",
                  "CPU s per call", "XLA compilations per call", "longest XLA compilations (1st call)"]


def profile_rows(setups):
    out = []
    for s in setups:
        p = s["profile"]
        if p is None:
            continue
        for r in p["rows"]:
            g = r["grad"]
            calls = s["results"][r["sampler"]]
            out.append([f"T={s['T']:,}", r["sampler"], f"{g['cpu1'] * 1e3:.2f}", f"{g['cpuC'] * 1e3:.2f}",
                        f"{r['steps_mean']:.2f}", f"{r['steps_max']:.2f}", f"{r['step_size']:.3f}",
                        f"{r['predicted']:.1f}", " / ".join(f"{c['cpu']:.1f}" for c in calls),
                        " / ".join(map(str, r["n_compiled"])), r["top"]])
    return out


LEGEND = (
    "Each sampler is called {calls_text} per setup with different keys, the calls interleaved across "
    "samplers. The 1st call is the first in the process: it includes tracing and XLA compilation. The "
    "2nd call shows what a further call costs (the peer's jitted function is built once and reused; "
    "ssmppl's `sample_posterior` builds and compiles its sampler anew in every call). time = wall "
    "seconds of the call; compile = wall seconds inside it spent tracing, lowering and compiling (union "
    "of JAX's monitoring time spans). ESS = minimum over the 6 sampled scalars (F[0,0..1,1], q, r) of "
    "ArviZ's bulk ESS of that call's {chains} chains (one value per call). ESS/s = ESS / wall time of the "
    "call; 'excl. compile' = total ESS / total (time - compile) over the calls, the rate once compiled "
    "(wall seconds too, so as noisy as the times when other processes share the core). "
    "ratio = ssmppl ESS/s / peer ESS/s: > 1 means ssmppl is faster. steps/draw = mean post-warmup "
    "leapfrog steps per draw; div. = post-warmup divergences per call; max R-hat over the calls. One "
    "run's ESS varies by 10-20%, so ratios within that of 1 are ties. Peer = dynamax "
    "`LinearGaussianSSM.marginal_log_prob` + the same log priors + `log_det_jac_constrain`, in "
    "dynamax's unconstrained space (`to_unconstrained` / `from_unconstrained`, `props` marking F, q, r "
    "trainable), blackjax `window_adaptation` + `nuts` in `lax.scan` (dynamax's lgssm_hmc notebook), "
    "`jax.jit(jax.vmap(...))` over chains; peer initial points: {init}. All samplers: diagonal mass "
    "matrix, target acceptance 0.8, max tree depth 10, chains vectorized on one device. float64, {cpus} "
    "pinned core(s)."
)

PROFILE_LEGEND = (
    "grad ms = best CPU milliseconds of one jitted value-and-gradient of the log density (ssmppl: "
    "`-potential_energy` of `marginalize(model, Kalman())`, what both ssmppl backends differentiate; "
    "peer: the logprob above), at uniform(-2, 2) unconstrained points, for one position and for "
    "{chains} positions under `vmap` (what vectorized chains evaluate). Vectorized chains run each NUTS "
    "iteration until the longest trajectory among them ends, so a draw costs about (max over chains of "
    "its leapfrog steps) x (vmapped gradient): 'predicted CPU s of the draws' = num_samples x that mean "
    "x vmapped grad, the post-warmup half of a call without compilation or tree-building overhead (last "
    "call's steps). 'CPU s per call' = the process's CPU seconds of each whole call (warmup, draws, "
    "compilation). XLA compilations = number of XLA compilations inside each call; the longest are "
    "named by JAX's function names."
)


def environment():
    import jaxlib

    versions = [
        f"python {platform.python_version()}",
        f"ssmppl {ssmppl.__version__} ({SSMPPL_REV})",
        f"jax {jax.__version__}",
        f"jaxlib {jaxlib.__version__}",
        f"numpyro {numpyro.__version__}",
        f"blackjax {blackjax.__version__}",
        f"dynamax {dynamax.__version__}",
        f"arviz {az.__version__}",
        f"numpy {np.__version__}",
    ]
    return device_label(jax, CPUS_USED, ALL_CPUS), versions


def main():
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    device, versions = environment()
    start = datetime.datetime.now()
    command = "python " + " ".join(sys.argv)
    if len(ALL_CPUS) < (os.cpu_count() or 1):
        command += f"  (started with CPU affinity {','.join(map(str, ALL_CPUS))}, as by `taskset -c {','.join(map(str, ALL_CPUS))}`)"
    cores = f"{len(CPUS_USED)} (core id(s) {', '.join(map(str, CPUS_USED))})"
    loads = [os.getloadavg()[0]]
    header = [
        f"Marginalised NUTS benchmark, float64 — {start:%Y-%m-%d %H:%M}",
        f"command: {command}",
        f"device: {device}",
        f"cores pinned: {cores}",
        "versions: " + ", ".join(versions),
        f"XLA_FLAGS: {os.environ.get('XLA_FLAGS', '') or '(none)'}",
    ]
    print("\n".join(header))
    print(f"machine 1-min load average at start: {loads[0]:.2f} ({os.cpu_count()} cores)")
    for n in ARGS.note:
        print("note: " + n)
    print(flush=True)
    init = ("NumPyro's default distribution, uniform(-2, 2) per unconstrained coordinate, as ssmppl's"
            if ARGS.peer_init == "uniform" else "dynamax's `initialize()` values (F = 0.99 I, Q = R = 0.1 I) for all chains")
    calls = sorted({ARGS.calls or SETUPS[n]["calls"] for n in ARGS.setups})
    calls_text = " or ".join({1: "once", 2: "twice"}.get(c, f"{c} times") for c in calls)
    if len(calls) > 1:
        calls_text += " (" + ", ".join(f"T={SETUPS[n]['T']}: {ARGS.calls or SETUPS[n]['calls']}" for n in ARGS.setups) + ")"
    legend = LEGEND.format(calls_text=calls_text, chains=ARGS.num_chains, init=init, cpus=len(CPUS_USED))
    done = []
    previous = ""
    if ARGS.out and ARGS.append and os.path.exists(ARGS.out):
        with open(ARGS.out) as f:
            previous = f.read()

    def write_markdown(finished):
        elapsed = (datetime.datetime.now() - start).total_seconds()
        md = [
            "# Marginalised NUTS benchmark: ssmppl vs dynamax + blackjax (float64)" + ("" if finished else " — PARTIAL, still running"),
            "",
            f"- date: {start:%Y-%m-%d %H:%M}",
            f"- command: `{command}`",
            f"- device: {device}",
            f"- cores pinned: {cores}",
            "- versions: " + ", ".join(versions),
            f"- XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '') or '(none)'}`",
            "- 1-min load average at the start, before each further setup and at the end: " + ", ".join(f"{x:.2f}" for x in loads)
            + f" (machine-wide, {os.cpu_count()} cores, this benchmark using {len(CPUS_USED)}: a load above "
            f"~{len(CPUS_USED)} means other processes competed); total {elapsed:.0f} s",
        ]
        md += [f"- note: {n}" for n in ARGS.note]
        md += ["", "## ESS per second", "", markdown_table(HEADER, table_rows(done)), "", legend, "",
               "### Per CPU second", "", markdown_table(CPU_HEADER, cpu_rows(done)), "", CPU_LEGEND, ""]
        prows = profile_rows(done)
        if prows:
            md += ["## Profile", "", markdown_table(PROFILE_HEADER, prows), "",
                   PROFILE_LEGEND.format(chains=ARGS.num_chains), ""]
        md += ["## Checks", ""]
        for s in done:
            md += [f"- {c}" for c in s["checks"]]
        md += ["", "Per-scalar bulk ESS (last call):", ""]
        for s in done:
            for sampler, calls in s["results"].items():
                md.append(f"- T={s['T']} {sampler}: " + ", ".join(f"{k} {v:.0f}" for k, v in calls[-1]["ess"].items()))
        with open(ARGS.out, "w") as f:
            f.write(previous + ("\n" if previous else "") + "\n".join(md) + "\n")

    for name in ARGS.setups:
        if done:
            loads.append(os.getloadavg()[0])
        print(f"{name}: dz={DZ}, dy={DY}, T={SETUPS[name]['T']}   (1-min load average {loads[-1]:.2f})", flush=True)
        done.append(run_setup(name, lambda m: print(m, flush=True)))
        if ARGS.out:
            write_markdown(finished=False)
    loads.append(os.getloadavg()[0])
    elapsed = (datetime.datetime.now() - start).total_seconds()
    rev_end = git_rev(PACKAGE_DIR, PACKAGE_DIR)
    if rev_end != SSMPPL_REV:
        ARGS.note.append(f"the ssmppl checkout changed during the run: {SSMPPL_REV} at the start (the code "
                         f"measured), {rev_end} at the end")
        print("note: " + ARGS.note[-1])
    print()
    print("\n".join(header))
    print(text_table(HEADER, table_rows(done)))
    print()
    print(text_table(CPU_HEADER, cpu_rows(done)))
    print()
    if profile_rows(done):
        print(text_table(PROFILE_HEADER, profile_rows(done)))
        print()
    print(legend)
    for s in done:
        for c in s["checks"]:
            print("check: " + c)
    print("1-min load average at the start, before each setup and at the end: " + ", ".join(f"{x:.2f}" for x in loads)
          + f"; total benchmark time {elapsed:.0f} s")
    if ARGS.out:
        write_markdown(finished=True)
        print(f"wrote {ARGS.out}")


if __name__ == "__main__":
    main()
