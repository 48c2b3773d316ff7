"""learning: EM and SGD for a linear Gaussian SSM, ssmppl against dynamax.

Both libraries fit the same model to the same data in the same process:

  EM   ssmppl   SSM(linear_gaussian_ssm(dz, dy)).fit_em(params, ys, num_iters=N, progress_bar=False)
       dynamax  LinearGaussianSSM(dz, dy).fit_em(params, props, ys, num_iters=N, verbose=False)
  SGD  ssmppl   ssm.fit_sgd(params, ys, optimizer=optax.adam(1e-2), num_epochs=N, progress_bar=False)
       dynamax  model.fit_sgd(params, props, ys, optimizer=optax.adam(1e-2), num_epochs=N)

Setups: 'seed003' (dz = 2, dy = 10, T = 100; ``ssmppl.demo.seed003_params``) and '32x32'
(dz = dy = 32, T = 10,000, a random stable model). Both start from dynamax's ``initialize``
parameters; dynamax gets the moments of ssmppl's z_1 as its initial state, so both start from
the same distribution of the data. Check: the starting log-likelihoods agree (1e-6 relative).

Timing excludes compilation by a difference: dynamax jits a new function in every fit call,
ssmppl compiles once per distinct N. Each fit runs at N1 < N2 iterations (ssmppl untimed once at
each, dynamax once at N1), ``--reps`` interleaved rounds, best of the rounds; it/s =
(N2 - N1) / (t(N2) - t(N1)) and s/call = t(N1) - N1 / (it/s), the fixed cost of a call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssmppl import SSM
from ssmppl.demo import seed003_params
from ssmppl.models import linear_gaussian_ssm

from . import harness, peers
from .kalman import random_lgssm, shifted_initial

TITLE = "Parameter learning (EM, SGD): ssmppl vs dynamax"
PEERS = ("dynamax", "optax")
# Per setup: sizes and the (N1, N2) per operation and library. N2 - N1 makes the iterations take several
# seconds, above the jitter of dynamax's re-compilation; dynamax's seed003 SGD epochs (a Python loop) are
# 10x slower or more, so it runs fewer. N1 >= 2: XLA simplifies a one-iteration loop, which would compile
# differently and bias the difference.
SETUPS = {
    "seed003": dict(dz=2, dy=10, T=100, em={"ssmppl": (10, 3010), "dynamax": (10, 3010)},
                    sgd={"ssmppl": (5, 1005), "dynamax": (5, 105)}),
    "32x32": dict(dz=32, dy=32, T=10_000, em={"ssmppl": (2, 8), "dynamax": (2, 8)},
                  sgd={"ssmppl": (2, 8), "dynamax": (2, 8)}),
}
SHORT = dict(em={"ssmppl": (2, 12), "dynamax": (2, 12)}, sgd={"ssmppl": (2, 12), "dynamax": (2, 12)})
LIBS = ("ssmppl", "dynamax")
LR = 1e-2


def arguments(p):
    p.add_argument("--setups", nargs="+", choices=list(SETUPS), default=None, help="default both (--short: seed003)")
    p.add_argument("--ops", nargs="+", choices=["em", "sgd"], default=["em", "sgd"])
    p.add_argument("--reps", type=int, help="timed rounds (default 3; --short: 1)")


def problem(name, seed):
    """(ssm, ssmppl params, dynamax model, dynamax params, props, data)."""
    from dynamax.linear_gaussian_ssm import LinearGaussianSSM

    s = SETUPS[name]
    dz, dy, T = s["dz"], s["dy"], s["T"]
    k_true, k_data, k_init = jax.random.split(jax.random.PRNGKey(seed), 3)
    ssm = SSM(linear_gaussian_ssm(dz, dy))
    if name == "seed003":
        true = seed003_params(k_true)
    else:
        true = {k: jnp.asarray(v) for k, v in random_lgssm(np.random.default_rng([seed, dz, dy, T]), dz, dy).items()}
    _, ys = ssm.sample(k_data, true, T=T)
    ys = jax.block_until_ready(jnp.asarray(ys, jnp.float64))
    model = LinearGaussianSSM(dz, dy)
    dparams, props = model.initialize(k_init)
    sparams = dict(initial_mean=dparams.initial.mean, initial_cov=dparams.initial.cov, F=dparams.dynamics.weights,
                   b=dparams.dynamics.bias, Q=dparams.dynamics.cov, H=dparams.emissions.weights,
                   d=dparams.emissions.bias, R=dparams.emissions.cov)
    m1, P1 = shifted_initial(sparams)  # dynamax's initial state emits y_1
    dparams = dparams._replace(initial=dparams.initial._replace(mean=m1, cov=P1))
    return ssm, sparams, model, dparams, props, ys


def run_setup(name, args, report):
    peers.require("dynamax")
    ssm, sparams, model, dparams, props, ys = problem(name, args.seed)
    opt = optax.adam(LR)  # one optimiser object, reused: ssmppl caches its compiled fit per optimiser
    fit = {("em", "ssmppl"): lambda n: ssm.fit_em(sparams, ys, num_iters=n, progress_bar=False),
           ("em", "dynamax"): lambda n: model.fit_em(dparams, props, ys, num_iters=n, verbose=False),
           ("sgd", "ssmppl"): lambda n: ssm.fit_sgd(sparams, ys, optimizer=opt, num_epochs=n, progress_bar=False),
           ("sgd", "dynamax"): lambda n: model.fit_sgd(dparams, props, ys, optimizer=opt, num_epochs=n)}
    ll_dynamax = jax.jit(model.marginal_log_prob)
    exact = {"ssmppl": lambda p: float(ssm.log_likelihood(p, ys)), "dynamax": lambda p: float(ll_dynamax(p, ys))}
    rows = []
    for op in args.ops:
        ns = (SHORT if args.short else SETUPS[name])[op]
        # log p(y) per iteration: EM curves are log-likelihoods, SGD curves losses per observation
        to_ll = (lambda c: np.asarray(c)) if op == "em" else (lambda c: -np.asarray(c) * ys.size)
        impls = {f"{lib} N={ns[lib][i]}": (lambda f=fit[op, lib], n=ns[lib][i]: f(n)) for i in (0, 1) for lib in LIBS}

        def check(results):
            starts = [results.get(f"{lib} N={ns[lib][0]}") for lib in LIBS]
            if None in starts:
                return []
            a, b = (to_ll(r[1])[0] for r in starts)
            rel = abs(a - b) / abs(b)
            return [(None, rel < 1e-6, f"starting log-likelihood ssmppl {a:.12g}, "
                     f"dynamax {b:.12g} (relative difference {rel:.1e}; tolerance 1e-6)")]

        # untimed first calls: ssmppl compiles once per N; dynamax re-compiles in every call anyway, and one call
        # takes its one-off start-up costs out
        warm = {f"ssmppl N={n}" for n in ns["ssmppl"]} | {f"dynamax N={ns['dynamax'][0]}"}
        c = harness.Case(f"{name} {op.upper()}", impls, check, warm=warm)
        reps = args.reps or (1 if args.short else 3)
        res = harness.measure(c, args, report, min_reps=reps, max_reps=reps, min_time=0.0)
        K = min(ns[lib][1] for lib in LIBS)
        row = {}
        for lib in LIBS:
            (n1, n2), r1, r2 = ns[lib], res[f"{lib} N={ns[lib][0]}"], res[f"{lib} N={ns[lib][1]}"]
            if not (r1.ok and r2.ok):
                row[lib] = None
                continue
            per_iter = (r2.min - r1.min) / (n2 - n1)
            params, curve = r2.result
            curve = to_ll(curve)
            ll = exact[lib](params) if n2 == K else float(curve[K])  # the params after K updates either way
            row[lib] = dict(per_iter=per_iter, overhead=r1.min - n1 * per_iter, ns=(n1, n2), ll=ll, curve=curve,
                            times={n1: r1.times, n2: r2.times})
        if all(row.values()):
            a, b = row["ssmppl"]["curve"], row["dynamax"]["curve"]
            ks = [k for k in (1, 10, 100, 1000) if k < min(len(a), len(b))]
            report.check(True, f"{name} {op.upper()}: log-likelihood after k iterations (ssmppl / dynamax): "
                               + "; ".join(f"k={k}: {a[k]:.6f} / {b[k]:.6f}" for k in ks))
        rows.append((name, op, K, row))
    return rows


HEADER = ["setup", "op", "N1→N2", "ssmppl it/s", "dynamax it/s", "ssmppl/dynamax", "ssmppl s/call", "dynamax s/call",
          "K", "ssmppl loglik after K", "dynamax loglik after K", "rel. diff"]

LEGEND = (
    "it/s = iterations (EM) or epochs (SGD, one full-data gradient step each) per second, from the difference of "
    "the best-of-rounds wall times of fits with N2 and N1 iterations: (N2 - N1) / (t(N2) - t(N1)). This excludes "
    "compilation, which dynamax repeats in every call (`fit_em` / `fit_sgd` jit a new function each time) and "
    "ssmppl does once per distinct N (untimed first calls). ssmppl/dynamax = ratio of it/s: > 1 means ssmppl is "
    "faster. s/call = per-call overhead t(N1) - N1 / (it/s): dynamax's is mostly its re-compilation, ssmppl's its "
    "Python set-up; timing noise can make a small one negative. Calls interleaved across libraries and N. "
    "N1→N2: the fit lengths (ssmppl / dynamax where they differ). Loglik after K = log p(y) after K = the smaller "
    "N2 iterations: exact at the parameters a fit of K iterations returned, else entry K of the longer fit's curve "
    "(SGD: -loss x number of observations). Both start from the same distribution of the data but are "
    "parameterised differently (z_0 and T transitions vs z_1 and T-1; for SGD also the unconstrained covariance "
    "parameterisations), so after K iterations they are close, not identical. SGD: `optax.adam({lr:g})`, one "
    "optimiser object reused across calls.")


def table_rows(rows):
    out = []
    for name, op, K, r in rows:
        s, d = r["ssmppl"], r["dynamax"]
        if not (s and d):
            out.append([name, op, "failed"] + ["–"] * 9)
            continue
        rate = lambda x: "n/a" if not x > 0 else (f"{1 / x:,.0f}" if 1 / x >= 100 else f"{1 / x:.3g}")  # noqa: E731
        ns = f"{s['ns'][0]}→{s['ns'][1]}" + ("" if s["ns"] == d["ns"] else f" / {d['ns'][0]}→{d['ns'][1]}")
        su = SETUPS[name]
        out.append([f"{name} ({su['dz']}×{su['dy']}, T={su['T']:,})", "EM iterations" if op == "em" else "SGD epochs",
                    ns, rate(s["per_iter"]), rate(d["per_iter"]),
                    f"{d['per_iter'] / s['per_iter']:.2f}" if s["per_iter"] > 0 and d["per_iter"] > 0 else "n/a",
                    f"{s['overhead']:.2f}", f"{d['overhead']:.2f}", f"{K:,}", f"{s['ll']:.6f}", f"{d['ll']:.6f}",
                    f"{abs(s['ll'] - d['ll']) / abs(d['ll']):.1e}"])
    return out


def run(args, report):
    rows = []
    for name in args.setups or (["seed003"] if args.short else list(SETUPS)):
        rows += run_setup(name, args, report)
        report.table("EM and SGD fits", HEADER, table_rows(rows), LEGEND.format(lr=LR))
        report.text("Timed calls, wall seconds per round (the table uses the best of each)", "\n".join(
            f"- {name} {op.upper()} {lib}: " + "; ".join(f"N={n}: " + ", ".join(f"{t:.3f}" for t in ts)
                                                       for n, ts in r[lib]["times"].items())
            for name, op, _, r in rows for lib in LIBS if r[lib]))
        report.case_done()
    return rows
