"""``ssm.sample`` returns states and emissions in the model's own shapes, so its emissions go
straight back into ``log_likelihood``/``smooth`` (issue 18: a scalar-observation model's (T, 1)
emissions were refused by its own filter). Oracle: the brute-force joint Gaussian of
tests/oracles.py, evaluated on the sampled emissions (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan

from oracles import brute_force
from ssmppl import SSM

pytestmark = pytest.mark.usefixtures("x64")

F2 = np.array([[0.9, 0.2], [-0.1, 0.7]])
Q2 = np.diag([0.3, 0.2])
H32 = np.array([[1.0, 0.0], [0.5, -0.4], [0.0, 1.2]])
R3 = np.diag([0.2, 0.3, 0.25])


def scalar_scalar(y=None, T=None):
    """Scalar state, scalar observation: sites of shape ()."""
    z0 = numpyro.sample("z0", dist.Normal(0.5, 1.0))

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(0.8 * z_prev + 0.1, 0.5))
        numpyro.sample("y", dist.Normal(1.5 * z - 0.2, 0.4), obs=y_t)
        return z, None

    scan(step, z0, y, length=T)


def vector_scalar(y=None, T=None):
    """2-d state, scalar observation (a sum of the state's components)."""
    z0 = numpyro.sample("z0", dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)))

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.MultivariateNormal(jnp.asarray(F2) @ z_prev, jnp.asarray(Q2)))
        numpyro.sample("y", dist.Normal(z[0] + z[1], 0.4), obs=y_t)
        return z, None

    scan(step, z0, y, length=T)


def scalar_vector(y=None, T=None):
    """Scalar state, 3-d observation."""
    z0 = numpyro.sample("z0", dist.Normal(0.5, 1.0))

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Normal(0.8 * z_prev + 0.1, 0.5))
        numpyro.sample("y", dist.Normal(jnp.array([1.0, -0.5, 2.0]) * z, jnp.sqrt(jnp.diag(jnp.asarray(R3))))
                       .to_event(1), obs=y_t)
        return z, None

    scan(step, z0, y, length=T)


def vector_vector(y=None, T=None):
    """2-d state, 3-d observation."""
    z0 = numpyro.sample("z0", dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)))

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.MultivariateNormal(jnp.asarray(F2) @ z_prev, jnp.asarray(Q2)))
        numpyro.sample("y", dist.MultivariateNormal(jnp.asarray(H32) @ z, jnp.asarray(R3)), obs=y_t)
        return z, None

    scan(step, z0, y, length=T)


# model, state shape, observation shape, oracle's (m0, P0, F, c, Q, H, d, R)
CASES = {
    "scalar_state_scalar_obs": (scalar_scalar, (), (), ([0.5], [[1.0]], [[0.8]], [0.1], [[0.25]], [[1.5]], [-0.2],
                                                       [[0.16]])),
    "vector_state_scalar_obs": (vector_scalar, (2,), (), ([0, 0], np.eye(2), F2, [0, 0], Q2, [[1.0, 1.0]], [0.0],
                                                         [[0.16]])),
    "scalar_state_vector_obs": (scalar_vector, (), (3,), ([0.5], [[1.0]], [[0.8]], [0.1], [[0.25]],
                                                         [[1.0], [-0.5], [2.0]], [0, 0, 0], R3)),
    "vector_state_vector_obs": (vector_vector, (2,), (3,), ([0, 0], np.eye(2), F2, [0, 0], Q2, H32, [0, 0, 0], R3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sample_then_filter_round_trips(case):
    model, state_shape, obs_shape, (m0, P0, F, c, Q, H, d, R) = CASES[case]
    T = 12
    ssm = SSM(model)
    states, y = ssm.sample(jax.random.PRNGKey(4), None, T=T)
    assert states.shape == (T, *state_shape) and y.shape == (T, *obs_shape)  # the model's own shapes
    assert np.all(np.isfinite(np.asarray(y)))
    # as NumPyro's Predictive returns the same sites
    pred = numpyro.infer.Predictive(model, num_samples=1)(jax.random.PRNGKey(0), T=T)
    assert pred["y"].shape[1:] == y.shape and pred["z"].shape[1:] == states.shape

    ref = brute_force(*(np.asarray(a, float) for a in (m0, P0)),
                      *([np.asarray(a, float)] * T for a in (F, c, Q, H, d, R)),
                      np.asarray(y, float).reshape(T, -1))
    np.testing.assert_allclose(float(ssm.log_likelihood(None, y)), ref["marginal_loglik"], rtol=1e-10)
    sm = ssm.smooth(None, y)  # filter results are flat: (T, dz)
    np.testing.assert_allclose(sm.filtered_means, ref["filtered_means"], atol=1e-10)


def test_sampled_states_are_the_path_the_emissions_were_drawn_from():
    """Zero emission noise: the emissions are exactly H z_t of the returned states."""

    def exact(y=None, T=None):
        z0 = numpyro.sample("z0", dist.Normal(0.0, 1.0))

        def step(z_prev, y_t):
            z = numpyro.sample("z", dist.Normal(0.7 * z_prev, 1.0))
            numpyro.sample("y", dist.Normal(3.0 * z, 0.0), obs=y_t)
            return z, None

        scan(step, z0, y, length=T)

    states, y = SSM(exact).sample(jax.random.PRNGKey(1), None, T=8)
    assert states.shape == y.shape == (8,)
    np.testing.assert_array_equal(np.asarray(y), 3.0 * np.asarray(states))
