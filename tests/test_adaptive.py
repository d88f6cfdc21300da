"""Adaptive freezing decided in the train step (freezeout_tf.adaptive).

Tiny model, 64 random samples, 4 steps per epoch: each fit takes seconds.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import LOSS, tiny_data, tiny_model
from freezeout_tf import AdaptiveFreeze, FreezeOut, FreezeOutModel, schedule
from freezeout_tf.adaptive import NOT_YET, criterion_step
from freezeout_tf.schedule_state import NEVER
from test_train_step import unit_state

# Checks every 2 steps: on the tiny task units trigger between steps 4 and
# 16 of 24, so decisions fall both before and after a resume at step 8.
CRITERION = AdaptiveFreeze(window=2, threshold=0.05, interval=2)
EPOCHS, STEPS_PER_EPOCH = 6, 4


def _fit(model, callback, epochs=EPOCHS, initial_epoch=0, extra=()):
    x, y = tiny_data()
    return model.fit(x, y, batch_size=16, epochs=epochs,
                     initial_epoch=initial_epoch, shuffle=False, verbose=0,
                     callbacks=[callback, *extra])


def _compiled(seed=0):
    model = tiny_model(seed=seed)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), LOSS)
    return model


def _freeze_steps(model):
    return model.schedule_state.host_freeze_steps()[:-1].copy()


class SnapshotAtFreeze(keras.callbacks.Callback):
    """Each unit's state (weights, BN statistics, momentum) right after the
    last step it trained, read from the in-graph freeze steps."""

    def __init__(self):
        super().__init__()
        self.values = {}

    def on_train_batch_end(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        for i, at in enumerate(_freeze_steps(self.model)):
            if at == step and i not in self.values:
                self.values[i] = unit_state(self.model, i)


@pytest.mark.parametrize("kwargs, match", [
    (dict(window=0), r"window=0\): must be an integer >= 1"),
    (dict(window=2.5), r"window=2.5\): must be an integer"),
    (dict(interval=True), r"interval=True\): must be an integer"),
    (dict(threshold=0), r"threshold=0\): must be a finite number > 0"),
    (dict(threshold=float("nan")), r"threshold=nan\)"),
])
def test_bad_criterion_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveFreeze(**kwargs)


def test_bad_callback_arguments_are_refused_before_training():
    with pytest.raises(ValueError, match=r"t_0=None\) needs adaptive="):
        FreezeOut(t_0=None)
    with pytest.raises(ValueError, match=r"adaptive=0.1\): must be None or"):
        FreezeOut(adaptive=0.1)
    with pytest.raises(ValueError, match="t_0"):
        FreezeOut(t_0=1.5, adaptive=CRITERION)
    callback = FreezeOut(t_0=None, adaptive=CRITERION, frozen_from_start=1)
    again = FreezeOut(**callback.get_config())
    assert again.adaptive == CRITERION and again.t_0 is None


def _reference(norms, config, scheduled):
    """The criterion written out step by step in plain Python (the oracle
    for `criterion_step`): freeze steps and last changes."""
    steps, n = norms.shape
    ema, ref = np.zeros(n), np.zeros(n)
    change = np.full(n, float(NOT_YET))
    freeze = np.array(scheduled, np.int64)
    checks = 0
    for j in range(steps):
        for i in range(n):
            if j < freeze[i]:  # active
                ema[i] = norms[j, i] if j == 0 else (
                    ema[i] + (norms[j, i] - ema[i]) / config.window)
        if (j + 1) % config.interval:
            continue
        for i in range(n):
            if checks and j < freeze[i]:
                change[i] = abs(ema[i] - ref[i]) / ref[i]
                prefix = all(freeze[k] <= j + 1 for k in range(i))
                if (prefix and j + 1 >= config.window
                        and change[i] < config.threshold):
                    freeze[i] = j + 1
        ref = ema.copy()
        checks += 1
    return freeze, change


def test_criterion_step_matches_a_step_by_step_reference():
    rng = np.random.default_rng(3)
    steps, n = 60, 4
    # Norms that settle, unit 2 first (it must wait for units 0 and 1).
    decay = np.array([0.08, 0.05, 0.3, 0.1])
    norms = (1 + np.exp(-decay * np.arange(steps)[:, None])
             + 0.01 * rng.normal(size=(steps, n))).astype(np.float32)
    config = AdaptiveFreeze(window=3, threshold=0.02, interval=4)
    scheduled = np.array([NEVER] * 3 + [50], np.int64)  # unit 3: t_i at 50
    want, want_change = _reference(norms.astype(np.float64), config,
                                   scheduled)
    freeze = tf.constant(scheduled)
    ema = ref = tf.zeros(n)
    change = tf.fill([n], float(NOT_YET))
    seen = checks = tf.constant(0, tf.int64)
    for j in range(steps):
        step = tf.constant(j, tf.int64)
        out = criterion_step(step, tf.constant(norms[j]), j < freeze, freeze,
                             ema, ref, change, seen, checks, config)
        freeze = tf.where(out["freeze"], step + 1, freeze)
        ema, ref, change = out["ema"], out["reference"], out["change"]
        seen, checks = out["seen"], out["checks"]
    np.testing.assert_array_equal(freeze.numpy(), want)
    np.testing.assert_allclose(change.numpy(), want_change, rtol=1e-4)
    # The case is not trivial: units freeze adaptively, in order, unit 3
    # before its scheduled step, and unit 2 settled first but waited.
    assert np.all(np.diff(want) >= 0) and want[3] < 50
    settled_alone = _reference(norms[:, 2:3].astype(np.float64), config,
                               scheduled[2:3])[0][0]
    assert settled_alone < want[2]


def test_adaptive_only_freezes_a_prefix_in_one_trace_and_frozen_means_frozen():
    model = _compiled()
    snap = SnapshotAtFreeze()
    history = _fit(model, FreezeOut(t_0=None, adaptive=CRITERION), extra=[snap])
    freeze = _freeze_steps(model)
    total = EPOCHS * STEPS_PER_EPOCH
    # At least two units froze adaptively, as a prefix, before the end.
    assert np.sum(freeze < total) >= 2
    assert np.all(np.diff(freeze) >= 0)
    assert model.train_step_traces == 1
    decided, change = model.adaptive_state.host_values()
    assert list(decided[freeze < total]) == list(freeze[freeze < total])
    # Learning rates follow the optimizer: no schedule, no annealing.
    assert history.history["first_active_lr"] == history.history["learning_rate"]
    # Logs: each unit's freeze step and criterion value, per epoch.
    h = history.history
    for i, at in enumerate(freeze):
        assert h[f"unit{i}_freeze_step"][-1] == (at if at < total else NOT_YET)
        assert h[f"unit{i}_change"][-1] == pytest.approx(change[i])
    assert h["active_units"][-1] == np.sum(freeze >= total)
    # Frozen units' weights, BN statistics and momentum never moved again.
    assert sorted(snap.values) == [i for i in range(4) if freeze[i] < total]
    for i, before in snap.values.items():
        for a, b in zip(before, unit_state(model, i)):
            assert np.array_equal(a, b), i
    assert [u.trainable for u in model.freeze_units] == list(freeze >= total)


def test_combined_freezes_at_the_earlier_of_schedule_and_trigger():
    model = _compiled()
    history = _fit(model, FreezeOut(t_0=0.8, adaptive=CRITERION))
    total = EPOCHS * STEPS_PER_EPOCH
    scheduled = schedule.freeze_steps(
        total, schedule.freeze_fractions(4, 0.8, "cubic"))[:-1]
    freeze = _freeze_steps(model)
    assert np.all(freeze <= scheduled) and np.any(freeze < scheduled)
    # The first unit frozen early had its annealed rate cut to zero there.
    unit = int(np.argmax(freeze < scheduled))
    assert model.schedule_state.multiplier(int(freeze[unit]), unit) == 0.0
    assert model.schedule_state.multiplier(int(freeze[unit]) - 1, unit) > 0.0
    # ... and before that it followed the schedule (scaled by 1 / t_i).
    assert history.history["first_active_lr"][0] > 0.1


def test_resumed_run_freezes_at_the_same_steps(tmp_path):
    whole = _compiled()
    _fit(whole, FreezeOut(t_0=None, adaptive=CRITERION))
    want = _freeze_steps(whole)

    first = _compiled()
    _fit(first, FreezeOut(t_0=None, adaptive=CRITERION), epochs=2)
    path = str(tmp_path / "half.keras")
    first.save(path)
    resumed = keras.saving.load_model(path)
    saved = [v.numpy() for v in first.adaptive_state.weights]
    for a, b in zip(saved, resumed.adaptive_state.weights):
        np.testing.assert_array_equal(a, b.numpy())
    _fit(resumed, FreezeOut(t_0=None, adaptive=CRITERION), initial_epoch=2)
    got = _freeze_steps(resumed)
    np.testing.assert_array_equal(got, want)
    # Decisions fell on both sides of the resume (step 8).
    assert np.any(want <= 8) and np.any((want > 8) & (want < NEVER))
    for a, b in zip(whole.weights, resumed.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_later_fit_without_the_criterion_does_not_keep_deciding():
    model = _compiled()
    _fit(model, FreezeOut(t_0=None, adaptive=AdaptiveFreeze(
        window=2, threshold=1e-9, interval=2)), epochs=1)
    assert np.all(_freeze_steps(model) == NEVER)  # nothing settled that much
    _fit(model, FreezeOut(t_0=1.0, how_scale="linear"), epochs=3,
         initial_epoch=1)
    # Only the schedule froze (t_0 = 1: nothing before the end).
    assert np.all(model.adaptive_state.host_values()[0] == NOT_YET)
    assert int(model.adaptive_state.seen.numpy()) == STEPS_PER_EPOCH


def test_from_model_network_freezes_adaptively():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    skip = x
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.Add()([x, skip])
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5)(x)
    model = FreezeOutModel.from_model(keras.Model(inputs, outputs))
    assert model.num_units >= 2
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), LOSS)
    _fit(model, FreezeOut(t_0=None, adaptive=CRITERION))
    freeze = _freeze_steps(model)
    assert freeze[0] < EPOCHS * STEPS_PER_EPOCH
    assert np.all(np.diff(freeze) >= 0) and model.train_step_traces == 1


def test_mirrored_replicas_decide_identically(tmp_path):
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "_adaptive_dist_worker.py")
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, worker, str(tmp_path)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-4000:]
    r = np.load(tmp_path / "adaptive.npz")
    # The signal is all-reduced: replicas with different local gradients
    # (norms sqrt(3) and 2 sqrt(3)) both read their sum.
    np.testing.assert_allclose(r["replica_norms"], [3 * np.sqrt(3)] * 2,
                               rtol=1e-6)
    # A two-replica fit froze units adaptively, one trace, and every
    # replica holds the same criterion state and freeze decisions.
    assert int(r["replicas"]) == 2 and int(r["train_step_traces"]) == 2
    freeze = r["freeze_steps"]
    assert np.sum(freeze < int(r["total"])) >= 1
    assert np.all(np.diff(freeze) >= 0)
    assert int(r["num_state"]) >= 6
    for i in range(int(r["num_state"])):
        np.testing.assert_array_equal(r[f"replica0_{i}"], r[f"replica1_{i}"])
    # The first frozen unit did not move from its freeze step on.
    assert int(r["num_snap"]) >= 4
    for i in range(int(r["num_snap"])):
        assert np.array_equal(r[f"snap_{i}"], r[f"end_{i}"]), i
