"""Progress output of fit_em / fit_sgd (issue 18): a live bar in terminals and notebooks only;
elsewhere one line per fit and one compiled chunk (a redrawn bar floods logs). The overhead of the
live bar is measured in benchmarks/progress_overhead.py, not asserted here."""

import io
import re
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

import ssmppl
from ssmppl.learning import progress
from ssmppl.learning.progress import CONVERGED, RUNNING, progress_mode, run_in_chunks
from ssmppl.models import local_level


class _Bar:
    """Stands in for tqdm: records what a live bar would show."""

    made = []

    def __init__(self, total, desc, leave):
        self.total, self.desc, self.updates, self.closed = total, desc, [], False
        _Bar.made.append(self)

    def update(self, n):
        self.updates.append(n)

    def set_postfix_str(self, text):
        self.postfix = text

    def close(self):
        self.closed = True


@pytest.fixture
def fake_tqdm(monkeypatch):
    import tqdm.auto

    _Bar.made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    return _Bar


def _counting(total, stop_after=None):
    """A run_chunk over iterations whose output i is -i (status CONVERGED once stop_after are done)."""
    calls = []

    def run_chunk(state, start):
        calls.append(start)
        chunk = progress.chunk_size(total, mode_seen[0])
        out = -np.arange(start, start + chunk, dtype=float)
        done = start + chunk
        out[out < -total + 1] = np.nan  # padding past the end
        return (CONVERGED if stop_after is not None and done >= stop_after else RUNNING), out

    mode_seen = [None]
    return run_chunk, calls, mode_seen


@pytest.mark.parametrize("terminal", [False, True])
def test_bar_only_where_it_can_be_seen(monkeypatch, fake_tqdm, capsys, terminal):
    monkeypatch.setattr(progress, "interactive", lambda: terminal)
    mode = progress_mode(True)
    assert mode == ("bar" if terminal else "line") and progress_mode(False) is None
    run_chunk, calls, seen = _counting(100)
    seen[0] = mode
    state, outputs = run_in_chunks(run_chunk, RUNNING, 100, mode, "EM", lambda s: s, lambda v: f"log-lik {v:.4g}")
    np.testing.assert_array_equal(outputs, -np.arange(100.0))
    err = capsys.readouterr().err
    if terminal:  # 10 refreshes of one bar (10% steps), closed; nothing printed besides
        assert len(calls) == 10 and len(fake_tqdm.made) == 1
        bar = fake_tqdm.made[0]
        assert bar.total == 100 and sum(bar.updates) == 100 and bar.closed and bar.postfix == "log-lik -99"
        assert err == ""
    else:  # one compiled chunk, no bar, one line
        assert calls == [0] and fake_tqdm.made == []
        assert re.fullmatch(r"EM: 100 of 100 iterations in \d+\.\d s, log-lik -99\n", err), err


def test_line_says_where_a_fit_stopped(monkeypatch, fake_tqdm, capsys):
    run_chunk, calls, seen = _counting(10, stop_after=10)
    seen[0] = "line"
    run_in_chunks(run_chunk, RUNNING, 10, "line", "SGD", lambda s: s, lambda v: f"loss {v:.4g}")
    assert capsys.readouterr().err.rstrip().endswith("loss -9, converged")
    run_chunk, calls, seen = _counting(10)
    run_in_chunks(run_chunk, RUNNING, 10, None, "SGD", lambda s: s, str)
    assert capsys.readouterr().err == "" and calls == [0]


def test_interactive_detection(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress.interactive()  # a pipe or a log file
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress.interactive()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    kernel = types.SimpleNamespace(kernel=object())  # Jupyter's shell has a kernel; terminal IPython has none
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    assert progress.interactive()
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: types.SimpleNamespace()))
    assert not progress.interactive()


def test_fit_em_in_a_log_prints_one_line_and_fits_as_without_bar(x64, monkeypatch, fake_tqdm, capsys):
    """fit_em with progress_bar=True outside a terminal: one line on stderr, no bar, the same fit
    as progress_bar=False (same single compiled chunk: bit-identical log-likelihoods)."""
    monkeypatch.setattr(progress, "interactive", lambda: False)
    rng = np.random.default_rng(0)
    y = jnp.asarray(np.cumsum(rng.normal(0, 0.3, 60)) + rng.normal(0, 1, 60))
    ssm = ssmppl.SSM(local_level(initial_variance=100.0))
    start = {"sigma2_obs": jnp.asarray(0.9), "sigma2_level": jnp.asarray(0.02)}
    _, lls = ssm.fit_em(start, y, num_iters=5, progress_bar=True)
    err = capsys.readouterr().err
    assert fake_tqdm.made == [] and re.fullmatch(r"EM: 5 of 5 iterations in \d+\.\d s, log-lik -\d+\.?\d*\n", err), err
    _, lls_quiet = ssm.fit_em(start, y, num_iters=5, progress_bar=False)
    assert capsys.readouterr().err == ""
    np.testing.assert_array_equal(lls, lls_quiet)
