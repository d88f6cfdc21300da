"""Checkpoints saved by an earlier layout of the package still load.

`tests/fixtures/*.keras` were written by `tests/fixtures/make_saved_models.py`
before the package was reorganised: a FreezeOut DenseNet-BC and a split
functional model, each saved halfway through a run with its first units
frozen. Loading one must give the same predictions, step count and frozen
units, and training must go on from it.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import freezeout_tf as fo

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "fixtures")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", ["densenet_bc_v0", "split_functional_v0"])
def test_checkpoint_saved_before_loads_and_trains_on(name):
    expected = np.load(os.path.join(FIXTURES, f"{name}.npz"))
    model = keras.saving.load_model(os.path.join(FIXTURES, f"{name}.keras"))
    assert isinstance(model, fo.FreezeOutModel)
    np.testing.assert_allclose(model.predict(expected["x"], verbose=0),
                               expected["predictions"], rtol=1e-5, atol=1e-6)
    assert int(model.batches_taken.numpy()) == int(expected["batches_taken"])
    frozen = [not unit.trainable for unit in model.freeze_units]
    assert frozen == expected["frozen"].tolist()

    # Training goes on: the frozen units stay as they were, the others move.
    before = [[w.numpy().copy() for w in unit.weights]
              for unit in model.freeze_units]
    # It was saved after 2 epochs of 4 steps (batch 4) of a 16-step run.
    x = np.repeat(expected["x"], 4, axis=0)
    y = np.arange(len(x)) % 5
    steps = int(expected["batches_taken"])
    model.fit(x, y, batch_size=4, epochs=4, initial_epoch=2, verbose=0,
              callbacks=[fo.FreezeOut(t_0=0.3, how_scale="linear",
                                      total_steps=2 * steps)])
    assert int(model.batches_taken.numpy()) == 2 * steps
    for was_frozen, old, unit in zip(frozen, before, model.freeze_units):
        moved = any(not np.array_equal(a, w.numpy())
                    for a, w in zip(old, unit.weights))
        assert moved != was_frozen, unit.name


def test_a_fresh_process_loads_them_with_keras_imported_first():
    # `import freezeout_tf` is lazy; with Keras already imported it
    # registers FreezeOut's classes at once (the rule in its docstring), so
    # a fresh process loads both checkpoints without touching a name. The
    # other order registers nothing until a name is used.
    code = (
        "import sys, keras\n"
        "import freezeout_tf\n"
        "for name in sys.argv[1:]:\n"
        "    model = keras.saving.load_model(name)\n"
        "    print(type(model).__module__, type(model).__name__)\n")
    paths = [os.path.join(FIXTURES, f"{name}.keras")
             for name in ("densenet_bc_v0", "split_functional_v0")]
    done = subprocess.run([sys.executable, "-c", code, *paths],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == [
        "freezeout_tf.core.model FreezeOutModel"] * 2

    code = ("import sys, freezeout_tf, keras\n"
            "print(keras.saving.get_registered_object("
            "'freezeout_tf>FreezeOutModel'))\n"
            "freezeout_tf.FreezeOutModel\n"
            "print(keras.saving.get_registered_object("
            "'freezeout_tf>FreezeOutModel').__name__)\n")
    done = subprocess.run([sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["None", "FreezeOutModel"]
