"""Opt-in persistent compilation cache: compiled XLA programs kept on disk across processes."""

from __future__ import annotations

import os
from typing import Optional


def default_cache_dir() -> str:
    """``$SSMPPL_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/ssmppl/jax`` (``~/.cache/ssmppl/jax``)."""
    if os.environ.get("SSMPPL_CACHE_DIR"):
        return os.environ["SSMPPL_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ssmppl", "jax")


def enable_compilation_cache(path: Optional[str] = None) -> str:
    """Keep every compiled program in ``path`` (default: ``default_cache_dir()``), so that a
    later process running the same programs loads them instead of compiling; returns the path.

    Sets JAX's ``jax_compilation_cache_dir`` and lowers its thresholds (by default JAX stores
    only programs that took over 1 s to compile) to 0, so the many small programs of a
    state-space workflow are stored too. Call it once, at the start; called after programs
    have been compiled it resets JAX's cache state so that it still takes effect. The cache is
    trusted code: do not point it at a folder others can write to. It grows with every new
    program (model, shape, dtype, jax version); delete the folder to clear it.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    path = os.path.abspath(os.path.expanduser(path or default_cache_dir()))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # -1: no size limit
    # JAX decides once per process whether to use the cache (at the first compilation): start over
    compilation_cache.reset_cache()
    return path
