"""Resampling schemes (issue 6 groundwork): unbiased offspring counts, and their variances.

Oracles: E[count_i] = n w_i for every scheme, tested with a z-score whose standard
error comes from the counts' own sample variance over M independent draws; the
multinomial counts' variance equals n w_i (1 - w_i); stratified, systematic and
residual counts have smaller variance (for residual, the multinomial variance of the
residual draws, R r_i (1 - r_i), is the exact value).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmppl.maths.resampling import (
    RESAMPLERS,
    effective_sample_size,
    offspring_counts,
    resampler,
    stratified_resample,
    systematic_resample,
)

pytestmark = pytest.mark.usefixtures("x64")

M = 20_000  # independent resampling draws per scheme
N = 12
W = np.array([0.3, 0.2, 0.15, 0.1, 0.08, 0.06, 0.04, 0.03, 0.02, 0.01, 0.007, 0.003])


def _counts(scheme, n):
    fn = RESAMPLERS[scheme]
    keys = jax.random.split(jax.random.PRNGKey(0), M)
    draw = jax.jit(jax.vmap(lambda k: offspring_counts(fn(k, jnp.log(jnp.asarray(W)), n), N)))
    return np.asarray(draw(keys))


@pytest.fixture(scope="module")
def counts(x64_module):
    return {(s, n): _counts(s, n) for s in RESAMPLERS for n in (N, 25)}


@pytest.mark.parametrize("scheme", sorted(RESAMPLERS))
@pytest.mark.parametrize("n", [N, 25])
def test_offspring_counts_are_unbiased(counts, scheme, n):
    c = counts[(scheme, n)]
    assert np.all(c.sum(axis=1) == n)
    se = np.sqrt(np.maximum(c.var(axis=0, ddof=1), 1e-12) / M)
    z = (c.mean(axis=0) - n * W) / se
    # 12 components, |z| < 4.5: a false alarm has probability ~1e-4 per test
    deterministic = c.var(axis=0) == 0
    assert np.all(np.abs(z[~deterministic]) < 4.5), z
    assert np.all(c.mean(axis=0)[deterministic] == n * W[deterministic])


@pytest.mark.parametrize("n", [N, 25])
def test_variances(counts, n):
    var = {s: counts[(s, n)].var(axis=0, ddof=1) for s in RESAMPLERS}
    exact = n * W * (1 - W)
    # the sample variance of M draws has relative standard error ~ sqrt(2 / M) ~ 1%
    np.testing.assert_allclose(var["multinomial"], exact, rtol=0.06)
    w = np.asarray(jax.nn.softmax(jnp.log(jnp.asarray(W))))  # the weights the scheme sees, to the last bit:
    copies = np.floor(n * w)  # n w_i = 2 can round to 1.999..., which moves a copy to the residual draws
    r = n * w - copies
    R = n - copies.sum()
    np.testing.assert_allclose(var["residual"], R * (r / R) * (1 - r / R), rtol=0.06, atol=1e-9)
    for scheme in ("stratified", "systematic", "residual"):
        assert var[scheme].sum() < 0.6 * exact.sum(), scheme
        assert np.all(var[scheme] <= exact * 1.06), scheme
    # systematic and stratified: each count is floor(n w_i) or that + 1 or + 2 (adjacent strata)
    for scheme in ("stratified", "systematic"):
        assert np.all(np.abs(counts[(scheme, n)] - n * W) < 2 + 1e-12)


def test_systematic_is_deterministic_given_the_key_and_sorted():
    a = systematic_resample(jax.random.PRNGKey(3), jnp.log(jnp.asarray(W)), N)
    b = systematic_resample(jax.random.PRNGKey(3), jnp.log(jnp.asarray(W)), N)
    assert np.array_equal(a, b)
    assert np.all(np.diff(np.asarray(a)) >= 0)


def test_effective_sample_size_and_errors():
    assert float(effective_sample_size(jnp.zeros(10))) == pytest.approx(10.0)
    assert float(effective_sample_size(jnp.array([0.0, -jnp.inf, -jnp.inf]))) == pytest.approx(1.0)
    np.testing.assert_allclose(effective_sample_size(jnp.log(jnp.asarray(W))), 1 / np.sum(W**2), rtol=1e-6)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="positive int"):
            systematic_resample(jax.random.PRNGKey(0), jnp.zeros(4), bad)
    with pytest.raises(ValueError, match="systematic"):
        resampler("bogus")


@pytest.mark.parametrize("N, n", [(40, 50), (50, 7)])
def test_linear_time_schemes_equal_the_inverse_cdf_by_binary_search(x64, N, n):
    """Systematic and stratified resampling find each particle's first slot in closed form
    (O(N)); they must pick exactly the ancestors of the binary search on the same uniforms,
    zero weights and single survivors included."""
    from ssmppl.maths.resampling import inverse_cdf, normalized_weights

    def one(k):
        lw = jax.random.normal(jax.random.fold_in(k, 2), (N,)) * 3
        dead = jax.random.bernoulli(jax.random.fold_in(k, 5), 0.3, (N,)) & (jnp.arange(N) > 0)
        lw = jnp.where(dead, -jnp.inf, lw)
        w = normalized_weights(lw)
        U = jax.random.uniform(jax.random.fold_in(k, 3), (), w.dtype)
        Us = jax.random.uniform(jax.random.fold_in(k, 4), (n,), w.dtype)
        return (inverse_cdf(w, (jnp.arange(n) + U) / n), systematic_resample(jax.random.fold_in(k, 3), lw, n),
                inverse_cdf(w, (jnp.arange(n) + Us) / n), stratified_resample(jax.random.fold_in(k, 4), lw, n))

    a, b, c, d = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(N), 2000))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(c, d)
