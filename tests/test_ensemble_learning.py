"""Must-show 3 of the ensemble issue: the Lorenz-96 forcing recovered through the EnKF likelihood.

The oracle is the true forcing (F = 8) that simulated the data, with a tolerance from the
curvature of the EnKF log-likelihood at its maximum (the asymptotic standard error)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest

from ssmppl import SSM, EnKF
from ssmppl.models import lorenz96

pytestmark = pytest.mark.slow

DIM, T, F_TRUE = 10, 100, 8.0
METHOD = EnKF(20, "etkf", inflation=1.02)
KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def data(x64_module):
    ssm = SSM(lorenz96(dim=DIM, dt=0.05, obs_noise=1.0, process_noise=0.0))
    _, y = ssm.sample(jax.random.PRNGKey(3), {"forcing": F_TRUE}, T=T)
    return ssm, y


def _standard_error(ssm, y, F, h=1e-3):
    # curvature by central differences of the gradient (second derivatives through eigh are not supported)
    grad = jax.jit(jax.grad(lambda f: ssm.log_likelihood({"forcing": f}, y=y, method=METHOD, key=KEY)))
    curvature = (grad(F + h) - grad(F - h)) / (2 * h)
    assert curvature < 0
    return float(1.0 / jnp.sqrt(-curvature))


def test_fit_sgd_recovers_the_forcing(data):
    ssm, y = data
    params, losses = ssm.fit_sgd({"forcing": 6.0}, y=y, method=METHOD, key=KEY, optimizer=optax.adam(0.05),
                                 num_epochs=300, frozen=("obs_noise",), progress_bar=False)
    F = float(params["forcing"])
    se = _standard_error(ssm, y, F)
    assert abs(F - F_TRUE) < 4 * se, (F, se)
    # the fit climbed: the final loss is far below the start's
    assert losses[-1] < 0.5 * losses[0]
    # and it is near a maximum of the (fixed-key) EnKF likelihood: small gradient there, in s.e. units
    grad = jax.grad(lambda f: ssm.log_likelihood({"forcing": f}, y=y, method=METHOD, key=KEY))(F)
    assert abs(float(grad)) * se < 0.5  # Adam with a fixed step hovers within a fraction of an s.e.


def test_sample_posterior_through_enkf(data, x64):
    ssm, y = data
    prior = SSM(lorenz96(dim=DIM, dt=0.05, obs_noise=1.0, process_noise=0.0,
                         priors={"forcing": dist.Normal(8.0, 3.0)}))
    post = prior.sample_posterior(jax.random.PRNGKey(1), y=y, method=METHOD, num_warmup=200, num_samples=300,
                                  num_chains=2, init_params={"forcing": 6.0}, progress_bar=False)
    draws = np.asarray(post.samples["forcing"]).ravel()
    mean, sd = draws.mean(), draws.std()
    assert abs(mean - F_TRUE) < 4 * sd, (mean, sd)
    # the posterior sd agrees with the Laplace approximation of the same likelihood (prior sd 3 is negligible)
    se = _standard_error(ssm, y, mean)
    assert 0.6 < sd / se < 1.6, (sd, se)


def test_fit_em_through_enks(x64):
    ssm = SSM(lorenz96(dim=DIM, dt=0.05, obs_noise=1.0, process_noise=0.3))
    _, y = ssm.sample(jax.random.PRNGKey(3), {"forcing": F_TRUE}, T=T)
    params, lls = ssm.fit_em({"forcing": 6.0}, y=y, method=METHOD, key=KEY, num_iters=15,
                             frozen=("obs_noise", "process_noise"), progress_bar=False)
    F = float(params["forcing"])
    se = _standard_error(ssm, y, F)
    assert abs(F - F_TRUE) < 4 * se, (F, se)
    assert float(lls[-1]) > float(lls[0]) + 10
