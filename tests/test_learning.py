"""fit_em / fit_sgd: seed 003 reproduced, batches, frozen sites, generalised EM, MAP, bad input.

Oracles: the closed-form M-step against a numerical maximisation of the
expected log joint; EM's fixed point against the gradient of the Kalman
log-likelihood (a stationary point); EM on B copies of one sequence against EM
on the sequence; recovered parameters against the truth within standard errors
from the observed Fisher information; SGD's loss against log-densities computed
by hand.
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.contrib.control_flow import scan
from numpyro.distributions import constraints

from ssmppl import SSM
from ssmppl.demo import seed003_params
from ssmppl.models import linear_gaussian_ssm


@pytest.fixture(scope="module")
def seed003(x64_module):
    """The seed-003 setup: true parameters, T=100 emissions, a random initialisation."""
    k1, k2, _ = jax.random.split(jax.random.PRNGKey(0), 3)
    ssm = SSM(linear_gaussian_ssm(2, 10))
    true = seed003_params(k1)
    _, ys = ssm.sample(k2, true, T=100)
    init = ssm.init_params(jax.random.PRNGKey(42), ys)
    return ssm, true, ys, init


@pytest.fixture(scope="module")
def em_fit(x64_module, seed003):
    ssm, true, ys, init = seed003
    return ssm.fit_em(init, ys, num_iters=100, progress_bar=False)


def test_em_seed003_monotone_and_above_truth(x64, seed003, em_fit):
    ssm, true, ys, init = seed003
    params, lls = em_fit
    assert lls.shape == (100,)
    # Monotone up to round-off (each step changes the log-likelihood by >= 1e-6 of it or less).
    assert float(jnp.diff(lls).min()) > -1e-9 * abs(float(lls[-1]))
    assert float(lls[0]) == pytest.approx(float(ssm.log_likelihood(init, ys)), rel=1e-12)
    assert float(lls[-1]) > float(ssm.log_likelihood(true, ys))
    # The returned parameters come from one more M-step: better still.
    assert float(ssm.log_likelihood(params, ys)) >= float(lls[-1])


def test_squarem_closed_form_em_is_monotone_and_ahead_of_plain_em(x64, seed003, em_fit):
    """SQUAREM with the closed-form M-step (F, H, Q, R, ... with Q and R extrapolated through their
    Cholesky factors): monotone, and above plain EM for the same number of E-steps: 33 cycles (99
    E-steps) against 100 iterations. (Measured: -301.1183 against -301.1217; on this model's ridge of
    similar (F, H) pairs both are slow, SQUAREM by a small margin; on the Nile model, test_nile, it
    needs a tenth of the E-steps.)"""
    ssm, true, ys, init = seed003
    params, lls = ssm.fit_em(init, ys, num_iters=33, progress_bar=False, acceleration="squarem")
    assert float(jnp.diff(lls).min()) > -1e-9 * abs(float(lls[-1]))
    assert float(lls[0]) == pytest.approx(float(ssm.log_likelihood(init, ys)), rel=1e-12)
    _, plain_lls = em_fit
    assert float(ssm.log_likelihood(params, ys)) > float(plain_lls[-1])
    assert bool(jnp.all(jnp.linalg.eigvalsh(params["Q"]) > 0)) and bool(jnp.all(jnp.linalg.eigvalsh(params["R"]) > 0))


def _expected_log_joint_at(ssm, ys, start):
    """theta -> the EM objective E_q[log p(z, y | theta)], q the smoother at ``start``."""
    from ssmppl.learning.expected_log_joint import cubature_points, expected_log_joint

    smoothed = ssm.smooth(start, ys)
    points = cubature_points(smoothed, True)
    return lambda p: float(expected_log_joint(ssm.state_space(p, ys), points))


@pytest.mark.slow  # ~60 s: compiling exact Hessians of the generalised objective
def test_closed_form_mstep_is_the_maximiser(x64, seed003, em_fit):
    """One closed-form M-step maximises the expected log joint: a numerical maximiser
    (the generalised M-step, damped Newton) from the same E-step finds no higher value
    and lands on the same parameters."""
    ssm, _, ys, _ = seed003
    start = {**em_fit[0], "initial_cov": em_fit[0]["initial_cov"] + 0.1 * jnp.eye(2), "R": 1.2 * em_fit[0]["R"]}
    closed, _ = ssm.fit_em(start, ys, num_iters=1, progress_bar=False)
    general, _ = ssm.fit_em(start, ys, num_iters=1, progress_bar=False, m_step="generalised", m_step_iters=30)
    objective = _expected_log_joint_at(ssm, ys, start)
    q_start, q_closed, q_general = objective(start), objective(closed), objective(general)
    assert q_closed > q_start + 1.0
    assert q_general <= q_closed + 1e-9 * abs(q_closed)
    assert q_general == pytest.approx(q_closed, rel=1e-9)
    for k in closed:
        np.testing.assert_allclose(general[k], closed[k], atol=1e-6, rtol=1e-6, err_msg=k)


@pytest.mark.slow
def test_closed_form_and_generalised_em_same_optimum(x64, seed003, em_fit):
    """From the same point, both M-steps follow the same EM path to the same log-likelihood."""
    ssm, _, ys, _ = seed003
    start = em_fit[0]
    p_closed, lls_closed = ssm.fit_em(start, ys, num_iters=10, progress_bar=False)
    p_general, lls_general = ssm.fit_em(start, ys, num_iters=10, progress_bar=False, m_step="generalised")
    np.testing.assert_allclose(lls_general, lls_closed, rtol=1e-9)
    ll_closed, ll_general = ssm.log_likelihood(p_closed, ys), ssm.log_likelihood(p_general, ys)
    assert float(ll_general) == pytest.approx(float(ll_closed), rel=1e-6)


def _partly_missing_problem():
    """1-d state (no rotation ridge in the likelihood), 3-d emissions with 20% of the
    components and 5 whole steps missing, a 1-d input into both equations."""
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(3), 4)
    model = linear_gaussian_ssm(1, 3, input_dim=1, F=jnp.array([[0.8]]), B=jnp.array([[1.0]]),
                                D=jnp.array([[0.3], [0.0], [-0.4]]), Q=jnp.array([[0.3]]),
                                R=0.2 * jnp.eye(3) + 0.05)
    ssm = SSM(model)
    us = jax.random.normal(k1, (300, 1))
    true = ssm.init_params(k2, u=us)
    _, ys = ssm.sample(k3, true, u=us)
    drop = jax.random.uniform(k4, ys.shape) < 0.2
    ys = jnp.where(drop, jnp.nan, ys).at[10:15].set(jnp.nan)
    start = {**true, "F": jnp.array([[0.3]]), "H": true["H"] + 0.3, "R": jnp.eye(3), "Q": jnp.eye(1)}
    return ssm, ys, us, start


_FITTED = ("F", "b", "B", "H", "d", "D", "Q", "R")


def _max_gradient(ssm, params, ys, us):
    grad = jax.grad(lambda p: ssm.log_likelihood(p, ys, u=us))(params)
    return max(float(jnp.abs(grad[k]).max()) for k in _FITTED)


@pytest.mark.parametrize("num_iters, reduction", [(100, 2e-2), pytest.param(2000, 1e-3, marks=pytest.mark.slow)])
def test_em_with_missing_data_and_inputs_climbs_to_a_stationary_point(x64, num_iters, reduction):
    """Partly missing emissions and inputs: EM is monotone and drives the gradient of the
    Kalman log-likelihood (computed by autodiff, independently of EM) towards zero."""
    ssm, ys, us, start = _partly_missing_problem()
    frozen = ("initial_mean", "initial_cov")  # their MLE from one sequence is degenerate
    params, lls = ssm.fit_em(start, ys, u=us, num_iters=num_iters, frozen=frozen, progress_bar=False)
    assert float(jnp.diff(lls).min()) > -1e-9 * abs(float(lls[-1]))
    assert _max_gradient(ssm, params, ys, us) < reduction * _max_gradient(ssm, start, ys, us)


def test_sgd_reaches_em_optimum(x64, seed003, em_fit):
    ssm, _, ys, init = seed003
    _, lls = em_fit
    # A decaying step: at a constant 0.1 Adam ends up oscillating by ~2 nats around the optimum,
    # where the last iterate depends on rounding (a change of summation order moved it by 1.6).
    schedule = optax.cosine_decay_schedule(1e-1, 1000)
    params, losses = ssm.fit_sgd(init, ys, optimizer=optax.adam(schedule), num_epochs=1000, progress_bar=False)
    assert losses.shape == (1000,)
    final = float(ssm.log_likelihood(params, ys))
    assert float(-losses[-1] * ys.size) == pytest.approx(final, abs=1.0)  # loss is per observed scalar
    assert final > float(lls[-1]) - 1.0


@pytest.mark.slow  # ~15 s of fits; keeps the default run well inside its 15 minutes
def test_frozen_sites_bit_for_bit(x64, seed003):
    ssm, true, ys, init = seed003
    start = {**init, "F": true["F"], "Q": true["Q"]}
    p_sgd, _ = ssm.fit_sgd(start, ys, num_epochs=20, frozen=("F", "Q"), progress_bar=False)
    p_em, _ = ssm.fit_em(start, ys, num_iters=5, frozen=("F", "Q"), progress_bar=False)
    for p in (p_sgd, p_em):
        assert np.array_equal(np.asarray(p["F"]), np.asarray(true["F"]))
        assert np.array_equal(np.asarray(p["Q"]), np.asarray(true["Q"]))
        assert not np.allclose(p["H"], init["H"])


@pytest.mark.slow  # ~15 s of fits; keeps the default run well inside its 15 minutes
def test_batch_of_copies_equals_single_sequence(x64, seed003):
    """B identical sequences have the same EM path as one (the statistics add up)."""
    ssm, _, ys, init = seed003
    batch = jnp.stack([ys] * 3)
    p1, l1 = ssm.fit_em(init, ys, num_iters=3, progress_bar=False)
    pb, lb = ssm.fit_em(init, batch, num_iters=3, progress_bar=False)
    np.testing.assert_allclose(lb, 3 * l1, rtol=1e-10)
    for k in p1:
        np.testing.assert_allclose(pb[k], p1[k], rtol=1e-8, atol=1e-10)


@pytest.mark.slow  # batch handling is also covered by test_batch_of_copies_equals_single_sequence
def test_batch_of_20_sequences(x64, seed003):
    ssm, true, _, init = seed003
    _, ys = jax.vmap(lambda k: ssm.sample(k, true, T=100))(jax.random.split(jax.random.PRNGKey(7), 20))
    assert ys.shape == (20, 100, 10)
    per_seq = lambda p: sum(float(ssm.log_likelihood(p, y)) for y in ys)
    params, lls = ssm.fit_em(init, ys, num_iters=20, progress_bar=False)
    assert float(jnp.diff(lls).min()) > -1e-9 * abs(float(lls[-1]))
    assert float(lls[0]) == pytest.approx(per_seq(init), rel=1e-10)
    assert per_seq(params) > per_seq(true)
    # Minibatches: 4 steps of 5 sequences per epoch; the loss is an unbiased estimate of the full loss.
    adam = optax.adam(1e-1)
    sgd, losses = ssm.fit_sgd(init, ys, optimizer=adam, num_epochs=60, batch_size=5,
                              key=jax.random.PRNGKey(0), progress_bar=False)
    assert per_seq(sgd) > per_seq(init) + 0.9 * (per_seq(true) - per_seq(init))
    again, losses_again = ssm.fit_sgd(init, ys, optimizer=adam, num_epochs=60, batch_size=5,
                                      key=jax.random.PRNGKey(0), progress_bar=False)
    np.testing.assert_array_equal(losses, losses_again)  # same key, same result


def test_tol_stops_early(x64, seed003):
    ssm, _, ys, init = seed003
    _, lls = ssm.fit_em(init, ys, num_iters=200, tol=1e-6, progress_bar=False)
    assert 2 < lls.shape[0] < 200
    assert abs(float(lls[-1] - lls[-2])) <= 1e-6 * abs(float(lls[-1]))
    assert abs(float(lls[-2] - lls[-3])) > 1e-6 * abs(float(lls[-2]))


def _oscillator(y=None, T=None):
    """A damped rotation, F = rho R(omega): linear in the state, not affine in (rho, omega)."""
    rho = numpyro.sample("rho", dist.Uniform(0.0, 1.0))
    omega = numpyro.sample("omega", dist.Uniform(0.0, math.pi / 2))
    q = numpyro.param("q", 0.5, constraint=constraints.positive)
    r = numpyro.param("r", 0.5, constraint=constraints.positive)
    c, s = jnp.cos(omega), jnp.sin(omega)
    F = rho * jnp.array([[c, -s], [s, c]])

    def step(z, y_t):
        z = numpyro.sample("z", dist.MultivariateNormal(F @ z, q * jnp.eye(2)))
        numpyro.sample("y", dist.Normal(z[0], jnp.sqrt(r)), obs=y_t)
        return z, None

    z0 = numpyro.sample("z0", dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)))
    scan(step, z0, y, length=T)


def test_non_affine_parameters_generalised_em_and_sgd(x64):
    ssm = SSM(_oscillator)
    truth = {"rho": 0.95, "omega": 0.3, "q": 0.1, "r": 0.5}
    truth = {k: jnp.asarray(v) for k, v in truth.items()}
    _, ys = ssm.sample(jax.random.PRNGKey(11), truth, T=400)
    start = {"rho": jnp.asarray(0.5), "omega": jnp.asarray(1.0), "q": jnp.asarray(1.0), "r": jnp.asarray(1.0)}
    p_em, lls = ssm.fit_em(start, ys, num_iters=50, progress_bar=False)
    assert float(jnp.diff(lls).min()) > -1e-8 * abs(float(lls[-1]))
    p_sgd, _ = ssm.fit_sgd(start, ys, optimizer=optax.adam(5e-2), num_epochs=500, progress_bar=False)
    names = ["rho", "omega", "q", "r"]
    vec = lambda p: jnp.stack([p[k] for k in names])
    unvec = lambda v: dict(zip(names, v))
    # Standard errors from the Fisher information (observed, at the truth; uniform priors: MAP = MLE).
    hess = jax.hessian(lambda v: ssm.log_likelihood(unvec(v), ys))(vec(truth))
    se = jnp.sqrt(jnp.diag(jnp.linalg.inv(-hess)))
    z_em = (vec(p_em) - vec(truth)) / se
    assert float(jnp.abs(z_em).max()) < 4.0, dict(zip(names, z_em))
    z_sgd = (vec(p_sgd) - vec(truth)) / se
    assert float(jnp.abs(z_sgd).max()) < 4.0, dict(zip(names, z_sgd))
    # Both learners maximise the same objective (uniform priors: the log-likelihood).
    ll_em, ll_sgd = ssm.log_likelihood(p_em, ys), ssm.log_likelihood(p_sgd, ys)
    assert float(ll_sgd) > float(ll_em) - 0.5


def test_sgd_loss_is_map_per_observed_scalar(x64):
    """The loss at the start is -(log-lik + log prior) / (number of non-NaN observations)."""
    ssm = SSM(_oscillator)
    params = {"rho": jnp.asarray(0.9), "omega": jnp.asarray(0.4), "q": jnp.asarray(0.2), "r": jnp.asarray(0.3)}
    _, ys = ssm.sample(jax.random.PRNGKey(1), params, T=50)
    ys = ys.reshape(-1).at[:5].set(jnp.nan)
    _, losses = ssm.fit_sgd(params, ys, optimizer=optax.sgd(0.0), num_epochs=2, progress_bar=False)
    prior = dist.Uniform(0.0, 1.0).log_prob(0.9) + dist.Uniform(0.0, math.pi / 2).log_prob(0.4)
    expected = -(ssm.log_likelihood(params, ys) + prior) / 45
    np.testing.assert_allclose(losses, expected, rtol=1e-12)


def test_bad_input(x64, seed003):
    ssm, _, ys, init = seed003
    with pytest.raises(ValueError, match="not global sites"):
        ssm.fit_em(init, ys, frozen=("G",), num_iters=2, progress_bar=False)
    with pytest.raises(ValueError, match="not global sites"):
        ssm.fit_sgd(init, ys, frozen="z", num_epochs=2, progress_bar=False)
    with pytest.raises(ValueError, match="'Q' is not finite"):
        ssm.fit_sgd({**init, "Q": init["Q"].at[0, 0].set(jnp.inf)}, ys, num_epochs=2, progress_bar=False)
    with pytest.raises(ValueError, match="'H' is not finite"):
        ssm.fit_em({**init, "H": init["H"].at[0, 0].set(jnp.nan)}, ys, num_iters=2, progress_bar=False)
    with pytest.raises(ValueError, match="batch_size"):
        ssm.fit_sgd(init, ys, batch_size=3, num_epochs=2, progress_bar=False)
    with pytest.raises(ValueError, match="every global site is frozen"):
        ssm.fit_em(init, ys, frozen=tuple(init), num_iters=2, progress_bar=False)
    with pytest.raises(ValueError, match="no observations"):
        ssm.fit_em(init, jnp.full_like(ys, jnp.nan), num_iters=2, progress_bar=False)
    with pytest.raises(ValueError, match="sample site"):
        SSM(_oscillator).fit_em({"q": 1.0}, ys[:, 0], num_iters=2, progress_bar=False)


def test_diverging_optimizer_stops_with_finite_params(x64, seed003):
    ssm, _, ys, init = seed003
    with pytest.warns(RuntimeWarning, match="non-finite"):
        params, losses = ssm.fit_sgd(init, ys, optimizer=optax.sgd(1e4), num_epochs=100, progress_bar=False)
    assert 0 < losses.shape[0] < 100
    assert bool(jnp.all(jnp.isfinite(losses)))
    for k, v in params.items():
        assert bool(jnp.all(jnp.isfinite(v))), k
    assert float(ssm.log_likelihood(params, ys)) == pytest.approx(float(-losses[-1] * ys.size), rel=1e-9)


@pytest.mark.slow  # ~12 s; the chunking is also exercised by every default fit with its progress bar off
def test_progress_bar_chunks_do_not_change_the_fit(x64, seed003, capsys, monkeypatch):
    """With a live bar (as in a terminal) the fit runs as several compiled chunks; the result is the
    one-chunk fit's."""
    from ssmppl.learning import progress

    monkeypatch.setattr(progress, "interactive", lambda: True)
    ssm, _, ys, init = seed003
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tqdm's notebook-widget fallback warning, if any
        params, lls = ssm.fit_em(init, ys, num_iters=7, progress_bar=True)
    assert lls.shape == (7,)
    assert "EM" in capsys.readouterr().err
    params_one, lls_one = ssm.fit_em(init, ys, num_iters=7, progress_bar=False)
    np.testing.assert_allclose(lls, lls_one, rtol=1e-12)
    for k in params:
        np.testing.assert_allclose(params[k], params_one[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.slow
def test_generalised_em_from_random_init_seed003(x64, seed003, em_fit):
    """Generalised EM alone (no closed form) fits seed 003 from the random start: monotone,
    above the true parameters, and within 1 nat of closed-form EM after 100 iterations."""
    ssm, true, ys, init = seed003
    _, lls = ssm.fit_em(init, ys, num_iters=100, m_step="generalised", progress_bar=False)
    assert float(jnp.diff(lls).min()) > -1e-9 * abs(float(lls[-1]))
    assert float(lls[-1]) > float(ssm.log_likelihood(true, ys))
    assert float(lls[-1]) > float(em_fit[1][-1]) - 1.0


def test_closed_form_em_reads_no_site_names(x64, seed003):
    """A linear Gaussian model with its own site names carries the closed-form M-step with its
    role -> site mapping: EM gives the built-in model's iterates, renamed (EM reads no names)."""
    from ssmppl.maths.lgssm_em import LinearGaussianMStep

    ssm, _, ys, init = seed003
    names = {"F": "A", "b": "offset", "Q": "Sigma_z", "H": "C", "d": "bias", "R": "Sigma_y",
             "initial_mean": "mu0", "initial_cov": "V0"}
    pd = constraints.positive_definite

    def renamed(y=None, T=None):
        p = {role: numpyro.param(name, init[role], constraint=pd if role in ("Q", "R", "initial_cov") else
                                 constraints.real) for role, name in names.items()}
        z0 = numpyro.sample("state0", dist.MultivariateNormal(p["initial_mean"], p["initial_cov"]))

        def step(z_prev, y_t):
            z = numpyro.sample("state", dist.MultivariateNormal(p["F"] @ z_prev + p["b"], p["Q"]))
            numpyro.sample("obs", dist.MultivariateNormal(p["H"] @ z + p["d"], p["R"]), obs=y_t)
            return z, None

        scan(step, z0, y, length=T)

    renamed.closed_form_m_step = LinearGaussianMStep(names)
    start = {names[k]: v for k, v in init.items()}
    params, lls = SSM(renamed).fit_em(start, ys, num_iters=5, m_step="closed_form", progress_bar=False)
    ref_params, ref_lls = ssm.fit_em(init, ys, num_iters=5, progress_bar=False)
    np.testing.assert_allclose(lls, ref_lls, rtol=1e-10)
    for role, name in names.items():
        np.testing.assert_allclose(params[name], ref_params[role], rtol=1e-8, atol=1e-10)
