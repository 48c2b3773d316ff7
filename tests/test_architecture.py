"""The package's layering, checked on its source (``ast``, no imports run):

- no import cycles between ssmppl's modules, counting imports inside functions (which
  would otherwise hide a cycle);
- no module imports another module's private (``_name``) names;
- ``ssmppl.maths`` and ``ssmppl.results`` are pure JAX: no NumPyro, and no import of the
  layers above them;
- ``ssmppl.inference`` imports nothing from ``ssmppl.learning`` or ``ssmppl.bayes``;
- the facade (``ssm.py``, ``marginal.py``), ``learning`` and ``bayes`` name no backend class.

Each check is run on a planted violation too, so it can fail.
"""

import ast
import pathlib

import pytest

import ssmppl.inference

ROOT = pathlib.Path(ssmppl.__file__).parent
BACKENDS = {name for name in ssmppl.inference.__all__
            if isinstance(getattr(ssmppl.inference, name), type)
            and issubclass(getattr(ssmppl.inference, name), ssmppl.inference.Backend)
            and name != "Backend"}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict:
    return {module_name(p): p.read_text() for p in ROOT.rglob("*.py")}


def imports(name: str, source: str, modules: set):
    """(imported module, [imported names], line) for every import statement, at any depth."""
    package = name if source_is_package(name, modules) else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names], node.lineno


def source_is_package(name: str, modules: set) -> bool:
    return any(m.startswith(name + ".") for m in modules)


def import_graph(srcs: dict) -> dict:
    modules = set(srcs)
    graph = {m: set() for m in modules}
    for name, source in srcs.items():
        for target, names, _ in imports(name, source, modules):
            hits = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            if hits:
                graph[name].update(hits)
            if target in modules and len(hits) < len(names) or (target in modules and not names):
                graph[name].add(target)
    return graph


def find_cycle(graph: dict):
    """One import cycle as a list of modules, or None."""
    colour, stack = {}, []

    def visit(m):
        colour[m] = "grey"
        stack.append(m)
        for n in sorted(graph[m]):
            if colour.get(n) == "grey":
                return stack[stack.index(n):] + [n]
            if n not in colour:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        colour[m] = "black"
        return None

    for m in sorted(graph):
        if m not in colour:
            found = visit(m)
            if found:
                return found
    return None


def private_imports(srcs: dict) -> list:
    modules = set(srcs)
    bad = []
    for name, source in srcs.items():
        for target, names, line in imports(name, source, modules):
            if target == "__future__":
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{name}:{line} imports {n} from {target}")
    return bad


def layer_violations(srcs: dict) -> list:
    modules = set(srcs)
    bad = []
    for name, source in srcs.items():
        pure = name.startswith("ssmppl.maths") or name == "ssmppl.results"
        for target, _, line in imports(name, source, modules):
            if pure and (target.startswith("numpyro") or target.startswith("ssmppl.") and not (
                    target.startswith("ssmppl.maths") or target == "ssmppl.results")):
                bad.append(f"{name}:{line} (pure maths) imports {target}")
            if name.startswith("ssmppl.inference") and target.startswith(("ssmppl.learning", "ssmppl.bayes")):
                bad.append(f"{name}:{line} imports upward from {target}")
    return bad


def backend_references(srcs: dict) -> list:
    bad = []
    for name, source in srcs.items():
        if not (name in ("ssmppl.ssm", "ssmppl.marginal") or name.startswith(("ssmppl.learning", "ssmppl.bayes"))):
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.Name, ast.Attribute)):
                ident = node.id if isinstance(node, ast.Name) else node.attr
                if ident in BACKENDS:
                    bad.append(f"{name}:{node.lineno} names the backend {ident}")
    return bad


def test_no_import_cycles():
    assert find_cycle(import_graph(sources())) is None


def test_cycle_check_finds_a_planted_cycle():
    srcs = dict(sources())
    srcs["ssmppl.maths.kalman"] += "\n\ndef planted():\n    from ..inference.kalman.backend import Kalman\n"
    cycle = find_cycle(import_graph(srcs))
    assert cycle is not None and "ssmppl.maths.kalman" in cycle


def test_no_private_imports_across_modules():
    assert private_imports(sources()) == []
    planted = {**sources(), "ssmppl.planted": "from .inference.base import _REGISTRY\n"}
    assert private_imports(planted) == ["ssmppl.planted:1 imports _REGISTRY from ssmppl.inference.base"]


def test_maths_is_pure_and_inference_does_not_import_upward():
    assert layer_violations(sources()) == []
    planted = {**sources(), "ssmppl.maths.planted": "import numpyro\nfrom ..inference import Kalman\n",
               "ssmppl.inference.planted": "from ..learning.em import fit_em\n"}
    assert len(layer_violations(planted)) == 3


def test_facade_learning_and_bayes_name_no_backend():
    assert {"Kalman", "EKF", "BootstrapPF", "EnKF", "EnSF"} <= BACKENDS
    assert backend_references(sources()) == []
    planted = {**sources(), "ssmppl.learning.planted": "def f(method):\n    return isinstance(method, Kalman)\n"}
    assert backend_references(planted) == ["ssmppl.learning.planted:2 names the backend Kalman"]


@pytest.mark.parametrize("module", ["ssmppl.maths", "ssmppl.results"])
def test_pure_layer_runs_without_numpyro(module, tmp_path):
    """The maths layer is usable on its own: importing it (with the package's __init__ bypassed)
    pulls in no NumPyro."""
    import subprocess
    import sys

    code = f"""
import importlib.util, sys, types
root = {str(ROOT)!r}
pkg = types.ModuleType("ssmppl"); pkg.__path__ = [root]; sys.modules["ssmppl"] = pkg
import {module}
import ssmppl.maths.kalman, ssmppl.maths.parallel_kalman, ssmppl.maths.gaussian_filter, ssmppl.maths.ensemble
import ssmppl.maths.score, ssmppl.maths.resampling, ssmppl.maths.lgssm_em
assert "numpyro" not in sys.modules, sorted(m for m in sys.modules if m.startswith("numpyro"))
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
