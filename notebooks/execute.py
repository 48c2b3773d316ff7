"""Execute the notebooks in place, so that they are committed with their outputs and figures.

    pip install -e ".[notebooks]"
    python notebooks/execute.py                 # all notebooks
    python notebooks/execute.py 01_quickstart   # the ones whose names start so

Each notebook runs top to bottom in a fresh kernel started in this folder; a failing cell stops
that notebook with the cell's error and leaves the file untouched. The test suite re-runs the
code cells (tests/test_notebooks.py) and checks that the committed files carry outputs.
"""

from __future__ import annotations

import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent


def execute(path: pathlib.Path, timeout: int = 1800) -> float:
    """Run ``path`` in a fresh kernel and write it back with outputs; return the wall time (s)."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    # nbformat 4.5 wants a cell id; older files have none (stable ids keep diffs small)
    nb.nbformat_minor = max(nb.nbformat_minor, 5)
    for i, cell in enumerate(nb.cells):
        cell.setdefault("id", f"cell-{i:02d}")
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    elapsed = time.perf_counter() - start
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return elapsed


def main(prefixes: list[str]) -> None:
    paths = sorted(HERE.glob("*.ipynb"))
    if prefixes:
        paths = [p for p in paths if any(p.name.startswith(x) for x in prefixes)]
        if not paths:
            raise SystemExit(f"no notebook in {HERE} starts with {prefixes}")
    for path in paths:
        print(f"{path.name}: {execute(path):.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
