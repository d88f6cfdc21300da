"""The one-graph train step under XLA (jit_compile=True)."""

import logging

import keras
import numpy as np
import tensorflow as tf

from freezeout_tf import FreezeOut, original_sgd
from freezeout_tf.core import model as fo_model
from freezeout_tf.models import densenet_bc


def test_densenet_fits_under_xla_with_the_schedule():
    """DenseNet-BC L=10 trains under XLA: one trace, units freeze on time,
    and a frozen unit does not move (was 499 s for the first step before
    the train step was redesigned; `pytest --durations` shows the time)."""
    keras.utils.set_random_seed(0)
    model = densenet_bc(depth=10, growth_rate=12, num_classes=10)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 32)
    # The built-in models end in a softmax.
    model.compile(original_sgd(), "sparse_categorical_crossentropy",
                  jit_compile=True)
    assert model.jit_compile is True  # an explicit True is honoured
    callback = FreezeOut(t_0=0.5, how_scale="linear")
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
              callbacks=[callback])
    first = [v.numpy().copy() for v in model.freeze_units[0].weights]
    resumed = FreezeOut(t_0=0.5, how_scale="linear")
    model.fit(x, y, batch_size=8, epochs=3, initial_epoch=2, shuffle=False,
              verbose=0, callbacks=[resumed])
    assert model.train_step_traces == 1  # one trace for both fits
    assert not model.freeze_units[0].trainable  # frozen at step 4 of 12
    for before, after in zip(first, model.freeze_units[0].weights):
        np.testing.assert_array_equal(before, after.numpy())
    frozen = [not u.trainable for u in model.freeze_units]
    assert sum(frozen) == resumed.num_frozen(12) > 1  # the schedule went on


def test_auto_jit_compile_stays_off_with_one_log_line(monkeypatch, caplog):
    """Where Keras would turn XLA on (a GPU is visible), 'auto' resolves to
    False for a FreezeOutModel and says why once."""
    gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    real = tf.config.list_physical_devices
    monkeypatch.setattr(
        tf.config, "list_physical_devices",
        lambda kind=None: real(kind) + ([gpu] if kind in (None, "GPU") else []),
    )
    plain = keras.Sequential([keras.layers.Dense(2)])
    plain.compile("sgd", "mse")
    assert plain.jit_compile is True  # Keras itself would use XLA here
    model = densenet_bc(depth=10, growth_rate=4, num_classes=10)
    with caplog.at_level(logging.WARNING, logger="freezeout_tf"):
        model.compile(original_sgd(), "sparse_categorical_crossentropy")
    assert model.jit_compile is False
    assert [r.getMessage() for r in caplog.records] == [fo_model.XLA_AUTO_NOTE]


def test_explicit_xla_on_cpu_logs_its_measured_cost(caplog):
    """On a machine with only CPUs, jit_compile=True is honoured and one
    warning gives the measured factor of the compiled step and the
    alternative; without XLA nothing is logged."""
    assert not tf.config.list_physical_devices("GPU")  # this CI machine
    model = densenet_bc(depth=10, growth_rate=4, num_classes=10)
    with caplog.at_level(logging.WARNING, logger="freezeout_tf"):
        model.compile(original_sgd(), "sparse_categorical_crossentropy",
                      jit_compile=True)
    assert model.jit_compile is True
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [fo_model.XLA_CPU_NOTE]
    assert f"measured {fo_model.XLA_CPU_FACTOR} the step without XLA" \
        in messages[0]
    assert "jit_compile=False" in messages[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="freezeout_tf"):
        model.compile(original_sgd(), "sparse_categorical_crossentropy")
        model.compile(original_sgd(), "sparse_categorical_crossentropy",
                      jit_compile=False)
    assert model.jit_compile is False
    assert caplog.records == []


def test_explicit_xla_with_a_gpu_logs_nothing(monkeypatch, caplog):
    gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    real = tf.config.list_physical_devices
    monkeypatch.setattr(
        tf.config, "list_physical_devices",
        lambda kind=None: real(kind) + ([gpu] if kind in (None, "GPU") else []),
    )
    model = densenet_bc(depth=10, growth_rate=4, num_classes=10)
    with caplog.at_level(logging.WARNING, logger="freezeout_tf"):
        model.compile(original_sgd(), "sparse_categorical_crossentropy",
                      jit_compile=True)
    assert model.jit_compile is True
    assert caplog.records == []
