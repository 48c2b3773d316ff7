"""Lorenz-96 (and Lorenz-63's observation options): vector field, RK4 order, simulation, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro import handlers

from ssmppl import SSM
from ssmppl.models import integrate, lorenz63, lorenz96, lorenz96_vector_field, rk4_step
from ssmppl.models.lorenz import observation_operator

from oracles import rk4_numpy


def _l96_numpy(x, forcing):
    """The Lorenz-96 formula written out component by component (indices mod d)."""
    d = len(x)
    return np.array([(x[(i + 1) % d] - x[(i - 2) % d]) * x[(i - 1) % d] - x[i] + forcing for i in range(d)])


_rk4_numpy = rk4_numpy


def _run_numpy(f, x0, dt, n, T):
    """States 1..T of x_t = RK4^n(x_{t-1}) from x0: (T, d)."""
    out, x = [], np.asarray(x0, dtype=float)
    for _ in range(T):
        x = _rk4_numpy(f, x, dt, n)
        out.append(x)
    return np.array(out)


@pytest.mark.parametrize("d", [5, 40])
def test_l96_vector_field_matches_the_formula(x64, d):
    rng = np.random.default_rng(d)
    for _ in range(3):
        x, forcing = 3.0 * rng.normal(size=d), rng.uniform(-2.0, 10.0)
        np.testing.assert_allclose(lorenz96_vector_field(jnp.asarray(x), forcing), _l96_numpy(x, forcing),
                                   rtol=1e-13, atol=1e-12)
    # An ensemble (N, d) is a batch over the leading axis, directly and under vmap.
    xs = jnp.asarray(rng.normal(size=(4, d)))
    expected = np.stack([_l96_numpy(np.asarray(x), 8.0) for x in xs])
    np.testing.assert_allclose(lorenz96_vector_field(xs, 8.0), expected, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(jax.vmap(lambda x: lorenz96_vector_field(x, 8.0))(xs), expected, rtol=1e-13,
                               atol=1e-12)


def test_l96_fixed_point_and_energy_conserving_advection(x64):
    @jax.jit
    def check(x, forcing):
        # With F = 0 and the damping -x removed, what remains is the advection term, and
        # sum_i x_i (x_{i+1} - x_{i-2}) x_{i-1} = 0 (the two cyclic triple sums are equal).
        advection = lorenz96_vector_field(x, 0.0) + x
        return (lorenz96_vector_field(forcing * jnp.ones_like(x), forcing), jnp.dot(x, advection),
                jnp.sum(jnp.abs(x * advection)), jnp.dot(x, lorenz96_vector_field(x, forcing)))

    for d, forcing in [(4, 8.0), (40, 8.0), (13, -1.5)]:
        x = np.random.default_rng(d).normal(size=d) * 4.0
        at_fixed_point, energy_flux, scale, power = check(jnp.asarray(x), forcing)
        np.testing.assert_allclose(at_fixed_point, 0.0, atol=1e-12)
        assert abs(float(energy_flux)) < 1e-13 * float(scale)
        # So d(|x|^2 / 2)/dt = -|x|^2 + F sum(x), exactly.
        np.testing.assert_allclose(power, -x @ x + forcing * x.sum(), rtol=1e-12)


def test_rk4_local_error_on_l96_is_fifth_order(x64):
    forcing = 8.0
    f = lambda x: lorenz96_vector_field(x, forcing)  # noqa: E731

    @jax.jit
    def local_errors(x0):
        x0 = integrate(f, x0, 0.01, 500)  # onto the attractor
        errors = []
        for h in (0.05, 0.025, 0.0125):
            reference = integrate(f, x0, h / 200, 200)  # its own error is ~200^4 times smaller
            errors.append(jnp.linalg.norm(rk4_step(f, x0, h) - reference))
        return jnp.stack(errors)

    errors = np.asarray(local_errors(forcing + jnp.asarray(np.random.default_rng(0).normal(size=40))))
    ratios = errors[:-1] / errors[1:]
    assert np.all((ratios > 20) & (ratios < 45)), ratios  # 2^5 = 32 for an O(h^5) local error


def test_gradient_of_a_l96_run_wrt_forcing_matches_finite_differences(x64):
    x0 = jnp.asarray(8.0 + np.random.default_rng(1).normal(size=10))

    def total(forcing):
        return jnp.sum(integrate(lambda x: lorenz96_vector_field(x, forcing), x0, 0.05, 20))

    eps = 1e-5
    value_and_grad = jax.jit(jax.value_and_grad(total))
    fd = (value_and_grad(8.0 + eps)[0] - value_and_grad(8.0 - eps)[0]) / (2 * eps)
    grad = value_and_grad(8.0)[1]
    assert np.isfinite(grad)
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


def _simulate(model, seed, T):
    """The values of all sites of one run of ``model(T=T)`` (jitted: one compile)."""
    def run(key):
        tr = handlers.trace(handlers.seed(model, key)).get_trace(T=T)
        return {name: site["value"] for name, site in tr.items()}

    return jax.jit(run)(jax.random.PRNGKey(seed))


def test_l96_simulation_is_a_deterministic_run_with_arctan_observations(x64):
    dim, dt, n, forcing, r, T = 8, 0.05, 2, 8.0, 0.3, 200
    model = lorenz96(dim=dim, forcing=forcing, dt=dt, steps_per_obs=n, obs_noise=r, every=2, operator="arctan")
    ssm = SSM(model)
    z, y = ssm.sample(jax.random.PRNGKey(0), None, T=T)
    # No process noise: no (degenerate) process_noise site.
    assert set(ssm.init_params(jax.random.PRNGKey(0), T=T)) == {"forcing", "obs_noise"}
    z, y = np.asarray(z), np.asarray(y)
    f = lambda x: _l96_numpy(x, forcing)  # noqa: E731
    # Step by step: z_t = Phi(z_{t-1}) exactly, all along.
    np.testing.assert_allclose(z[1:], [_rk4_numpy(f, v, dt, n) for v in z[:-1]], rtol=1e-12, atol=1e-12)
    # One chaotic run (roundoff grows ~e^(1.7 t): compare the first 3 time units).
    np.testing.assert_allclose(z[1:31], _run_numpy(f, z[0], dt, n, 30), rtol=1e-9, atol=1e-9)

    # Observations: arctan of components 0, 2, 4, 6 plus N(0, r^2) noise. The sample
    # variance of the n = 4T residuals over r^2 is chi2_n / n: sd sqrt(2 / n).
    assert y.shape == (T, 4)
    resid = y - np.arctan(z[:, ::2])
    ratio = np.mean(resid**2) / r**2
    assert abs(ratio - 1) < 4 * np.sqrt(2 / resid.size), ratio
    assert abs(np.mean(resid)) < 4 * r / np.sqrt(resid.size)


def test_l96_prior_on_process_noise_makes_a_normal_transition(x64):
    dim, dt = 6, 0.05
    f = lambda x: _l96_numpy(x, 8.0)  # noqa: E731
    # A prior makes process_noise a sample site and the transition noisy, even at the default value 0.
    run = _simulate(lorenz96(dim=dim, dt=dt, priors={"process_noise": dist.LogNormal(-1.0, 0.1)}), 2, 300)
    z0, z, q = np.asarray(run["z0"]), np.asarray(run["z"]), float(run["process_noise"])
    # The default initial mean is F with 0.01 added to component 0; z0 ~ N(mean, I).
    assert abs(np.mean(z0) - 8.0) < 4 / np.sqrt(dim)
    prev = np.concatenate([z0[None], z[:-1]])
    noise = z - np.array([_rk4_numpy(f, v, dt, 1) for v in prev])
    assert abs(np.mean(noise**2) / q**2 - 1) < 4 * np.sqrt(2 / noise.size)


def test_observation_operator_selections(x64):
    z = jnp.arange(10.0)
    for kwargs, expected in [({}, np.arange(10.0)), ({"every": 3}, [0.0, 3.0, 6.0, 9.0]),
                             ({"observe": (7, 1)}, [7.0, 1.0]),
                             ({"every": 4, "operator": "arctan"}, np.arctan([0.0, 4.0, 8.0]))]:
        h, dy = observation_operator(10, **kwargs)
        np.testing.assert_allclose(h(z), expected, rtol=1e-14)
        assert dy == len(expected)
        np.testing.assert_allclose(h(jnp.stack([z, 2 * z]))[1], h(2 * z), rtol=1e-14)  # batched states


def test_lorenz63_every_arctan_and_deterministic_transition(x64):
    model = lorenz63(every=2, operator="arctan", obs_noise=0.2, process_noise=0.0, steps_per_obs=3)
    run = _simulate(model, 3, 100)
    assert "process_noise" not in run
    z0, z, y = (np.asarray(run[k]) for k in ("z0", "z", "y"))
    f = lambda v: np.array([10.0 * (v[1] - v[0]), v[0] * (28.0 - v[2]) - v[1], v[0] * v[1] - 8.0 / 3.0 * v[2]])
    prev = np.concatenate([z0[None], z[:-1]])
    np.testing.assert_allclose(z, [_rk4_numpy(f, v, 0.01, 3) for v in prev], rtol=1e-12, atol=1e-12)
    resid = y - np.arctan(z[:, [0, 2]])
    assert abs(np.mean(resid**2) / 0.2**2 - 1) < 4 * np.sqrt(2 / resid.size)


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="dim must be an int >= 4"):
        lorenz96(dim=3)
    with pytest.raises(ValueError, match="every must be a positive int"):
        lorenz96(every=0)
    with pytest.raises(ValueError, match="every must be a positive int"):
        lorenz63(every=0)
    with pytest.raises(ValueError, match="operator must be one of"):
        lorenz96(operator="square")
    with pytest.raises(ValueError, match="operator must be one of"):
        lorenz63(operator="tanh")
    with pytest.raises(ValueError, match="not both"):
        lorenz96(observe=(0, 1), every=2)
    with pytest.raises(ValueError, match="process_noise must be a scalar >= 0"):
        lorenz96(process_noise=-0.1)
    with pytest.raises(ValueError, match="initial_mean"):
        lorenz96(dim=8, initial_mean=np.zeros(5))
    with pytest.raises(ValueError, match="dt must be a positive"):
        lorenz96(dt=0.0)
    with pytest.raises(ValueError, match="distinct state indices"):
        lorenz96(dim=8, observe=(0, 8))


def test_vectorised_arctan_float32_within_3_ulp_and_exact_derivative():
    # the float32 polynomial form of the arctan operator against NumPy's float64 arctan, over the whole
    # line (both range reductions, tiny and huge arguments), the special values, and its derivative
    from ssmppl.models.lorenz import arctan

    x = np.concatenate([np.linspace(-30, 30, 600001), np.logspace(-30, 30, 601), -np.logspace(-30, 30, 601),
                        [0.0, 1.0, -1.0, np.tan(np.pi / 8)]]).astype(np.float32)
    got = np.asarray(jax.jit(arctan)(jnp.asarray(x)))
    assert got.dtype == np.float32
    exact = np.arctan(x.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - exact) / ulp) <= 3.0
    special = np.asarray(arctan(jnp.array([np.inf, -np.inf, np.nan], jnp.float32)))
    np.testing.assert_allclose(special[:2], [np.pi / 2, -np.pi / 2], rtol=1e-7)
    assert np.isnan(special[2])
    grad = np.asarray(jax.vmap(jax.grad(arctan))(jnp.asarray(x[::1000])))
    np.testing.assert_allclose(grad, 1 / (1 + x[::1000].astype(np.float64) ** 2), rtol=1e-6)


def test_arctan_float64_is_exact(x64):
    from ssmppl.models.lorenz import arctan

    x = np.linspace(-20, 20, 4001)
    np.testing.assert_allclose(np.asarray(arctan(jnp.asarray(x))), np.arctan(x), rtol=1e-15, atol=0)
