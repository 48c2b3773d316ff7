"""The peer libraries the suites compare against, declared in one place.

Python peers are imported here or skipped with a message saying how to install them. DAPPER is
not importable next to ssmppl: it runs in its own virtualenv, through ``dapper_side.py``.
"""

from __future__ import annotations

import importlib
import os
import subprocess

# name: how to get it
PEERS = {
    "dynamax": "pip install dynamax==1.0.3 (or pip install -e .[bench])",
    "statsmodels": "pip install statsmodels",
    "particles": "pip install particles==0.3 (0.4 pins numpy < 2, which jax 0.10 cannot use)",
    "blackjax": "a dependency of ssmppl: pip install -e .",
}
DAPPER = ("python -m venv venv-dapper && venv-dapper/bin/pip install dapper, then pass "
          "--dapper venv-dapper/bin/python (DAPPER is not a dependency of ssmppl)")
DAPPER_SIDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dapper_side.py")


class MissingPeer(RuntimeError):
    """A peer the suite cannot run without is not installed."""


def require(name):
    """The peer's module; raises MissingPeer (the runner prints it and stops) if it is absent."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise MissingPeer(f"{name} is not installed ({e}): {PEERS[name]}") from None


def optional(name, report):
    """The peer's module, or None with a note in the report: its implementations are skipped."""
    try:
        return require(name)
    except MissingPeer as e:
        report.note(f"{e}; its implementations are skipped")
        return None


def dapper(python, *args, check=True):
    """Run ``dapper_side.py`` with DAPPER's interpreter ``python`` (stdout passed through)."""
    if not python or not os.path.exists(python):
        raise MissingPeer(f"no DAPPER interpreter at {python!r}: {DAPPER}")
    return subprocess.run([python, DAPPER_SIDE, *map(str, args)], check=check)
