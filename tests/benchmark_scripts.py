"""Import a benchmark script by path, for the tests that run a benchmark's short mode.

By path and not through sys.path: a script in benchmarks/ must never shadow an installed library
(benchmarks/particles.py once replaced the `particles` library and switched float64 on at import)."""

import importlib.util
import pathlib


def load_benchmark(name: str):
    path = pathlib.Path(__file__).parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
