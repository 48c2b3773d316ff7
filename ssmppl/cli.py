"""The ``ssmppl`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ssmppl", description="State-space models as NumPyro programs.")
    sub = parser.add_subparsers(dest="command", required=True)
    what = ("the demo: a linear Gaussian SSM, a 2-d rotating state (F = 0.99 x a rotation by pi/20 per step) "
            "observed through 10 noisy channels, T = 100: simulate, smooth, forecast 50 steps, fit (EM, SGD), "
            "sample the posterior (NUTS); write figures")
    demo = sub.add_parser("demo", help=what, description=what)
    demo.add_argument("--out", default="demo_out", help="folder for the figure (default: demo_out)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-cache", action="store_true",
                      help="do not use the persistent compilation cache (default: compiled programs are kept in "
                           "$SSMPPL_CACHE_DIR or ~/.cache/ssmppl/jax, so a second run compiles nothing it compiled before)")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import run_demo

        if not args.no_cache:
            from .compilation_cache import enable_compilation_cache

            print(f"compilation cache: {enable_compilation_cache()} (--no-cache to run without)")
        print("ssmppl demo: linear Gaussian SSM, 2-d state, 10-d emissions, T=100, 50-step forecast")
        result = run_demo(args.out, seed=args.seed, progress_bar=True)
        print(f"marginal log-likelihood (Kalman, true parameters): {result['marginal_loglik']:.4f}")
        print(f"observations inside the smoothed ±2 sd band: {100 * result['coverage_2sd']:.1f}%")
        print(f"fitted from a random initialisation: EM ({result['em_iters']} iterations) log-likelihood "
              f"{result['em_loglik']:.4f}; SGD ({result['sgd_epochs']} Adam epochs) {result['sgd_loglik']:.4f}")
        print(f"\nNUTS on F, q, r (Kalman-marginalised, {result['hmc_summary'].shape[0]} scalars): "
              f"{result['hmc_divergences']} divergences, max r-hat {result['hmc_max_rhat']:.3f}")
        print(result["hmc_summary"].to_string())
        print("true values inside the 94% HDI: " + ", ".join(f"{k}: {v}" for k, v in result["hmc_truth_inside_94"].items()))
        print(f"figures written to {result['figure']}, {result['learning_curves']}, {result['fitted_figure']}, "
              f"{result['hmc_trace']}, {result['state_posterior']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
