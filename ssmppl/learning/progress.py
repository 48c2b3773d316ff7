"""Long fits as a few compiled chunks of iterations, with a progress bar between them.

Each chunk is one jitted ``lax.scan`` of a fixed number of iterations (padding
iterations past the end do nothing), so a fit compiles once whatever its length,
and the bar advances without callbacks from inside compiled code.
"""

from __future__ import annotations

import numpy as np

RUNNING, CONVERGED, DIVERGED = 0, 1, 2

_NUM_UPDATES = 50  # progress-bar refreshes per fit


def chunk_size(total: int, progress_bar: bool) -> int:
    return max(1, -(-total // _NUM_UPDATES)) if progress_bar else max(1, total)


def run_in_chunks(run_chunk, state, total, progress_bar, desc, status_of, describe):
    """Call ``run_chunk(state, start) -> (state, outputs (chunk,))`` until ``total``
    iterations are done or ``status_of(state)`` is no longer RUNNING.

    Returns (state, outputs concatenated (total,) with NaN past the stop).
    """
    chunk = chunk_size(total, progress_bar)
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, leave=True)
    outputs = []
    try:
        for start in range(0, total, chunk):
            state, out = run_chunk(state, start)
            out = np.asarray(out)
            outputs.append(out)
            if bar is not None:
                bar.update(min(chunk, total - start))
                finite = out[np.isfinite(out)]
                if finite.size:
                    bar.set_postfix_str(describe(finite[-1]))
            if int(status_of(state)) != RUNNING:
                break
    finally:
        if bar is not None:
            bar.close()
    return state, np.concatenate(outputs)[:total]
