"""The EnSF reference benchmark (Bao, Zhang & Zhang 2024), reduced in dimension, through the model interface.

Set-up (the reference code's L96 runs, without its random "shocks" to the truth):
  Lorenz-96, F = 8, RK4 dt = 0.01; y = arctan(x) + N(0, sigma^2) of every component every 10
  model steps; 150 analyses; ensemble N = 20 starting from N(0, I) (the model's z0 with
  initial_mean 0, initial_scale 1); EnSF with 500 Euler-Maruyama steps, (eps_alpha, eps_beta)
  = (0.5, 0.025), the paired prior score (as the reference runs); sigma in {0.05, 0.1}.
  The truth starts on the attractor as in the reference's data/gen_state_init: 3 N(0, I) run
  for 1,000 RK4 steps of 0.01. (The reference observes after model steps 0, 10, 20, ...; here
  after steps 10, 20, ...: the model emits after each 10-step transition.)
Sparse observations (``--sparse``; seed 001's point): only components 0, k, 2k, ... observed,
EnSF only, first dim and sigma; the RMSE over the unobserved components shows what the
likelihood score cannot reach (it is zero there; only the dynamics carry the information).

Score: RMSE of the analysis mean at the final (150th) analysis, mean over replicates (truth,
observation noise and filter keys all from the replicate's seed). The reference code reports
0.204 (sigma = 0.05) and 0.484 (sigma = 0.1) at d = 10^6, mean of 10 replicates; per-component
RMSE barely depends on d. LETKF and ETKF (``EnKF``) run on the same truth and observations.

    python benchmarks/ensf.py                  # d = 1,000 (5 replicates) and 10,000 (10), both sigmas
    python benchmarks/ensf.py --short          # d = 200, 30 analyses, 1 replicate (the tests)
    python benchmarks/ensf.py --dims 1000 --reps 10
    python benchmarks/ensf.py --dims 1000 --reps 2 --sigmas 0.05 --methods --sparse 2 4 8 --timing-dim 0
        # sparse observations only (seed 001): every k-th component observed
    python benchmarks/ensf.py --dims 1000 --reps 2 --letkf-sweep    # the LETKF's inflation x radius

Timing (``--timing-dim``, default 10^4): one analysis (500 reverse steps, N = 20) jitted,
after compilation, against a plain NumPy implementation of the same update (analytic arctan
likelihood score, float32), and one full cycle through ``ssm.filter``. One CPU core by default.
The achieved bandwidth counts the floor's traffic, 3 N d float32 words per reverse step (read
the members and the samples, write the samples). On a GPU, d = 10^6:
    python benchmarks/ensf.py --dims 1000 --reps 1 --sigmas 0.05 --methods EnSF --sparse \
        --timing-dim 1000000 --no-numpy
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# The tests import this file: keep its folder off sys.path afterwards (a script there must never shadow an
# installed library).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
try:
    from _common import pin_cpus  # noqa: E402
finally:
    sys.path.remove(_HERE)

REFERENCE = {0.05: 0.204, 0.1: 0.484}  # the reference code's final-step RMSE at d = 10^6
DT, STEPS_PER_OBS, SPIN_UP = 0.01, 10, 1000


def model_for(dim, sigma, every=1):
    from ssmppl.models import lorenz96

    return lorenz96(dim=dim, forcing=8.0, dt=DT, steps_per_obs=STEPS_PER_OBS, obs_noise=sigma, operator="arctan",
                    every=every, initial_mean=0.0, initial_scale=1.0)


def truth_and_observations(seed, dim, sigma, cycles, every=1):
    """(truth (T, d), observations (T, ceil(d / every)) of components 0, every, ...), the truth started on
    the attractor. The same seed gives the same truth for every ``every``."""
    import jax
    import jax.numpy as jnp

    from ssmppl.models.lorenz import integrate, lorenz96_vector_field

    f = lambda x: lorenz96_vector_field(x, 8.0)  # noqa: E731

    @jax.jit
    def simulate(key):
        k0, k_obs = jax.random.split(key)
        x0 = integrate(f, 3.0 * jax.random.normal(k0, (dim,)), DT, SPIN_UP)

        def step(x, _):
            x = integrate(f, x, DT, STEPS_PER_OBS)
            return x, x

        _, xs = jax.lax.scan(step, x0, None, length=cycles)
        return xs, (jnp.arctan(xs) + sigma * jax.random.normal(k_obs, xs.shape))[:, ::every]

    return simulate(jax.random.PRNGKey(1000 + seed))


LETKF_INFLATION, LETKF_RADIUS = 1.1, 2.0  # the best of letkf_sweep at d = 1,000 for both sigmas (results_ensf_cpu.md)


def methods(dim, num_steps=500, letkf=None):
    """EnSF as the reference runs it; LETKF and ETKF with ``letkf = (inflation, radius)`` (default
    LETKF_INFLATION, LETKF_RADIUS, the best final RMSE of ``letkf_sweep`` at d = 1,000)."""
    from ssmppl import EnKF, EnSF, Localization

    inflation, radius = letkf or (LETKF_INFLATION, LETKF_RADIUS)
    return {
        "EnSF": EnSF(20, num_steps=num_steps, eps_alpha=0.5, eps_beta=0.025, score="paired"),
        "LETKF": EnKF(20, "letkf", inflation=inflation, localization=Localization.on_ring(radius, dim),
                      store_covariances=False),
        "ETKF": EnKF(20, "etkf", inflation=inflation, store_covariances=False),
    }


def letkf_sweep(dim, sigmas, cycles, reps, inflations=(1.02, 1.05, 1.1, 1.2, 1.4), radii=(2.0, 4.0, 8.0)):
    """Final-step RMSE of the LETKF (mean over ``reps`` seeds) on the benchmark's set-up for each
    (inflation, radius): {(sigma, inflation, radius): rmse}."""
    import numpy as np

    out = {}
    for sigma in sigmas:
        for inflation in inflations:
            for radius in radii:
                finals = [run_one("LETKF", dim, sigma, cycles, seed, letkf=(inflation, radius))[0][-1]
                          for seed in range(reps)]
                out[(sigma, inflation, radius)] = float(np.mean(finals))
                print(f"LETKF d={dim} sigma={sigma} inflation={inflation} radius={radius}: final RMSE "
                      f"{np.mean(finals):.3f} ({np.array2string(np.array(finals), precision=3)})", flush=True)
    return out


def run_one(name, dim, sigma, cycles, seed, num_steps=500, every=1, letkf=None):
    """Analysis RMSE per cycle (T,) and seconds for the whole run (compilation included); with
    ``every`` > 1 also the RMSE over the unobserved components only."""
    import jax
    import numpy as np

    from ssmppl import SSM
    from ssmppl.diagnostics import rmse

    truth, y = truth_and_observations(seed, dim, sigma, cycles, every)
    method = methods(dim, num_steps, letkf)[name]
    start = time.perf_counter()
    hidden = np.ones(dim, bool)
    hidden[::every] = False
    try:
        res = SSM(model_for(dim, sigma, every)).filter(None, y, method=method, key=jax.random.PRNGKey(seed))
        err = np.asarray(rmse(res.filtered_means, truth))
        err_hidden = np.asarray(rmse(res.filtered_means[:, hidden], truth[:, hidden])) if every > 1 else None
    except ValueError as error:  # a diverged EnKF is refused with an explanation
        print(f"    {name}: {str(error)[:100]}...")
        err = np.full(cycles, np.nan)
        err_hidden = None
    if every > 1:
        return err, err_hidden, time.perf_counter() - start
    return err, time.perf_counter() - start


# -- the same analysis in plain NumPy, for the speed ratio ------------------------------------------

def numpy_analysis(X, y, sigma, num_steps, eps_alpha, eps_beta, rng):
    """EnSF analysis (paired score, arctan likelihood score by hand), float32, as in the module."""
    import numpy as np

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


def model_xla_arctan(dim, sigma):
    """The benchmark's model written by hand with XLA's own ``jnp.arctan`` as the observation operator
    (``lorenz96(operator="arctan")`` uses ``ssmppl.models.lorenz.arctan``, which vectorises on CPU)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.control_flow import scan

    from ssmppl.models.lorenz import integrate, lorenz96_vector_field

    def model(y=None, T=None):
        def step(z_prev, y_t):
            z = numpyro.sample("z", dist.Delta(integrate(lambda x: lorenz96_vector_field(x, 8.0), z_prev, DT,
                                                         STEPS_PER_OBS), event_dim=1))
            numpyro.sample("y", dist.Normal(jnp.arctan(z), sigma).to_event(1), obs=y_t)
            return z, None

        z0 = numpyro.sample("z0", dist.Normal(jnp.zeros(dim), 1.0).to_event(1))
        scan(step, z0, y, length=T)

    return model


def timing(dim, sigma=0.05, num_steps=500, repeats=3, xla_arctan=False, with_numpy=True):
    """Seconds per analysis: jitted JAX (through the model's emission) and NumPy (None without); and per
    full cycle."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ssmppl import SSM
    from ssmppl.inference.score_filter import likelihood_score, reverse_sde

    ssm = SSM(model_xla_arctan(dim, sigma) if xla_arctan else model_for(dim, sigma))
    truth, y = truth_and_observations(0, dim, sigma, 2)
    X = (truth[0] + jax.random.normal(jax.random.PRNGKey(1), (20, dim))).astype(jnp.float32)

    @jax.jit
    def analysis(X, y_t, key):
        problem = ssm.state_space(None, y[:1])
        return reverse_sde(key, X, lambda Z: likelihood_score(problem, Z, None, y_t), num_steps, 0.5, 0.025)

    analysis(X, y[0], jax.random.PRNGKey(0)).block_until_ready()
    t_jax = []
    for r in range(repeats):
        start = time.perf_counter()
        analysis(X, y[0], jax.random.PRNGKey(r)).block_until_ready()
        t_jax.append(time.perf_counter() - start)
    t_np = None
    if with_numpy:
        Xn, yn = np.asarray(X), np.asarray(y[0])
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        numpy_analysis(Xn, yn, sigma, num_steps, 0.5, 0.025, rng)
        t_np = time.perf_counter() - start
    # a full cycle (forecast + analysis) through ssm.filter: two runs of T = 1 and T = 3, difference / 2
    from ssmppl import EnSF

    method = EnSF(20, num_steps=num_steps)
    per = {}
    for T in (1, 3):
        _, yT = truth_and_observations(0, dim, sigma, T)
        ssm.filter(None, yT, method=method, key=jax.random.PRNGKey(0)).filtered_means.block_until_ready()
        start = time.perf_counter()
        ssm.filter(None, yT, method=method, key=jax.random.PRNGKey(1)).filtered_means.block_until_ready()
        per[T] = time.perf_counter() - start
    return min(t_jax), t_np, (per[3] - per[1]) / 2


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--dims", type=int, nargs="+", default=None)
    parser.add_argument("--reps", type=int, nargs="+", default=None, help="replicates per dim")
    parser.add_argument("--cycles", type=int, default=None)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--methods", nargs="*", default=["EnSF", "LETKF", "ETKF"])
    parser.add_argument("--timing-dim", type=int, default=None, help="0: no timing")
    parser.add_argument("--sparse", type=int, nargs="*", default=None,
                        help="EnSF with every k-th component observed, for these k (default 2 4 8; none in --short)")
    parser.add_argument("--letkf-sweep", action="store_true",
                        help="only the LETKF inflation x radius sweep, at the first dim")
    parser.add_argument("--no-numpy", action="store_true", help="time JAX only (d = 10^6 on a GPU)")
    parser.add_argument("--cpus", type=int, default=1)
    args = parser.parse_args(argv)
    allowed, used = pin_cpus(args.cpus)
    import numpy as np

    if args.short:
        dims, reps, cycles, timing_dim = args.dims or [200], args.reps or [1], args.cycles or 30, args.timing_dim or 0
    else:
        dims, reps = args.dims or [1000, 10000], args.reps or [5, 10]
        cycles = args.cycles or 150
        timing_dim = 10000 if args.timing_dim is None else args.timing_dim
    reps = reps + [reps[-1]] * (len(dims) - len(reps))
    if args.letkf_sweep:
        return letkf_sweep(dims[0], args.sigmas, cycles, reps[0])
    results = {}
    print(f"cores {used} of {allowed}; {cycles} analyses; final-step analysis RMSE (mean over replicates)")
    for dim, nrep in zip(dims, reps):
        for sigma in args.sigmas:
            for name in args.methods:
                finals, secs, curves = [], [], []
                for seed in range(nrep):
                    err, sec = run_one(name, dim, sigma, cycles, seed)
                    finals.append(err[-1])
                    secs.append(sec)
                    curves.append(err)
                finals = np.array(finals)
                results[(dim, sigma, name)] = dict(final=finals, curve=np.mean(curves, 0), seconds=secs)
                ref = REFERENCE.get(sigma)
                print(f"d={dim:>6} sigma={sigma:<5} {name:<6} final RMSE {np.nanmean(finals):.3f} "
                      f"(replicates {np.array2string(finals, precision=3)}; reference EnSF at d=1e6: {ref}) "
                      f"mean over last 50: {np.nanmean(np.mean(curves, 0)[-50:]):.3f}; {np.mean(secs):.1f} s/run",
                      flush=True)
    sparse = ([] if args.short else [2, 4, 8]) if args.sparse is None else args.sparse
    for k in sparse:
        dim, nrep, sigma = dims[0], reps[0], args.sigmas[0]
        finals, hidden = [], []
        for seed in range(nrep):
            err, err_hidden, _ = run_one("EnSF", dim, sigma, cycles, seed, every=k)
            finals.append(err[-1])
            hidden.append(err_hidden[-1])
        results[(dim, sigma, "EnSF", k)] = dict(final=np.array(finals), hidden=np.array(hidden))
        print(f"d={dim:>6} sigma={sigma:<5} EnSF every {k}: final RMSE {np.mean(finals):.3f} (unobserved "
              f"components {np.mean(hidden):.3f}; replicates {np.array2string(np.array(finals), precision=3)})",
              flush=True)
    if timing_dim:
        import jax

        device = jax.devices()[0].device_kind
        for xla in (False, True):
            t_jax, t_np, t_cycle = timing(timing_dim, xla_arctan=xla, with_numpy=not args.no_numpy)
            label = "jnp.arctan (model_xla_arctan)" if xla else "lorenz96(operator='arctan')"
            # the floor: each reverse step reads the members and the samples and writes the samples (float32)
            gbps = 3 * 20 * timing_dim * 4 * 500 / t_jax / 1e9
            numpy_part = "" if t_np is None else (f", NumPy {1e3 * t_np:.0f} ms/analysis (NumPy/JAX "
                                                  f"{t_np / t_jax:.2f}x)")
            print(f"timing on {device}, d={timing_dim}, N=20, 500 steps, {label}: JAX {1e3 * t_jax:.0f} ms/analysis "
                  f"({gbps:.0f} GB/s of the 3 N d words per step){numpy_part}; full cycle through ssm.filter "
                  f"{1e3 * t_cycle:.0f} ms", flush=True)
            results["timing_xla_arctan" if xla else "timing"] = dict(jax=t_jax, numpy=t_np, cycle=t_cycle, gbps=gbps)
    return results


if __name__ == "__main__":
    main()
