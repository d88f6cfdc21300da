"""The module paths that the 0.1 re-layout moved, kept for one release.

Before the package's folders became its layers, every module sat at the
top level (`freezeout_tf.speedup`, `freezeout_tf.model`, ...). Each old path
is now a three-line module that calls `alias_module`: importing it imports
the new module in its place (the same module object, so `isinstance` and
monkeypatching see one module) and warns with a `DeprecationWarning` naming
the new path. Paths that are also public short names of the package
(`freezeout_tf.data`, `freezeout_tf.text`, ...) are not deprecated: they
alias without a warning.

Pure Python; imports nothing from the package at import time.
"""

import importlib
import sys
import warnings

__all__ = ["MOVED", "PUBLIC_ALIASES", "alias_module"]

# Old path (under freezeout_tf) -> the module that now holds its code.
MOVED = {
    "benchmarking": "freezeout_tf.tools.benchmarking",
    "callback": "freezeout_tf.callbacks.freezeout",
    "checkpoint": "freezeout_tf.recipes.checkpoint",
    "data": "freezeout_tf.recipes.data",
    "distribute": "freezeout_tf.recipes.distribute",
    "divergence": "freezeout_tf.callbacks.divergence",
    "download": "freezeout_tf.recipes.download",
    "finetune_benchmark": "freezeout_tf.tools.finetune_benchmark",
    "functional": "freezeout_tf.split.functional",
    "hub_coverage": "freezeout_tf.tools.hub_coverage",
    "keras_internals": "freezeout_tf._internals.keras_internals",
    "layer_configs": "freezeout_tf.split.layer_configs",
    "lora": "freezeout_tf.split.lora",
    "model": "freezeout_tf.core.model",
    "optimizer": "freezeout_tf.core.optimizer",
    "ownership": "freezeout_tf.split.ownership",
    "prefix_cache": "freezeout_tf.core.prefix_cache",
    "schedule_state": "freezeout_tf.core.schedule_state",
    "side_inputs": "freezeout_tf.core.side_inputs",
    "speedup": "freezeout_tf.estimates.speedup",
    "summaries": "freezeout_tf.callbacks.summaries",
    "text": "freezeout_tf.recipes.text",
    "tf_internals": "freezeout_tf._internals.tf_internals",
    "training": "freezeout_tf.recipes.training",
    "training_log": "freezeout_tf.recipes.training_log",
    "unit_mode": "freezeout_tf.core.unit_mode",
}
# Old paths that are still public names of the package (`fo.data`, listed
# in its `__all__`): importing them by their old path stays silent.
PUBLIC_ALIASES = frozenset(
    {"data", "download", "layer_configs", "lora", "ownership", "text"})


def alias_module(old_name):
    """Puts the moved module in `old_name`'s place in `sys.modules`.

    Args:
        old_name: the full dotted old path, `__name__` of the calling
            module (e.g. `"freezeout_tf.speedup"`).

    Returns:
        The new module, now also `sys.modules[old_name]`.

    Raises:
        KeyError: `old_name` is not an old path listed in `MOVED`.

    Example:

    >>> import freezeout_tf.speedup as old_path  # warns once per process
    >>> import freezeout_tf.estimates.speedup as new_path
    >>> old_path is new_path
    True
    """
    short = old_name.rpartition(".")[2]
    new_name = MOVED[short]
    if short not in PUBLIC_ALIASES:
        warnings.warn(
            f"{old_name} moved to {new_name}; the old path goes in the next "
            "release", DeprecationWarning,
            # 3: past this function and the old path's module to the code
            # that imports it (warnings skips the import machinery's frames).
            stacklevel=3)
    module = importlib.import_module(new_name)
    sys.modules[old_name] = module
    return module
