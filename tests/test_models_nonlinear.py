"""Oracle tests of the built-in nonlinear models themselves (no filtering):
the RK4 integrator against its closed form and scipy's ODE solver, transition and
emission densities and whole-path log densities against scipy.stats, and simulated
paths' moments against the stationary distribution."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import log_density
from scipy import integrate as sp_integrate
from scipy import stats

import ssmppl
from ssmppl.models import integrate, lorenz63, pendulum, poisson_ar1, rk4_step, stochastic_volatility
from ssmppl.models.lorenz import lorenz63_vector_field

from oracles import rk4_numpy

pytestmark = pytest.mark.usefixtures("x64")


# -- RK4 -------------------------------------------------------------------------


def test_rk4_step_is_fourth_order_taylor_polynomial_on_linear_ode():
    # For x' = A x, one RK4 step is exactly sum_{k<=4} (A h)^k / k! applied to x.
    rng = np.random.default_rng(0)
    A, x, h = rng.normal(size=(3, 3)), rng.normal(size=3), 0.37
    expected = sum(np.linalg.matrix_power(A * h, k) / math.factorial(k) for k in range(5)) @ x
    got = rk4_step(lambda v: jnp.asarray(A) @ v, jnp.asarray(x), h)
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-13)


def _lorenz_reference(x0, t_end, params=(10.0, 28.0, 8.0 / 3.0)):
    s, r, b = params

    def rhs(_, v):
        return [s * (v[1] - v[0]), v[0] * (r - v[2]) - v[1], v[0] * v[1] - b * v[2]]

    sol = sp_integrate.solve_ivp(rhs, (0.0, t_end), x0, method="DOP853", rtol=1e-13, atol=1e-12)
    return sol.y[:, -1]


def test_integrate_lorenz63_against_solve_ivp_and_fourth_order_convergence():
    x0 = np.array([1.0, 1.0, 1.0])
    t_end = 0.5
    ref = _lorenz_reference(x0, t_end)
    f = lambda v: lorenz63_vector_field(v, 10.0, 28.0, 8.0 / 3.0)  # noqa: E731
    errors = []
    for n in (100, 200, 400):
        got = np.asarray(integrate(f, jnp.asarray(x0), t_end / n, n))
        errors.append(np.abs(got - ref).max())
    # Step 1/800 is accurate to about 1e-8 on a state of size ~10...
    assert errors[-1] < 1e-7 * np.abs(ref).max()
    # ...and halving the step divides the global error by 2^4.
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 13) & (ratios < 19)), ratios


def test_integrate_is_differentiable_and_matches_unrolled_steps():
    f = lambda v: lorenz63_vector_field(v, 10.0, 28.0, 8.0 / 3.0)  # noqa: E731
    phi = jax.jit(lambda v: integrate(f, v, 0.01, 7))
    x0 = jnp.array([1.0, -2.0, 20.0])
    unrolled = x0
    for _ in range(7):
        unrolled = rk4_step(f, unrolled, 0.01)
    np.testing.assert_allclose(phi(x0), unrolled, rtol=1e-14)
    # The reverse-mode Jacobian (through the fori_loop) equals a central finite difference.
    eps = 1e-6
    J_fd = np.stack([(phi(x0 + eps * e) - phi(x0 - eps * e)) / (2 * eps) for e in jnp.eye(3)], axis=1)
    np.testing.assert_allclose(jax.jit(jax.jacrev(phi))(x0), J_fd, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError):
        integrate(f, x0, 0.01, 0)


# -- one-step densities ----------------------------------------------------------


def test_pendulum_transition_and_emission_densities():
    dt, g, q_c, r = 0.05, 9.81, 0.7, 0.4
    ssm = ssmppl.SSM(pendulum(dt=dt, g=g, q_c=q_c, r=r))
    z_prev, z, y = np.array([0.8, -1.3]), np.array([0.7, -1.9]), 0.5

    @jax.jit  # the state space backends see, traced once
    def densities(z_prev, z, y):
        problem = ssm.state_space(None, jnp.zeros(3))
        trans = problem.transition(z_prev, None)
        return trans.log_prob(z), trans.covariance_matrix, problem.emission(z, None).log_prob(y)

    log_trans, cov, log_emis = densities(jnp.asarray(z_prev), jnp.asarray(z), y)
    mean = np.array([z_prev[0] + z_prev[1] * dt, z_prev[1] - g * np.sin(z_prev[0]) * dt])
    Q = q_c * np.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]])
    np.testing.assert_allclose(log_trans, stats.multivariate_normal(mean, Q).logpdf(z), rtol=1e-12)
    np.testing.assert_allclose(cov, Q, rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(log_emis, stats.norm(np.sin(z[0]), r).logpdf(y), rtol=1e-12)


# -- whole-path log densities (transition, emission, stationary initial state) ----


def _path_log_density(model, params, y, path):
    """NumPyro's log joint of (path, y) at the given global-site values."""
    fn = jax.jit(lambda values, y: log_density(model, (), {"y": y}, values)[0])
    return float(fn({**params, **path}, jnp.asarray(y)))


def test_pendulum_log_density_of_a_path():
    dt, g, q_c, r = 0.0125, 9.8, 1.0, 0.3
    rng = np.random.default_rng(1)
    T = 6
    z0 = np.array([np.pi / 2, 0.0]) + 0.1 * rng.normal(size=2)
    z = z0 + np.cumsum(0.05 * rng.normal(size=(T, 2)), axis=0)
    y = np.sin(z[:, 0]) + 0.3 * rng.normal(size=T)
    Q = q_c * np.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]])
    expected = stats.multivariate_normal([np.pi / 2, 0.0], 0.1 * np.eye(2)).logpdf(z0)
    prev = z0
    for t in range(T):
        mean = [prev[0] + prev[1] * dt, prev[1] - g * np.sin(prev[0]) * dt]
        expected += stats.multivariate_normal(mean, Q).logpdf(z[t]) + stats.norm(np.sin(z[t, 0]), r).logpdf(y[t])
        prev = z[t]
    got = _path_log_density(pendulum(), {}, y, {"z0": jnp.asarray(z0), "z": jnp.asarray(z)})
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def _rk4_numpy(x, dt, n, s, r, b):
    return rk4_numpy(lambda v: np.array([s * (v[1] - v[0]), v[0] * (r - v[2]) - v[1], v[0] * v[1] - b * v[2]]),
                     x, dt, n)


@pytest.mark.parametrize("observe", ["all", (0, 2)])
def test_lorenz63_log_density_of_a_path(observe):
    dt, n, s, rho, b, q, r = 0.02, 3, 9.0, 27.0, 2.5, 0.3, 1.5
    params = {"sigma": s, "rho": rho, "beta": b, "process_noise": q, "obs_noise": r}
    model = lorenz63(dt=dt, steps_per_obs=n, observe=observe, initial_mean=(1.0, 2.0, 3.0), initial_scale=2.0)
    idx = [0, 1, 2] if observe == "all" else list(observe)
    rng = np.random.default_rng(2)
    T = 5
    z0 = np.array([1.0, 2.0, 3.0]) + 2.0 * rng.normal(size=3)
    z, prev = [], z0
    for _ in range(T):
        prev = _rk4_numpy(prev, dt, n, s, rho, b) + q * rng.normal(size=3)
        z.append(prev)
    z = np.array(z)
    y = z[:, idx] + r * rng.normal(size=(T, len(idx)))
    expected = stats.norm([1.0, 2.0, 3.0], 2.0).logpdf(z0).sum()
    prev = z0
    for t in range(T):
        expected += stats.norm(_rk4_numpy(prev, dt, n, s, rho, b), q).logpdf(z[t]).sum()
        expected += stats.norm(z[t, idx], r).logpdf(y[t]).sum()
        prev = z[t]
    got = _path_log_density(model, params, y, {"z0": jnp.asarray(z0), "z": jnp.asarray(z)})
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_poisson_ar1_log_density_of_a_path():
    mu, phi, sigma = 0.5, 0.8, 0.4
    rng = np.random.default_rng(3)
    T = 8
    z0 = 0.3
    z = mu + 0.5 * rng.normal(size=T)
    y = rng.poisson(np.exp(z)).astype(float)
    expected = stats.norm(mu, sigma / np.sqrt(1 - phi**2)).logpdf(z0)
    zp = np.concatenate([[z0], z[:-1]])
    expected += stats.norm(mu + phi * (zp - mu), sigma).logpdf(z).sum()
    expected += stats.poisson(np.exp(z)).logpmf(y).sum()
    got = _path_log_density(poisson_ar1(), {"mu": mu, "phi": phi, "sigma": sigma}, y,
                            {"z0": jnp.asarray(z0), "z": jnp.asarray(z)})
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_stochastic_volatility_log_density_of_a_path():
    mu, rho, sigma = 2 * np.log(0.5992), 0.9702, 0.178
    rng = np.random.default_rng(4)
    T = 8
    x0 = mu + 0.2
    x = mu + 0.7 * rng.normal(size=T)
    y = np.exp(x / 2) * rng.normal(size=T)
    expected = stats.norm(mu, sigma / np.sqrt(1 - rho**2)).logpdf(x0)
    xp = np.concatenate([[x0], x[:-1]])
    expected += stats.norm(mu + rho * (xp - mu), sigma).logpdf(x).sum()
    expected += stats.norm(0.0, np.exp(x / 2)).logpdf(y).sum()
    # The defaults are the Pitt-Shephard values: no params passed.
    got = _path_log_density(stochastic_volatility(), {}, y, {"x0": jnp.asarray(x0), "x": jnp.asarray(x)})
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_priors_make_sample_sites_and_add_their_log_density():
    y = np.array([1.0, 0.0, 3.0])
    path = {"z0": jnp.asarray(0.1), "z": jnp.array([0.2, -0.1, 0.9])}
    values = {"mu": 0.2, "phi": 0.6, "sigma": 0.5}
    plain = _path_log_density(poisson_ar1(), values, y, path)
    prior = dist.TruncatedNormal(0.5, 0.3, low=-1.0, high=1.0)
    with_prior = poisson_ar1(priors={"phi": prior})
    got = _path_log_density(with_prior, values, y, path)
    expected_prior = stats.truncnorm((-1 - 0.5) / 0.3, (1 - 0.5) / 0.3, loc=0.5, scale=0.3).logpdf(0.6)
    np.testing.assert_allclose(got - plain, expected_prior, rtol=1e-10)
    with pytest.raises(ValueError, match="unknown sites"):
        poisson_ar1(priors={"rho": prior})
    with pytest.raises(TypeError):
        pendulum(priors={"r": 1.0})


def test_lorenz63_rejects_bad_observe():
    for bad in ("some", (), (0, 3), (1, 1)):
        with pytest.raises(ValueError):
            lorenz63(observe=bad)


# -- simulation ------------------------------------------------------------------


def _ar1_checks(path, mu, phi, sigma):
    """Sample mean, variance and lag-1 autocorrelation of a stationary Gaussian AR(1)
    path against their population values, tolerances 4.5 asymptotic standard errors."""
    T = len(path)
    v = sigma**2 / (1 - phi**2)
    se_mean = np.sqrt(v * (1 + phi) / (1 - phi) / T)
    assert abs(path.mean() - mu) < 4.5 * se_mean, (path.mean(), mu, se_mean)
    se_var = np.sqrt(2 * v**2 * (1 + phi**2) / (1 - phi**2) / T)
    assert abs(path.var() - v) < 4.5 * se_var, (path.var(), v, se_var)
    c = path - path.mean()
    acf1 = (c[1:] * c[:-1]).sum() / (c * c).sum()
    assert abs(acf1 - phi) < 4.5 * np.sqrt((1 - phi**2) / T), (acf1, phi)


def test_poisson_ar1_simulation_moments():
    mu, phi, sigma = 0.7, 0.8, 0.4
    ssm = ssmppl.SSM(poisson_ar1())
    T = 20000
    z, y = ssm.sample(jax.random.PRNGKey(0), {"mu": mu, "phi": phi, "sigma": sigma}, T=T)
    z, y = np.asarray(z), np.asarray(y, float)
    _ar1_checks(z, mu, phi, sigma)
    # Given the rates, Pearson residuals are independent with mean 0 and variance 1.
    u = (y - np.exp(z)) / np.exp(z / 2)
    assert abs(u.mean()) < 4.5 / np.sqrt(T)
    assert np.all(y == np.round(y)) and np.all(y >= 0)


def test_stochastic_volatility_simulation_moments():
    mu, rho, sigma = 2 * np.log(0.5992), 0.9702, 0.178
    ssm = ssmppl.SSM(stochastic_volatility())
    T = 40000
    x, y = ssm.sample(jax.random.PRNGKey(1), None, T=T)
    x, y = np.asarray(x), np.asarray(y)
    _ar1_checks(x, mu, rho, sigma)
    u = y / np.exp(x / 2)  # iid N(0, 1) given the log-variances
    assert abs(u.mean()) < 4.5 / np.sqrt(T)
    assert abs(u.var() - 1) < 4.5 * np.sqrt(2 / T)
