"""One runner for every benchmark suite:

    python -m benchmarks.run <suite> [--short] [--out FILE [--append]] [--markdown] [--cpus N] [suite options]

(from the repository root; ``python -m benchmarks.run <suite> --help`` lists a suite's options).
The process pins itself to ``--cpus`` cores before numpy / jax are imported, prints the
environment, runs the suite's cases (each: set-up, implementations, correctness check, then
interleaved timing) and prints its tables; the exit status is 1 if a check failed.
"""

from __future__ import annotations

import importlib
import sys

from . import harness, peers

SUITES = {
    "kalman": "exact Kalman filter / RTS smoother against dynamax and statsmodels",
    "learning": "EM and SGD for a linear Gaussian SSM against dynamax",
    "hmc": "marginalised NUTS against dynamax's HMC recipe (ESS per second)",
    "nonlinear": "EKF, UKF and Gauss-Hermite filters against dynamax",
    "nonlinear_accuracy": "Gaussian filters and smoothers against reference posteriors",
    "particle_filters": "particle filters on the stochastic-volatility model against particles",
    "da_lorenz": "ensemble Kalman filters on DAPPER's Lorenz benchmarks, against DAPPER",
    "ensf": "the EnSF reference benchmark (Lorenz-96, arctan observations) with LETKF / ETKF",
    "progress_overhead": "fit_em / fit_sgd with and without a live progress bar",
    "latency": "time to result in fresh processes: first, repeat, new-data and new-length calls",
}


def main(argv=None):
    """Run a suite; returns its Report (``.ok``, ``.results``: what the suite's ``run`` returned)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name = next((a for a in argv if not a.startswith("-")), None)
    if name not in SUITES:
        print(__doc__ + "\nsuites:\n" + "\n".join(f"  {k:20s}{v}" for k, v in SUITES.items()))
        raise SystemExit(2)
    cpus = next((int(a.split("=", 1)[1] if "=" in a else argv[i + 1]) for i, a in enumerate(argv)
                 if a.split("=", 1)[0] == "--cpus"), 1)
    allowed, used = harness.pin_cpus(cpus)  # before numpy / jax start their thread pools
    suite = importlib.import_module(f"benchmarks.{name}")
    p = harness.parser(suite)
    if hasattr(suite, "arguments"):
        suite.arguments(p)
    args = harness.finish_arguments(p.parse_args(argv))
    args.cpus_allowed, args.cpus_used = allowed, used

    import jax

    jax.config.update("jax_enable_x64", args.dtype == "float64")
    harness.import_all_ssmppl()
    report = harness.Report(suite, args, argv)
    try:
        report.results = suite.run(args, report)
    except peers.MissingPeer as e:
        report.check(False, f"cannot run {name}: {e}")
    report.finish()
    return report


if __name__ == "__main__":
    sys.exit(0 if main().ok else 1)
