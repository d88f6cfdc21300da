"""Which leaf layers get the in-graph training/inference switch, and that the
switch adds no computation to layers whose mode changes nothing."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import LOSS, tiny_model
from freezeout_tf import FreezeOutModel
from freezeout_tf.tools import benchmarking
from freezeout_tf.core.unit_mode import (
    _moments_while, mode_switched_leaves, unit_mode,
)


class NoisyDense(keras.layers.Dense):
    """A Dense subclass whose own `call` does use `training`."""

    def call(self, inputs, training=None):
        outputs = super().call(inputs)
        return outputs + 1.0 if training else outputs


def _mlp_unit(dropout):
    return keras.Sequential([
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dropout(dropout),
        keras.layers.EinsumDense("bi,io->bo", output_shape=8),
    ])


def test_dense_and_einsum_dense_are_not_switched_dropout_is():
    unit = _mlp_unit(0.3)
    unit.build((None, 8))
    leaves = mode_switched_leaves(unit, "unit 0")
    assert [type(layer).__name__ for layer in leaves] == ["Dropout"]


def test_lora_dense_is_left_alone_float8_is_switched():
    # LoRA makes the kernel non-trainable state that `training` never
    # touches (issue 23: this unit was refused); float8 mode reads it.
    unit = _mlp_unit(0.0)
    unit.build((None, 8))
    for layer in (unit.layers[0], unit.layers[2]):
        layer.enable_lora(2)
        assert layer.non_trainable_weights
    assert [type(layer).__name__
            for layer in mode_switched_leaves(unit, "unit 0")] == ["Dropout"]
    fp8 = keras.Sequential([keras.layers.Dense(8)])
    fp8.build((None, 8))
    fp8.quantize("float8")
    assert [type(layer).__name__ for layer in mode_switched_leaves(fp8)] \
        == ["Dense"]


def test_a_subclass_that_overrides_call_is_switched():
    unit = keras.Sequential([NoisyDense(4)])
    unit.build((None, 3))
    assert [type(layer).__name__ for layer in mode_switched_leaves(unit)] \
        == ["NoisyDense"]


def _forward_ops(model, op_type):
    """Ops of `op_type` in the train step's forward: its top-level graph,
    less the head's backward (named '.../gradient_tape/...')."""
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    x = tf.constant(np.ones((4, 8), "float32"))
    y = tf.constant(np.zeros(4, "int32"))
    model.optimizer.build(model.trainable_variables)
    graph = tf.function(model.train_step, autograph=False) \
        .get_concrete_function((x, y)).graph
    return [op for op in graph.get_operations()
            if op.type == op_type and "gradient_tape" not in op.name]


def test_each_projection_runs_once_in_the_forward():
    # Switching Dense/EinsumDense ran every projection twice (once per
    # mode) and selected: 2x the matmuls of a transformer block.
    keras.utils.set_random_seed(0)
    model = FreezeOutModel([_mlp_unit(0.3), _mlp_unit(0.0)],
                           keras.layers.Dense(3))
    model.build((None, 8))
    # Two projections per unit, one in the head (TensorFlow lowers this
    # einsum to a MatMul).
    matmuls = [op for t in ("MatMul", "Einsum", "BatchMatMulV2")
               for op in _forward_ops(model, t)]
    assert len(matmuls) == 5


class BuildsItsSublayers(keras.layers.Layer):
    """A block that makes its sublayers in `build`, as keras_hub's
    TransformerEncoder does: before it is built it looks like a leaf."""

    def build(self, input_shape):
        self.dense = keras.layers.Dense(8)
        self.dropout = keras.layers.Dropout(0.3)

    def call(self, inputs, training=None):
        return self.dropout(self.dense(inputs), training=training)


def test_a_block_built_after_the_split_runs_its_projection_once():
    # The small ViT of benchmark_adaptive (keras_hub TransformerEncoder
    # units, built after FreezeOutModel was made) had each block switched
    # as a leaf: its whole forward ran once per mode, 2x the matmuls and
    # 1.4-2.2x plain Keras' step.
    keras.utils.set_random_seed(0)
    model = FreezeOutModel([BuildsItsSublayers(), BuildsItsSublayers()],
                           keras.layers.Dense(3))
    model.build((None, 8))
    matmuls = _forward_ops(model, "MatMul")
    assert len(matmuls) == 3  # one per block, one in the head
    assert [type(layer).__name__ for i in range(2)
            for layer in model._unit_leaves(i)] == ["Dropout", "Dropout"]


def test_rate_zero_dropout_selects_nothing():
    keras.utils.set_random_seed(0)
    model = FreezeOutModel([_mlp_unit(0.3), _mlp_unit(0.0)],
                           keras.layers.Dense(3))
    model.build((None, 8))
    switched = [op.name for op in _forward_ops(model, "SelectV2")]
    rate_0 = model.freeze_units[1].layers[1].name
    rate_03 = model.freeze_units[0].layers[1].name
    assert not [name for name in switched if f"/{rate_0}" in name]
    assert [name for name in switched if f"/{rate_03}" in name]


def _batch_norm_under_mode(active, static_shapes):
    """(batch sizes the moments were taken over, output, inference output,
    moving mean before, after) of one BatchNormalization call in a unit."""
    keras.utils.set_random_seed(0)
    unit = keras.Sequential([keras.layers.BatchNormalization(momentum=0.5)])
    unit.build((None, 4, 4, 3))
    (bn,) = mode_switched_leaves(unit)
    seen = []
    moments = bn._moments
    bn._moments = lambda inputs, mask: (seen.append(inputs.shape[0])
                                        or moments(inputs, mask))
    x = tf.constant(np.random.default_rng(0).normal(
        size=(6, 4, 4, 3)).astype("float32") * 3 + 1)
    before = bn.moving_mean.numpy().copy()
    inference = unit(x, training=False).numpy()
    with unit_mode([bn], tf.constant(active), static_shapes=static_shapes):
        out = unit(x, training=True).numpy()
    return seen, out, inference, before, bn.moving_mean.numpy()


def test_frozen_batch_norm_is_inference_mode_exactly():
    seen, out, inference, before, after = _batch_norm_under_mode(
        active=False, static_shapes=False)
    assert seen == []  # FreezeOut's own moments over the slice
    np.testing.assert_array_equal(out, inference)
    np.testing.assert_array_equal(after, before)


def test_active_batch_norm_uses_the_batch_statistics():
    seen, out, inference, before, after = _batch_norm_under_mode(
        active=True, static_shapes=False)
    assert not np.allclose(out, inference)  # batch statistics, not moving
    assert not np.allclose(after, before)


def test_moments_over_the_batch_or_over_no_example():
    x = tf.constant(np.random.default_rng(1).normal(
        size=(6, 4, 4, 3)).astype("float32") * 3 + 1)
    axes = [0, 1, 2]
    mean, variance = _moments_while(tf.constant(True), x, axes)
    expected = tf.nn.moments(x, axes)
    np.testing.assert_allclose(mean, expected[0], rtol=1e-6)
    np.testing.assert_allclose(variance, expected[1], rtol=1e-5)
    # Frozen: the sums run over an empty slice (zero), whatever the input.
    mean, variance = _moments_while(tf.constant(False), x, axes)
    np.testing.assert_array_equal(mean, np.zeros(3))
    np.testing.assert_array_equal(variance, np.zeros(3))


@pytest.mark.parametrize("axes", [[0, 1, 2], [0, 2, 3]])
def test_moments_gradient_is_that_of_tf_nn_moments(axes):
    # The gradient is written out (op by op, the slice's unknown size made
    # every op take the broadcasting gradient: 3x the Sum ops of plain
    # Keras' BatchNorm). It must be tf.nn.moments' (the variance's mean
    # held constant), and zero while frozen.
    x = tf.constant(np.random.default_rng(2).normal(
        size=(6, 4, 4, 3)).astype("float32") * 3 + 1)
    rng = np.random.default_rng(3)
    width = x.shape[({0, 1, 2, 3} - set(axes)).pop()]  # the kept axis
    a, b = (tf.constant(rng.normal(size=width).astype("float32"))
            for _ in range(2))

    def gradient(moments):
        with tf.GradientTape() as tape:
            tape.watch(x)
            mean, variance = moments()
            loss = tf.reduce_sum(a * mean + b * variance)
        return tape.gradient(loss, x).numpy()

    def reference():
        mean = tf.reduce_mean(x, axes)
        keep = tf.reduce_mean(x, axes, keepdims=True)
        return mean, tf.reduce_mean(
            tf.math.squared_difference(x, tf.stop_gradient(keep)), axes)

    expected = gradient(reference)
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(
        gradient(lambda: _moments_while(tf.constant(True), x, axes)),
        expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(
        gradient(lambda: _moments_while(tf.constant(False), x, axes)),
        np.zeros(x.shape, "float32"))


def test_moments_select_the_moving_statistics_inside_their_gradient():
    # BatchNorm passes its moving statistics in: frozen, they are the
    # result, bit for bit, and the input's gradient is still zero; active,
    # the batch moments and tf.nn.moments' gradient, as without them.
    x = tf.constant(np.random.default_rng(4).normal(
        size=(6, 4, 4, 3)).astype("float32"))
    moving = (tf.constant([0.5, -1.0, 2.0]), tf.constant([1.5, 0.25, 3.0]))
    axes = [0, 1, 2]

    def gradient(flag, otherwise):
        with tf.GradientTape() as tape:
            tape.watch(x)
            mean, variance = _moments_while(tf.constant(flag), x, axes,
                                            otherwise=otherwise)
            loss = tf.reduce_sum(mean * [1.0, 2.0, 3.0] + 2.0 * variance)
        return (mean, variance), tape.gradient(loss, x).numpy()

    (mean, variance), frozen = gradient(False, moving)
    np.testing.assert_array_equal(mean, moving[0])
    np.testing.assert_array_equal(variance, moving[1])
    np.testing.assert_array_equal(frozen, np.zeros(x.shape, "float32"))
    (mean, variance), active = gradient(True, moving)
    (reference_mean, _), reference = gradient(True, None)
    np.testing.assert_array_equal(mean, reference_mean)
    np.testing.assert_array_equal(active, reference)
    assert np.abs(active).max() > 1e-3


def test_batch_norm_backward_branch_has_no_broadcast_reduction():
    # The mode switch's selects used to be differentiated op by op: per
    # BatchNorm two SelectV2 gradients, each a BroadcastGradientArgs, Sum
    # and Reshape, traced into every unit's backward branch (issue 24: the
    # first step's trace and graph optimisation).
    model = tiny_model(num_units=2)
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    model.optimizer.build(model.trainable_variables)
    x = tf.zeros((4, 8, 8, 3))
    y = tf.zeros((4,), tf.int32)
    step = tf.function(model.train_step, autograph=False)
    graph = step.get_concrete_function((x, y)).graph.as_graph_def()
    branch_ops = [n.op for f in graph.library.function for n in f.node_def]
    assert "Conv2DBackpropFilter" in branch_ops  # the backward branches
    assert "BroadcastGradientArgs" not in branch_ops
    assert benchmarking.graph_counts(
        step.get_concrete_function((x, y)))["conds"] == 2 + 3


def test_under_xla_a_frozen_batch_norm_keeps_static_shapes():
    seen, out, inference, before, after = _batch_norm_under_mode(
        active=False, static_shapes=True)
    assert seen == [6]
    np.testing.assert_array_equal(out, inference)
    np.testing.assert_array_equal(after, before)


def test_backward_branches_take_no_constant_as_input():
    # A constant passed into a branch is opaque to Grappler there: GELU's
    # pow(x, 3) kept a generic Pow(x, 2) over the activation in its
    # gradient (tf_internals).
    keras.utils.set_random_seed(0)
    unit = keras.Sequential([keras.layers.Dense(8, activation=lambda t:
                             keras.activations.gelu(t, approximate=True))])
    model = FreezeOutModel([unit, _mlp_unit(0.0)], keras.layers.Dense(3))
    model.build((None, 8))
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    model.optimizer.build(model.trainable_variables)
    x = tf.constant(np.ones((4, 8), "float32"))
    y = tf.constant(np.zeros(4, "int32"))
    graph = tf.function(model.train_step, autograph=False) \
        .get_concrete_function((x, y)).graph
    ifs = [op for op in graph.get_operations()
           if op.type in ("If", "StatelessIf")]
    assert ifs
    constant_inputs = [(op.name, t.name) for op in ifs for t in op.inputs
                       if t.op.type == "Const"]
    assert constant_inputs == []


def test_tf_internals_guard_fails_loudly(monkeypatch):
    from freezeout_tf._internals import tf_internals

    tf_internals.check()  # the installed TensorFlow works
    monkeypatch.setattr(tf_internals, "_checked", False)
    monkeypatch.setattr(tf_internals, "_branch_reads_a_constant",
                        lambda: False)
    with pytest.raises(tf_internals.TensorFlowInternalsError,
                       match=tf.__version__):
        tf_internals.check()


class ScaledWhileTraining(keras.layers.Layer):
    """A container that reads `training` itself (not only passes it on)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(4)

    def call(self, inputs, training=None):
        outputs = self.dense(inputs)
        return outputs * 2.0 if training else outputs


class CountingContainer(keras.layers.Layer):
    """A container with a non-trainable variable of its own, moved when
    training."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(4)
        self.count = self.add_weight(shape=(), initializer="zeros",
                                     trainable=False, name="count")

    def call(self, inputs, training=None):
        if training:
            self.count.assign_add(1.0)
        return self.dense(inputs)


def test_a_container_that_reads_training_follows_the_flag():
    unit = keras.Sequential([ScaledWhileTraining(name="scaled")])
    x = tf.ones((2, 3))
    unit.build((None, 3))
    leaves = mode_switched_leaves(unit, "unit 0")
    assert [layer.name for layer in leaves] == ["scaled"]
    for active in (False, True):
        with unit_mode(leaves, tf.constant(active)):
            out = unit(x, training=True)
        np.testing.assert_allclose(out, unit(x, training=active))


def test_a_container_with_its_own_state_is_refused():
    unit = keras.Sequential([CountingContainer(name="counting")])
    unit.build((None, 3))
    with pytest.raises(ValueError, match=r"'counting' \(CountingContainer\) "
                       r"in unit 0 has sublayers.*non-trainable state"):
        mode_switched_leaves(unit, "unit 0")


def test_containers_that_pass_training_on_are_not_switched():
    inner = keras.Sequential([keras.layers.Dense(4),
                              keras.layers.Dropout(0.5)], name="inner")
    unit = keras.Sequential([inner])
    unit.build((None, 3))
    leaves = mode_switched_leaves(unit, "unit 0")
    assert [type(layer).__name__ for layer in leaves] == ["Dropout"]
