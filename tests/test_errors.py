"""Bad models and bad data get clear errors naming the site and the fix."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan

from ssmppl import SSM, Kalman, ModelStructureError, ObservationShapeError, marginalize

Y = np.ones((5, 2))


def make(transition=None, emission=None, body=None, outer=None):
    """A 2-d state / 2-d emission model with pieces swapped out."""

    def default_transition(z_prev):
        return dist.Normal(0.9 * z_prev, 0.1).to_event(1)

    def default_emission(z, z_prev):
        return dist.Normal(z, 1.0).to_event(1)

    transition = transition or default_transition
    emission = emission or default_emission

    def model(y=None, T=None):
        if outer:
            outer()
        z0 = numpyro.sample("z0", dist.Normal(jnp.zeros(2), 1.0).to_event(1))

        def step(z_prev, y_t):
            z = numpyro.sample("z", transition(z_prev))
            if body:
                body()
            numpyro.sample("y", emission(z, z_prev), obs=y_t)
            return z, None

        scan(step, z0, y, length=T)

    return model


def error_of(model, y=Y, method=Kalman(), **kw):
    with pytest.raises((ModelStructureError, ObservationShapeError)) as info:
        SSM(model).filter(kw.pop("params", None), y, method=method)
    return str(info.value)


def test_well_formed_model_runs():
    assert np.isfinite(SSM(make()).log_likelihood(None, Y))


def test_no_scan():
    def model(y=None):
        numpyro.sample("y", dist.Normal(0, 1), obs=y)

    msg = error_of(model)
    assert "scan" in msg


def test_two_latent_sites():
    msg = error_of(make(body=lambda: numpyro.sample("w", dist.Normal(0, 1))))
    assert "'w'" in msg and "exactly one latent" in msg


def test_global_sampled_inside_body():
    msg = error_of(make(body=lambda: numpyro.sample("sigma", dist.HalfNormal(1.0))))
    assert "'sigma'" in msg and "outside the scan" in msg


def test_non_gaussian_latent():
    msg = error_of(make(transition=lambda zp: dist.StudentT(3.0, 0.9 * zp, 0.1).to_event(1)))
    assert "'z'" in msg and "StudentT, not a Gaussian" in msg and "MomentMatching" in msg


def test_non_gaussian_emission():
    msg = error_of(make(emission=lambda z, zp: dist.Poisson(jnp.exp(z)).to_event(1)), y=np.ones((5, 2)))
    assert "'y'" in msg and "not a Gaussian" in msg


def test_nonlinear_mean():
    msg = error_of(make(transition=lambda zp: dist.Normal(jnp.sin(zp), 0.1).to_event(1)))
    assert "'z'" in msg and "not affine" in msg and "UKF" in msg


def test_state_dependent_noise():
    msg = error_of(make(emission=lambda z, zp: dist.Normal(z, jnp.exp(z)).to_event(1)))
    assert "'y'" in msg and "depends on the state" in msg


def test_emission_reads_previous_state():
    msg = error_of(make(emission=lambda z, zp: dist.Normal(z + zp, 1.0).to_event(1)))
    assert "previous state" in msg and "Augment" in msg


def test_wrong_observation_shape():
    msg = error_of(make(), y=np.ones((5, 3)))
    assert "(5, 2)" in msg and "'y'" in msg


def test_carry_is_not_the_state():
    def model(y=None):
        z0 = numpyro.sample("z0", dist.Normal(0.0, 1.0))

        def step(carry, y_t):
            z_prev, t = carry
            z = numpyro.sample("z", dist.Normal(z_prev, 1.0))
            numpyro.sample("y", dist.Normal(z, 1.0), obs=y_t)
            return (z, t + 1), None

        scan(step, (z0, 0), y)

    assert "carry" in error_of(model, y=np.ones(4))


def test_missing_global_value_and_unknown_param():
    model = make(outer=lambda: numpyro.sample("s", dist.HalfNormal(1.0)))
    msg = error_of(model)
    assert "'s'" in msg and "init_params" in msg
    msg = error_of(make(), params={"not_a_site": 1.0})
    assert "not_a_site" in msg


def test_length_disagreement():
    def model(y=None, u=None):
        z0 = numpyro.sample("z0", dist.Normal(0.0, 1.0))

        def step(z_prev, xs):
            y_t, u_t = xs
            z = numpyro.sample("z", dist.Normal(z_prev + u_t, 1.0))
            numpyro.sample("y", dist.Normal(z, 1.0), obs=y_t)
            return z, None

        scan(step, z0, (y, u))

    with pytest.raises(ObservationShapeError, match=r"\[4, 6\]"):
        SSM(model).filter(None, np.ones(4), np.ones(6))


def test_errors_raised_through_marginalize():
    mm = marginalize(make(transition=lambda zp: dist.Normal(jnp.sin(zp), 0.1).to_event(1)))
    with pytest.raises(ModelStructureError, match="not affine"):
        numpyro.infer.util.log_density(mm, (Y,), {}, {})


def test_bad_method_and_num_steps():
    with pytest.raises(TypeError, match="backend"):
        SSM(make()).filter(None, Y, method="kalman")
    with pytest.raises(ValueError, match="num_steps"):
        SSM(make()).forecast(None, 0, Y)


def test_non_positive_definite_covariance_is_named():
    from ssmppl.models import linear_gaussian_ssm

    ssm = SSM(linear_gaussian_ssm(2, 3))
    p = ssm.init_params(jax.random.PRNGKey(0), T=3)
    y = np.ones((5, 3))
    with pytest.raises(ValueError, match=r"parameter 'Q' .* outside its support \(PositiveDefinite\).*transition "
                       r"covariance of site 'z' is NaN or not positive semi-definite"):
        ssm.log_likelihood(dict(p, Q=jnp.array([[1.0, 2.0], [2.0, 1.0]])), y)
    with pytest.raises(ValueError, match=r"parameter 'R'.*emission covariance of site 'y'"):
        ssm.filter(dict(p, R=-jnp.eye(3)), y)


def test_nan_in_inputs_is_an_error_with_the_step():
    def model(u, y=None):
        z0 = numpyro.sample("z0", dist.Normal(0.0, 1.0))

        def step(z_prev, xs):
            u_t, y_t = xs
            z = numpyro.sample("z", dist.Normal(0.5 * z_prev + u_t, 1.0))
            numpyro.sample("y", dist.Normal(z, 1.0), obs=y_t)
            return z, None

        scan(step, z0, (u, y))

    u = np.zeros(6)
    u[3] = np.nan
    with pytest.raises(ValueError, match=r"transition mean of site 'z' is NaN at steps \[4\]"):
        SSM(model).smooth(None, u, np.ones(6))
    # NaN observations are data, not an error
    y = np.ones(6)
    y[2] = np.nan
    assert np.isfinite(SSM(model).log_likelihood(None, np.zeros(6), y))
