"""Adaptive freezing decided in the train step (freezeout_tf.adaptive).

Tiny model, 64 random samples, 4 steps per epoch: each fit takes seconds.
"""

import glob
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import LOSS, tiny_data, tiny_model
from freezeout_tf import AdaptiveFreeze, FreezeOut, FreezeOutModel, schedule
from freezeout_tf.adaptive import (
    NOT_YET, AdaptiveState, IntervalState, Observation, ThresholdState,
    criterion_step, pace_step, rank_step,
)
from freezeout_tf.core.schedule_state import NEVER, ScheduleState
from test_train_step import unit_state

# Checks every 2 steps: on the tiny task units trigger between steps 4 and
# 16 of 24, so decisions fall both before and after a resume at step 8.
CRITERION = AdaptiveFreeze(window=2, threshold=0.05, interval=2)
# The rank and pace criteria, checked every 2 steps too (the default rank
# criterion's 10 intervals over the 24 steps give the same interval).
RANK = AdaptiveFreeze()
PACE = AdaptiveFreeze("pace", t_0=0.5, interval=2)
# Settle, checked every 2 steps: a change below 5 % at one check lets a
# unit go (units freeze at steps 6, 10, 16, 18 of 24 here).
SETTLE = AdaptiveFreeze("settle", interval=2, tolerance=0.05, patience=1)
ALL = {"threshold": CRITERION, "rank": RANK, "pace": PACE,
       "settle": SETTLE}
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
    (dict(criterion="median"), r"criterion='median'\): must be one of"),
    (dict(percentile=0), r"percentile=0\): must be a number in \(0, 100\]"),
    (dict(percentile=101), r"percentile=101\)"),
    (dict(intervals=1), r"intervals=1\): must be an integer >= 2"),
    (dict(criterion="pace", t_0=0), r"t_0=0\): must be a number in \(0, 1\]"),
    (dict(criterion="rank", threshold=0.1),
     r"threshold=0.1\): not a setting of criterion 'rank'"),
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
    with pytest.raises(ValueError, match=r"adaptive_batch_logs=1\)"):
        FreezeOut(adaptive=RANK, adaptive_batch_logs=1)
    for criterion in ALL.values():
        callback = FreezeOut(t_0=None, adaptive=criterion,
                             frozen_from_start=1, adaptive_batch_logs=True)
        again = FreezeOut(**callback.get_config())
        assert again.adaptive == criterion and again.t_0 is None
        assert again.adaptive_batch_logs
    # Intervals over the run need its length.
    assert RANK.check_interval(24) == 2 and PACE.check_interval(None) == 2
    with pytest.raises(ValueError, match="run's length cannot be known"):
        RANK.check_interval(None)


def test_default_is_the_rank_criterion_and_old_settings_mean_threshold():
    assert AdaptiveFreeze().criterion == "rank"
    assert AdaptiveFreeze(threshold=0.1).criterion == "threshold"
    assert AdaptiveFreeze(window=5).get_config() == {
        "criterion": "threshold", "window": 5, "threshold": 0.05,
        "interval": 20}


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
    state = ThresholdState(
        ema=tf.zeros(n), reference=tf.zeros(n),
        change=tf.fill([n], float(NOT_YET)),
        seen=tf.constant(0, tf.int64), checks=tf.constant(0, tf.int64))
    for j in range(steps):
        step = tf.constant(j, tf.int64)
        out = criterion_step(
            Observation(step, tf.constant(norms[j]), j < freeze, freeze),
            state, config)
        freeze = tf.where(out.freeze, step + 1, freeze)
        state = out.state
    assert int(state.seen) == steps
    np.testing.assert_array_equal(freeze.numpy(), want)
    np.testing.assert_allclose(state.change.numpy(), want_change, rtol=1e-4)
    # The case is not trivial: units freeze adaptively, in order, unit 3
    # before its scheduled step, and unit 2 settled first but waited.
    assert np.all(np.diff(want) >= 0) and want[3] < 50
    settled_alone = _reference(norms[:, 2:3].astype(np.float64), config,
                               scheduled[2:3])[0][0]
    assert settled_alone < want[2]


def _interval_reference(norms, interval, q, scheduled, targets=None):
    """The rank criterion (or, given `targets`, pace) written out step by
    step with NumPy (the oracle for `rank_step` / `pace_step`): freeze
    steps, last changes and the targets."""
    steps, n = norms.shape
    freeze = np.array(scheduled, np.int64)
    sums, ref = np.zeros(n), np.zeros(n)
    change = np.full(n, float(NOT_YET))
    count = checks = 0
    for j in range(steps):
        active = j < freeze
        sums[active] += norms[j, active]
        count += 1
        wants = np.zeros(n, bool)
        if (j + 1) % interval == 0:
            mean = sums / count
            if checks and active.any():
                ratio = np.abs(mean - ref) / ref
                change[active] = ratio[active]
                p = np.percentile(ratio[active], q)
                wants = active & (ratio < p)
                if targets is not None:
                    targets[active] += np.where(ratio[active] < p,
                                                -interval, interval)
            ref[active] = mean[active]
            sums[:] = 0
            count = 0
            checks += 1
        if targets is not None:
            wants = targets <= j + 1
        for i in range(n):  # frozen units stay a prefix
            if freeze[i] <= j + 1:
                continue
            if not wants[i]:
                break
            freeze[i] = j + 1
    return freeze, change, targets


def observe_norms(config, norms, scheduled, target=None):
    """Runs the observer the train step runs on `norms` (`[steps, n]`, one
    gradient tensor per unit whose norm is the unit's norm), from the
    freeze steps `scheduled` (and pace's `target`); returns its
    `(AdaptiveState, ScheduleState)`."""
    steps, n = norms.shape
    adaptive, schedule_state = AdaptiveState(n), ScheduleState(n)
    schedule_state.freeze_steps.assign(np.append(scheduled, NEVER))
    adaptive.start(config, steps)
    if target is not None:
        adaptive.target.assign(target)
    observe = adaptive.observer(config, schedule_state)

    @tf.function
    def observe_step(step, unit_norms):
        observe(step, [[unit_norms[i:i + 1]] for i in range(n)],
                schedule_state.frozen_flags(step))

    for j in range(steps):
        observe_step(tf.constant(j, tf.int64), tf.constant(norms[j]))
    return adaptive, schedule_state


@pytest.mark.parametrize("criterion", ["rank", "pace"])
def test_interval_criteria_match_a_step_by_step_reference(criterion):
    rng = np.random.default_rng(5)
    steps, n, interval, q = 90, 5, 6, 50.0
    decay = np.array([0.08, 0.03, 0.2, 0.05, 0.1])
    norms = (1 + np.exp(-decay * np.arange(steps)[:, None])
             + 0.05 * rng.normal(size=(steps, n))).astype(np.float32)
    scheduled = np.array([NEVER] * (n - 1) + [70], np.int64)
    start = np.array([20, 30, 45, 60, 80], np.int64)
    want, want_change, want_targets = _interval_reference(
        norms.astype(np.float64), interval, q, scheduled,
        start.copy() if criterion == "pace" else None)
    freeze = tf.constant(scheduled)
    state = IntervalState(
        interval_sum=tf.zeros(n), interval_steps=tf.constant(0, tf.int64),
        reference=tf.zeros(n), change=tf.fill([n], float(NOT_YET)),
        checks=tf.constant(0, tf.int64),
        target=tf.constant(start) if criterion == "pace" else None)
    take_step = rank_step if criterion == "rank" else pace_step
    for j in range(steps):
        step = tf.constant(j, tf.int64)
        out = take_step(
            Observation(step, tf.constant(norms[j]), j < freeze, freeze),
            state, interval, q)
        freeze = tf.where(out.freeze, step + 1, freeze)
        state = out.state
    np.testing.assert_array_equal(freeze.numpy(), want)
    np.testing.assert_allclose(state.change.numpy(), want_change, rtol=1e-4)
    if criterion == "pace":
        np.testing.assert_array_equal(state.target.numpy(), want_targets)
        assert np.any(want_targets < start) and np.any(want_targets > start)
    else:
        assert state.target is None
    # Not trivial: the criterion froze several units, a prefix, in order.
    decided = want < scheduled
    assert decided.sum() >= 3 and np.all(np.diff(decided.astype(int)) <= 0)
    assert np.all(np.diff(want[decided]) >= 0)
    # The observer the train step runs (which skips the full step where it
    # cannot decide) writes the same decisions into the schedule's state.
    config = AdaptiveFreeze(criterion, interval=interval, percentile=q)
    adaptive, schedule_state = observe_norms(config, norms, scheduled, start)
    np.testing.assert_array_equal(
        schedule_state.host_freeze_steps()[:n], want)
    logged = adaptive.host_values()
    np.testing.assert_array_equal(logged.decided[decided], want[decided])
    assert np.all(logged.decided[~decided] == NOT_YET)
    np.testing.assert_allclose(logged.change, want_change, rtol=1e-4)
    if criterion == "pace":
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(adaptive.target), want_targets)


@pytest.mark.parametrize("name", list(ALL))
def test_adaptive_only_freezes_a_prefix_in_one_trace_and_frozen_means_frozen(
        name):
    criterion = ALL[name]
    model = _compiled()
    snap = SnapshotAtFreeze()
    callback = FreezeOut(t_0=None, adaptive=criterion)
    history = _fit(model, callback, extra=[snap])
    freeze = _freeze_steps(model)
    total = EPOCHS * STEPS_PER_EPOCH
    # At least two units froze adaptively, as a prefix, before the end.
    assert np.sum(freeze < total) >= 2
    assert np.all(np.diff(freeze) >= 0)
    assert model.train_step_traces == 1
    decided, change = model.adaptive_state.host_values()
    assert list(decided[freeze < total]) == list(freeze[freeze < total])
    # Learning rates follow the optimizer: no schedule, no annealing.
    assert history.history["first_active_lr"] == pytest.approx([0.1] * EPOCHS)
    # Each unit's freeze step and criterion value, per epoch, on the callback.
    h = callback.unit_history
    assert all(len(v) == EPOCHS for v in h.values())
    for i, at in enumerate(freeze):
        assert h[f"unit{i}_freeze_step"][-1] == (at if at < total else NOT_YET)
        assert h[f"unit{i}_change"][-1] == pytest.approx(change[i])
    assert history.history["active_units"][-1] == np.sum(freeze >= total)
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


@pytest.mark.parametrize("name", ["rank", "pace", "settle"])
def test_resumed_run_freezes_at_the_same_steps(tmp_path, name):
    # The run's length places the intervals (and pace's targets): a run
    # split over several fits passes it, as for the schedule.
    def callback():
        return FreezeOut(t_0=None, adaptive=ALL[name],
                         total_steps=EPOCHS * STEPS_PER_EPOCH)

    whole = _compiled()
    _fit(whole, callback())
    want = _freeze_steps(whole)

    first = _compiled()
    _fit(first, callback(), epochs=2)
    path = str(tmp_path / "half.keras")
    first.save(path)
    resumed = keras.saving.load_model(path)
    saved = [v.numpy() for v in first.adaptive_state.weights]
    for a, b in zip(saved, resumed.adaptive_state.weights):
        np.testing.assert_array_equal(a, b.numpy())
    _fit(resumed, callback(), initial_epoch=2)
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
    assert np.all(model.adaptive_state.host_values().decided == NOT_YET)
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
    _fit(model, FreezeOut(t_0=None, adaptive=RANK))
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


def test_unit_figures_go_to_the_json_log_and_tensorboard_not_the_bar(
        tmp_path, capsys):
    from freezeout_tf.callbacks.summaries import FreezeOutSummaries
    from freezeout_tf.recipes import training_log

    model = _compiled()
    log = training_log.MetricsLog(str(tmp_path / "run.jsonl"))
    logger = training_log.MetricsLogger(log, epochs=EPOCHS, print_epochs=False)
    board = FreezeOutSummaries(str(tmp_path / "tb"), num_units=4,
                               total_steps=EPOCHS * STEPS_PER_EPOCH, t_0=None,
                               how_scale="cubic", scale_lr=True)
    x, y = tiny_data()
    model.fit(x, y, batch_size=16, epochs=EPOCHS, shuffle=False, verbose=2,
              callbacks=[FreezeOut(t_0=None, adaptive=RANK), logger, board])
    freeze = _freeze_steps(model)
    assert np.sum(freeze < EPOCHS * STEPS_PER_EPOCH) >= 1
    # The progress line: the loss, the active units and the first active
    # unit's rate; no per-unit figures, no constant base rate.
    lines = [line for line in capsys.readouterr().out.splitlines()
             if " - loss: " in line]
    assert len(lines) == EPOCHS
    for line in lines:
        keys = re.findall(r"(\w+): ", line)
        assert sorted(keys) == ["active_units", "first_active_lr", "loss"]
    # The JSON log's training records have every unit's figures.
    last = [r for r in training_log.read_log(log.path) if "train_loss" in r][-1]
    _, change = model.adaptive_state.host_values()
    for i, at in enumerate(freeze):
        assert last[f"unit{i}_freeze_step"] == (
            at if at < EPOCHS * STEPS_PER_EPOCH else NOT_YET)
        assert last[f"unit{i}_change"] == pytest.approx(change[i])
    assert last["learning_rate"] == 0.1
    # ... and so has TensorBoard, at the last epoch's step.
    tags = {}
    for path in glob.glob(str(tmp_path / "tb" / "*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                if array.ndim == 0:  # a scalar, not the histogram
                    tags[value.tag] = float(array)
    for i, at in enumerate(freeze):
        assert tags[f"adaptive/unit{i}_change"] == pytest.approx(change[i])
    assert tags["lr_multiplier/head"] == 1.0


class BatchLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append(dict(logs))


def test_batch_logs_of_the_criterion_are_opt_in():
    quiet, loud = BatchLogs(), BatchLogs()
    _fit(_compiled(), FreezeOut(t_0=None, adaptive=RANK), extra=[quiet])
    model = _compiled()
    _fit(model, FreezeOut(t_0=None, adaptive=RANK, adaptive_batch_logs=True),
         extra=[loud])
    assert all("first_active_change" not in logs for logs in quiet.logs)
    assert all("first_active_change" in logs for logs in loud.logs)
    # Read every batch, active_units follows the graph's decisions exactly.
    freeze = _freeze_steps(model)
    want = [int(np.sum(step >= freeze)) for step in
            range(1, EPOCHS * STEPS_PER_EPOCH + 1)]
    assert [4 - logs["active_units"] for logs in loud.logs] == want
    assert want[-1] >= 1


def test_rank_criterion_under_xla_one_trace_prefix_and_frozen_means_frozen():
    """The default criterion compiled by XLA (jit_compile=True)."""
    model = tiny_model(num_units=3, channels=2, size=4)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), LOSS,
                  jit_compile=True)
    assert model.jit_compile is True
    snap = SnapshotAtFreeze()
    x, y = tiny_data(n=32, size=4)
    model.fit(x, y, batch_size=8, epochs=5, shuffle=False, verbose=0,
              callbacks=[FreezeOut(t_0=None, adaptive=AdaptiveFreeze(
                  interval=2)), snap])
    freeze = _freeze_steps(model)
    assert model.train_step_traces == 1
    assert np.sum(freeze < 20) >= 1 and np.all(np.diff(freeze) >= 0)
    assert sorted(snap.values) == [i for i in range(3) if freeze[i] <= 20]
    for i, before in snap.values.items():
        for a, b in zip(before, unit_state(model, i)):
            assert np.array_equal(a, b), i
