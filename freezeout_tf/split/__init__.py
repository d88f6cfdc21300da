"""Cutting a Keras model into freeze units, and what a split model keeps.

`functional` (`split_model`, `cut_points`: a functional or Sequential
model, KerasHub backbones included, cut into units), `ownership` (which
unit owns each variable, e.g. a tied embedding), `layer_configs` (layer
configs that do not round-trip, repaired for saving) and `lora` (LoRA
layers through saving and freezing).

Layer: 3. Imports `schedule`, `_internals` and `core`'s in-graph state
(`side_inputs`, `macs`); not `estimates` nor `adaptive`.
"""

from typing import TYPE_CHECKING

from freezeout_tf._lazy import lazy_exports

__all__ = [
    "cut_points",
    "functional",
    "layer_configs",
    "lora",
    "ownership",
    "split_model",
]

_NAMES = {
    "cut_points": "freezeout_tf.split.functional",
    "split_model": "freezeout_tf.split.functional",
}
_SUBMODULES = ["functional", "layer_configs", "lora", "ownership"]

__getattr__, __dir__ = lazy_exports(__name__, _NAMES, _SUBMODULES)

if TYPE_CHECKING:  # what static tools (the API reference, IDEs) read
    from freezeout_tf.split import functional, layer_configs, lora, ownership
    from freezeout_tf.split.functional import cut_points, split_model
