"""A diverging run stops in that epoch, keeps its last good checkpoint and
logs strict JSON; the progress bar's FreezeOut entries."""

import hashlib
import json
import re

import keras
import numpy as np
import tensorflow as tf

from conftest import LOSS, tiny_model
from freezeout_tf import FreezeOut, original_sgd
from freezeout_tf.recipes import checkpoint, training_log
from freezeout_tf.callbacks.divergence import StopOnDivergence


def _strict(text):
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def test_divergence_in_epoch_2_keeps_the_epoch_1_checkpoint(tmp_path):
    model = tiny_model()
    model.compile(original_sgd(0.01), LOSS)
    steps, batch = 4, 8
    x = np.random.default_rng(0).normal(size=(steps * batch, 8, 8, 3))
    x = x.astype("float32")
    y = np.zeros(steps * batch, "int64")
    # Epoch 2's third batch is NaN: the loss turns non-finite at step 7.
    bad = x.copy()
    bad[2 * batch:3 * batch] = np.nan
    ds = tf.data.Dataset.from_tensor_slices(
        (np.concatenate([x, bad]), np.concatenate([y, y]))
    ).batch(batch)  # two epochs of data, in order
    log = training_log.MetricsLog(str(tmp_path / "run.jsonl"))
    path = str(tmp_path / "run.keras")
    saver = checkpoint.EpochCheckpoint(path)
    stop = StopOnDivergence(log)
    digests = []

    class Digest(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            digests.append(hashlib.sha256(open(path, "rb").read()).hexdigest())

    model.fit(ds, epochs=3, steps_per_epoch=steps, verbose=0, shuffle=False,
              callbacks=[FreezeOut(), stop,
                         training_log.MetricsLogger(log, epochs=3), saver,
                         Digest()])
    assert (stop.diverged, stop.step, stop.epoch) == (True, 7, 2)
    assert np.isnan(stop.loss)
    assert int(model.optimizer.iterations) == 7  # stopped within epoch 2
    assert saver.skipped == [1] and digests[0] == digests[1]
    assert checkpoint.completed_epochs(checkpoint.load_checkpoint(path), steps) == 1
    records = _strict(open(log.path).read())
    assert records[-1]["diverged"] is True and records[-1]["step"] == 7
    assert records[-1]["loss"] is None
    assert [r["train_loss"] is None for r in records if "train_loss" in r] == [
        False, True,
    ]


def test_progress_bar_shows_an_integer_count_and_the_unit_rate(capsys):
    model = tiny_model(num_units=2)
    model.compile(original_sgd(0.1), LOSS)
    x = np.zeros((16, 8, 8, 3), "float32")
    history = model.fit(
        x, np.zeros(16, "int64"), batch_size=4, epochs=2, verbose=2,
        callbacks=[FreezeOut(t_0=0.75, how_scale="linear", scale_lr=True)],
    )
    out = capsys.readouterr().out
    assert "active_units: 2 -" in out and "active_units: 0 -" in out
    assert "active_units: 2.0000" not in out
    # The rate shown is the first active unit's, not the optimizer's
    # constant base rate.
    (line, _) = [line for line in out.splitlines() if " - loss: " in line]
    assert sorted(re.findall(r"(\w+): ", line)) == [
        "active_units", "first_active_lr", "loss"]
    # After 4 of 8 steps unit 0 (t = 0.75) trains at
    # 0.1 / t * (1 + cos(pi * 4 / (t * 8))) / 2; at the end the head's is 0.
    expected = 0.1 / 0.75 * 0.5 * (1 + np.cos(np.pi * 4 / 6))
    np.testing.assert_allclose(
        history.history["first_active_lr"], [expected, 0.0], atol=1e-12
    )
    assert "learning_rate" not in history.history
    assert history.history["active_units"] == [2, 0]


def test_epoch_checkpoint_checks_the_loss_and_the_weights_each(tmp_path):
    # Issue 34: dropping either check alone survived the run above (its
    # NaN batch makes both the loss and the weights non-finite).
    model = tiny_model(num_units=1)
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    model.optimizer.build(model.trainable_variables)
    path = tmp_path / "run.keras"
    saver = checkpoint.EpochCheckpoint(str(path))
    saver.set_model(model)
    saver.on_epoch_end(0, {"loss": float("nan")})  # finite weights
    assert saver.skipped == [0] and not path.exists()
    kernel = model.freeze_units[0].trainable_weights[0]
    good = kernel.numpy()
    kernel.assign(np.full(good.shape, np.inf, good.dtype))
    saver.on_epoch_end(1, {"loss": 0.5})  # a finite loss
    assert saver.skipped == [0, 1] and not path.exists()
    kernel.assign(good)
    saver.on_epoch_end(2, {"loss": 0.5})
    assert saver.skipped == [0, 1] and path.exists()
