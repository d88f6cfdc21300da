"""The walkthrough notebooks run, and are committed clean.

Each notebook is executed on a fresh kernel with ``FREEZEOUT_QUICK=1`` (its
smoke-test size); any error fails the test. The kernel is Jupyter's
``python3``, which with ipykernel installed in this environment (the
``test`` extra) is this same interpreter; a cell appended to each notebook
checks that, so the notebooks run against the package under test.
"""

import pathlib
import sys

import pytest

# Test dependencies (the "test" extra): a missing one is an error, not a skip.
import ipykernel  # noqa: E402,F401
import matplotlib  # noqa: E402,F401
import nbclient  # noqa: E402
import nbformat  # noqa: E402

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# Per cell. Quick mode takes well under a minute per notebook on 2 CPU cores;
# this only catches a hang.
CELL_TIMEOUT = 600

_CHECK_INTERPRETER = "import sys; print(sys.prefix)"


def test_notebooks_present():
    names = [p.name for p in NOTEBOOKS]
    assert names == [
        "01_quickstart.ipynb",
        "02_schedules.ipynb",
        "03_bring_your_own_model.ipynb",
        "04_fine_tuning.ipynb",
        "05_adaptive_freezing.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{path.name} cell {i} has outputs"
        assert cell.execution_count is None, (
            f"{path.name} cell {i} has an execution count"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("FREEZEOUT_QUICK", "1")  # the kernel inherits it
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_CHECK_INTERPRETER))
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    for cell in nb.cells:
        if cell.cell_type == "code":
            for output in cell.outputs:
                assert output.output_type != "error", output
    last = "".join(
        o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream"
    )
    assert pathlib.Path(last.strip()) == pathlib.Path(sys.prefix), (
        f"the notebook ran on the kernel of {last.strip()!r}, not of this "
        f"interpreter ({sys.prefix}); install ipykernel in this environment"
    )
