"""The one-graph train step: exact gradients, frozen means frozen, one trace."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import LOSS, tiny_data, tiny_model
from freezeout_tf import FreezeOut, FreezeOutModel, original_sgd, schedule


SLOT_LISTS = ("momentums", "_momentums", "_velocities")
# Slots per trainable variable: SGD's momentum; Adam's two moments.
SLOTS_PER_VARIABLE = {"sgd_nesterov": 1, "adam": 2, "adamw": 2, "original": 1}


def optimizer_slots(opt, variable):
    """The optimizer's slot variables (momentum, Adam moments) of one variable.

    Raises:
        AssertionError: if none is found (Keras renamed its slot lists, and
            a check of frozen slots would otherwise compare nothing).
    """
    i = opt._get_variable_index(variable)
    slots = [getattr(opt, name)[i] for name in SLOT_LISTS
             if getattr(opt, name, None)]
    assert slots, (
        f"{type(opt).__name__} has none of the slot lists {SLOT_LISTS}: "
        "update SLOT_LISTS to the names this Keras uses.")
    assert all(tuple(s.shape) == tuple(variable.shape) for s in slots)
    return slots


class Snapshot(keras.callbacks.Callback):
    """Copies unit 0's weights, BN statistics and optimizer slots right after
    the last step before it freezes."""

    def __init__(self, at_step):
        super().__init__()
        self.at_step = at_step
        self.values = None

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == self.at_step:
            self.values = unit_state(self.model, 0)


def unit_state(model, i):
    unit = model.freeze_units[i]
    values = [v.numpy().copy() for v in unit.weights]  # incl. moving stats
    for v in unit._flatten_layers():
        for w in v._trainable_variables:
            values += [s.numpy().copy() for s in optimizer_slots(model.optimizer, w)]
    return values


OPTIMIZERS = {
    "sgd_nesterov": lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    "adam": lambda: keras.optimizers.Adam(1e-2),
    "adamw": lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.1),
    "original": original_sgd,
}


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_frozen_unit_is_bit_identical_from_its_freeze_step(opt, data):
    x, y = data
    model = tiny_model()
    model.compile(OPTIMIZERS[opt](), LOSS)
    steps_per_epoch, epochs = 4, 6
    # By hand: t = 0.3 ** 3 = 0.027, T = 24: floor(0.648) + 1.
    first_frozen = 1
    snap = Snapshot(at_step=first_frozen)
    model.optimizer.build(model.trainable_variables)
    start_last = unit_state(model, model.num_units - 1)
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0,
              callbacks=[FreezeOut(t_0=0.3), snap])
    assert snap.values is not None
    end = unit_state(model, 0)
    # Conv kernel, BN gamma, beta and two moving statistics; then the slots
    # of the three trainable ones.
    assert len(snap.values) == len(end) == 5 + 3 * SLOTS_PER_VARIABLE[opt]
    for before, after in zip(snap.values, end):
        assert np.array_equal(before, after)
    # The last unit kept training to the end: its state did move.
    moved = unit_state(model, model.num_units - 1)
    assert any(not np.array_equal(a, b) for a, b in zip(start_last, moved))


def test_single_trace_across_every_freeze_event(data):
    x, y = data
    model = tiny_model()
    model.compile(original_sgd(), LOSS, metrics=["accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=6, verbose=0,
                        callbacks=[FreezeOut(t_0=0.2, how_scale="linear")])
    assert history.history["active_units"][0] > 0
    assert history.history["active_units"][-1] == 0  # every unit froze
    assert model.train_step_traces == 1
    assert [u.trainable for u in model.freeze_units] == [False] * 4
    assert model.head.trainable


def test_fit_setup_runs_no_unit_forward_before_the_one_trace(data):
    # Keras' symbolic build (before the first step) needs only the output's
    # shape: the units' own shape inference gives it, so each unit runs its
    # forward once before training (in the one trace of the train step),
    # not once more in a scratch graph (issue 24: fit's setup).
    x, y = data
    model = tiny_model()
    calls = []
    unit = model.freeze_units[0]
    plain_call = unit.call

    def counted(*args, **kwargs):
        calls.append(model.train_step_traces)
        return plain_call(*args, **kwargs)

    object.__setattr__(unit, "call", counted)
    model.compile(keras.optimizers.SGD(0.1), LOSS, metrics=["accuracy"])
    history = model.fit(x[:32], y[:32], batch_size=16, epochs=1, verbose=0,
                        callbacks=[FreezeOut()])
    assert calls == [1]  # inside the train step's trace, never before
    assert model.train_step_traces == 1
    assert 0.0 <= history.history["accuracy"][0] <= 1.0


def _plain_gradients(model, x, y, k):
    """Reference: a plain GradientTape over the same model in the same modes
    (units < k in inference mode, the rest in training mode)."""
    variables = [v for u in model.freeze_units[k:] + [model.head]
                 for v in u.trainable_weights]
    with tf.GradientTape() as tape:
        h = x
        for i, unit in enumerate(model.freeze_units):
            h = unit(h, training=i >= k)
        loss = LOSS(y, model.head(h, training=True))
    return variables, tape.gradient(loss, variables)


def _freezeout_gradients(model, x, y, k):
    """FreezeOut's gradients at step 10 of a schedule whose first k units
    are frozen by then, by variable id."""
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    fr = np.array([0.05] * k + [0.9] * (model.num_units - k) + [1.0])
    model.schedule_state.set(100, fr)
    model.batches_taken.assign(10)
    _, _, grads = tf.function(model.compute_freezeout_gradients)(x, y)
    return {id(v): g for v, g in zip(model.trainable_variables, grads)}


@pytest.mark.parametrize("k", [0, 1, 3])
def test_gradients_equal_plain_tape_with_k_frozen(k, data):
    x, y = data
    x, y = tf.constant(x[:16]), tf.constant(y[:16])
    model = tiny_model()
    by_var = _freezeout_gradients(model, x, y, k)
    # Compare against a fresh model with the same initial weights (that call
    # updated the moving statistics), variable by variable in unit order.
    ref = tiny_model()
    _, ref_grads = tf.function(_plain_gradients, autograph=False)(ref, x, y, k)
    own = [by_var[id(v)] for u in model.freeze_units[k:] + [model.head]
           for v in u.trainable_weights]
    assert len(own) == len(ref_grads) > 0
    for g, r in zip(own, ref_grads):
        r = r.numpy()
        err = np.max(np.abs(g.numpy() - r)) / max(np.max(np.abs(r)), 1e-12)
        assert err <= 1e-5
    frozen_vars = [v for u in model.freeze_units[:k] for v in u.trainable_weights]
    for v in frozen_vars:
        assert not np.any(by_var[id(v)].numpy())


def _fit_weights(steps_per_execution, jit_compile=False, epochs=4):
    x, y = tiny_data()
    model = tiny_model()
    model.compile(original_sgd(), LOSS, steps_per_execution=steps_per_execution,
                  jit_compile=jit_compile)
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[FreezeOut(t_0=0.4)])
    return model, [v.numpy() for v in model.weights]


def test_steps_per_execution_4_matches_1():
    _, one = _fit_weights(1)
    _, four = _fit_weights(4)
    for a, b in zip(one, four):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_jit_compile_true_matches_false():
    model, xla = _fit_weights(1, jit_compile=True, epochs=3)
    _, plain = _fit_weights(1, jit_compile=False, epochs=3)
    assert model.train_step_traces == 1
    for a, b in zip(xla, plain):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fit_twice_with_initial_epoch_continues_exactly():
    _, whole = _fit_weights(1, epochs=4)
    x, y = tiny_data()
    model = tiny_model()
    model.compile(original_sgd(), LOSS)
    fo = FreezeOut(t_0=0.4)
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
              callbacks=[FreezeOut(t_0=0.4, total_steps=16)])
    model.fit(x, y, batch_size=16, epochs=4, initial_epoch=2, shuffle=False,
              verbose=0, callbacks=[fo])
    assert model.train_step_traces == 1
    for a, b in zip(whole, [v.numpy() for v in model.weights]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fit_at_wrong_epoch_is_rejected_before_training(data):
    x, y = data
    model = tiny_model()
    model.compile(original_sgd(), LOSS)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[FreezeOut()])
    before = [v.numpy() for v in model.weights]
    with pytest.raises(ValueError, match="initial_epoch=1"):
        model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                  callbacks=[FreezeOut()])
    for a, b in zip(before, [v.numpy() for v in model.weights]):
        assert np.array_equal(a, b)


def test_evaluate_and_predict_are_the_plain_forward(data):
    x, y = data
    model = tiny_model()
    model.compile(original_sgd(), LOSS)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0,
              callbacks=[FreezeOut(t_0=0.3)])
    np.testing.assert_allclose(
        model.predict(x, verbose=0), model(x, training=False).numpy(),
        rtol=1e-5, atol=1e-5,
    )
    expected = float(LOSS(y, model(x, training=False)))
    assert model.evaluate(x, y, verbose=0) == pytest.approx(expected, rel=1e-4)


def test_without_callback_trains_like_plain_keras(data):
    x, y = data
    model = tiny_model()
    model.compile(keras.optimizers.SGD(0.05), LOSS)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    plain = tiny_model()
    plain_seq = keras.Sequential(plain.freeze_units + [plain.head])
    plain_seq.compile(keras.optimizers.SGD(0.05), LOSS)
    plain_seq.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    layer_weights = [w for u in model.freeze_units + [model.head]
                     for w in u.weights]
    assert len(layer_weights) == len(plain_seq.weights)
    for a, b in zip(layer_weights, plain_seq.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert int(model.batches_taken) == 4  # the schedule's clock: 64 / 16


def test_from_sequential_and_bad_units():
    seq = keras.Sequential([keras.layers.Dense(4), keras.layers.Dense(4),
                            keras.layers.Dense(2)])
    model = FreezeOutModel.from_sequential(seq)
    assert model.num_units == 2 and model.head is seq.layers[-1]
    with pytest.raises(ValueError, match="num_head_layers"):
        FreezeOutModel.from_sequential(seq, num_head_layers=3)
    with pytest.raises(ValueError, match="unit 1 is 'oops'"):
        FreezeOutModel([keras.layers.Dense(2), "oops"], keras.layers.Dense(2))


def test_sgd_with_l2_adds_decay_to_gradient():
    opt = original_sgd()
    w = keras.Variable(np.array([2.0], "float32"))
    opt.apply([tf.constant([1.0])], [w])
    # g' = 1 + 1e-4 * 2; velocity = -0.1 g'; nesterov: w += 0.9 v - 0.1 g'.
    g = 1 + 1e-4 * 2
    assert float(w.numpy()[0]) == pytest.approx(2 + 0.9 * (-0.1 * g) - 0.1 * g)
    assert keras.optimizers.deserialize(
        keras.optimizers.serialize(opt)).get_config()["l2"] == 1e-4


def test_explicit_total_steps_already_spent_is_rejected(data):
    x, y = data
    model = tiny_model()
    model.compile(original_sgd(), LOSS)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0,
              callbacks=[FreezeOut(total_steps=4)])
    with pytest.raises(ValueError, match="total_steps=4 is over"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                  callbacks=[FreezeOut(total_steps=4)])


def test_endless_dataset_without_steps_is_rejected(data):
    x, y = data
    model = tiny_model()
    model.compile(original_sgd(), LOSS)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    with pytest.raises(ValueError, match="FreezeOut needs the number of steps"):
        model.fit(ds, epochs=1, shuffle=False, verbose=0,
                  callbacks=[FreezeOut()])
    assert int(model.optimizer.iterations) == 0


def test_callback_needs_a_freezeout_model(data):
    x, y = data
    plain = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(5)])
    plain.compile("sgd", LOSS)
    with pytest.raises(ValueError, match="needs a freezeout_tf.FreezeOutModel"):
        plain.fit(x, y, epochs=1, verbose=0, callbacks=[FreezeOut()])


def test_save_with_frozen_units_then_load_and_resume_exactly(tmp_path):
    """Frozen units are saved with trainable=False; the loaded model must
    still see the same optimizer variables and continue at the exact step."""
    x, y = tiny_data()

    def fit(model, initial_epoch, epochs, total_steps=None):
        model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False,
                  initial_epoch=initial_epoch, verbose=0,
                  callbacks=[FreezeOut(t_0=0.3, how_scale="linear",
                                       total_steps=total_steps)])

    whole = tiny_model()
    whole.compile(original_sgd(), LOSS)
    fit(whole, 0, 4)

    model = tiny_model()
    model.compile(original_sgd(), LOSS)
    fit(model, 0, 2, total_steps=16)  # the first half of a 4-epoch run
    frozen = [not u.trainable for u in model.freeze_units]
    assert any(frozen)  # the checkpoint holds frozen units
    path = str(tmp_path / "mid.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert [not u.trainable for u in loaded.freeze_units] == frozen
    assert int(loaded.optimizer.iterations) == 8
    fit(loaded, 2, 4)
    assert loaded.train_step_traces == 1
    for a, b in zip(whole.weights, loaded.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_schedule_clock_counts_batches_with_steps_per_execution():
    model, _ = _fit_weights(4)
    # 64 images, batch 16, 4 epochs: 16 batches, run 4 per graph call.
    assert int(model.batches_taken) == 16
    assert int(model.optimizer.iterations) == 16


def test_schedule_clock_counts_skipped_float16_steps():
    """A loss-scale optimizer skips steps with non-finite gradients without
    advancing optimizer.iterations; the schedule still counts every batch."""
    x, y = tiny_data()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = tiny_model()
        # A loss scale of 2**40 overflows float16 gradients: the first steps
        # are skipped (the scale halves at each) until it is small enough.
        opt = keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.05), initial_scale=2.0**40
        )
        model.compile(opt, LOSS)
        callback = FreezeOut(t_0=0.5, how_scale="linear")
        model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                  callbacks=[callback])
    finally:
        keras.config.set_dtype_policy(previous)
    assert int(model.batches_taken) == 16
    assert int(opt.iterations) < 16  # some steps were skipped
    # Frozen as the schedule says for 16 batches taken, in graph and host.
    fractions = schedule.freeze_fractions(model.num_units, 0.5, "linear")
    frozen = callback.num_frozen(16)
    assert frozen == schedule.num_frozen(16, 16, fractions)
    # ... which is not what optimizer.iterations would have said.
    assert frozen != schedule.num_frozen(int(opt.iterations), 16, fractions)
    assert [not u.trainable for u in model.freeze_units] == (
        [True] * frozen + [False] * (model.num_units - frozen))


@pytest.mark.parametrize("k", [0, 1])
def test_gradients_with_weight_and_activity_regularisers(k):
    """Regulariser terms reach unit variables directly (kernel) and through
    later units' inputs (activity); the unit-by-unit backward adds both."""
    keras.utils.set_random_seed(0)
    reg = dict(kernel_regularizer=keras.regularizers.L2(0.1),
               activity_regularizer=keras.regularizers.L2(0.05))
    model = FreezeOutModel([keras.layers.Dense(8, activation="tanh", **reg)
                            for _ in range(3)], keras.layers.Dense(3, **reg))
    model.build((None, 5))
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(16, 5)).astype("float32"))
    y = tf.constant(rng.integers(0, 3, 16))
    by_var = _freezeout_gradients(model, x, y, k)
    active = [v for u in model.freeze_units[k:] + [model.head]
              for v in u.trainable_weights]
    plain = keras.Sequential(model.freeze_units + [model.head])
    with tf.GradientTape() as tape:
        loss = LOSS(y, plain(x, training=True)) + tf.add_n(plain.losses)
    for v, r in zip(active, tape.gradient(loss, active)):
        np.testing.assert_allclose(by_var[id(v)].numpy(), r.numpy(),
                                   rtol=1e-5, atol=1e-6)


def _tape_gradients(model, x, y):
    with tf.GradientTape() as tape:
        loss = LOSS(y, model(x, training=True))
    return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]


@pytest.mark.parametrize("scale_lr", [True, False])
def test_scale_lr_reaches_the_weights_through_fit(scale_lr):
    # Issue 34: the callback always passing scale_lr=True, or the
    # optimizer's multipliers() ignoring it, survived every test. Plain SGD:
    # each step moves a variable by lr * multiplier * gradient, with the
    # multiplier of docs/algorithm.md §2 worked out by hand here: linear
    # scaling, t_0 = 0.5, two units -> t = 0.5, 0.75 and 1 (head);
    # initially 1/t scaled, 1 unscaled; times the cosine
    # 0.5 * (1 + cos(pi * j / (t * T))) at step j.
    t = [0.5, 0.75, 1.0]
    total, lr = 8, 0.1
    x, y = tiny_data(n=16)
    model = tiny_model(num_units=2)
    model.compile(keras.optimizers.SGD(lr), LOSS)
    units = model.variable_units(model.trainable_variables)
    assert sorted(set(units)) == [0, 1, 2]
    for step in range(2):
        before = [v.numpy().copy() for v in model.trainable_variables]
        grads = _tape_gradients(model, x, y)
        model.fit(x, y, batch_size=16, initial_epoch=step, epochs=step + 1,
                  verbose=0, shuffle=False,
                  callbacks=[FreezeOut(t_0=0.5, how_scale="linear",
                                       scale_lr=scale_lr, total_steps=total)])
        for v, b, g, unit in zip(model.trainable_variables, before, grads,
                                 units):
            multiplier = ((1 / t[unit] if scale_lr else 1.0)
                          * 0.5 * (1 + np.cos(np.pi * step
                                              / (t[unit] * total))))
            np.testing.assert_allclose(
                b - v.numpy(), lr * multiplier * g, rtol=2e-4, atol=1e-7,
                err_msg=f"{v.path} (unit {unit}) at step {step}")


class KernelMoves(keras.callbacks.Callback):
    """For each step, which units' first kernel the step moved."""

    def __init__(self):
        super().__init__()
        self.moved = []

    def _kernels(self):
        return [u.trainable_weights[0].numpy().copy() if u.trainable_weights
                else u.weights[0].numpy().copy()
                for u in self.model.freeze_units]

    def on_train_batch_begin(self, batch, logs=None):
        self._before = self._kernels()

    def on_train_batch_end(self, batch, logs=None):
        self.moved.append([not np.array_equal(a, b) for a, b in
                           zip(self._before, self._kernels())])


def test_every_unit_stops_moving_at_its_hand_computed_step():
    # Linear scaling, t_0 = 0.5, three units, T = 10 steps: t = 0.5, 2/3,
    # 5/6, so units freeze from floor(t * T) + 1 = 6, 7 and 9. SGD with
    # momentum: an active unit moves at every step, even at its last one
    # where the cosine multiplier is zero; a frozen one never moves again.
    x, y = tiny_data(n=40)
    model = tiny_model(num_units=3)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), LOSS)
    moves = KernelMoves()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False,
              callbacks=[FreezeOut(t_0=0.5, how_scale="linear"), moves])
    want = [[step < at for at in (6, 7, 9)] for step in range(10)]
    assert moves.moved == want
