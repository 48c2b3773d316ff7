"""ssmppl.diagnostics against brute force, closed forms and sampling laws."""

import math
import warnings

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from scipy import stats
from scipy.special import gammaln

from ssmppl import diagnostics as dg


def _c(k):
    """E[sqrt(chi2_k / k)]."""
    return math.sqrt(2.0 / k) * math.exp(gammaln((k + 1) / 2) - gammaln(k / 2))


def _calibrated(rng, T, N, d, scale=1.0):
    """Members and truth i.i.d. N(mu_tj, scale^2) given random centres mu_tj: (T, N, d), (T, d)."""
    mu = 3.0 * rng.standard_normal((T, 1, d))
    ens = mu + scale * rng.standard_normal((T, N, d))
    truth = mu[:, 0] + scale * rng.standard_normal((T, d))
    return ens, truth


def test_rmse_and_spread(x64):
    rng = np.random.default_rng(0)
    est, truth = rng.standard_normal((2, 7, 4))
    np.testing.assert_allclose(dg.rmse(est, truth), np.sqrt(np.mean((est - truth) ** 2, axis=1)), rtol=1e-12)
    # hand case: members 0 and 2 -> unbiased variance 2 in the one component
    np.testing.assert_allclose(dg.spread(np.array([[[0.0], [2.0]]])), [math.sqrt(2.0)], rtol=1e-12)
    # known variance: spread^2 = sigma^2 chi2_k / k with k = d (N-1); its time mean has sd sigma^2 sqrt(2/(T k))
    T, N, d, sigma = 200, 8, 30, 1.7
    ens = 5.0 + sigma * rng.standard_normal((T, N, d))
    s2 = np.asarray(dg.spread(ens)) ** 2
    assert abs(s2.mean() - sigma**2) < 4 * sigma**2 * math.sqrt(2 / (T * d * (N - 1)))
    assert float(dg.time_average(np.arange(10.0), 4)) == 6.5
    with pytest.raises(ValueError, match="spin_up"):
        dg.time_average(np.arange(3.0), 3)


def _crps_brute(ens, y, fair):
    """O(N^2) ensemble CRPS, mean over components. ens: (T, N, d), y: (T, d)."""
    n = ens.shape[1]
    skill = np.mean(np.abs(ens - y[:, None]), axis=1)
    pairs = np.abs(ens[:, :, None] - ens[:, None, :]).sum(axis=(1, 2))
    return np.mean(skill - pairs / (2 * n * (n - 1) if fair else 2 * n * n), axis=1)


@pytest.mark.parametrize("fair", [False, True])
def test_crps_sorted_matches_brute_force(x64, fair):
    rng = np.random.default_rng(1)
    ens = rng.standard_normal((6, 13, 5))
    y = rng.standard_normal((6, 5))
    ens[0, :, 0] = np.round(ens[0, :, 0])  # ties among members and with the truth
    y[0, 0] = ens[0, 3, 0]
    np.testing.assert_allclose(dg.crps_ensemble(ens, y, fair=fair), _crps_brute(ens, y, fair), rtol=1e-12, atol=1e-14)
    # one member: the CRPS is |x - y| (non-fair)
    if not fair:
        np.testing.assert_allclose(dg.crps_ensemble(ens[:, :1], y), np.mean(np.abs(ens[:, 0] - y), axis=1), rtol=1e-12)
    # jit and vmap (over a leading batch axis) agree with the eager call
    crps = jax.vmap(jax.jit(lambda e, t: dg.crps_ensemble(e, t, fair=fair)))
    batched = crps(jnp.stack([ens, ens]), jnp.stack([y, y]))
    np.testing.assert_allclose(batched[1], _crps_brute(ens, y, fair), rtol=1e-12)


def test_crps_gaussian_closed_form(x64):
    # CRPS(N(mu, s^2), y) = s [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)], z = (y - mu)/s
    rng = np.random.default_rng(2)
    N, mu, s = 20000, 0.3, 1.5
    ys = np.array([-2.0, 0.0, 0.5, 3.0])
    ens = mu + s * rng.standard_normal((len(ys), N, 1))
    z = (ys - mu) / s
    exact = s * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))
    # MC error: the (fair, U-statistic) estimator's first-order projection is
    # g(x) = |x - y| - E|x - X'|, with E|x - X'| = s [u (2 Phi(u) - 1) + 2 phi(u)], u = (x - mu)/s;
    # sd ~ sd(g(X)) / sqrt(N). The non-fair one adds the bias s / (sqrt(pi) N).
    u = (ens[..., 0] - mu) / s
    g = np.abs(ens[..., 0] - ys[:, None]) - s * (u * (2 * stats.norm.cdf(u) - 1) + 2 * stats.norm.pdf(u))
    tol = 4 * g.std(axis=1) / math.sqrt(N)
    fair = np.asarray(dg.crps_ensemble(ens, ys[:, None], fair=True))
    plain = np.asarray(dg.crps_ensemble(ens, ys[:, None]))
    assert np.all(np.abs(fair - exact) < tol), (fair, exact, tol)
    assert np.all(np.abs(plain - exact) < tol + s / (math.sqrt(math.pi) * N))
    assert np.all(fair < plain)  # the fair version subtracts the larger (unbiased) pair term


def test_rank_histogram_calibrated_is_flat_and_underdispersed_is_u_shaped(x64):
    rng = np.random.default_rng(3)
    T, N, d = 1500, 9, 4
    ens, truth = _calibrated(rng, T, N, d)
    counts = np.asarray(dg.rank_histogram(ens, truth))
    assert counts.shape == (N + 1,) and counts.sum() == T * d
    # independent (t, j) pairs: Pearson chi2 with N dof; a generous level
    flat = dg.rank_histogram_chi2(counts)
    ref = stats.chisquare(counts)
    np.testing.assert_allclose([flat.statistic, flat.p_value], [ref.statistic, ref.pvalue], rtol=1e-8)
    assert flat.dof == N and flat.p_value > 1e-3
    # the random tie-break path gives the same counts when there are no ties
    np.testing.assert_array_equal(dg.rank_histogram(ens, truth, key=jax.random.PRNGKey(0)), counts)

    # members shrunk to 0.4 of their spread around their mean: under-dispersed
    narrow = ens.mean(1, keepdims=True) + 0.4 * (ens - ens.mean(1, keepdims=True))
    u = np.asarray(dg.rank_histogram(narrow, truth))
    assert min(u[0], u[-1]) > 3 * u[1:-1].mean(), u
    assert dg.rank_histogram_chi2(u).p_value < 1e-10


def test_rank_histogram_ties_missing_and_nonfinite(x64):
    T, N, d = 5, 4, 3
    same = np.zeros((T, N, d))
    # truth equal to every member: each pair spreads 1/(N+1) over all ranks -> exactly flat
    np.testing.assert_allclose(dg.rank_histogram(same, np.zeros((T, d))), np.full(N + 1, T * d / (N + 1)), rtol=1e-12)
    # random tie-breaking: integer counts, the right total, and roughly flat in expectation
    big = np.zeros((400, N, 5))
    r = np.asarray(dg.rank_histogram(big, np.zeros((400, 5)), key=jax.random.PRNGKey(1)))
    assert np.all(r == np.round(r)) and r.sum() == 2000
    assert stats.chisquare(r).pvalue > 1e-4
    # two members tied with the truth, one below, one above: ranks 1, 2, 3 get 1/3 each
    ens = np.array([[[-1.0], [0.0], [0.0], [2.0]]])
    np.testing.assert_allclose(dg.rank_histogram(ens, np.zeros((1, 1))), [0, 1 / 3, 1 / 3, 1 / 3, 0], atol=1e-12)
    # missing truth is skipped; a NaN member makes the histogram NaN
    rng = np.random.default_rng(4)
    ens, truth = rng.standard_normal((T, N, d)), rng.standard_normal((T, d))
    truth[2, 1] = np.nan
    assert float(np.sum(dg.rank_histogram(ens, truth))) == T * d - 1
    ens[3, 0, 0] = np.nan
    assert np.all(np.isnan(dg.rank_histogram(ens, truth)))


def _spd(rng, T, dy):
    A = rng.standard_normal((T, dy, dy))
    return A @ np.swapaxes(A, 1, 2) + 0.5 * np.eye(dy)


def test_innovation_chi2_consistency(x64):
    rng = np.random.default_rng(5)
    T, dy = 2000, 3
    S = _spd(rng, T, dy)
    d = np.einsum("tij,tj->ti", np.linalg.cholesky(S), rng.standard_normal((T, dy)))
    chi2 = np.asarray(dg.innovation_chi2(d, S))
    np.testing.assert_allclose(chi2, np.einsum("ti,ti->t", d, np.linalg.solve(S, d[..., None])[..., 0]), rtol=1e-9)
    res = dg.innovation_consistency(d, S)
    # sum chi2 ~ chi2(T dy): normalised mean has standard error sqrt(2 / (T dy))
    assert abs(float(res.normalized) - 1) < 4 * math.sqrt(2 / (T * dy))
    assert float(res.dof) == T * dy and abs(float(res.z_score)) < 4 and float(res.p_value) > 1e-4
    s = chi2.sum()
    lower = stats.chi2.cdf(s, T * dy)
    np.testing.assert_allclose(float(res.p_value), min(1.0, 2 * min(lower, 1 - lower)), rtol=1e-6)
    # innovations twice too large (S four times too small): normalised ~ 4, flagged
    bad = dg.innovation_consistency(2 * d, S)
    assert abs(float(bad.normalized) - 4) < 0.3 and float(bad.z_score) > 20 and float(bad.p_value) < 1e-12
    # spin-up drops steps
    assert float(dg.innovation_consistency(d, S, spin_up=500).dof) == (T - 500) * dy


def test_innovation_chi2_missing_components(x64):
    rng = np.random.default_rng(6)
    T, dy = 6, 4
    S = _spd(rng, T, dy)  # full (non-diagonal) covariances
    d = rng.standard_normal((T, dy))
    d[1, 2] = np.nan
    d[2, [0, 3]] = np.nan
    d[3] = np.nan  # nothing observed
    mask = np.ones((T, dy), bool)
    mask[4, 1] = False
    expected = []
    for t in range(T):
        o = np.isfinite(d[t]) & mask[t]
        expected.append(d[t, o] @ np.linalg.solve(S[t][np.ix_(o, o)], d[t, o]) if o.any() else 0.0)
    np.testing.assert_allclose(dg.innovation_chi2(d, S, mask), expected, rtol=1e-9)
    res = dg.innovation_consistency(d, S, mask)
    assert float(res.dof) == T * dy - 1 - 2 - 4 - 1
    np.testing.assert_allclose(float(res.normalized), sum(expected) / float(res.dof), rtol=1e-9)


def test_spread_skill_ratio_calibrated(x64):
    # truth exchangeable with the members: E ratio = sqrt(N/(N+1)) c(d(N-1)) / c(d) (see the docstring)
    rng = np.random.default_rng(7)
    T, N, d = 1000, 10, 20
    ens, truth = _calibrated(rng, T, N, d, scale=0.8)
    s = np.asarray(dg.spread(ens))
    r = np.asarray(dg.rmse(ens.mean(1), truth))
    ratio = float(dg.spread_skill_ratio(ens, truth))
    expected = math.sqrt(N / (N + 1)) * _c(d * (N - 1)) / _c(d)
    # delta method: spread and the mean's error are independent for Gaussian members
    sd = ratio * math.sqrt(s.var() / (T * s.mean() ** 2) + r.var() / (T * r.mean() ** 2))
    assert abs(ratio - expected) < 4 * sd, (ratio, expected, sd)
    corrected = float(dg.spread_skill_ratio(ens, truth, corrected=True))
    np.testing.assert_allclose(corrected, ratio * math.sqrt((N + 1) / N), rtol=1e-12)
    # an ensemble with half the spread scores about half
    half = ens.mean(1, keepdims=True) + 0.5 * (ens - ens.mean(1, keepdims=True))
    assert float(dg.spread_skill_ratio(half, truth, spin_up=10)) < 0.6


def _healthy(rng, T=100, N=10, d=6):
    t = np.arange(T)[:, None]
    truth = 5.0 * np.sin(0.3 * t + np.arange(d))  # climatological sd ~ 3.5
    ens = truth[:, None] + 0.5 * rng.standard_normal((T, 1, d)) + 0.5 * rng.standard_normal((T, N, d))
    return ens, truth


def test_ensemble_health_flags(x64):
    rng = np.random.default_rng(8)
    ens, truth = _healthy(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = dg.check_ensemble(ens, truth)
        assert dg.check_ensemble(ens).healthy
    assert h.healthy and h.collapse_time is None and h.divergence_time is None and "healthy" in h.message
    np.testing.assert_allclose(h.rmse, dg.rmse(ens.mean(1), truth), rtol=1e-10)

    collapsed = ens.copy()
    collapsed[40:] = collapsed[40:].mean(axis=1, keepdims=True)  # all members equal from step 40
    for ref in (truth, None):
        with pytest.warns(dg.EnsembleWarning, match="collapsed"):
            h = dg.check_ensemble(collapsed, ref)
        assert h.collapsed and h.collapse_time == 40 and not h.diverged

    # spread tiny but nonzero relative to the error: caught by the spread/RMSE ratio (with truth)
    overconfident = ens.mean(1, keepdims=True) + 1e-2 * (ens - ens.mean(1, keepdims=True))
    h = dg.ensemble_health(overconfident, truth)
    assert h.collapsed and h.collapse_time == 0

    nan = ens.copy()
    nan[30:, 2, 1] = np.nan
    with pytest.warns(dg.EnsembleWarning, match="non-finite"):
        h = dg.check_ensemble(nan)
    assert h.diverged and h.divergence_time == 30 and h.nonfinite_time == 30
    assert not h.collapsed  # NaN spread is not read as collapse

    far = ens.copy()
    far[60:] += 20.0  # mean 20 off, climatological sd ~ 3.5
    with pytest.warns(dg.EnsembleWarning, match="RMSE"):
        h = dg.check_ensemble(far, truth)
    assert h.diverged and h.divergence_time == 60 and h.nonfinite_time is None
    # its spread (0.5) is now < 0.1 x its error: overconfident, so also reported as collapsed
    assert h.collapse_time == 60 and "collapsed" in h.message
    # a short excursion (fewer than `patience` steps) is not flagged; spin-up is skipped
    blip = ens.copy()
    blip[60:63] += 20.0
    assert dg.ensemble_health(blip, truth).healthy
    assert dg.ensemble_health(far, truth, spin_up=70).divergence_time == 70
    assert dg.ensemble_health(blip, truth, spin_up=62, patience=1).divergence_time == 62


@pytest.fixture
def agg():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def test_plots(agg, x64):
    rng = np.random.default_rng(9)
    T = 50
    r, s = 1 + 0.1 * rng.random((2, T))
    ax = dg.plot_rmse_spread(np.arange(T) * 0.05, r, s, spin_up=10, logy=True)
    assert len(ax.lines) == 3 and ax.get_yscale() == "log"  # RMSE, spread, spin-up marker
    np.testing.assert_allclose(ax.lines[0].get_ydata(), r)
    assert f"{r[10:].mean():.3g}" in ax.lines[0].get_label()
    # three runs (K, T), named
    ax = dg.plot_rmse_spread(None, np.stack([r, r, r]), np.stack([s, s, s]), labels=["a", "b", "c"])
    assert len(ax.lines) == 6 and ax.lines[2].get_label().startswith("b RMSE")
    assert len(dg.plot_rmse_spread(None, r).lines) == 1

    counts = np.array([10.0, 20.0, 30.0, 40.0])
    fig, axis = agg.subplots()
    ax = dg.plot_rank_histogram(counts, ax=axis)
    assert ax is axis
    bars = ax.containers[0]
    assert len(bars) == 4
    np.testing.assert_allclose([b.get_height() for b in bars], counts / counts.sum())
    assert len(ax.lines) == 1 and ax.lines[0].get_ydata()[0] == pytest.approx(0.25)
