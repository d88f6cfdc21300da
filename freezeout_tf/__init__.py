"""FreezeOut for Keras 3 on TensorFlow: progressively freeze layers, in one graph.

Public API (see README.md):

* `FreezeOutModel`, `FreezeOut`: the model with the one-graph train step, and
  the callback that installs the schedule.
* `AdaptiveFreeze`: freeze units by a criterion on their gradients (rank,
  pace or threshold), decided in the train step (`FreezeOut(adaptive=...)`).
* `original_sgd`, `SGDWithL2`, `attach_schedule`: optimizers.
* `freeze_fractions`, `lr_multipliers`, `freeze_steps`, `num_frozen`: the pure
  schedule.
* `calc_speedup`, `estimate_speedup`, `t0_for_speedup`, `unit_flops`:
  speedup estimates.
* `with_example_ids`: example ids for `FreezeOutModel.cache_frozen_prefix`
  (the frozen prefix's outputs cached per example).
* `split_model`, `cut_points`: a functional Keras model cut into freeze
  units (what `FreezeOutModel.from_model` uses).
* `ownership`: which freeze unit owns each variable (tied embeddings).
* `lora`, `layer_configs`: LoRA layers, and layer configs that do not
  round-trip, through saving and loading a split model.
* `models` (`densenet_bc`, `wide_resnet`, `vgg`), `data` (`load_data`),
  `download` (`prepare`: download a tfds data set, failing fast offline),
  `text` (byte-level windows of the standard library's sources for causal
  LMs, `byte_llama`, `token_loss`, `generate_text`).
"""

from freezeout_tf import (data, download, layer_configs, lora, models,
                          ownership, text)
from freezeout_tf.adaptive import AdaptiveFreeze
from freezeout_tf.callback import FreezeOut
from freezeout_tf.functional import cut_points, split_model
from freezeout_tf.model import FreezeOutModel
from freezeout_tf.models import densenet_bc, vgg, wide_resnet
from freezeout_tf.prefix_cache import with_example_ids
from freezeout_tf.optimizer import SGDWithL2, attach_schedule, original_sgd
from freezeout_tf.schedule import (
    freeze_fractions,
    freeze_steps,
    lr_multipliers,
    num_frozen,
)
from freezeout_tf.speedup import (
    calc_speedup,
    estimate_speedup,
    t0_for_speedup,
    unit_flops,
)

__version__ = "0.1.0"

__all__ = [
    "AdaptiveFreeze",
    "FreezeOut",
    "FreezeOutModel",
    "SGDWithL2",
    "attach_schedule",
    "calc_speedup",
    "cut_points",
    "data",
    "densenet_bc",
    "download",
    "estimate_speedup",
    "freeze_fractions",
    "freeze_steps",
    "layer_configs",
    "lora",
    "lr_multipliers",
    "models",
    "num_frozen",
    "original_sgd",
    "ownership",
    "split_model",
    "t0_for_speedup",
    "text",
    "unit_flops",
    "vgg",
    "wide_resnet",
    "with_example_ids",
]
