"""The harness every suite shares: common options, CPU pinning, the environment header, the
check-then-time measurement of a case, and the text / markdown report.

Nothing here imports numpy or jax at module level: ``run.py`` pins the process to its cores
first, because their thread pools are sized from the CPU affinity when they start.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import faulthandler
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Optional

# ---------------------------------------------------------------------------------------------
# ssmppl's internal module paths: the only place in benchmarks/ that names them. They are due to
# be renamed; update this function and nothing else.
# ---------------------------------------------------------------------------------------------


def ssmppl_internals():
    """Internal pieces a few suites need: ensf times one EnSF analysis alone (``reverse_sde``,
    ``likelihood_score``) and swaps the float32 ``arctan`` of the Lorenz models for XLA's;
    nonlinear hands dynamax the Lorenz-63 vector field; da_lorenz's same-data check fixes the
    initial ensemble (``ensemble_module.initial_draws``, the EnKF recursion's draw of z_0)."""
    import types

    from ssmppl.inference.ensemble import filter as ensemble_filter
    from ssmppl.inference.score_filter import ensf
    from ssmppl.maths import score
    from ssmppl.models import lorenz

    return types.SimpleNamespace(likelihood_score=ensf.likelihood_score, reverse_sde=score.reverse_sde,
                                 ensemble_module=ensemble_filter, lorenz_module=lorenz,
                                 lorenz63_vector_field=lorenz.lorenz63_vector_field)


def import_all_ssmppl():
    """Import every module of the package now, so that the code measured is the checkout's at the start
    even if it changes during a long run (the report notes a change)."""
    import importlib
    import pkgutil

    import ssmppl

    for info in pkgutil.walk_packages(ssmppl.__path__, "ssmppl."):
        try:
            importlib.import_module(info.name)
        except Exception:  # an optional dependency missing: that module is not measured anyway
            pass


# ---------------------------------------------------------------------------------------------
# command line and machine
# ---------------------------------------------------------------------------------------------


def parser(suite) -> argparse.ArgumentParser:
    """The options every suite has; the suite adds its own (``suite.arguments``)."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.run {suite.__name__.rsplit('.', 1)[-1]}",
                                description=suite.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite")
    p.add_argument("--short", action="store_true", help="small sizes and short timing: a quick check (the tests)")
    p.add_argument("--out", help="also write the report as markdown to this file (rewritten after every case)")
    p.add_argument("--append", action="store_true", help="append the report to --out instead of replacing it")
    p.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    p.add_argument("--cpus", type=int, default=1, help="pin to this many cores, 0 = all (default 1: see README)")
    p.add_argument("--dtype", choices=["float32", "float64"], default=getattr(suite, "DTYPE", "float64"))
    p.add_argument("--min-time", type=float, default=1.0, help="target timed seconds per implementation")
    p.add_argument("--max-reps", type=int, default=5, help="most timed calls per implementation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--watchdog", type=float, default=1800.0, help="abort with a traceback if one call hangs this long")
    p.add_argument("--note", action="append", default=[], help="free-text note for the report (repeatable)")
    return p


def finish_arguments(args):
    if args.short:
        args.min_time, args.max_reps = min(args.min_time, 0.1), min(args.max_reps, 3)
    return args


XLA_WORKAROUND = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def pin_cpus(n: int):
    """Pin this process (and the threads it starts later) to its first ``n`` allowed cores; 0 keeps
    them all. With more than one core, XLA_FLAGS gets XLA_WORKAROUND (see README: jax 0.10's
    thread-pool stalls). Returns (allowed cores, cores used)."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if n and n < len(allowed) and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, allowed[:n])
    used = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else allowed
    if len(used) > 1 and "concurrency_optimized_scheduler" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + XLA_WORKAROUND).strip()
    return allowed, used


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_rev(path: str) -> str:
    """The last commit that changed the folder ``path``, ``+dirty`` if tracked files in it have changed since."""
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, cwd=path).stdout.strip()  # noqa: E731
    try:
        commit = run("git", "log", "-1", "--format=%h", "--", ".")
        dirty = run("git", "status", "--porcelain", "--untracked-files=no", "--", ".")
        return (commit + ("+dirty" if dirty else "")) or "unknown"
    except Exception:
        return "unknown"


def versions(names) -> list:
    from importlib import metadata

    out = [f"python {platform.python_version()}"]
    for name in names:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name}: not installed")
    return out


def numpy_dtype(args):
    import numpy as np

    return np.float32 if args.dtype == "float32" else np.float64


# ---------------------------------------------------------------------------------------------
# a case: set-up -> {implementation: callable} plus a correctness check; measured by ``measure``
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Timed:
    """What an implementation returns when it times itself (e.g. in a child process)."""

    seconds: float
    value: Any = None
    cpu: Optional[float] = None


@dataclasses.dataclass
class Case:
    """One set-up of a suite: implementations to compare on the same data, and their check.

    impls: {name: zero-argument callable}, called in this order in every round.
    check: ``check({name: output of its first call})`` -> [(name or None, ok, message)], called
        once every implementation has run once, before any further timed call. An implementation
        named in a failed entry is reported as wrong and not timed further.
    warm: names that get one untimed first call (compilation); default all. The others' first
        call is already a timed one (nothing to compile, or they re-compile in every call).
    keep_all: keep every timed call's output (``Result.outputs``), not only the first.
    """

    label: str
    impls: dict
    check: Optional[Callable] = None
    warm: Optional[set] = None
    keep_all: bool = False


@dataclasses.dataclass
class Call:
    wall: float
    cpu: float
    compile: float  # seconds of tracing, lowering and XLA compilation inside the call (union of spans)
    compiled: list  # [(function name, XLA compilation seconds)], longest first


@dataclasses.dataclass
class Result:
    first: Optional[Call] = None  # the untimed first call, if any
    calls: list = dataclasses.field(default_factory=list)  # the timed calls
    result: Any = None  # output of the first call (for the check)
    outputs: list = dataclasses.field(default_factory=list)  # with keep_all: every timed call's output
    error: Optional[str] = None  # failed, or wrong (then ``wrong`` is set)
    wrong: bool = False

    @property
    def ok(self):
        return self.error is None

    @property
    def times(self):
        return [c.wall for c in self.calls]

    @property
    def median(self):
        return statistics.median(self.times) if self.calls else None

    @property
    def min(self):
        return min(self.times) if self.calls else None

    @property
    def cpu_median(self):
        return statistics.median(c.cpu for c in self.calls) if self.calls else None


_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
           "/jax/core/compile/backend_compile_duration")
_SPANS: list = []


def _on_span(event, start, end, **kwargs):
    if event in _EVENTS:
        _SPANS.append((event, start, end, str(kwargs.get("fun_name", "?"))))


def _listen():
    import jax

    if not getattr(_listen, "done", False):
        jax.monitoring.register_event_time_span_listener(_on_span)
        _listen.done = True


def _compile_summary(spans):
    total, last = 0.0, -math.inf
    for _, a, b, _ in sorted(spans, key=lambda s: s[1]):  # union of the intervals: nested traces count once
        if b > last:
            total += b - max(a, last)
            last = b
    compiled = sorted(((n, b - a) for e, a, b, n in spans if e == _EVENTS[2]), key=lambda x: -x[1])
    return total, compiled


def _error(e):
    text = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {text}"


def measure(case: Case, args, report, *, timing=True, min_reps=2, max_reps=None, min_time=None,
            single_shot=math.inf, block=None) -> dict:
    """Run a case: one first call each (untimed for ``case.warm``), the check, then timed calls
    interleaved round-robin over the implementations, so that a change of load on a shared
    machine hits them alike: each until ``min_reps`` calls and then until ~``min_time`` seconds
    (``--min-time``) or ``max_reps`` calls (``--max-reps``); a call slower than ``single_shot``
    ends its repetitions. ``timing=False``: first calls and check only. A call that raises marks
    its implementation failed and drops it. Returns {name: Result}."""
    import jax

    _listen()
    block = block or jax.block_until_ready
    max_reps = args.max_reps if max_reps is None else max_reps
    min_time = args.min_time if min_time is None else min_time
    warm = set(case.impls) if case.warm is None else set(case.warm)
    out = {name: Result() for name in case.impls}

    def call(name, timed):
        r = out[name]
        n0 = len(_SPANS)
        faulthandler.dump_traceback_later(args.watchdog, exit=True)
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            value = case.impls[name]()
            if isinstance(value, Timed):
                wall, cpu, value = value.seconds, value.cpu, block(value.value)
            else:
                value = block(value)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        except Exception as e:  # e.g. out of memory: report it, go on with the others
            r.error = _error(e)
            report.log(f"    {case.label} {name}: FAILED ({r.error})")
            return
        finally:
            faulthandler.cancel_dump_traceback_later()
        c = Call(wall, cpu if cpu is not None else math.nan, *_compile_summary(_SPANS[n0:]))
        if r.first is None and not r.calls:
            r.result = value
        if timed:
            r.calls.append(c)
            if case.keep_all:
                r.outputs.append(value)
        else:
            r.first = c
            report.log(f"    {case.label} {name}: first call {wall:.2f} s (compilation {c.compile:.2f} s)")

    def run_check():
        if case.check is None:
            return
        results = {n: r.result for n, r in out.items() if r.ok}
        for name, ok, message in case.check(results):
            report.check(ok, f"{case.label}: {message}")
            if not ok and name in out and out[name].ok:
                out[name].error, out[name].wrong = f"wrong: {message}", True

    if not timing:
        warm = set(case.impls)
    for name in case.impls:
        if name in warm:
            call(name, False)
    checked = all(name in warm for name in case.impls)
    if checked:
        run_check()
    active = [n for n in case.impls if out[n].ok] if timing else []
    while active:
        for name in active:
            call(name, True)
        if not checked:
            run_check()
            checked = True
        active = [n for n in active if out[n].ok and not (
            (out[n].calls and out[n].calls[-1].wall > single_shot)
            or (len(out[n].calls) >= min_reps and (sum(out[n].times) >= min_time or len(out[n].calls) >= max_reps)))]
    if not checked:
        run_check()
    for name, r in out.items():
        if r.calls:
            report.log(f"    {case.label} {name}: median {1e3 * r.median:.3f} ms, min {1e3 * r.min:.3f} ms, "
                       f"CPU median {1e3 * r.cpu_median:.3f} ms ({len(r.calls)} calls)")
    return out


# ---------------------------------------------------------------------------------------------
# tables and the report
# ---------------------------------------------------------------------------------------------


def fmt_ms(seconds) -> str:
    ms = 1e3 * seconds
    return f"{ms:.3g}" if ms < 100 else f"{ms:,.0f}"


def text_table(header, rows) -> str:
    widths = [max([len(str(h))] + [len(str(r[i])) for r in rows]) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def markdown_table(header, rows, left=3) -> str:
    """The first ``left`` columns left-aligned (labels), the others right-aligned (numbers)."""
    out = ["| " + " | ".join(map(str, header)) + " |",
           "|" + "|".join(["---"] * left + ["---:"] * (len(header) - left)) + "|"]
    return "\n".join(out + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


class Report:
    """Header, tables and checks of one run. Printed as text (markdown with ``--markdown``) at the
    end and written as markdown to ``--out`` after every table or case, so partial results survive."""

    def __init__(self, suite, args, argv):
        import jax

        import ssmppl

        self.args, self.title = args, suite.TITLE
        self.start = datetime.datetime.now()
        self.loads = [os.getloadavg()[0]]
        self.sections, self.checks, self.results = [], [], None
        self.notes = list(args.note)
        self.previous = None
        if args.out and args.append and os.path.exists(args.out):
            with open(args.out) as f:
                self.previous = f.read()
        self.package = os.path.dirname(os.path.abspath(ssmppl.__file__))
        self.rev = git_rev(self.package)
        allowed, used = args.cpus_allowed, args.cpus_used
        command = "python -m benchmarks.run " + " ".join(argv)
        if len(allowed) < (os.cpu_count() or 1):
            command += f"  (started with CPU affinity {','.join(map(str, allowed))}, as by `taskset`)"
        d = jax.devices()[0]
        self.used = used
        self.header = [
            ("date", f"{self.start:%Y-%m-%d %H:%M}"),
            ("command", f"`{command}`"),
            ("device", f"{d.platform} / {d.device_kind} ({len(jax.devices())} device(s)); pinned to {len(used)} of "
                       f"{len(allowed)} available CPU cores (core id(s) {', '.join(map(str, used))}; "
                       f"{os.cpu_count()} on the machine); {cpu_model()}"),
            ("versions", ", ".join([f"ssmppl {ssmppl.__version__} ({self.rev})"]
                                   + versions(["jax", "jaxlib", "numpyro", "numpy", *getattr(suite, "PEERS", ())]))),
            ("benchmarks/ at", git_rev(os.path.dirname(os.path.abspath(__file__)))),
            ("dtype", args.dtype),
            ("XLA_FLAGS", f"`{os.environ.get('XLA_FLAGS', '') or '(none)'}`"),
        ]
        self.log(f"{self.title} — {self.start:%Y-%m-%d %H:%M}")
        for k, v in self.header[1:]:
            self.log(f"{k}: {v}")
        self.log(f"machine 1-min load average at start: {self.loads[0]:.2f} ({os.cpu_count()} cores)")

    @staticmethod
    def log(message):
        print(message, flush=True)

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)
            self.log("note: " + text)

    def check(self, ok, message):
        self.checks.append((bool(ok), message))
        self.log(f"    check: {message}" + ("" if ok else "  <-- FAILED"))

    @property
    def ok(self):
        return all(ok for ok, _ in self.checks)

    def table(self, title, header, rows, legend="", left=3):
        """Add (or replace: same title) a table; rewrites --out."""
        self._section(title, (header, rows, left), legend)

    def text(self, title, body):
        self._section(title, None, body)

    def _section(self, title, table, body):
        self.sections = [s for s in self.sections if s[0] != title] + [(title, table, body)]
        self.write()

    def case_done(self):
        self.loads.append(os.getloadavg()[0])
        self.write()

    def markdown(self, final=True) -> str:
        elapsed = (datetime.datetime.now() - self.start).total_seconds()
        md = [f"# {self.title} ({self.args.dtype})" + ("" if final else " — PARTIAL, still running"), ""]
        md += [f"- {k}: {v}" for k, v in self.header]
        md.append("- 1-min load average at the start, after each case and at the end: "
                  + ", ".join(f"{x:.2f}" for x in self.loads) + f" (machine-wide, {os.cpu_count()} cores; this "
                  f"benchmark uses {len(self.used)}: more than that means other processes competed); "
                  f"total {elapsed:.0f} s")
        md.append("- checks: " + ("all OK" if self.ok else "FAILED, see the checks below"))
        md += [f"- note: {n}" for n in self.notes]
        for title, table, body in self.sections:
            md += ["", f"## {title}", ""]
            if table:
                md += [markdown_table(*table), ""]
            if body:
                md.append(body)
        if self.checks:
            md += ["", "## Checks", ""] + [f"- {'OK' if ok else 'FAILED'}: {m}" for ok, m in self.checks]
        return "\n".join(md) + "\n"

    def write(self, final=False):
        if self.args.out:
            with open(self.args.out, "w") as f:
                f.write((self.previous + "\n" if self.previous else "") + self.markdown(final))

    def finish(self):
        self.loads.append(os.getloadavg()[0])
        rev = git_rev(self.package)
        if rev != self.rev:
            self.note(f"the ssmppl checkout changed during the run: {self.rev} at the start (the code measured), "
                      f"{rev} at the end")
        print()
        if self.args.markdown:
            print(self.markdown())
        else:
            for title, table, body in self.sections:
                print(f"\n{title}\n")
                if table:
                    print(text_table(*table[:2]) + "\n")
                if body:
                    print(body)
            print("\nchecks: " + ("all OK" if self.ok else "FAILED:"))
            for ok, m in self.checks:
                if not ok:
                    print("  FAILED: " + m)
        self.write(final=True)
        if self.args.out:
            print(f"wrote {self.args.out}")
        sys.stdout.flush()
