"""Subprocess side of tests/test_transformers.py's MirroredStrategy test
(not a test module): two logical CPUs must be configured before TensorFlow
initialises them.

    python _hub_dist_worker.py OUT_DIR [bert|deit|gpt2|llama|lora]

Fits the same model (default: a BERT classifier; `deit` a DeiT classifier;
`gpt2` a tied GPT-2 causal LM, `llama` an untied Llama 3, `lora` that Llama
after `enable_lora(2)`, each with a padding sample weight) with FreezeOut on
one device and on two replicas (same global batch) and writes
OUT_DIR/hub_mirrored.npz.
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

from hub_models import (bert_classifier, deit_classifier,  # noqa: E402
                        gpt2_causal_lm, image_data, llama3_causal_lm,
                        lm_data, text_data)
from freezeout_tf import FreezeOut, FreezeOutModel  # noqa: E402


def lora_lm():
    lm = llama3_causal_lm()
    lm.backbone.enable_lora(2)
    return lm


# name: (the task model, its data, num_units for from_model)
MODELS = {"bert": (bert_classifier, text_data, None),
          "deit": (deit_classifier, image_data, None),
          "gpt2": (gpt2_causal_lm, lm_data, 3),
          "llama": (llama3_causal_lm, lm_data, 3),
          "lora": (lora_lm, lm_data, 3)}
MAKE, DATA, NUM_UNITS = MODELS[sys.argv[2] if len(sys.argv) > 2 else "bert"]


def fit(strategy):
    data = DATA(32)
    with strategy.scope():
        model = FreezeOutModel.from_model(MAKE(), num_units=NUM_UNITS)
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
