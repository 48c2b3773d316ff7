"""The benchmark runner (``python -m benchmarks.run``) end to end on a small case: the harness runs
the implementations, checks them against each other before timing, times the correct ones and
reports a wrong one (here dynamax given a different observation noise) instead of timing it."""

import pytest
from benchmark_scripts import run_suite


def test_short_case_end_to_end_reports_a_wrong_implementation(x64, monkeypatch):
    from benchmarks import kalman

    right = kalman.dynamax_params
    monkeypatch.setattr(kalman, "dynamax_params", lambda p, dtype: right(dict(p, R=2.0 * p["R"]), dtype))
    report = run_suite("kalman", "--short", "--T", "50", "--dims", "2x2", "--ops", "filter",
                       "--skip", "parallel", "statsmodels")
    [(size, results)] = report.results
    assert size == (50, 2, 2) and set(results) == {"ssmppl seq filter", "dynamax seq filter"}
    ours, wrong = results["ssmppl seq filter"], results["dynamax seq filter"]
    assert ours.ok and len(ours.calls) >= 2 and ours.min > 0  # checked, then timed
    assert wrong.wrong and not wrong.calls  # reported, not timed
    assert not report.ok and any("dynamax seq filter: log-likelihood" in m for ok, m in report.checks if not ok)
    [table] = [s for s in report.sections if s[1]]
    header, [row], _ = table[1]
    assert row[header.index("dynamax seq")] == "wrong" and row[header.index("dmx/ssm seq")] == "–"


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["kalman", "learning", "hmc", "nonlinear", "nonlinear_accuracy",
                                   "particle_filters", "latency", "progress_overhead"])
def test_short_mode_passes_its_checks(suite):
    """Every suite's short mode (da_lorenz and ensf: their own tests) runs and passes its checks."""
    report = run_suite(suite, "--short")
    assert report.ok, [m for ok, m in report.checks if not ok]
