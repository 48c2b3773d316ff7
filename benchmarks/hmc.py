"""hmc: marginalised NUTS on a linear Gaussian SSM, ssmppl against dynamax's HMC recipe (ESS per second).

Three samplers draw from the same posterior, on the same data, in one process:

  ssmppl numpyro   SSM(model).sample_posterior(key, y, method=Kalman(), backend="numpyro", ...)
  ssmppl blackjax  the same call with backend="blackjax"
  peer             dynamax has no fit_hmc; its documented HMC (the lgssm_hmc notebook) is blackjax
                   NUTS on LinearGaussianSSM.marginal_log_prob in dynamax's unconstrained space:
                   logprob(u) = log prior(p) + marginal_log_prob(p, y) + log_det_jac_constrain(p, props),
                   p = from_unconstrained(u, props); window_adaptation, then nuts steps in lax.scan;
                   chains jax.jit(jax.vmap(one_chain))

Model: ``ssmppl.demo.seed003_bayesian_model`` (dz = 2, dy = 10, H and z_0 ~ N(0, I) known; F ~ N(0, 1)
per entry, q ~ HalfNormal(0.5), r ~ HalfNormal(1), Q = q^2 I, R = r^2 I). Both sides sample
(F, log q, log r); the peer's priors are restated in ``log_prior`` and its q, r carry ``tfb.Exp()``,
so the two log densities are the same normalised density: checked at random points before
anything runs. The peer's initial state gets the moments of ssmppl's z_1. Check: the posterior
means agree within Monte Carlo error (|difference| < 4 x the combined MCSE, per scalar).

Calls are interleaved across samplers with different keys; the first includes compilation, whose
seconds are read from JAX's monitoring events (a third rate excludes them). ESS = minimum over
the 6 sampled scalars of ArviZ's bulk ESS; ratio = ssmppl ESS/s / peer ESS/s.
"""

from __future__ import annotations

import math
import time
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.stats import norm
from numpyro.infer.util import potential_energy

from ssmppl import SSM, Kalman, marginalize
from ssmppl.demo import seed003_bayesian_model, seed003_params
from ssmppl.models import linear_gaussian_ssm

from . import harness, peers
from .kalman import shifted_initial

TITLE = "Marginalised NUTS: ssmppl vs dynamax + blackjax"
PEERS = ("dynamax", "blackjax", "arviz")
DZ, DY = 2, 10
SITES = ("F", "q", "r")
# Every ssmppl call compiles for ~30 s of CPU and a T = 1000 gradient costs 10x a T = 100 one: the default run is
# T = 100 (~9 min of CPU on one core); T = 1000 is opt-in (~25 min; with 100 warmup steps blackjax's window
# adaptation had not converged there, hence 300).
SETUPS = {"T100": dict(T=100, num_warmup=500, num_samples=500, calls=2),
          "T1000": dict(T=1000, num_warmup=300, num_samples=300, calls=1)}
SAMPLERS = ("ssmppl numpyro", "ssmppl blackjax", "peer")


def arguments(p):
    p.add_argument("--setups", nargs="+", choices=list(SETUPS), default=["T100"])
    p.add_argument("--num-warmup", type=int, help="warmup steps per chain (default: per setup; --short: 50)")
    p.add_argument("--num-samples", type=int, help="draws per chain (default: per setup; --short: 50)")
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--calls", type=int, help="calls per sampler (default: per setup; --short: 1)")
    p.add_argument("--samplers", nargs="+", choices=["numpyro", "blackjax", "peer"],
                   default=["numpyro", "blackjax", "peer"])
    p.add_argument("--peer-init", choices=["uniform", "dynamax"], default="uniform",
                   help="peer's initial points: NumPyro's uniform(-2, 2) as ssmppl, or dynamax's initialize()")
    p.add_argument("--no-profile", action="store_true", help="skip the per-gradient profile")


def peer_setup(H, y):
    """dynamax's recipe: the log density in the unconstrained space of the trainable parameters
    (marked by ``props``), their unconstrained start, and ``props``."""
    import tensorflow_probability.substrates.jax.bijectors as tfb
    from dynamax.linear_gaussian_ssm import LinearGaussianSSM
    from dynamax.parameters import ParameterProperties, from_unconstrained, log_det_jac_constrain, to_unconstrained
    from dynamax.utils.bijectors import RealToPSDBijector

    model = LinearGaussianSSM(DZ, DY)
    base, _ = model.initialize(jax.random.PRNGKey(0), emission_weights=jnp.asarray(H))
    params = {"F": base.dynamics.weights, "q": jnp.sqrt(base.dynamics.cov[0, 0]), "r": jnp.sqrt(base.emissions.cov[0, 0]),
              "H": base.emissions.weights, "initial_mean": jnp.zeros(DZ), "initial_cov": jnp.eye(DZ)}
    props = {"F": ParameterProperties(), "q": ParameterProperties(constrainer=tfb.Exp()),
             "r": ParameterProperties(constrainer=tfb.Exp()), "H": ParameterProperties(trainable=False),
             "initial_mean": ParameterProperties(trainable=False),
             "initial_cov": ParameterProperties(trainable=False, constrainer=RealToPSDBijector())}
    initial = to_unconstrained(params, props)

    def log_prior(p):  # seed003_bayesian_model's priors
        return norm.logpdf(p["F"]).sum() + sum(jnp.log(2.0) + norm.logpdf(p[k], 0.0, s) for k, s in (("q", 0.5),
                                                                                                  ("r", 1.0)))

    def logprob(position):
        p = from_unconstrained({k: position.get(k, v) for k, v in initial.items()}, props)
        Q = p["q"] ** 2 * jnp.eye(DZ)
        m1, P1 = shifted_initial(dict(p, Q=Q))
        lgssm = base._replace(initial=base.initial._replace(mean=m1, cov=P1),
                              dynamics=base.dynamics._replace(weights=p["F"], cov=Q),
                              emissions=base.emissions._replace(weights=p["H"], cov=p["r"] ** 2 * jnp.eye(DY)))
        return log_prior(p) + model.marginal_log_prob(lgssm, y) + log_det_jac_constrain(p, props)

    start = {k: initial[k] for k, prop in props.items() if prop.trainable}
    constrain = lambda u: from_unconstrained(u, {k: props[k] for k in u})  # noqa: E731
    return logprob, start, constrain


def peer_sampler(logprob, num_warmup, num_samples):
    """jit(vmap(one chain)) of dynamax's notebook recipe: window adaptation, then NUTS in lax.scan."""
    import blackjax

    def one_chain(key, position):
        k_warm, k_draw = jax.random.split(key)
        (state, tuned), adaptation = blackjax.window_adaptation(blackjax.nuts, logprob).run(k_warm, position,
                                                                                           num_steps=num_warmup)
        kernel = blackjax.nuts(logprob, **tuned).step

        def step(state, k):
            state, info = kernel(k, state)
            return state, (state.position, info.num_integration_steps, info.is_divergent)

        _, (positions, n_steps, divergent) = lax.scan(step, state, jax.random.split(k_draw, num_samples))
        return positions, n_steps, divergent, tuned["step_size"], adaptation.info.num_integration_steps

    return jax.jit(jax.vmap(one_chain))


def uniform_init(key, start, n):
    """NumPyro's default init strategy: uniform(-2, 2) per unconstrained coordinate, n points."""
    leaves, treedef = jax.tree.flatten(start)
    return jax.tree.unflatten(treedef, [jax.random.uniform(k, (n,) + jnp.shape(x), minval=-2.0, maxval=2.0)
                                        for k, x in zip(jax.random.split(key, len(leaves)), leaves)])


def summarise(draws):
    F = np.asarray(draws["F"])
    s = {f"F[{i},{j}]": F[..., i, j] for i in range(DZ) for j in range(DZ)}
    s.update(q=np.asarray(draws["q"]), r=np.asarray(draws["r"]))
    scalar = lambda x: np.asarray(x).item()  # noqa: E731  (ArviZ returns shape (1,) for some statistics)
    ess = {k: scalar(az.ess(v, method="bulk")) for k, v in s.items()}
    return dict(ess=ess, min_ess=min(ess.values()), rhat=max(scalar(az.rhat(v)) for v in s.values()),
                mean={k: float(v.mean()) for k, v in s.items()},
                mcse={k: scalar(az.mcse(v, method="mean")) for k, v in s.items()})


def max_z(a, b):
    return max(abs(a["mean"][k] - b["mean"][k]) / math.hypot(a["mcse"][k], b["mcse"][k]) for k in a["mean"])


def run_setup(name, args, report):
    peers.require("dynamax")
    s = SETUPS[name]
    T, C = s["T"], args.num_chains
    W = args.num_warmup or (50 if args.short else s["num_warmup"])
    D = args.num_samples or (50 if args.short else s["num_samples"])
    calls = args.calls or (1 if args.short else s["calls"])
    k_true, k_data = jax.random.split(jax.random.PRNGKey(args.seed))
    true = seed003_params(k_true)
    _, y = SSM(linear_gaussian_ssm(DZ, DY)).sample(k_data, true, T=T)
    y = jnp.asarray(y, jnp.float64)
    model = seed003_bayesian_model(true["H"])
    ssm = SSM(model)
    logprob, start, constrain = peer_setup(true["H"], y)

    # the same normalised density: both log densities at random unconstrained points
    marginal = marginalize(model, Kalman())
    ours = jax.jit(lambda u: -potential_energy(marginal, (y,), {}, u))
    pts = uniform_init(jax.random.PRNGKey(args.seed + 7), start, 5)
    values = [(float(ours(u)), float(jax.jit(logprob)(u))) for u in (jax.tree.map(lambda x: x[i], pts) for i in range(5))]
    report.check(all(abs(a - b) < 1e-6 * max(1.0, abs(a)) for a, b in values),
                 f"{name}: log densities at 5 random unconstrained points: ssmppl - peer = "
                 + ", ".join(f"{a - b:.1e}" for a, b in values) + " (the same normalised density; tolerance 1e-6 relative)")
    if not report.ok:
        return None
    peer_run = peer_sampler(logprob, W, D)

    def sample(sampler, key):
        if sampler == "peer":
            k_init, k_run = jax.random.split(key)
            init = (uniform_init(k_init, start, C) if args.peer_init == "uniform"
                    else jax.tree.map(lambda x: jnp.broadcast_to(x, (C,) + jnp.shape(x)), start))
            positions, n_steps, divergent, step_size, warmup_steps = peer_run(jax.random.split(k_run, C), init)
            return dict(draws={k: v for k, v in constrain(positions).items() if k in SITES}, n_steps=n_steps,
                        divergent=divergent, step_size=step_size, warmup_steps=warmup_steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # divergences are counted
            post = ssm.sample_posterior(key, y, num_warmup=W, num_samples=D, num_chains=C, method=Kalman(),
                                        backend=sampler.split()[1], progress_bar=False)
        st = post.sample_stats
        return dict(draws={k: post.samples[k] for k in SITES}, n_steps=st["n_steps"], divergent=st["diverging"],
                    step_size=np.asarray(st["step_size"])[:, -1])

    samplers = [x for x in SAMPLERS if x.split()[-1] in args.samplers]
    counter = {x: 0 for x in samplers}

    def impl(i, sampler):
        def call():
            counter[sampler] += 1
            out = sample(sampler, jax.random.fold_in(jax.random.PRNGKey(1000 + args.seed), 10 * i + counter[sampler] - 1))
            return dict(out, **summarise(out["draws"]))
        return call

    def check(results):
        if "peer" not in results:
            return []
        return [(x, (z := max_z(r, results["peer"])) < 4, f"posterior means {x} vs peer (call 1): max |z| = {z:.2f} "
                 f"over the 6 scalars, z = difference / sqrt(mcse1^2 + mcse2^2) (tolerance 4); means "
                 + "; ".join(f"{k} {r['mean'][k]:.4f} / {results['peer']['mean'][k]:.4f}" for k in r["mean"]))
                for x, r in results.items() if x != "peer"]

    case = harness.Case(name, {x: impl(i, x) for i, x in enumerate(samplers)}, check, warm=set(), keep_all=True)
    res = harness.measure(case, args, report, min_reps=calls, max_reps=calls, min_time=0.0)
    for x, r in res.items():
        for i, (c, o) in enumerate(zip(r.calls, r.outputs)):
            report.log(f"    {name} {x} call {i + 1}: {c.wall:.1f} s wall, {c.cpu:.1f} s CPU, compilation {c.compile:.1f} s; "
                       f"min bulk ESS {o['min_ess']:.0f}; max R-hat {o['rhat']:.3f}; "
                       f"leapfrog steps/draw {np.mean(o['n_steps']):.2f}")
    for x, r in res.items():
        if x != "peer" and len(r.outputs) > 1 and "peer" in res and res["peer"].outputs:  # (call 1: the check above)
            z = [max_z(o, p) for o, p in zip(r.outputs, res["peer"].outputs)]
            report.check(max(z) < 4, f"{name}: posterior means {x} vs peer agree within Monte Carlo error: "
                         + ", ".join(f"call {i + 1}: max |z| {v:.2f}" for i, v in enumerate(z)) + " (tolerance 4)")
    profile = None if args.no_profile else gradient_profile(T, y, marginal, logprob, start, res, D, C, report)
    return dict(name=name, T=T, W=W, D=D, C=C, res=res, profile=profile)


def best_time(fn, *a, min_time=1.0, max_reps=50):
    """(best wall seconds, best CPU seconds) of a jitted call after a first one."""
    jax.block_until_ready(fn(*a))
    walls, cpus, t_start = [], [], time.perf_counter()
    while len(walls) < 3 or (time.perf_counter() - t_start < min_time and len(walls) < max_reps):
        c0, t0 = time.process_time(), time.perf_counter()
        jax.block_until_ready(fn(*a))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def gradient_profile(T, y, marginal, logprob, start, res, D, C, report):
    """Cost of one value-and-gradient of each log density (1 position, C under vmap), leapfrog steps per
    draw and the predicted CPU seconds of the draws (vectorized chains wait for the longest trajectory)."""
    pts = uniform_init(jax.random.PRNGKey(11), start, C)
    grads = {}
    for label, f in (("ssmppl", lambda u: -potential_energy(marginal, (y,), {}, u)), ("peer", logprob)):
        vg = jax.value_and_grad(f)
        grads[label] = (best_time(jax.jit(vg), jax.tree.map(lambda x: x[0], pts))[1],
                        best_time(jax.jit(jax.vmap(vg)), pts)[1])
        report.log(f"    T={T} profile {label}: value and gradient {1e3 * grads[label][0]:.3f} ms CPU (1 position), "
                   f"{1e3 * grads[label][1]:.3f} ms ({C} positions, vmapped)")
    rows = []
    for x, r in res.items():
        if not r.outputs:
            continue
        n = np.asarray(r.outputs[-1]["n_steps"])  # (C, D) post-warmup leapfrog steps, last call
        g = grads["peer" if x == "peer" else "ssmppl"]
        rows.append([f"T={T:,}", x, f"{g[0] * 1e3:.2f}", f"{g[1] * 1e3:.2f}", f"{n.mean():.2f}",
                     f"{n.max(axis=0).mean():.2f}", f"{np.mean(r.outputs[-1]['step_size']):.3f}",
                     f"{n.max(axis=0).mean() * D * g[1]:.1f}", " / ".join(f"{c.cpu:.1f}" for c in r.calls),
                     " / ".join(str(len(c.compiled)) for c in r.calls),
                     ", ".join(f"{f} {d:.1f} s" for f, d in r.calls[0].compiled[:3])])
    return rows


HEADER = ["setup", "sampler", "chains×(warmup+draws)", "1st call: time (s)", "compile (s)", "2nd call: time (s)",
          "compile (s)", "min ESS", "ESS/s 1st call", "ESS/s 2nd call", "ESS/s excl. compile", "ratio 1st call",
          "ratio 2nd call", "ratio excl. compile", "steps/draw", "div.", "max R-hat"]
CPU_HEADER = ["setup", "sampler", "CPU s per call", "min ESS per call", "ESS per CPU s, 1st call",
              "ESS per CPU s, 2nd call", "ratio 1st call", "ratio 2nd call"]
PROFILE_HEADER = ["setup", "sampler", "grad ms (1 pos.)", "grad ms (vmapped)", "steps/draw mean",
                  "steps/draw max over chains", "step size", "predicted CPU s of the draws", "CPU s per call",
                  "XLA compilations per call", "longest XLA compilations (1st call)"]

LEGEND = (
    "Each sampler is called {calls} per setup with different keys, the calls interleaved across samplers. The "
    "1st call is the first in the process: it includes tracing and XLA compilation; the 2nd shows what a further "
    "call costs (the peer's jitted function is built once; ssmppl's `sample_posterior` caches its compiled sampler "
    "by model, settings and shapes, so its 2nd call compiles nothing). time = wall seconds of the call; compile = seconds inside it spent tracing, lowering "
    "and compiling (union of JAX's monitoring time spans). ESS = minimum over the 6 sampled scalars (F[0,0..1,1], "
    "q, r) of ArviZ's bulk ESS of that call's chains. ESS/s = ESS / wall time; 'excl. compile' = total ESS / "
    "total (time - compile). ratio = ssmppl ESS/s / peer ESS/s: > 1 means ssmppl is faster; one run's ESS varies "
    "by 10-20%, so ratios within that of 1 are ties. steps/draw = mean post-warmup leapfrog steps per draw; div. "
    "= post-warmup divergences per call. All samplers: diagonal mass matrix, target acceptance 0.8, max tree "
    "depth 10, chains vectorized on one device; peer initial points: {init}.")
CPU_LEGEND = (
    "The same calls per CPU second of this process (`time.process_time`): other processes on a shared core "
    "stretch wall times unevenly but hardly change the CPU seconds a call needs, so these ratios are the "
    "steadier ones there. On an idle core the two agree.")
PROFILE_LEGEND = (
    "grad ms = best CPU milliseconds of one jitted value-and-gradient of the log density (ssmppl: "
    "`-potential_energy` of `marginalize(model, Kalman())`, what both ssmppl backends differentiate; peer: its "
    "logprob) at uniform(-2, 2) unconstrained points, for one position and for all chains' positions under "
    "`vmap`. Vectorized chains run each NUTS iteration until the longest trajectory among them ends, so "
    "'predicted CPU s of the draws' = draws x (mean over iterations of the max over chains of leapfrog steps) x "
    "vmapped gradient (last call). XLA compilations = number inside each call; the longest are named.")


def _rates(r):
    first = r.outputs[0]["min_ess"] / r.calls[0].wall
    second = r.outputs[1]["min_ess"] / r.calls[1].wall if len(r.calls) > 1 else None
    excl = sum(o["min_ess"] for o in r.outputs) / sum(c.wall - c.compile for c in r.calls)
    return [first, second, excl], [o["min_ess"] / c.cpu for o, c in zip(r.outputs, r.calls)][:2] + [None] * (
        2 - min(2, len(r.calls)))


def tables(done, args, report):
    rows, cpu_rows, profile = [], [], []
    f = lambda x: "—" if x is None else f"{x:.2f}"  # noqa: E731
    for s in done:
        res = {x: r for x, r in s["res"].items() if r.ok and r.calls}
        peer = _rates(res["peer"]) if "peer" in res else None
        for x, r in res.items():
            wall, cpu = _rates(r)
            ratio = lambda ours, theirs: [("1" if a is not None else "—") if x == "peer" else  # noqa: E731
                                          ("n/a" if theirs is None else f(None if a is None or b is None else a / b))
                                          for a, b in zip(ours, theirs or ours)]
            c1, c2 = r.calls[0], r.calls[1] if len(r.calls) > 1 else None
            setup = f"seed003 (2×10, T={s['T']:,})"
            rows.append([setup, x, f"{s['C']}×({s['W']}+{s['D']})", f"{c1.wall:.1f}", f"{c1.compile:.1f}",
                         "—" if c2 is None else f"{c2.wall:.1f}", "—" if c2 is None else f"{c2.compile:.1f}",
                         " / ".join(f"{o['min_ess']:.0f}" for o in r.outputs), *map(f, wall),
                         *ratio(wall, peer and peer[0]), f"{np.mean([np.mean(o['n_steps']) for o in r.outputs]):.1f}",
                         " / ".join(str(int(np.sum(o["divergent"]))) for o in r.outputs),
                         f"{max(o['rhat'] for o in r.outputs):.3f}"])
            cpu_rows.append([setup, x, " / ".join(f"{c.cpu:.1f}" for c in r.calls),
                             " / ".join(f"{o['min_ess']:.0f}" for o in r.outputs), *map(f, cpu),
                             *ratio(cpu, peer and peer[1])])
        profile += s["profile"] or []
    calls = sorted({len(r.calls) for s in done for r in s["res"].values() if r.calls})
    init = ("NumPyro's default distribution, uniform(-2, 2) per unconstrained coordinate, as ssmppl's"
            if args.peer_init == "uniform" else "dynamax's `initialize()` values (F = 0.99 I, Q = R = 0.1 I)")
    report.table("ESS per second", HEADER, rows, LEGEND.format(
        calls=" or ".join({1: "once", 2: "twice"}.get(c, f"{c} times") for c in calls), init=init))
    report.table("ESS per CPU second", CPU_HEADER, cpu_rows, CPU_LEGEND)
    if profile:
        report.table("Profile", PROFILE_HEADER, profile, PROFILE_LEGEND)
    report.text("Per-scalar bulk ESS (last call)", "\n".join(
        f"- T={s['T']} {x}: " + ", ".join(f"{k} {v:.0f}" for k, v in r.outputs[-1]["ess"].items())
        for s in done for x, r in s["res"].items() if r.outputs))


def run(args, report):
    done = []
    for name in args.setups:
        s = run_setup(name, args, report)
        if s is None:
            break
        done.append(s)
        tables(done, args, report)
        report.case_done()
    return done
