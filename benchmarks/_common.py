"""Small helpers shared by the benchmark scripts (standard library only).

``pin_cpus`` must run before numpy / jax are imported: their thread pools are
sized from the CPU affinity when they start. The other helpers label the
machine and the code that a result was measured on.
"""

from __future__ import annotations

import os
import platform
import subprocess


def pin_cpus(n: int):
    """Pin this process (and the threads it starts later) to its first ``n`` allowed
    cores; ``n = 0`` keeps them all. Returns ``(all allowed cores, cores used)``."""
    if hasattr(os, "sched_getaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
    else:  # pragma: no cover - not Linux
        allowed = list(range(os.cpu_count() or 1))
    if n and n < len(allowed) and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, allowed[:n])
    used = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else allowed
    return allowed, used


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_rev(path: str, pathspec: str | None = None) -> str:
    """Short commit of the checkout containing ``path``, with ``+dirty`` when tracked
    files (under ``pathspec``, e.g. the package's directory; default: all) have
    uncommitted changes; ``unknown`` outside git."""
    cwd = os.path.dirname(os.path.abspath(path))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=cwd
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"] + (["--", pathspec] if pathspec else []),
            capture_output=True,
            text=True,
            cwd=cwd,
        ).stdout.strip()
        return (commit + ("+dirty" if dirty else "")) or "unknown"
    except Exception:
        return "unknown"


def device_label(jax, cpus_used, cpus_allowed) -> str:
    """'platform / device kind (n device(s)); pinned to k of m cores; CPU model'."""
    d = jax.devices()[0]
    return (
        f"{d.platform} / {d.device_kind} ({len(jax.devices())} device(s)); "
        f"pinned to {len(cpus_used)} of {len(cpus_allowed)} available CPU cores ({os.cpu_count()} on the machine); "
        f"{cpu_model()}"
    )


def text_table(header, rows) -> str:
    """Right-aligned plain-text table (first row: header)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def markdown_table(header, rows) -> str:
    """Markdown table; the first three columns left-aligned, the numbers right-aligned."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)
