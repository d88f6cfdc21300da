"""The walkthrough notebooks run, are committed clean, and match their scripts.

Each notebook is a jupytext pair (``notebooks/jupytext.toml``): the
percent-format script ``NN_name.py`` and ``NN_name.ipynb``, committed without
outputs; a pair whose cells differ fails (run ``jupytext --set-kernel python3
--sync notebooks/*.py``). Each notebook is executed on a fresh kernel with
``FREEZEOUT_QUICK=1`` (its smoke-test size); any error fails the test. The
kernel is Jupyter's ``python3``, which with ipykernel installed in this
environment (the ``test`` extra) is this same interpreter; a cell appended to
each notebook checks that, so the notebooks run against the package under
test.
"""

import os
import pathlib
import re
import sys

import pytest

# Test dependencies (the "test" extra): a missing one is an error, not a skip.
import ipykernel  # noqa: E402,F401
import jupytext  # noqa: E402
import matplotlib  # noqa: E402,F401
import nbclient  # noqa: E402
import nbformat  # noqa: E402

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SCRIPTS = sorted(NOTEBOOK_DIR.glob("*.py"))
SYNC = "jupytext --set-kernel python3 --sync notebooks/*.py"
# Per cell. Quick mode takes well under a minute per notebook on 2 CPU cores;
# this only catches a hang.
CELL_TIMEOUT = 600

_CHECK_INTERPRETER = "import sys; print(sys.prefix)"


def test_notebooks_present_and_paired():
    names = [p.stem for p in NOTEBOOKS]
    assert names[:7] == [
        "01_quickstart",
        "02_schedules",
        "03_bring_your_own_model",
        "04_fine_tuning",
        "05_adaptive_freezing",
        "06_vit_fine_tuning",
        "07_causal_lm_fine_tuning",
    ]
    for name in names:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+", name), name
    # Every notebook has its script and every script its notebook (a new
    # NN_name.py gets its .ipynb from the sync command).
    assert [p.stem for p in SCRIPTS] == names, f"unpaired: run {SYNC}"
    config = (NOTEBOOK_DIR / "jupytext.toml").read_text()
    assert 'formats = "ipynb,py:percent"' in config


def _cells(nb):
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def _out_of_sync(script_path):
    """What differs between NN_name.py and NN_name.ipynb, or None."""
    notebook_path = script_path.with_suffix(".ipynb")
    if not notebook_path.exists():
        return f"{notebook_path.name} is missing"
    script = jupytext.read(script_path, fmt="py:percent")
    notebook = nbformat.read(notebook_path, as_version=4)
    if not script.cells:
        return f"{script_path.name} has no cells"
    if _cells(script) != _cells(notebook):
        return f"{script_path.name} and {notebook_path.name} have different cells"
    if notebook.metadata.get("kernelspec", {}).get("name") != "python3":
        return f"{notebook_path.name} has no python3 kernel"
    return None


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_and_notebook_are_in_sync(path):
    problem = _out_of_sync(path)
    assert problem is None, f"{problem}: edit the .py, then run {SYNC}"


def test_adding_a_notebook_is_one_command(tmp_path, monkeypatch):
    """The documented command pairs a new percent script, and the check above
    fails as soon as one cell of a pair changes."""
    from jupytext.cli import jupytext as jupytext_cli

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "jupytext.toml").write_text(
        (NOTEBOOK_DIR / "jupytext.toml").read_text()
    )
    new = tmp_path / "notebooks" / "06_new.py"
    new.write_text("# %% [markdown]\n# # New\n\n# %%\nx = 6\nprint(x)\n")
    monkeypatch.chdir(tmp_path)
    command = SYNC.split()
    assert command[0] == "jupytext"
    jupytext_cli([*command[1:-1], str(new)])
    assert _out_of_sync(new) is None
    notebook = nbformat.read(new.with_suffix(".ipynb"), as_version=4)
    assert _cells(notebook) == [("markdown", "# New"), ("code", "x = 6\nprint(x)")]
    assert all(not c.get("outputs") for c in notebook.cells)

    new.write_text(new.read_text().replace("x = 6", "x = 7"))
    later = new.with_suffix(".ipynb").stat().st_mtime + 5  # an edit after the sync
    os.utime(new, (later, later))
    assert "different cells" in _out_of_sync(new)
    jupytext_cli([*command[1:-1], str(new)])  # the .py is the newer: it wins
    assert _out_of_sync(new) is None
    assert "x = 7" in nbformat.read(new.with_suffix(".ipynb"), 4).cells[1].source


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


@pytest.mark.slow
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
