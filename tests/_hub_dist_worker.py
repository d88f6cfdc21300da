"""Subprocess side of tests/test_transformers.py's MirroredStrategy test
(not a test module): two logical CPUs must be configured before TensorFlow
initialises them.

    python _hub_dist_worker.py OUT_DIR [gpt2]

Fits the same BERT classifier (or, with `gpt2`, a tied GPT-2 causal LM with
a padding sample weight) with FreezeOut on one device and on two replicas
(same global batch) and writes OUT_DIR/hub_mirrored.npz.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from hub_models import (bert_classifier, gpt2_causal_lm, lm_data,  # noqa: E402
                        text_data)
from freezeout_tf import FreezeOut, FreezeOutModel  # noqa: E402


LM = sys.argv[2:] == ["gpt2"]


def fit(strategy):
    data = lm_data(32) if LM else text_data(32)
    with strategy.scope():
        model = (FreezeOutModel.from_model(gpt2_causal_lm(), num_units=3)
                 if LM else FreezeOutModel.from_model(bert_classifier()))
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
    ds = tf.data.Dataset.from_tensor_slices(data).batch(8)
    model.fit(ds, epochs=3, verbose=0, callbacks=[FreezeOut(t_0=0.4)])
    return model


one = fit(tf.distribute.get_strategy())
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
two = fit(strategy)
out = {"replicas": strategy.num_replicas_in_sync,
       "traces": two.train_step_traces,  # one trace: once per replica
       "frozen_at_end": sum(not u.trainable for u in two.freeze_units),
       "num_weights": len(one.weights)}
for i, (a, b) in enumerate(zip(one.weights, two.weights)):
    out[f"one_{i}"], out[f"two_{i}"] = a.numpy(), b.numpy()
np.savez(os.path.join(sys.argv[1], "hub_mirrored.npz"), **out)
