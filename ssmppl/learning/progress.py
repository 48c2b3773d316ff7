"""Long fits as a few compiled chunks of iterations, with a progress bar between them.

Each chunk is one jitted ``lax.scan`` of a fixed number of iterations (padding
iterations past the end do nothing), so a fit compiles once whatever its length,
and the bar advances without callbacks from inside compiled code.

``progress_bar=True`` shows a live tqdm bar only where one can be seen: a terminal
(stderr is a TTY) or a Jupyter kernel. Elsewhere (logs, CI, pipes) a redrawn bar is
noise, so the fit runs as one compiled chunk and prints one line when it ends.
"""

from __future__ import annotations

import sys
import time

import numpy as np

RUNNING, CONVERGED, DIVERGED = 0, 1, 2

# Progress-bar refreshes per fit. Each chunk costs a call into compiled code (~2 ms on a loaded 2-core CPU
# for a local-level EM step program, benchmarks/progress_overhead.py): 50 refreshes made a 600-iteration
# Nile fit 34% slower than one chunk, 10 keep the bar within ~5% of no bar.
_NUM_UPDATES = 10


def interactive() -> bool:
    """Whether a live bar can be seen: stderr (tqdm's stream) is a terminal, or a Jupyter kernel runs."""
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # a replaced or closed stream
        pass
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and hasattr(shell, "kernel")  # a notebook's kernel, not a terminal IPython


def progress_mode(progress_bar: bool):
    """"bar" (a live bar), "line" (one line at the end) or None (silent), decided once per fit."""
    if not progress_bar:
        return None
    return "bar" if interactive() else "line"


def chunk_size(total: int, mode) -> int:
    """Iterations per compiled chunk: ``_NUM_UPDATES`` chunks under a live bar (10% steps), else one."""
    return max(1, -(-total // _NUM_UPDATES)) if mode == "bar" else max(1, total)


def run_in_chunks(run_chunk, state, total, mode, desc, status_of, describe):
    """Call ``run_chunk(state, start) -> (state, outputs (chunk,))`` until ``total``
    iterations are done or ``status_of(state)`` is no longer RUNNING; ``mode`` from
    ``progress_mode``.

    Returns (state, outputs concatenated (total,) with NaN past the stop).
    """
    chunk = chunk_size(total, mode)
    bar = None
    if mode == "bar":
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, leave=True)
    began = time.perf_counter()
    outputs, done = [], 0
    try:
        for start in range(0, total, chunk):
            state, out = run_chunk(state, start)
            out = np.asarray(out)
            outputs.append(out)
            done = min(total, start + chunk)
            if bar is not None:
                bar.update(done - start)
                finite = out[np.isfinite(out)]
                if finite.size:
                    bar.set_postfix_str(describe(finite[-1]))
            if int(status_of(state)) != RUNNING:
                break
    finally:
        if bar is not None:
            bar.close()
    outputs = np.concatenate(outputs)[:total]
    if mode == "line":
        finite = outputs[np.isfinite(outputs)]
        status = {RUNNING: "", CONVERGED: ", converged", DIVERGED: ", stopped (not finite)"}.get(
            int(status_of(state)), "")
        last = f", {describe(finite[-1])}" if finite.size else ""
        print(f"{desc}: {finite.size} of {total} iterations in {time.perf_counter() - began:.1f} s{last}{status}",
              file=sys.stderr, flush=True)
    return state, outputs
