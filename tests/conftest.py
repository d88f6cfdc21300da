"""Shared tiny models and data for the tests (seconds, not minutes)."""

import os
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from freezeout_tf import FreezeOutModel  # noqa: E402
from freezeout_tf.models import densenet_bc, wide_resnet  # noqa: E402


def conv_unit(channels, dropout=0.0):
    layers = [
        keras.layers.Conv2D(channels, 3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    return keras.Sequential(layers)


def tiny_model(num_units=4, channels=4, num_classes=5, size=8, seed=0):
    """A built FreezeOutModel: `num_units` conv+BN+ReLU units and a head."""
    keras.utils.set_random_seed(seed)
    model = FreezeOutModel(
        [conv_unit(channels) for _ in range(num_units)],
        keras.Sequential(
            [
                keras.layers.BatchNormalization(),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(num_classes),
            ]
        ),
    )
    model.build((None, size, size, 3))
    return model


def tiny_data(n=64, size=8, num_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, size, size, 3)).astype("float32")
    y = rng.integers(0, num_classes, n)
    return x, y


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def tf_with(**overrides):
    """`tensorflow` with some names replaced, for a module's `tf` in a
    mutation test: `monkeypatch.setattr(module, "tf", tf_with(cond=...))`."""
    import tensorflow as tf

    proxy = types.ModuleType("tensorflow_mutated")
    proxy.__getattr__ = lambda name: getattr(tf, name)
    proxy.__dict__.update(overrides)
    return proxy


@pytest.fixture
def data():
    return tiny_data()


@pytest.fixture(scope="module")
def tiny_densenet():
    """DenseNet-BC L=10 k=4, 10 classes: seconds to build and train."""
    keras.utils.set_random_seed(0)
    return densenet_bc(depth=10, growth_rate=4, num_classes=10)


@pytest.fixture(scope="module")
def tiny_wrn():
    keras.utils.set_random_seed(0)
    return wide_resnet(depth=10, widen_factor=1, num_classes=10)
