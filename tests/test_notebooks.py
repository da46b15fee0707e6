"""CI executes every notebook in notebooks/: a cell that raises fails the test of its notebook.

Each notebook runs in a fresh kernel of *this* interpreter (checked by a first cell added in memory:
the kernel's ``sys.prefix`` must be ours, so a ``python3`` kernelspec of another Python cannot run
them silently), with ``CHIPJAX_NOTEBOOK_SMALL=1`` (few masks, few images), a temporary folder as working
directory and ``TMPDIR``, and a time limit per cell.

The notebooks' source is the jupytext percent file ``notebooks/NN_name.py`` (linted and duplicate-checked like
the library); each test builds the ``.ipynb`` from it in memory with jupytext and executes that.
"""
from __future__ import annotations

import pathlib
import resource
import sys
import time

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT_S = 300
KERNEL_NAME = "python3"  # jupyter_client starts the kernelspec's "python" as sys.executable


def _interpreter_check_cell() -> nbformat.NotebookNode:
    source = f"import sys\nassert sys.prefix == {sys.prefix!r}, f'kernel runs {{sys.executable}}, not the test interpreter'"
    return nbformat.v4.new_code_cell(source, id="interpreter-check")


def _children_cpu_s() -> float:
    """CPU seconds of the finished child processes (the kernel counts once it has been shut down)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build_notebook(path: pathlib.Path) -> nbformat.NotebookNode:
    """The notebook of a jupytext percent file: its cells, output-free, validated by nbformat."""
    nb = jupytext.read(path)
    nbformat.validate(nb)
    return nb


def test_every_notebook_is_found():
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["01_quickstart", "02_any_layer", "03_class_level_chip", "04_bring_your_weights", "05_evaluate",
                     "06_dataset_scale", "07_your_nnx_network"]


def test_a_notebook_builds_into_markdown_and_code_cells():
    nb = build_notebook(NOTEBOOK_DIR / "01_quickstart.py")
    kinds = [c.cell_type for c in nb.cells]
    assert kinds[0] == "markdown" and "code" in kinds
    assert nb.metadata["kernelspec"]["name"] == KERNEL_NAME
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("CHIPJAX_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' tempfile.mkdtemp() folders land in tmp_path
    nb = build_notebook(path)
    nb.cells.insert(0, _interpreter_check_cell())
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME,
                            resources={"metadata": {"path": str(tmp_path)}})
    start, cpu_start = time.perf_counter(), _children_cpu_s()
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{path.name}: a cell failed\n{e}", pytrace=False)
    print(f"{path.name}: {time.perf_counter() - start:.1f} s wall, {_children_cpu_s() - cpu_start:.1f} s kernel CPU")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
