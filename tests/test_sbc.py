"""Simulation-based calibration (Talts et al. 2018, arXiv:1804.06788) of the Bayesian stack (float64, slow).

If theta ~ p(theta), z, y ~ p(z, y | theta) and theta_1..theta_L are independent
draws of p(theta | y), the rank of the true theta among the draws is uniform on
{0, ..., L}, for every scalar function of theta, and the same holds for a latent
state z_t among the path draws z^(l) ~ p(z | y, theta_l). Any error in the log
density NUTS sees (the Kalman marginal likelihood of ``ssmppl.marginalize``), in
the sampler or in forward filtering, backward sampling (``Kalman().sample_states``)
shows up as non-uniform ranks.

Model: 1-d AR(1) state observed in noise, T = 25, priors on the AR coefficient
phi, log q (state noise scale) and log r (observation noise scale). Truths are
simulated by NumPyro's ``Predictive`` on the model itself (no ssmppl code), the
posterior is sampled by NUTS (blackjax window adaptation, then NUTS) on the log
density NumPyro derives from ``sampler_model(..., Kalman())`` (the model
``ssm.sample_posterior`` runs), with the data as an argument, so one compiled
function, vmapped over replications, runs them all (``ssm.sample_posterior``
would recompile per replication). Each chain keeps every ``THIN``-th draw, L =
``NUM_DRAWS`` draws, nearly independent (checked: lag-1 autocorrelation); each
kept draw gets one FFBS path from ``Posterior.sample_states`` (``Kalman().sample_states``).

Uniformity: Pearson chi-square test over ``NUM_BINS`` equal bins of the ranks of
each of the five quantities (phi, log_q, log_r, z_1, z_T) over ``NUM_REPS``
replications, each at level ``FAMILY_ALPHA / 5`` (Bonferroni): a correct
implementation fails the test with probability at most ``FAMILY_ALPHA`` = 1 %.
The seeds are fixed, so the outcome is deterministic.

Power: ``NUM_POWER_REPS`` extra replications, in the same compiled run, infer
with the observation noise scale doubled (``noise_factor=2``) from data simulated
with the right one; at the same Bonferroni level the ranks of log_r must fail.
A cheaper test with high power on the path sampler alone conditions FFBS on the
true parameters (no NUTS).

Cost: one compilation (~20 s) and ~0.33 s of CPU per replication, about 2.5 min
in all on one core.
"""

import functools

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax import lax
from numpyro.contrib.control_flow import scan
from numpyro.infer import Predictive
from numpyro.infer.util import initialize_model
from scipy import stats

from ssmppl import SSM, Kalman
from ssmppl.bayes import Posterior
from ssmppl.bayes.model_setup import sampler_model, sampler_setup

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("x64_module")]

T = 25
NUM_REPS = 200  # calibrated replications
NUM_POWER_REPS = 24  # replications with a mis-specified likelihood (the power check)
NUM_WARMUP = 250
NUM_DRAWS = 49  # L: kept draws per replication, ranks in {0, ..., L}
THIN = 6
NUM_BINS = 10  # (L + 1) / NUM_BINS ranks per bin
PARAMS = ("phi", "log_q", "log_r")
STATE_TIMES = (0, T - 1)  # z_1 (end of the backward pass) and z_T (the filtered draw it starts from)
QUANTITIES = PARAMS + tuple(f"z_{t + 1}" for t in STATE_TIMES)
FAMILY_ALPHA = 0.01
ALPHA = FAMILY_ALPHA / len(QUANTITIES)  # Bonferroni


def ar1(y=None, T=None, noise_factor=1.0):
    """z_t = phi z_{t-1} + q eps_t, y_t = z_t + noise_factor * r nu_t; noise_factor != 1 mis-specifies."""
    phi = numpyro.sample("phi", dist.Uniform(-0.9, 0.9))
    log_q = numpyro.sample("log_q", dist.Normal(-1.0, 0.5))
    log_r = numpyro.sample("log_r", dist.Normal(-1.0, 0.5))
    z0 = numpyro.sample("z0", dist.Normal(0.0, 1.0))

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(phi * z_prev, jnp.exp(log_q)))
        numpyro.sample("y", dist.Normal(z, noise_factor * jnp.exp(log_r)), obs=y_t)
        return z, None

    scan(step, z0, y, length=T)


def ranks(truth, draws):
    """Rank of each truth (R,) among its draws (R, L): the number of draws below it."""
    return np.sum(np.asarray(draws) < np.asarray(truth)[:, None], axis=1)


def uniformity_pvalue(r):
    """Pearson chi-square p-value of ranks in {0..L} against the uniform, over NUM_BINS equal bins."""
    assert (NUM_DRAWS + 1) % NUM_BINS == 0
    counts = np.bincount(np.asarray(r) * NUM_BINS // (NUM_DRAWS + 1), minlength=NUM_BINS)
    return stats.chisquare(counts).pvalue, counts


def _replicate(potential_gen, postprocess_gen, shapes, ssm, fixed, key, path_key, y, noise_factor):
    """One replication: NUTS on the marginal model given y, thinned; one FFBS path per kept draw."""
    k_init, k_warm, k_draw = jax.random.split(key, 3)
    potential = potential_gen(y, noise_factor=noise_factor)
    logdensity = lambda u: -potential(u)
    leaves, treedef = jax.tree.flatten(shapes)
    init_keys = jax.random.split(k_init, len(leaves))
    # NumPyro's init_to_uniform: uniform on (-2, 2) in the unconstrained space.
    position = jax.tree.unflatten(treedef, [jax.random.uniform(k, jnp.shape(x), minval=-2.0, maxval=2.0)
                                            for k, x in zip(init_keys, leaves)])
    (state, tuned), _ = blackjax.window_adaptation(blackjax.nuts, logdensity).run(k_warm, position,
                                                                                   num_steps=NUM_WARMUP)
    kernel = blackjax.nuts(logdensity, **tuned).step

    def kept_draw(state, k):
        def one_step(s, kk):
            s, info = kernel(kk, s)
            return s, info.is_divergent

        state, divergent = lax.scan(one_step, state, jax.random.split(k, THIN))
        return state, (state.position, jnp.sum(divergent))

    _, (unconstrained, divergent) = lax.scan(kept_draw, state, jax.random.split(k_draw, NUM_DRAWS))
    draws = jax.vmap(postprocess_gen(y, noise_factor=noise_factor))(unconstrained)
    draws = {n: draws[n] for n in PARAMS}

    posterior = Posterior(ssm=ssm, args=(y,), kwargs={"noise_factor": noise_factor},
                          samples={n: draws[n][None] for n in PARAMS}, sample_stats={}, fixed=fixed,
                          method=Kalman(), sampler="SBC")
    paths = posterior.sample_states(path_key)[0, :, :, 0]  # FFBS: one path per parameter draw
    return draws, paths, jnp.sum(divergent)


@pytest.fixture(scope="module")
def sbc(x64_module):
    """Truths, thinned posterior draws and FFBS paths for NUM_REPS + NUM_POWER_REPS replications."""
    n = NUM_REPS + NUM_POWER_REPS
    k_sim, k_init, k_nuts, k_paths = jax.random.split(jax.random.PRNGKey(20180418), 4)
    truth = Predictive(ar1, num_samples=n)(k_sim, T=T)  # noise_factor 1: the data are always right
    noise_factor = jnp.concatenate([jnp.ones(NUM_REPS), jnp.full(NUM_POWER_REPS, 2.0)])

    ssm = SSM(ar1)
    args, kwargs = (truth["y"][0],), {"noise_factor": jnp.asarray(1.0)}
    setup = sampler_setup(ssm, args, kwargs)
    model = sampler_model(ssm, setup, Kalman())  # the model ssm.sample_posterior(..., method=Kalman()) samples
    info = initialize_model(k_init, model, model_args=args, model_kwargs=kwargs, dynamic_args=True)
    replicate = functools.partial(_replicate, info.potential_fn, info.postprocess_fn, info.param_info.z, ssm,
                                  setup.fixed)
    draws, paths, divergent = jax.jit(jax.vmap(replicate))(jax.random.split(k_nuts, n), jax.random.split(k_paths, n),
                                                           truth["y"], noise_factor)

    rank = {n_: ranks(truth[n_], draws[n_]) for n_ in PARAMS}
    for t in STATE_TIMES:
        rank[f"z_{t + 1}"] = ranks(truth["z"][:, t], paths[:, :, t])
    return dict(draws=jax.tree.map(np.asarray, draws), divergent=np.asarray(divergent), rank=rank)


def test_ranks_are_uniform(sbc):
    calibrated = slice(0, NUM_REPS)
    results = {q: uniformity_pvalue(sbc["rank"][q][calibrated]) for q in QUANTITIES}
    report = "; ".join(f"{q}: p={p:.3g} counts={c.tolist()}" for q, (p, c) in results.items())
    # The ranks assume nearly independent draws and a sampler without divergences.
    divergent = sbc["divergent"][calibrated].sum() / (NUM_REPS * NUM_DRAWS * THIN)
    lag1 = {}
    for name in PARAMS:
        d = sbc["draws"][name][calibrated]
        d = d - d.mean(axis=1, keepdims=True)
        lag1[name] = np.mean(np.sum(d[:, 1:] * d[:, :-1], axis=1) / np.sum(d * d, axis=1))
    print(f"\nSBC over {NUM_REPS} replications (level {ALPHA:.3g} each): {report}\n"
          f"divergent transitions {divergent:.2%}, mean lag-1 autocorrelation of the kept draws "
          + ", ".join(f"{k} {v:.3f}" for k, v in lag1.items()))
    assert divergent < 1e-3, f"{divergent:.2%} of the NUTS transitions diverged"
    for name, value in lag1.items():
        assert value < 0.1, f"thinned draws of {name} are autocorrelated (mean lag-1 {value:.3f}): thin more"
    failed = [q for q, (p, _) in results.items() if p < ALPHA]
    assert not failed, f"non-uniform SBC ranks of {failed}: {report}"


def test_power_misspecified_observation_noise(sbc):
    """Inferring with the observation noise scale doubled must fail SBC (at the same Bonferroni level)."""
    wrong = slice(NUM_REPS, NUM_REPS + NUM_POWER_REPS)
    results = {q: uniformity_pvalue(sbc["rank"][q][wrong]) for q in QUANTITIES}
    report = "; ".join(f"{q}: p={p:.3g} counts={c.tolist()}" for q, (p, c) in results.items())
    print(f"\nSBC of the mis-specified model over {NUM_POWER_REPS} replications: {report}")
    p, counts = results["log_r"]
    assert p < ALPHA, f"SBC missed a doubled observation noise scale: {report}"
    # The posterior of log r shifts down to make up for the doubled scale: the true value ranks high.
    assert counts[NUM_BINS // 2:].sum() > 2 * counts[:NUM_BINS // 2].sum(), report


def test_ffbs_ranks_uniform_given_true_parameters():
    """FFBS alone, with high power: given the true parameters, the rank of every true z_t among
    Kalman().sample_states draws is uniform. 2000 replications, every t tested at level 1 % / T
    (Bonferroni over the T dependent tests)."""
    reps = 2000
    k_sim, k_paths = jax.random.split(jax.random.PRNGKey(2018), 2)
    truth = Predictive(ar1, num_samples=reps)(k_sim, T=T)
    ssm = SSM(ar1)

    def one(params, y, key):
        problem = ssm.state_space(params, y)
        return jax.vmap(lambda k: Kalman().sample_states(problem, k)[:, 0])(jax.random.split(key, NUM_DRAWS))

    paths = jax.jit(jax.vmap(one))({n: truth[n] for n in PARAMS}, truth["y"], jax.random.split(k_paths, reps))
    pvalues = np.array([uniformity_pvalue(ranks(truth["z"][:, t], paths[:, :, t]))[0] for t in range(T)])
    print(f"\nFFBS given the truth, {reps} replications: min p over t = {pvalues.min():.3g}")
    assert pvalues.min() >= FAMILY_ALPHA / T, np.round(pvalues, 4)
