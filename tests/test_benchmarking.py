"""freezeout_tf.tools.benchmarking.frozen_prefix_sweep: one traced step serves
every frozen prefix, and its table and predictions are the documented ones
(times and memory are never asserted)."""

import keras
import numpy as np
import tensorflow as tf

from freezeout_tf import FreezeOutModel, unit_flops
from freezeout_tf.tools import benchmarking


def test_sweep_runs_every_setting_on_one_trace():
    keras.utils.set_random_seed(0)
    model = FreezeOutModel(
        [keras.Sequential([keras.layers.Dense(8, activation="relu")])
         for _ in range(4)],
        head=keras.Sequential([keras.layers.Dense(3)]))
    model.build((None, 5))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.SGD(0.1), loss)
    model.optimizer.build(model.trainable_variables)
    plain = benchmarking.plain_keras_model(model)
    plain.compile(keras.optimizers.SGD(0.1), loss)
    plain.optimizer.build(plain.trainable_variables)
    batch = (tf.random.normal((6, 5)), tf.constant([0, 1, 2, 0, 1, 2]))
    first = [v.numpy() for v in model.freeze_units[0].weights]

    result = benchmarking.frozen_prefix_sweep(
        model, plain, batch, rounds=2, input_shape=(5,), backward=1.0,
        memory=False)

    assert [r["setting"] for r in result["rows"]] == [0, 1, 2, 3, 4, "plain"]
    assert model.train_step_traces == 1
    assert all(len(r["step_times_s"]) == 2 for r in result["rows"])
    flops = unit_flops(model, (5,))
    assert result["unit_macs"] == flops
    for row in result["rows"][:-1]:
        assert row["flop_predicted_saving"] == benchmarking.frozen_saving(
            flops, row["frozen_units"], 1.0)
    # Unit 0 trained in the settings that leave it active and in plain Keras.
    assert any(not np.array_equal(a, v.numpy())
               for a, v in zip(first, model.freeze_units[0].weights))
    table = benchmarking.sweep_table(result)
    assert table[0].startswith("| frozen |") and len(table) == 2 + 6 + 2
    assert table[-1].startswith("Nothing frozen / plain Keras")
    assert "| 2/4 |" in table[4] and "| plain Keras |" in table[7]
