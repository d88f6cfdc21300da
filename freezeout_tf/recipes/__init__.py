"""Recipes for a real run: data, downloads, text, training, checkpoints.

`data` (CIFAR and SVHN pipelines, `load_data`), `download` (`prepare`: a
tfds data set, failing fast offline), `text` (byte-level windows of the
standard library's sources for causal LMs, a tiny Llama), `training` (the
CLI's run: build, compile, start or resume), `training_log` (the per-epoch
metrics log), `checkpoint` (atomic epoch checkpoints, `load_checkpoint`)
and `distribute` (strategies and mixed precision).

Layer: 6. Imports everything below it (`models`, `callbacks`, `core`, ...),
never `tools`.
"""

from typing import TYPE_CHECKING

from freezeout_tf._lazy import lazy_exports

__all__ = [
    "EpochCheckpoint",
    "MetricsLog",
    "checkpoint",
    "data",
    "distribute",
    "download",
    "load_checkpoint",
    "load_data",
    "make_strategy",
    "prepare",
    "text",
    "training",
    "training_log",
]

_NAMES = {
    "EpochCheckpoint": "freezeout_tf.recipes.checkpoint",
    "MetricsLog": "freezeout_tf.recipes.training_log",
    "load_checkpoint": "freezeout_tf.recipes.checkpoint",
    "load_data": "freezeout_tf.recipes.data",
    "make_strategy": "freezeout_tf.recipes.distribute",
    "prepare": "freezeout_tf.recipes.download",
}
_SUBMODULES = ["checkpoint", "data", "distribute", "download", "text",
               "training", "training_log"]

__getattr__, __dir__ = lazy_exports(__name__, _NAMES, _SUBMODULES)

if TYPE_CHECKING:  # what static tools (the API reference, IDEs) read
    from freezeout_tf.recipes import (checkpoint, data, distribute, download,
                                      text, training, training_log)
    from freezeout_tf.recipes.checkpoint import EpochCheckpoint, load_checkpoint
    from freezeout_tf.recipes.data import load_data
    from freezeout_tf.recipes.distribute import make_strategy
    from freezeout_tf.recipes.download import prepare
    from freezeout_tf.recipes.training_log import MetricsLog
