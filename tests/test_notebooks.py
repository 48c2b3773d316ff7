"""The notebooks run top to bottom (code cells executed in order, figures off-screen)."""

import json
import pathlib

import matplotlib
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = json.loads(path.read_text())["cells"]
    namespace = {"__name__": "__notebook__"}
    for i, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
        source = "".join(cell["source"])
        try:
            exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)
        except Exception as err:  # name the failing cell
            raise AssertionError(f"{path.name}, code cell {i} failed: {err!r}\n{source}") from err
    plt.close("all")
    # the quickstart's own sanity: the smoother tracked the simulated states
    if path.name == "01_quickstart.ipynb":
        import numpy as np

        err = np.asarray(namespace["smoothed"].smoothed_means - namespace["states"])
        sd = np.sqrt(np.diagonal(np.asarray(namespace["smoothed"].smoothed_covariances), axis1=1, axis2=2))
        assert np.mean(np.abs(err) < 2 * sd) > 0.9
