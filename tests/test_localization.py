"""Localisation tapers and local observation sets (NumPy only: no compilation)."""

import numpy as np
import pytest

from ssmppl.inference.ensemble.localization import CUTOFF, Localization, gaspari_cohn, taper


def test_gaspari_cohn_closed_form_values():
    """Gaspari & Cohn (1999, eq. 4.10): 1 at 0, 5/24 at r = 1 (both pieces), 0 from r = 2, continuous
    with a continuous slope at the joins, and a positive-definite correlation on a ring (its discrete
    Fourier transform is non-negative)."""
    assert gaspari_cohn(np.array([0.0]))[0] == 1.0
    np.testing.assert_allclose(gaspari_cohn(np.array([1.0, 1.0 + 1e-12])), 5 / 24, atol=1e-10)
    assert np.all(gaspari_cohn(np.array([2.0, 2.5, 10.0])) == 0.0)
    h = 1e-6
    for r in (1.0, 2.0):
        left = (gaspari_cohn(np.array([r - h])) - gaspari_cohn(np.array([r - 2 * h]))) / h
        right = (gaspari_cohn(np.array([r + 2 * h])) - gaspari_cohn(np.array([r + h]))) / h
        np.testing.assert_allclose(left, right, atol=1e-4)
    dim = 200
    lags = np.minimum(np.arange(dim), dim - np.arange(dim))
    spectrum = np.fft.fft(gaspari_cohn(lags / 10.0)).real
    assert spectrum.min() > -1e-10


def test_radius_convention():
    """DAPPER's: Gaspari-Cohn half-width 1.82 radius (0.634 at d = radius); Gaussian exp(-1/2) at
    d = radius; the cut-off keeps d <= radius."""
    d = np.array([4.0])
    np.testing.assert_allclose(taper(d, 4.0, "gaspari_cohn"), gaspari_cohn(np.array([1 / 1.82])))
    np.testing.assert_allclose(taper(d, 4.0, "gaussian"), np.exp(-0.5))
    assert taper(np.array([4.0, 4.01]), 4.0, "cutoff").tolist() == [1.0, 0.0]


@pytest.mark.parametrize("make", [
    lambda rng: Localization.on_ring(4, 40),
    lambda rng: Localization.on_ring(2.5, 40, observed=np.arange(0, 40, 3), taper="gaussian"),
    lambda rng: Localization(3.0, rng.uniform(0, 50, 30), rng.uniform(0, 50, 17), taper="cutoff"),
    lambda rng: Localization(3.0, rng.uniform(0, 50, 30), rng.uniform(0, 50, 17), period=50.0),
])
def test_sorted_search_equals_all_pairs(make):
    """The 1-D sorted search finds exactly the observations, and coefficients, of the all-pairs
    computation (the same coordinates with a second, constant axis)."""
    loc = make(np.random.default_rng(0))
    flat = Localization(loc.radius, np.c_[loc.state_coords, 0 * loc.state_coords],
                        np.c_[loc.obs_coords, 0 * loc.obs_coords], loc.taper,
                        None if loc.period is None else (loc.period, 1e9))
    d, m = len(loc.state_coords), len(loc.obs_coords)
    dense = []
    for idx, coef in (loc.local_observations(), flat.local_observations()):
        A = np.zeros((d, m))
        for r in range(d):
            np.add.at(A[r], idx[r], coef[r])
        dense.append(A)
    np.testing.assert_allclose(dense[0], dense[1], atol=1e-12)
    brute = taper(np.abs(loc.state_coords - loc.obs_coords.T) if loc.period is None else
                  np.minimum(np.abs(loc.state_coords - loc.obs_coords.T),
                             loc.period - np.abs(loc.state_coords - loc.obs_coords.T)), loc.radius, loc.taper)
    np.testing.assert_allclose(dense[0], np.where(brute > CUTOFF, brute, 0.0), atol=1e-12)


def test_bad_localization_settings():
    with pytest.raises(ValueError, match="radius"):
        Localization.on_ring(0.0, 10)
    with pytest.raises(ValueError, match="radius"):
        Localization.on_ring(-1.0, 10)
    with pytest.raises(ValueError, match="taper"):
        Localization.on_ring(2.0, 10, taper="box")
    with pytest.raises(ValueError, match="coordinate"):
        Localization(2.0, np.zeros((5, 2)), np.zeros(3))
