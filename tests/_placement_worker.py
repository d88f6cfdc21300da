"""Run by tests/test_placement.py in a fresh process: builds a tiny model
under a second logical CPU and prints where its variables live."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.getcwd())  # this checkout's freezeout_tf
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conftest

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from conftest import tiny_model  # noqa: E402

with tf.device("/CPU:1"):
    model = tiny_model()
print("clock", model.batches_taken.value.device)
print("freeze_steps", model.schedule_state.freeze_steps.device)
print("kernel", model.freeze_units[0].layers[0].kernel.value.device)
for name in ("decided", "seen", "checks", "interval_steps", "target",
             "interval"):
    print(f"adaptive.{name}",
          getattr(model.adaptive_state, name).value.device)
