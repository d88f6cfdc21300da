"""The module paths of before the re-layout still import, for one release.

Run in fresh interpreters: a warning is issued when a module is first
imported, so a process that already imported it would see none.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from freezeout_tf._moved import MOVED, PUBLIC_ALIASES

ROOT = pathlib.Path(__file__).resolve().parent.parent

# What each old path is checked for, written out by hand rather than read
# from MOVED, so a wrong entry in the table fails here.
EXPECTED = {
    "speedup": ("freezeout_tf.estimates.speedup", "calc_speedup"),
    "model": ("freezeout_tf.core.model", "FreezeOutModel"),
    "callback": ("freezeout_tf.callbacks.freezeout", "FreezeOut"),
    "functional": ("freezeout_tf.split.functional", "split_model"),
    "optimizer": ("freezeout_tf.core.optimizer", "SGDWithL2"),
    "checkpoint": ("freezeout_tf.recipes.checkpoint", "EpochCheckpoint"),
    "data": ("freezeout_tf.recipes.data", "load_data"),
}

_PROBE = """
import importlib, json, sys, warnings
seen = {}
for old, attribute in json.loads(sys.argv[1]).items():
    # Each old path is a module of its own: its warning fires on its
    # first import, so one fresh process checks them all.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(f"from freezeout_tf.{old} import {attribute}")
        module = importlib.import_module(f"freezeout_tf.{old}")
    seen[old] = {
        "module": module.__name__,
        "defined_in": getattr(module, attribute).__module__,
        "same_object": sys.modules[f"freezeout_tf.{old}"] is module,
        "warnings": [[w.category.__name__, str(w.message), w.filename]
                     for w in caught if "freezeout_tf" in str(w.message)],
    }
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def probed():
    """What a fresh interpreter sees importing each old path of EXPECTED."""
    wanted = {old: attribute for old, (_, attribute) in EXPECTED.items()}
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(wanted)],
                          cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("old", sorted(EXPECTED))
def test_old_path_imports_the_new_module_and_warns_naming_it(old, probed):
    new, attribute = EXPECTED[old]
    seen = probed[old]
    assert seen["module"] == new
    assert seen["defined_in"] == new
    assert seen["same_object"]
    if old in PUBLIC_ALIASES:
        assert seen["warnings"] == []  # still a public name: `fo.data`
    else:
        # One warning, pointing at the importing code (here the exec'd
        # "<string>"), not at the import machinery.
        assert seen["warnings"] == [[
            "DeprecationWarning",
            f"freezeout_tf.{old} moved to {new}; the old path goes in the "
            "next release", "<string>"]]


def test_every_old_path_has_its_module_and_nothing_else_is_aliased():
    package = ROOT / "freezeout_tf"
    aliasing = {path.stem for path in package.glob("*.py")
                if "alias_module(__name__)" in path.read_text()}
    assert aliasing == set(MOVED)
    assert PUBLIC_ALIASES <= set(MOVED)


def test_every_old_path_points_at_an_existing_module():
    for old, new in MOVED.items():
        path = ROOT.joinpath(*new.split("."))
        assert path.with_suffix(".py").is_file(), (old, new)
