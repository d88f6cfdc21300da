"""Caching the frozen prefix (`cache_frozen_prefix`): one trace, equal to the
run without the cache, the budget and contract refusals, exact resume."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from hub_models import bert_classifier, text_data
from freezeout_tf import (AdaptiveFreeze, FreezeOut, FreezeOutModel,
                          with_example_ids)
from freezeout_tf.core.prefix_cache import EXAMPLE_ID, UNIT_BRANCH

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
N, BATCH = 24, 6
# Float tolerance of "equal to the run without the cache": a cached
# activation was computed on another batch than the one that reads it, and
# the kernels may round per batch composition. SGD, not Adam: Adam scales
# the rounding noise of gradients that are zero in exact arithmetic (BERT's
# key biases) up to steps of its learning rate.
RTOL, ATOL = 1e-5, 1e-6


def cnn(seed=0):
    """Four conv units of one output shape (the cache's boundaries) and a
    head; BatchNorm and Dropout, which frozen units run in inference mode."""
    keras.utils.set_random_seed(seed)

    def unit():
        return keras.Sequential([
            keras.layers.Conv2D(8, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dropout(0.2),
        ])

    head = keras.Sequential([keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(3)])
    model = FreezeOutModel([unit() for _ in range(4)], head)
    model.build((None, 8, 8, 3))
    return model


def cnn_data():
    rng = np.random.default_rng(0)
    x = rng.random((N, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, N).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y))


def bert(seed=0):
    return FreezeOutModel.from_model(bert_classifier(seed=seed, dropout=0.1,
                                                     head="sequence"))


def bert_data():
    x, y = text_data(N)
    return tf.data.Dataset.from_tensor_slices((x, y))


class Losses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.values = []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append(logs["loss"])


def train(make, data, cache, epochs=(0, 4), model=None, t_0=0.3,
          adaptive=None):
    """Fits with FreezeOut (unit 0 frozen from the start, the others
    freezing on the schedule: the cached boundary moves during the run)
    on shuffled batches; returns the model and its per-step losses."""
    if model is None:
        model = make()
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), LOSS)
    if cache and model.prefix_cache is None:
        model.cache_frozen_prefix(N, max_bytes=2**20)
    ds = with_example_ids(data()).shuffle(N, seed=1).batch(BATCH)
    losses = Losses()
    model.fit(ds, initial_epoch=epochs[0], epochs=epochs[1], verbose=0,
              callbacks=[FreezeOut(t_0=t_0, frozen_from_start=1,
                                   total_steps=4 * N // BATCH,
                                   adaptive=adaptive),
                         losses])
    return model, losses.values


def assert_same_run(a, b):
    (ma, la), (mb, lb) = a, b
    assert len(la) == len(lb) > 0
    np.testing.assert_allclose(la, lb, rtol=RTOL, atol=ATOL)
    for va, vb in zip(ma.weights, mb.weights):
        np.testing.assert_allclose(va.numpy(), vb.numpy(), rtol=RTOL,
                                   atol=ATOL, err_msg=va.path)


@pytest.mark.parametrize("make,data", [
    (cnn, cnn_data),
    # In the slow set (14 s), so that the README's command stays under 10
    # minutes on 2 cores; CI runs the slow set too.
    pytest.param(bert, bert_data, marks=pytest.mark.slow)],
    ids=["cnn", "bert"])
def test_cached_run_equals_uncached_with_one_trace(make, data):
    plain = train(make, data, cache=False)
    cached = train(make, data, cache=True)
    assert_same_run(plain, cached)
    model = cached[0]
    assert model.train_step_traces == 1
    # The cache was used: every unit froze during the run, so every example
    # ends cached at the last boundary the cache holds (every unit's output
    # for the CNN; BERT's last unit takes the [CLS] position, another shape).
    k = model.prefix_cache.num_cached_units
    assert k >= model.num_units - 1 >= 3
    assert not any(u.trainable for u in model.freeze_units)
    np.testing.assert_array_equal(model.prefix_cache.levels.numpy(), k)


def test_adaptive_freezing_moves_the_boundary_in_one_graph():
    def run(cache):
        return train(cnn, cnn_data, cache, t_0=None,
                     adaptive=AdaptiveFreeze(interval=2))

    plain, cached = run(False), run(True)
    assert_same_run(plain, cached)
    model = cached[0]
    assert model.train_step_traces == 1
    frozen = [not u.trainable for u in model.freeze_units]
    assert frozen == [not u.trainable for u in plain[0].freeze_units]
    assert sum(frozen) >= 2  # the criterion froze units after unit 0
    assert model.prefix_cache.levels.numpy().max() >= 2


@pytest.mark.parametrize(
    "make,data",
    [(cnn, cnn_data), pytest.param(bert, bert_data,
                                   marks=pytest.mark.slow)],
    ids=["cnn", "bert"])
def test_resume_from_saved_model_equals_uncached(make, data, tmp_path):
    def interrupted(cache):
        model, first = train(make, data, cache, epochs=(0, 2))
        path = str(tmp_path / f"m{int(cache)}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        loaded, second = train(make, data, cache, epochs=(2, 4), model=loaded)
        return loaded, first + second

    plain, cached = interrupted(False), interrupted(True)
    assert_same_run(plain, cached)
    assert cached[0].train_step_traces == 1
    assert cached[0].prefix_cache.levels.numpy().min() >= 1


def test_cache_over_budget_is_refused_before_training():
    model = cnn()
    model.compile(keras.optimizers.Adam(1e-2), LOSS)
    need = N * 8 * 8 * 8 * 4 + N * 4
    model.cache_frozen_prefix(N, max_bytes=need - 1)
    ds = with_example_ids(cnn_data()).batch(BATCH)
    with pytest.raises(ValueError, match=(
            rf"needs {need:,} bytes .*24 examples x \[8, 8, 8\] x float32.*"
            rf"budget max_bytes={need - 1:,}")):
        model.fit(ds, epochs=1, verbose=0)
    assert int(model.batches_taken) == 0
    model.prefix_cache.max_bytes = need  # exactly the size: accepted
    model.fit(ds, epochs=1, verbose=0)
    assert int(model.batches_taken) == N // BATCH


def test_contract_refusals_before_training():
    model = cnn()
    model.compile(keras.optimizers.Adam(1e-2), LOSS)
    model.cache_frozen_prefix(N, max_bytes=2**20)
    with pytest.raises(ValueError, match="needs an example id"):
        model.fit(cnn_data().batch(BATCH), epochs=1, verbose=0)
    xla = cnn()
    xla.compile(keras.optimizers.Adam(1e-2), LOSS, jit_compile=True)
    xla.cache_frozen_prefix(N, max_bytes=2**20)
    with pytest.raises(ValueError, match="jit_compile=True"):
        xla.fit(with_example_ids(cnn_data()).batch(BATCH), verbose=0)
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        mirrored = cnn()
        mirrored.compile(keras.optimizers.Adam(1e-2), LOSS)
    mirrored.cache_frozen_prefix(N, max_bytes=2**20)
    with pytest.raises(ValueError, match="does not support tf.distribute"):
        mirrored.fit(with_example_ids(cnn_data()).batch(BATCH), verbose=0)
    assert (int(model.batches_taken) == int(xla.batches_taken)
            == mirrored.batches_taken.numpy() == 0)
    regularized = cnn()
    regularized.freeze_units[1].layers[0].activity_regularizer = (
        keras.regularizers.L2(1e-3))
    regularized.compile(keras.optimizers.Adam(1e-2), LOSS)
    regularized.cache_frozen_prefix(N, max_bytes=2**20)
    with pytest.raises(ValueError, match=r"unit 1 has an activity .*<= 1"):
        regularized.fit(with_example_ids(cnn_data()).batch(BATCH), verbose=0)
    with pytest.raises(ValueError, match=r"max_bytes=0\): must be"):
        model.cache_frozen_prefix(N, max_bytes=0)


def test_boundaries_of_other_shapes_are_not_cached_or_refused():
    keras.utils.set_random_seed(0)
    units = [keras.layers.Conv2D(8, 3, padding="same"),
             keras.layers.Conv2D(8, 3, padding="same"),
             keras.layers.Conv2D(4, 3, padding="same")]
    model = FreezeOutModel(units, keras.Sequential(
        [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]))
    model.build((None, 8, 8, 3))
    model.compile(keras.optimizers.Adam(1e-2), LOSS)
    ds = with_example_ids(cnn_data()).batch(BATCH)
    model.cache_frozen_prefix(N, max_bytes=2**20, max_units=3)
    with pytest.raises(ValueError, match=r"Use max_units <= 2"):
        model.fit(ds, verbose=0)
    model.prefix_cache.max_units = None
    model.fit(ds, verbose=0)
    assert model.prefix_cache.num_cached_units == 2


def test_a_unit_reading_a_training_part_variable_is_not_cacheable():
    model = cnn()
    model.compile(keras.optimizers.Adam(1e-2), LOSS)
    model.cache_frozen_prefix(N, max_bytes=2**20)
    model.fit(with_example_ids(cnn_data()).batch(BATCH), verbose=0)
    frozen = [tf.constant(f) for f in (True, True, False, True)]
    assert int(model.prefix_cache.cached_boundary(model, frozen)) == 2
    # Unit 1 reading a variable of the head (which always trains).
    owners = model.unit_variable_owners()
    owners[1] = owners[1] | {model.num_units}
    model.unit_variable_owners = lambda: owners
    assert int(model.prefix_cache.cached_boundary(model, frozen)) == 1


def test_example_ids_and_plain_inputs():
    ds = with_example_ids(cnn_data().take(3))
    x, y = next(iter(ds.batch(3)))
    np.testing.assert_array_equal(x[EXAMPLE_ID].numpy(), [0, 1, 2])
    model = cnn()
    # evaluate and predict take the same data, ids ignored.
    model.compile(keras.optimizers.Adam(1e-2), LOSS)
    np.testing.assert_allclose(
        model.predict(ds.map(lambda x, y: x).batch(3), verbose=0),
        model.predict(cnn_data().take(3).map(lambda x, y: x).batch(3),
                      verbose=0))


def unbuilt_split(seed=0):
    """A single-input functional model split by `from_model` and not built:
    `fit` builds it from the first batch, which holds the example ids."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = inputs
    for _ in range(3):
        h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    logits = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h))
    model = FreezeOutModel.from_model(keras.Model(inputs, logits))
    assert not model.built
    return model


def test_unbuilt_single_input_split_fits_with_the_cache():
    plain = train(unbuilt_split, cnn_data, cache=False)
    cached = train(unbuilt_split, cnn_data, cache=True)
    assert_same_run(plain, cached)
    model = cached[0]
    assert model.built and model.train_step_traces == 1
    assert model.prefix_cache.levels.numpy().min() >= 1


class RowCounter(keras.layers.Layer):
    """Counts the examples its unit's forward runs on."""

    def build(self, input_shape):
        self.rows = self.add_weight(shape=(), dtype="int32",
                                    initializer="zeros", trainable=False)

    def call(self, x):
        self.rows.assign_add(tf.shape(x)[0])
        return x


def test_cached_units_run_on_no_example():
    def counted(seed=0):
        keras.utils.set_random_seed(seed)
        units = [keras.Sequential([keras.layers.Conv2D(8, 3, padding="same"),
                                   RowCounter()]) for _ in range(3)]
        model = FreezeOutModel(units, keras.Sequential(
            [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]))
        model.build((None, 8, 8, 3))
        model.compile(keras.optimizers.SGD(0.1), LOSS)
        return model

    def rows(cache):
        model = counted()
        if cache:
            model.cache_frozen_prefix(N, max_bytes=2**20)
        ds = with_example_ids(cnn_data()).shuffle(N, seed=1).batch(BATCH)
        # Units 0 and 1 frozen from the start, unit 2 trains throughout.
        model.fit(ds, epochs=2, verbose=0,
                  callbacks=[FreezeOut(t_0=1.0, frozen_from_start=2)])
        return [int(u.layers[-1].rows.numpy()) for u in model.freeze_units]

    assert rows(cache=False) == [2 * N] * 3
    # The first epoch fills the cache at boundary 2; in the second the
    # frozen units' forwards run on no example, and not at all: no
    # stand-in row (`PrefixCache.unit_runner`), their counters untouched.
    assert rows(cache=True) == [N, N, 2 * N]


def _ops_run(graph_def, branch_of_unit):
    """Types of the ops a traced step runs, by walking the graph and the
    functions it calls; at the `tf.cond` of cached unit i (named
    `UNIT_BRANCH` i) only the branch `branch_of_unit(i)` ("then"/"else"),
    at any other `If` both branches (an over-count, never an under-count).
    """
    library = {f.signature.name: f for f in graph_def.library.function}
    forward = re.compile(rf"^{UNIT_BRANCH}(\d+)_true_\d+(_rewritten)*$")
    types, seen = [], set()

    def walk(nodes):
        for node in nodes:
            types.append(node.op)
            called = [node.attr[a].func.name for a in ("f", "then_branch",
                                                        "else_branch")
                      if a in node.attr]
            match = forward.match(node.attr["then_branch"].func.name
                                  if node.op in ("If", "StatelessIf")
                                  else "")
            if match:
                called = [node.attr[branch_of_unit(int(match[1])) +
                                    "_branch"].func.name]
            for name in called:
                if name in library and name not in seen:
                    seen.add(name)
                    walk(library[name].node_def)

    walk(graph_def.node)
    return types


def test_the_step_runs_no_op_of_a_fully_cached_unit():
    """The traced graph: with units 0-2 frozen and every row cached at
    boundary 3 (the steady state), the branches the step takes hold one
    Conv2D, unit 3's; each cached unit's own Conv2D is only in its
    branch's other side (`compute`, taken while rows are left for it)."""
    model = cnn()
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    model.schedule_state.freeze_prefix(3)
    model.cache_frozen_prefix(N, max_bytes=2**20)
    ds = with_example_ids(cnn_data()).batch(BATCH)
    model.prefix_cache.prepare(model, next(iter(ds)))
    step = tf.function(model.train_step, autograph=False)
    for batch in ds:  # one epoch: the cache full at boundary 3
        step(batch)
    np.testing.assert_array_equal(model.prefix_cache.levels.numpy(), 3)
    graph_def = step.get_concrete_function(batch).graph.as_graph_def()
    assert model.train_step_traces == 1
    steady = _ops_run(graph_def, lambda i: "else" if i < 3 else "then")
    assert steady.count("Conv2D") == 1
    # The cached units' forwards are in the graph, in the branch not taken.
    training = _ops_run(graph_def, lambda i: "then")
    assert training.count("Conv2D") == 4
