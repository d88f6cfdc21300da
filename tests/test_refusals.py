"""What FreezeOutModel refuses before training, and the message it gives:
a stateful leaf that takes `training` (not one whose state is a constant
no step writes), BatchNormalization(renorm=True), an
input named `freezeout_hidden`."""

import inspect

import keras
import numpy as np
import pytest

from freezeout_tf import FreezeOut, FreezeOutModel
from freezeout_tf.core.side_inputs import HIDDEN


class RunningMean(keras.layers.Layer):
    """Takes `training` and keeps a non-trainable running mean: its state
    would move in a frozen unit, and it has no in-graph mode switch."""

    def build(self, input_shape):
        self.mean = self.add_weight(shape=input_shape[-1:],
                                    initializer="zeros", trainable=False,
                                    name="running_mean")

    def call(self, x, training=None):
        if training:
            self.mean.assign(0.9 * self.mean
                             + 0.1 * keras.ops.mean(x, axis=0))
        return x - self.mean


class Offset(keras.layers.Layer):
    """Takes `training` and holds a non-trainable buffer that no step
    writes (as SigLIP's and CLIP's `position_ids`): a constant, not state
    freezing must protect."""

    def build(self, input_shape):
        self.offset = self.add_weight(shape=input_shape[-1:],
                                      initializer="ones", trainable=False,
                                      name="offset")

    def call(self, x, training=None):
        y = x - self.offset
        return y * 0.5 if training else y


def _head():
    return keras.Sequential([keras.layers.Dense(2)])


def test_stateful_leaf_that_takes_training_is_refused():
    leaf = RunningMean(name="running_mean")
    leaf.build((None, 4))
    unit = keras.Sequential([keras.layers.Dense(4), leaf])
    with pytest.raises(ValueError, match=(
            r"Layer 'running_mean' \(RunningMean\) in unit 1 takes a "
            r"`training` argument and has non-trainable state \("
            r"\['running_mean/running_mean'\]\).*Move the layer into the "
            r"head, or make it stateless")):
        FreezeOutModel([keras.Sequential([keras.layers.Dense(4)]), unit],
                       _head())


def test_constant_non_trainable_state_is_not_refused():
    # Told from the traced step (no op assigns it), not from its name: a
    # leaf named like the refused one above, with a buffer of that name.
    leaf = Offset(name="running_mean")
    unit = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), leaf])
    model = FreezeOutModel([keras.Sequential([keras.layers.Dense(4)]), unit],
                           _head())
    model.compile("sgd", "mse")
    model.fit(np.ones((8, 4), "float32"), np.zeros((8, 2), "float32"),
              batch_size=4, epochs=2, verbose=0,
              callbacks=[FreezeOut(t_0=0.5)])
    assert model.train_step_traces == 1
    np.testing.assert_array_equal(leaf.offset.numpy(), np.ones(4))


def test_batch_norm_renorm_is_refused():
    if "renorm" not in inspect.signature(
            keras.layers.BatchNormalization).parameters:
        # Keras < 3.14 has no renorm: Keras itself refuses the argument, so
        # no such layer can reach a unit.
        with pytest.raises(ValueError, match=(
                r"Unrecognized keyword arguments passed to "
                r"BatchNormalization: \{'renorm': True\}")):
            keras.layers.BatchNormalization(renorm=True)
    else:
        unit = keras.Sequential([
            keras.layers.Dense(4),
            keras.layers.BatchNormalization(renorm=True, name="bn_r")])
        with pytest.raises(ValueError, match=(
                r"BatchNormalization 'bn_r' in unit 0 uses renorm=True.*"
                r"Use renorm=False, or move the layer into the head")):
            FreezeOutModel([unit], _head())


def test_input_named_freezeout_hidden_is_refused():
    inputs = {name: keras.Input((3,), name=name)
              for name in ("token_ids", HIDDEN)}
    h = keras.layers.Dense(4, name="d")(keras.layers.Concatenate()(
        list(inputs.values())))
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(h),
                        name="clash")
    with pytest.raises(ValueError, match=(
            "Model 'clash' has an input named 'freezeout_hidden', the name "
            "freezeout_tf reserves for the hidden state; rename it")):
        FreezeOutModel.from_model(model)
    # Hand-made units: the reserved name cannot be a model input either.
    with pytest.raises(ValueError, match=(
            "must not use the reserved name 'freezeout_hidden'")):
        FreezeOutModel([keras.layers.Dense(4)], _head(),
                       input_names=["token_ids", HIDDEN])
