"""FreezeOut for Keras 3 on TensorFlow: progressively freeze layers, in one graph.

Public API (see README.md and the API reference in docs/):

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

The package's folders are its layers; a module imports only from the layers
below its own (tests/test_layers.py checks it):

1. `schedule` (pure Python), then `_internals` (the private Keras and
   TensorFlow names, behind their guards);
2. `core`'s in-graph state: `schedule_state`, `unit_mode`, `side_inputs`,
   `macs` (counting multiply-accumulates);
3. `split` (cutting a Keras model into units), `estimates` (cost
   estimates) and `adaptive` (adaptive criteria), none importing another;
4. `core`'s step: `model` (the train step), `optimizer`, `prefix_cache`;
5. `callbacks` and `models`;
6. `recipes` (data, download, text, training, checkpoints, distribution);
7. `tools` (benchmarking helpers, not used in training).

Lazy imports: the names above are imported on first use (PEP 562), so
`import freezeout_tf` loads neither TensorFlow nor Keras (a command line can
refuse a bad option before TensorFlow loads). One consequence for loading a
`.keras` checkpoint: `keras.saving.load_model` finds FreezeOut's classes
(`freezeout_tf>FreezeOutModel`, `freezeout_tf>SGDWithL2`, ...) only once
their modules are imported. Rule: if Keras is already imported when
`freezeout_tf` is, the modules that register them are imported at once;
otherwise they register on first use of any of their names. So either
`import keras` before `import freezeout_tf`, or touch a name first (e.g.
`freezeout_tf.FreezeOutModel`), before `load_model`;
`freezeout_tf.recipes.checkpoint.load_checkpoint` does it itself.

Example:

>>> import freezeout_tf as fo
>>> fo.freeze_fractions(4, t_0=0.8, how_scale="linear")
array([0.8 , 0.85, 0.9 , 0.95, 1.  ])
"""

import sys
from typing import TYPE_CHECKING

from freezeout_tf._lazy import lazy_exports

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

# Where each public name lives (imported on first access).
_NAMES = {
    "AdaptiveFreeze": "freezeout_tf.adaptive.criteria",
    "FreezeOut": "freezeout_tf.callbacks.freezeout",
    "FreezeOutModel": "freezeout_tf.core.model",
    "SGDWithL2": "freezeout_tf.core.optimizer",
    "attach_schedule": "freezeout_tf.core.optimizer",
    "calc_speedup": "freezeout_tf.estimates.speedup",
    "cut_points": "freezeout_tf.split.functional",
    "densenet_bc": "freezeout_tf.models",
    "estimate_speedup": "freezeout_tf.estimates.speedup",
    "freeze_fractions": "freezeout_tf.schedule",
    "freeze_steps": "freezeout_tf.schedule",
    "lr_multipliers": "freezeout_tf.schedule",
    "num_frozen": "freezeout_tf.schedule",
    "original_sgd": "freezeout_tf.core.optimizer",
    "split_model": "freezeout_tf.split.functional",
    "t0_for_speedup": "freezeout_tf.estimates.speedup",
    "unit_flops": "freezeout_tf.estimates.speedup",
    "vgg": "freezeout_tf.models",
    "wide_resnet": "freezeout_tf.models",
    "with_example_ids": "freezeout_tf.core.prefix_cache",
}
# Modules exposed as attributes: the public ones by their short names, and
# the subpackages (the layers).
_SUBMODULES = {
    "data": "freezeout_tf.recipes.data",
    "download": "freezeout_tf.recipes.download",
    "layer_configs": "freezeout_tf.split.layer_configs",
    "lora": "freezeout_tf.split.lora",
    "models": "freezeout_tf.models",
    "ownership": "freezeout_tf.split.ownership",
    "text": "freezeout_tf.recipes.text",
    "schedule": "freezeout_tf.schedule",
    **{name: f"freezeout_tf.{name}" for name in (
        "adaptive", "callbacks", "core", "estimates", "recipes", "split",
        "tools")},
}
# The modules that register classes with `keras.saving` (see the rule in
# the docstring above).
_REGISTERING = (
    "freezeout_tf.adaptive.criteria",
    "freezeout_tf.callbacks.freezeout",
    "freezeout_tf.core.model",
    "freezeout_tf.core.optimizer",
    "freezeout_tf.models",
)

__getattr__, __dir__ = lazy_exports(__name__, _NAMES, _SUBMODULES)


def _register_serializables():
    """Imports the modules that register FreezeOut's classes with Keras."""
    import importlib

    for module in _REGISTERING:
        importlib.import_module(module)


if "keras" in sys.modules:
    _register_serializables()

if TYPE_CHECKING:  # what static tools (the API reference, IDEs) read
    from freezeout_tf import models
    from freezeout_tf.adaptive.criteria import AdaptiveFreeze
    from freezeout_tf.callbacks.freezeout import FreezeOut
    from freezeout_tf.core.model import FreezeOutModel
    from freezeout_tf.core.optimizer import (SGDWithL2, attach_schedule,
                                             original_sgd)
    from freezeout_tf.core.prefix_cache import with_example_ids
    from freezeout_tf.estimates.speedup import (calc_speedup,
                                                estimate_speedup,
                                                t0_for_speedup, unit_flops)
    from freezeout_tf.models import densenet_bc, vgg, wide_resnet
    from freezeout_tf.recipes import data, download, text
    from freezeout_tf.schedule import (freeze_fractions, freeze_steps,
                                       lr_multipliers, num_frozen)
    from freezeout_tf.split import layer_configs, lora, ownership
    from freezeout_tf.split.functional import cut_points, split_model
