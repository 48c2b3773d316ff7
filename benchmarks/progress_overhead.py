"""The cost of fit_em / fit_sgd's live progress bar (issue 18: at most 5% slower than no bar).

A live bar (terminals, notebooks) runs a fit as 10 compiled chunks with a host round trip and a
tqdm refresh between them; without one (progress_bar=False, or outside a terminal) it is one
compiled chunk. Both are timed warm (compiled beforehand), interleaved, the median of --reps rounds;
the bar writes to /dev/null as if it were a terminal (``progress.interactive`` forced True).

    taskset -c 0 python -m benchmarks.progress_overhead [--reps 7]

Cases: the Nile-like local level (T = 100, fit_em 600 iterations, the notebook's fit; fit_sgd 1000
epochs) and the trend + 11 dummy-seasonal model of tests/test_em_stall.py (13 states, T = 120,
fit_em 50 iterations).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


@contextlib.contextmanager
def _bar_to_devnull(live):
    from ssmppl.learning import progress

    saved_interactive, saved_stderr = progress.interactive, sys.stderr
    progress.interactive = lambda: live
    with open(os.devnull, "w") as sink:
        sys.stderr = sink
        try:
            yield
        finally:
            sys.stderr, progress.interactive = saved_stderr, saved_interactive


def _timed(fit, live):
    with _bar_to_devnull(live):
        start = time.perf_counter()
        out = fit()
        jax.block_until_ready(out)
        return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)

    import ssmppl
    from ssmppl.models import local_level

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
    from test_em_stall import co2_like, trend_seasonal

    rng = np.random.default_rng(0)
    nile = jnp.asarray(np.cumsum(rng.normal(0, 40, 100)) + 900 + rng.normal(0, 120, 100), jnp.float32)
    level = ssmppl.SSM(local_level(initial_mean=900.0, initial_variance=1e5))
    start = {"sigma2_obs": jnp.asarray(10000.0), "sigma2_level": jnp.asarray(1000.0)}
    seasonal = ssmppl.SSM(trend_seasonal)
    co2 = jnp.asarray(co2_like(120), jnp.float32)
    cases = {
        "local level fit_em x600": lambda bar: level.fit_em(start, nile, num_iters=600, progress_bar=bar),
        "local level fit_sgd x1000": lambda bar: level.fit_sgd(start, nile, num_epochs=1000, progress_bar=bar),
        "trend+seasonal (13 states) fit_em x50": lambda bar: seasonal.fit_em(None, co2, num_iters=50,
                                                                             progress_bar=bar),
    }
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, dtype float32, median of {args.reps} warm runs")
    print("| case | no bar (s) | live bar (s) | overhead |")
    print("|---|---|---|---|")
    for name, fit in cases.items():
        _timed(lambda: fit(False), False)  # compile both programs (one chunk, 10 chunks)
        _timed(lambda: fit(True), True)
        off, on = [], []
        for _ in range(args.reps):
            off.append(_timed(lambda: fit(False), False))
            on.append(_timed(lambda: fit(True), True))
        t_off, t_on = statistics.median(off), statistics.median(on)
        print(f"| {name} | {t_off:.3f} | {t_on:.3f} | {100 * (t_on / t_off - 1):+.1f}% |", flush=True)


if __name__ == "__main__":
    main()
