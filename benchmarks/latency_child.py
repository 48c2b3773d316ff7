"""One fresh process of the ``latency`` suite: ``python benchmarks/latency_child.py SCENARIO IMPL SIZE``.

Run as a script (not ``-m``) so that ``import ssmppl`` finds whichever checkout ``PYTHONPATH``
names: the suite measures an older commit ("before") that way. Prints one JSON line:
{"stages": [{stage, wall, cpu, compiles, compile_s}], "values": {...}, "error": ...}.
A stage counts the XLA compilations inside it (JAX's backend-compile events) and the seconds of
tracing, lowering and compiling (union of JAX's compile spans).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback

T0_WALL, T0_CPU = time.perf_counter(), time.process_time()

import numpy as np  # noqa: E402

SPANS, COMPILES = [], [0]
STAGES, VALUES = [], {}


def _listen():
    import jax

    def span(event, start, end, **kwargs):
        if event.startswith("/jax/core/compile/"):
            SPANS.append((start, end))

    def duration(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            COMPILES[0] += 1

    jax.monitoring.register_event_time_span_listener(span)
    jax.monitoring.register_event_duration_secs_listener(duration)


def _union(spans):
    total, last = 0.0, -math.inf
    for a, b in sorted(spans):
        if b > last:
            total += b - max(a, last)
            last = b
    return total


def stage(name, fn):
    """Run ``fn()`` (its result blocked on) as one timed stage; returns its result."""
    import jax

    n0, s0 = COMPILES[0], len(SPANS)
    t0, c0 = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn())
    STAGES.append(dict(stage=name, wall=time.perf_counter() - t0, cpu=time.process_time() - c0,
                       compiles=COMPILES[0] - n0, compile_s=_union(SPANS[s0:])))
    return out


# ---------------------------------------------------------------------------------------------
# data: seed 003's model (2-d rotating state, 10 noisy channels), simulated in numpy
# ---------------------------------------------------------------------------------------------


def seed003_truth():
    import jax

    from ssmppl.demo import seed003_params

    return {k: np.asarray(v, np.float64) for k, v in seed003_params(jax.random.PRNGKey(0)).items()}


def simulate_lgssm(p, T, seed):
    rng = np.random.default_rng(seed)
    dz, dy = p["F"].shape[0], p["H"].shape[0]
    z = rng.multivariate_normal(p["initial_mean"], p["initial_cov"])
    Lq, Lr = np.linalg.cholesky(p["Q"]), np.linalg.cholesky(p["R"])
    ys = np.empty((T, dy))
    for t in range(T):
        z = p["F"] @ z + p["b"] + Lq @ rng.standard_normal(dz)
        ys[t] = p["H"] @ z + p["d"] + Lr @ rng.standard_normal(dy)
    return ys


def random_stable(dz, dy, seed):
    """A random model with spectral radius 0.95 (as the kalman suite's)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((dz, dz))
    F = 0.95 * A / np.max(np.abs(np.linalg.eigvals(A)))
    return dict(initial_mean=np.zeros(dz), initial_cov=np.eye(dz), F=F, b=np.zeros(dz), Q=0.1 * np.eye(dz),
                H=rng.standard_normal((dy, dz)), d=np.zeros(dy), R=0.5 * np.eye(dy))


def dynamax_params(p):
    """The peer's parameters: its initial state is z_1, the state that emits y_1."""
    import jax.numpy as jnp
    from dynamax.linear_gaussian_ssm.inference import (ParamsLGSSM, ParamsLGSSMDynamics, ParamsLGSSMEmissions,
                                                       ParamsLGSSMInitial)

    F = p["F"]
    m1, P1 = F @ p["initial_mean"] + p["b"], F @ p["initial_cov"] @ F.T + p["Q"]
    dz, dy = F.shape[0], p["H"].shape[0]
    a = jnp.asarray
    return ParamsLGSSM(initial=ParamsLGSSMInitial(mean=a(m1), cov=a(0.5 * (P1 + P1.T))),
                       dynamics=ParamsLGSSMDynamics(weights=a(F), bias=a(p["b"]), input_weights=a(np.zeros((dz, 0))),
                                                    cov=a(p["Q"])),
                       emissions=ParamsLGSSMEmissions(weights=a(p["H"]), bias=a(p["d"]),
                                                      input_weights=a(np.zeros((dy, 0))), cov=a(p["R"])))


def four_stages(call, data):
    """first call, the identical second call, new data of the same shape, a new length."""
    VALUES["first"] = float(np.ravel(np.asarray(stage("first call", lambda: call(data["y"]))))[0])
    stage("second identical call", lambda: call(data["y"]))
    stage("new data, same shape", lambda: call(data["y_new"]))
    stage("new length", lambda: call(data["y_long"]))


def lgssm_data(T):
    p = seed003_truth()
    return p, dict(y=simulate_lgssm(p, T, 1), y_new=simulate_lgssm(p, T, 2), y_long=simulate_lgssm(p, T + 20, 3))


# ---------------------------------------------------------------------------------------------
# scenarios: SCENARIOS[name][impl](size) runs the stages
# ---------------------------------------------------------------------------------------------


def loglik_ssmppl(T, parallel=False):
    import jax.numpy as jnp

    import ssmppl
    from ssmppl.models import linear_gaussian_ssm

    p, data = lgssm_data(T)
    ssm = ssmppl.SSM(linear_gaussian_ssm(2, 10))
    method = ssmppl.Kalman(parallel=parallel)
    params = {k: jnp.asarray(v) for k, v in p.items()}
    four_stages(lambda y: ssm.log_likelihood(params, jnp.asarray(y), method=method), data)


def loglik_dynamax(T, parallel=False):
    import jax
    import jax.numpy as jnp

    if parallel:
        from dynamax.linear_gaussian_ssm.parallel_inference import lgssm_filter
    else:
        from dynamax.linear_gaussian_ssm.inference import lgssm_filter

    p, data = lgssm_data(T)
    params = dynamax_params(p)
    f = jax.jit(lambda params, y: lgssm_filter(params, y).marginal_loglik)
    four_stages(lambda y: f(params, jnp.asarray(y)), data)


def float_params_ssmppl(T):
    """A loop over 8 values of a parameter given as Python floats (what the README does)."""
    import jax.numpy as jnp

    import ssmppl
    from ssmppl.models import local_level

    y = jnp.asarray(np.cumsum(np.random.default_rng(0).standard_normal(T)))
    ssm = ssmppl.SSM(local_level())
    sigmas = [0.5 + 0.1 * i for i in range(8)]
    stage("first value", lambda: ssm.log_likelihood({"sigma2_level": sigmas[0], "sigma2_obs": 1.0}, y))
    stage("7 more values", lambda: [ssm.log_likelihood({"sigma2_level": s, "sigma2_obs": 1.0}, y) for s in sigmas[1:]])


def sgd_setup(T):
    p, data = lgssm_data(T)
    start = random_stable(2, 10, 7)  # a starting point away from the truth
    start["H"] = p["H"]
    return start, data


def fit_sgd_ssmppl(T, epochs=200):
    import jax.numpy as jnp
    import optax

    import ssmppl
    from ssmppl.models import linear_gaussian_ssm

    start, data = sgd_setup(T)
    ssm = ssmppl.SSM(linear_gaussian_ssm(2, 10))
    params = {k: jnp.asarray(v) for k, v in start.items()}
    # a new optimiser object in every call, as a user re-running a cell makes
    four_stages(lambda y: ssm.fit_sgd(params, jnp.asarray(y), optimizer=optax.adam(1e-2), num_epochs=epochs,
                                      progress_bar=False)[1][-1], data)


def fit_sgd_dynamax(T, epochs=200):
    import jax.numpy as jnp
    import optax
    from dynamax.linear_gaussian_ssm import LinearGaussianSSM

    start, data = sgd_setup(T)
    model = LinearGaussianSSM(2, 10)
    _, props = model.initialize(__import__("jax").random.PRNGKey(0))
    params = dynamax_params(start)
    four_stages(lambda y: model.fit_sgd(params, props, jnp.asarray(y)[None], optimizer=optax.adam(1e-2),
                                        num_epochs=epochs)[1][-1], data)


def em_setup(T):
    p = random_stable(13, 1, 13)
    data = dict(y=simulate_lgssm(p, T, 1), y_new=simulate_lgssm(p, T, 2), y_long=simulate_lgssm(p, T + 20, 3))
    return random_stable(13, 1, 14), data


def fit_em_ssmppl(T, iters=50):
    import jax.numpy as jnp

    import ssmppl
    from ssmppl.models import linear_gaussian_ssm

    start, data = em_setup(T)
    ssm = ssmppl.SSM(linear_gaussian_ssm(13, 1))
    params = {k: jnp.asarray(v) for k, v in start.items()}
    four_stages(lambda y: ssm.fit_em(params, jnp.asarray(y), num_iters=iters, progress_bar=False)[1][-1], data)


def fit_em_dynamax(T, iters=50):
    import jax.numpy as jnp
    from dynamax.linear_gaussian_ssm import LinearGaussianSSM

    start, data = em_setup(T)
    model = LinearGaussianSSM(13, 1)
    _, props = model.initialize(__import__("jax").random.PRNGKey(0))
    params = dynamax_params(start)
    four_stages(lambda y: model.fit_em(params, props, jnp.asarray(y)[None], num_iters=iters, verbose=False)[1][-1],
                data)


# --short (the parent sets LATENCY_SHORT): a quick check of the suite, not a measurement
NUTS_SIZES = (dict(num_warmup=50, num_samples=50, num_chains=2) if os.environ.get("LATENCY_SHORT")
              else dict(num_warmup=500, num_samples=500, num_chains=4))


def nuts_setup(T):
    import jax.numpy as jnp

    from ssmppl.demo import seed003_bayesian_model

    p, data = lgssm_data(T)
    return seed003_bayesian_model(jnp.asarray(p["H"])), data


def sample_posterior_ssmppl(T):
    import jax
    import jax.numpy as jnp

    import ssmppl

    model, data = nuts_setup(T)
    ssm = ssmppl.SSM(model)
    posts = {}

    def run(y, key):
        posts["last"] = ssm.sample_posterior(key, jnp.asarray(y), progress_bar=False, **NUTS_SIZES)
        return posts["last"].samples["q"]

    VALUES["q_mean"] = float(np.mean(stage("first call", lambda: run(data["y"], jax.random.PRNGKey(0)))))
    stage("second identical call", lambda: run(data["y"], jax.random.PRNGKey(0)))
    stage("new data, same shape", lambda: run(data["y_new"], jax.random.PRNGKey(1)))
    first = posts["last"]
    stage("to_arviz, first", lambda: first.to_arviz().posterior["q"].values)
    run(data["y"], jax.random.PRNGKey(2))  # a new posterior of the same shape (untimed)
    stage("to_arviz, new posterior", lambda: posts["last"].to_arviz().posterior["q"].values)
    stage("new length", lambda: run(data["y_long"], jax.random.PRNGKey(0)))


def sample_posterior_numpyro(T):
    """NumPyro's own MCMC(NUTS) on the Kalman-marginalised model (ssmppl.marginalize)."""
    import jax
    import jax.numpy as jnp
    from numpyro.infer import MCMC, NUTS

    import ssmppl

    model, data = nuts_setup(T)
    marginal = ssmppl.marginalize(model)

    def run(y, key):
        mcmc = MCMC(NUTS(marginal), num_warmup=NUTS_SIZES["num_warmup"], num_samples=NUTS_SIZES["num_samples"],
                    num_chains=NUTS_SIZES["num_chains"], chain_method="vectorized", progress_bar=False)
        mcmc.run(key, y=jnp.asarray(y))
        return mcmc.get_samples()["q"]

    VALUES["q_mean"] = float(np.mean(stage("first call", lambda: run(data["y"], jax.random.PRNGKey(0)))))
    stage("second identical call", lambda: run(data["y"], jax.random.PRNGKey(0)))
    stage("new data, same shape", lambda: run(data["y_new"], jax.random.PRNGKey(1)))
    stage("new length", lambda: run(data["y_long"], jax.random.PRNGKey(0)))


def nile():
    from statsmodels.datasets import nile as nile_data

    return np.asarray(nile_data.load_pandas().data["volume"], np.float64)


NILE_START = {"sigma2_level": 1600.0, "sigma2_obs": 14400.0}  # statsmodels starts from its own guess
NILE_KAPPA = 1e7  # ssmppl's initial level variance (statsmodels: exact diffuse)


def nile_stages(fit):
    y = nile()
    VALUES["variances"] = [float(v) for v in stage("first call", lambda: fit(y))]  # (obs, level)
    stage("second identical call", lambda: fit(y))
    stage("new data, same shape", lambda: fit(y[::-1].copy()))
    stage("new length", lambda: fit(y[:80]))


def nile_mle_ssmppl(_):
    import jax.numpy as jnp

    import ssmppl
    from ssmppl.models import local_level

    ssm = ssmppl.SSM(local_level(initial_variance=NILE_KAPPA))
    if not hasattr(ssm, "fit_mle"):
        raise NotImplementedError("this ssmppl has no fit_mle")

    def fit(y):
        p = ssm.fit_mle(dict(NILE_START), jnp.asarray(y)).params
        return jnp.stack([p["sigma2_obs"], p["sigma2_level"]])

    nile_stages(fit)


def nile_em_ssmppl(_, iters=600, **options):
    import jax.numpy as jnp

    import ssmppl
    from ssmppl.models import local_level

    ssm = ssmppl.SSM(local_level(initial_variance=NILE_KAPPA))

    def fit(y):
        p = ssm.fit_em(dict(NILE_START), jnp.asarray(y), num_iters=iters, progress_bar=False, **options)[0]
        return jnp.stack([p["sigma2_obs"], p["sigma2_level"]])

    nile_stages(fit)


def nile_statsmodels(_):
    import statsmodels.api as sm

    def fit(y):
        res = sm.tsa.UnobservedComponents(y, "llevel").fit(disp=False)
        return np.asarray([res.params[0], res.params[1]])  # sigma2.irregular, sigma2.level

    nile_stages(fit)


SCENARIOS = {
    "log_likelihood": {"ssmppl": loglik_ssmppl, "dynamax": loglik_dynamax},
    "log_likelihood parallel": {"ssmppl": lambda T: loglik_ssmppl(T, True),
                                "dynamax": lambda T: loglik_dynamax(T, True)},
    "float params": {"ssmppl": float_params_ssmppl},
    "fit_sgd": {"ssmppl": fit_sgd_ssmppl, "dynamax": fit_sgd_dynamax},
    "fit_em": {"ssmppl": fit_em_ssmppl, "dynamax": fit_em_dynamax},
    "sample_posterior": {"ssmppl": sample_posterior_ssmppl, "numpyro": sample_posterior_numpyro},
    "Nile fit": {"ssmppl fit_mle": nile_mle_ssmppl, "ssmppl fit_em": nile_em_ssmppl,
                 # 20 SQUAREM cycles (60 E-steps) reach the MLE that 600 plain EM iterations do
                 "ssmppl fit_em squarem": lambda T: nile_em_ssmppl(T, iters=20, acceleration="squarem"),
                 "statsmodels": nile_statsmodels},
}


def main():
    scenario, impl, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    error = None
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        _listen()
        import ssmppl  # noqa: F401

        VALUES["ssmppl_path"] = os.path.dirname(ssmppl.__file__)
        STAGES.append(dict(stage="start-up (imports)", wall=time.perf_counter() - T0_WALL,
                           cpu=time.process_time() - T0_CPU, compiles=0, compile_s=0.0))
        SCENARIOS[scenario][impl](size)
    except Exception as e:  # reported in the table, not a crash of the suite
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        traceback.print_exc()
    print(json.dumps(dict(stages=STAGES, values=VALUES, error=error)), flush=True)


if __name__ == "__main__":
    main()
