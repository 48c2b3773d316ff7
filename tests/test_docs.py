"""The documentation site (mkdocs.yml, docs/) covers the public API and the notebooks (issue 18).

The oracle is the package itself: every name exported by ``ssmppl.__all__`` and
``ssmppl.inference.__all__`` has a ``::: identifier`` directive in docs/ that imports to that very
object (so a newly exported backend without a docs page fails here), every directive imports
(a renamed function leaves no stale page), every notebook in notebooks/ is in the site's nav, every
README section a page includes exists, and every module the notebooks import is installed by the
runtime dependencies or the ``notebooks`` extra. None of this runs MkDocs (an optional
dependency); ``test_site_builds_strict`` does, in the slow tier, where the ``docs`` extra is
installed (CI's docs step runs the same build).
"""

import importlib
import importlib.metadata
import inspect
import json
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

import ssmppl
import ssmppl.inference

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"
PAGES = sorted(DOCS.rglob("*.md"))


def directives():
    """[(page, identifier)] for every ``::: identifier`` line of the pages."""
    found = []
    for page in PAGES:
        for line in page.read_text().splitlines():
            m = re.match(r"^:::\s+([\w.]+)\s*$", line)
            if m:
                found.append((page.relative_to(DOCS), m.group(1)))
    return found


def resolve(identifier):
    """The object a dotted identifier names: the longest importable module prefix, then attributes."""
    parts = identifier.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(identifier)


def test_pages_and_directives_are_found():
    # the pages the issue asks for: one per workflow and per backend family, models, maths
    names = {str(p.relative_to(DOCS)) for p in PAGES}
    assert {"index.md", "models.md", "maths.md", "workflows/filtering.md", "workflows/point-estimation.md",
            "workflows/bayesian.md", "workflows/diagnostics.md", "workflows/performance.md", "backends/kalman.md",
            "backends/gaussian-filters.md", "backends/particle-filters.md", "backends/ensemble-kalman.md",
            "backends/score-filter.md"} <= names
    assert len(directives()) >= 50


@pytest.mark.parametrize("page, identifier", directives(), ids=[f"{p}:{i}" for p, i in directives()])
def test_every_directive_imports(page, identifier):
    obj = resolve(identifier)  # AttributeError / ImportError name the stale identifier
    # A function re-exported under its module's name (ssmppl.models.pendulum is the package's function,
    # but mkdocstrings renders the module pendulum.py): the directive must name the function inside it.
    if inspect.ismodule(obj) and "." in identifier:
        parent, name = identifier.rsplit(".", 1)
        shadow = getattr(importlib.import_module(parent), name, obj)
        assert shadow is obj, (f"{page}: '::: {identifier}' renders the module, not the {type(shadow).__name__} "
                               f"{parent}.{name}: write '::: {identifier}.{name}'")


def _documented(obj, resolved):
    if inspect.ismodule(obj):  # a module is covered by a directive for it or for one of its members
        return any(ident == obj.__name__ or ident.startswith(obj.__name__ + ".") for ident in resolved)
    return any(o is obj for o in resolved.values())


@pytest.mark.parametrize("module", [ssmppl, ssmppl.inference], ids=["ssmppl", "ssmppl.inference"])
def test_every_export_has_a_directive(module):
    resolved = {}
    for _, ident in directives():
        try:
            resolved[ident] = resolve(ident)
        except (ImportError, AttributeError):  # test_every_directive_imports names it
            pass
    missing = [name for name in module.__all__ if not _documented(getattr(module, name), resolved)]
    assert not missing, (f"{module.__name__}.__all__ exports {missing} but no page of docs/ has a "
                         "'::: ...' directive for it: add it to the page of its workflow or backend family")


def nav_paths():
    """The page paths listed in mkdocs.yml's nav (lines ``- Title: path`` or ``- path``)."""
    text = MKDOCS_YML.read_text()
    nav = text[text.index("\nnav:"):]
    return re.findall(r"^\s*-\s+(?:[^:\n]+:\s+)?(\S+\.(?:md|ipynb))\s*$", nav, flags=re.M)


def test_nav_lists_every_page_and_notebook():
    paths = nav_paths()
    for path in paths:
        assert (DOCS / path).exists(), f"mkdocs.yml's nav lists {path}, which is not in docs/"
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert len(notebooks) >= 7
    missing = [nb.name for nb in notebooks if f"notebooks/{nb.name}" not in paths]
    assert not missing, f"notebooks {missing} are not in mkdocs.yml's nav (section 'Notebooks')"
    # docs/notebooks is the notebooks folder itself (a link), so the site renders the committed files
    assert (DOCS / "notebooks").resolve() == (ROOT / "notebooks").resolve()
    orphans = [str(p.relative_to(DOCS)) for p in PAGES if str(p.relative_to(DOCS)) not in paths]
    assert not orphans, f"pages not in mkdocs.yml's nav: {orphans}"


def test_included_readme_sections_exist():
    readme = (ROOT / "README.md").read_text()
    included = {m for page in PAGES for m in re.findall(r'^--8<-- "README\.md:([\w-]+)"$', page.read_text(), re.M)}
    assert len(included) >= 10
    for name in included:
        start, end = f"--8<-- [start:{name}]", f"--8<-- [end:{name}]"
        assert readme.count(start) == 1 and readme.count(end) == 1 and readme.index(start) < readme.index(end), name


def _requirement_names(requirements):
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_notebooks_extra_installs_what_the_notebooks_import():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = _requirement_names(project["dependencies"]) | _requirement_names(
        project["optional-dependencies"]["notebooks"])
    assert {"notebook", "ipykernel", "nbclient", "nbformat"} <= installed
    distributions = importlib.metadata.packages_distributions()  # import name -> distributions providing it
    imported = set()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                imported |= set(re.findall(r"^\s*(?:import|from)\s+(\w+)", "".join(cell["source"]), flags=re.M))
    assert {"jax", "numpyro", "ssmppl"} <= imported
    needed = imported - set(sys.stdlib_module_names) - {"ssmppl"}
    missing = [m for m in sorted(needed)
               if not {d.lower().replace("_", "-") for d in distributions.get(m, [m])} & installed]
    assert not missing, f"the notebooks import {missing}, installed by neither the dependencies nor [notebooks]"


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict``: a broken link, reference or snippet, or a docstring griffe cannot parse, fails."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "WARNING" not in done.stderr, done.stderr[-3000:]
    assert (tmp_path / "site" / "notebooks" / "01_quickstart" / "index.html").exists()
