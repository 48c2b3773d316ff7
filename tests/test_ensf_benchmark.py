"""The ensf suite's short mode: the EnSF reference set-up (Lorenz-96, arctan observations,
sigma = 0.05, N = 20, 500 reverse steps) at d = 200 over 30 analyses, with LETKF on the same data.

The ensemble starts from N(0, I), about 4 RMS away from the truth (on the attractor). After 30
analyses (seed 0) EnSF is at 0.19 (it reaches 0.204 after 150 at d = 10^6 in the reference code, 0.206
here at d = 10^4) and LETKF (inflation 1.1, radius 2) at 0.53 (it is still locking on at step 30 on this
truth; 0.06 after 150 at d = 1,000). The suite's check (``ensf.SHORT_BOUNDS``): EnSF has locked on
(< 0.6), LETKF is on its way (< 2, half the starting error); both finite."""

import numpy as np
import pytest
from benchmark_scripts import run_suite


@pytest.mark.slow
def test_short_mode_tracks_the_truth():
    report = run_suite("ensf", "--short", "--sigmas", "0.05", "--methods", "EnSF", "LETKF")
    assert report.ok, report.checks
    for name, bound in (("EnSF", 0.6), ("LETKF", 2.0)):
        final = report.results[(200, 0.05, name)]["final"]
        assert np.isfinite(final).all() and final.mean() < bound, (name, final)
