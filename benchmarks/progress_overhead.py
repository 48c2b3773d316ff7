"""The cost of fit_em / fit_sgd's live progress bar (issue 18: at most 5% slower than no bar).

A live bar (terminals, notebooks) runs a fit as 10 compiled chunks with a host round trip and a
tqdm refresh between them; without one (progress_bar=False, or outside a terminal) it is one
compiled chunk. Both are timed warm (compiled beforehand), interleaved, the median of --reps rounds;
the bar writes to /dev/null as if it were a terminal (``progress.interactive`` forced True).

    taskset -c 0 python -m benchmarks.run progress_overhead --dtype float32 [--reps 7]

Cases: the Nile-like local level (T = 100, fit_em 600 iterations, the notebook's fit; fit_sgd 1000
epochs) and the trend + 11 dummy-seasonal model of tests/test_em_stall.py (13 states, T = 120,
fit_em 50 iterations).
"""

from __future__ import annotations

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


TITLE = "Progress-bar overhead of fit_em / fit_sgd"


def arguments(p):
    p.add_argument("--reps", type=int, help="interleaved rounds (default 7; --short: 2)")


def run(args, report):
    import ssmppl
    from ssmppl.models import local_level

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
    from test_em_stall import co2_like, trend_seasonal

    reps = args.reps or (2 if args.short else 7)
    dtype = jnp.float64 if args.dtype == "float64" else jnp.float32
    rng = np.random.default_rng(0)
    nile = jnp.asarray(np.cumsum(rng.normal(0, 40, 100)) + 900 + rng.normal(0, 120, 100), dtype)
    level = ssmppl.SSM(local_level(initial_mean=900.0, initial_variance=1e5))
    start = {"sigma2_obs": jnp.asarray(10000.0), "sigma2_level": jnp.asarray(1000.0)}
    seasonal = ssmppl.SSM(trend_seasonal)
    co2 = jnp.asarray(co2_like(120), dtype)
    n = (60, 100, 10) if args.short else (600, 1000, 50)
    cases = {
        f"local level fit_em x{n[0]}": lambda bar: level.fit_em(start, nile, num_iters=n[0], progress_bar=bar),
        f"local level fit_sgd x{n[1]}": lambda bar: level.fit_sgd(start, nile, num_epochs=n[1], progress_bar=bar),
        f"trend+seasonal (13 states) fit_em x{n[2]}": lambda bar: seasonal.fit_em(None, co2, num_iters=n[2],
                                                                                 progress_bar=bar),
    }
    rows = []
    for name, fit in cases.items():
        _timed(lambda: fit(False), False)  # compile both programs (one chunk, 10 chunks)
        _timed(lambda: fit(True), True)
        off, on = [], []
        for _ in range(reps):
            off.append(_timed(lambda: fit(False), False))
            on.append(_timed(lambda: fit(True), True))
        t_off, t_on = statistics.median(off), statistics.median(on)
        report.log(f"    {name}: no bar {t_off:.3f} s, live bar {t_on:.3f} s")
        rows.append([name, f"{t_off:.3f}", f"{t_on:.3f}", f"{100 * (t_on / t_off - 1):+.1f}%"])
        report.table("Warm fits with and without a live bar", ["case", "no bar (s)", "live bar (s)", "overhead"], rows,
                     f"Median of {reps} interleaved rounds of warm fits (both programs compiled beforehand); the live "
                     "bar writes to /dev/null as in a terminal. Goal (issue 18): overhead at most 5%.", left=1)
        report.case_done()
    return rows
