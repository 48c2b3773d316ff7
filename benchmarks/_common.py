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


def library_versions(names) -> list:
    """'name version' for each installed distribution in ``names`` ('name: not installed' otherwise)."""
    from importlib import metadata

    out = [f"python {platform.python_version()}"]
    for name in names:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name}: not installed")
    return out


def time_interleaved(calls, block, min_time=1.0, max_reps=5, min_reps=2, log=None):
    """Time zero-argument callables, compilation excluded.

    ``calls``: ``{key: fn}``. Every ``fn`` is first called once untimed-for-the-table
    (for JAX this traces and compiles; its wall time is kept as ``first``), then the
    timed calls run round-robin over the keys, so that a change of load on a shared
    machine hits all of them alike, each until ``min_reps`` calls and then until about
    ``min_time`` seconds in total or ``max_reps`` calls. ``block(result)`` must wait
    for the result (``jax.block_until_ready``). A call that raises marks its key
    failed (``error`` set) and drops it. Returns ``{key: {"first", "result", "times",
    "median", "min", "cpu_times", "cpu_median", "error"}}``; ``result`` is the first
    call's output, for checks; ``cpu_times`` are the process's CPU seconds per timed
    call, which other processes on a shared core stretch less than wall time.
    """
    import statistics
    import time

    out = {}
    for key, fn in calls.items():
        t0 = time.perf_counter()
        try:
            result = block(fn())
        except Exception as e:  # e.g. out of memory: report, go on with the others
            out[key] = {"first": None, "result": None, "times": [], "median": None, "min": None, "cpu_times": [],
                        "cpu_median": None, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
            if log:
                log(f"    {key}: FAILED ({out[key]['error']})")
            continue
        out[key] = {"first": time.perf_counter() - t0, "result": result, "times": [], "cpu_times": [], "error": None}
        if log:
            log(f"    {key}: first call {out[key]['first']:.2f} s")
    active = [k for k in calls if out[k]["error"] is None]
    while active:
        for key in active:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                block(calls[key]())
            except Exception as e:
                out[key]["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                continue
            out[key]["times"].append(time.perf_counter() - t0)
            out[key]["cpu_times"].append(time.process_time() - c0)
        active = [
            k for k in active
            if out[k]["error"] is None
            and not (len(out[k]["times"]) >= min_reps
                     and (sum(out[k]["times"]) >= min_time or len(out[k]["times"]) >= max_reps))
        ]
    for key, r in out.items():
        r["median"] = statistics.median(r["times"]) if r["times"] else None
        r["min"] = min(r["times"]) if r["times"] else None
        if "cpu_times" in r:
            r["cpu_median"] = statistics.median(r["cpu_times"]) if r["cpu_times"] else None
    return out


def write_report(path, text, append=False, previous=None):
    """Write ``text`` to ``path``; with ``append``, after ``previous`` (the file's content
    when the run started: pass it so that rewriting a partial report does not repeat it)."""
    if append and previous is None and os.path.exists(path):
        with open(path) as f:
            previous = f.read()
    with open(path, "w") as f:
        f.write((previous + "\n" if append and previous else "") + text)
