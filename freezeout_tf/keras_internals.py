"""The private Keras internals FreezeOut relies on, and a guard for them.

FreezeOut needs a few things Keras does not expose publicly: the
optimizer's per-variable update loop (to skip frozen units and scale their
learning rates), the variables a layer was built to train (they stay the
same after `trainable = False`), a layer's leaves and whether its `call`
takes `training`, BatchNormalization's batch moments and their axes, and,
for the cost estimate, where MultiHeadAttention computes its attention and
over which axes. They are listed here, once. (Not checked here: saving a
layer called in two parts, `FreezeOutModel.get_config` edits the functional
config format, its `inbound_nodes`, `keras_history` and the
`shared_object_id` that `load_model` honours; `tests/test_causal_lm.py`
round-trips it.) `check()` verifies that each exists with the expected
parameters; the model calls it at `compile` and when it builds the train
step, so a Keras release that renames one fails loudly with the version
instead of silently giving frozen units momentum or weight decay again.
"""

import inspect

import keras

__all__ = ["TESTED_KERAS", "check", "KerasInternalsError"]

# Keras versions this project was tested with (pyproject pins the range).
TESTED_KERAS = ">=3.8,<4 (tested: 3.15.1)"

# (owner, method name, parameters after `self`, in order).
_METHODS = [
    ("optimizer", "_distributed_tf_update_step",
     ("distribution", "grads_and_vars", "learning_rate")),
    ("optimizer", "_apply_weight_decay", ("variables",)),
    ("optimizer", "_all_reduce_sum_gradients", ("grads_and_vars",)),
    ("optimizer", "_var_key", ("variable",)),
    ("optimizer", "_use_weight_decay", ("variable",)),
    ("layer", "_flatten_layers", ("include_self", "recursive")),
    ("batch_norm", "_moments", ("inputs", "mask")),
    ("model", "_maybe_symbolic_build", ("iterator", "data_batch")),
    ("multi_head_attention", "_compute_attention",
     ("query", "key", "value")),
]
# Attributes an instance has after __init__.
_ATTRIBUTES = [
    ("optimizer", "_distribution_strategy"),
    ("layer", "_trainable_variables"),
    ("layer", "_call_has_training_arg"),
    ("batch_norm", "renorm"),
    ("batch_norm", "_reduction_axes"),
    ("model", "_loss_tracker"),
    ("model", "_distribute_strategy"),
    ("multi_head_attention", "_attention_axes"),
]

_checked = False


class KerasInternalsError(RuntimeError):
    """A private Keras internal FreezeOut relies on has changed."""


def _samples():
    # Small unbuilt instances: their __init__ sets the attributes checked.
    return {
        "optimizer": keras.optimizers.SGD(),
        "layer": keras.layers.Dense(1),
        "batch_norm": keras.layers.BatchNormalization(),
        "model": keras.Sequential(),
        "multi_head_attention": keras.layers.MultiHeadAttention(1, 1),
    }


def problems():
    """Names of the internals that are missing or have changed (empty if
    all are as expected)."""
    samples = _samples()
    found = []
    for owner, name, params in _METHODS:
        method = getattr(samples[owner], name, None)
        if not callable(method):
            found.append(f"{owner}.{name} is missing")
            continue
        actual = tuple(inspect.signature(method).parameters)
        if actual[: len(params)] != params:
            found.append(
                f"{owner}.{name}{actual} does not take {params}"
            )
    for owner, name in _ATTRIBUTES:
        if not hasattr(samples[owner], name):
            found.append(f"{owner}.{name} is missing")
    return found


def check():
    """Raises `KerasInternalsError` if an internal has changed (once per
    process; cheap afterwards)."""
    global _checked
    if _checked:
        return
    found = problems()
    if found:
        raise KerasInternalsError(
            f"freezeout_tf does not support Keras {keras.__version__}: "
            f"{'; '.join(found)}. Supported Keras: {TESTED_KERAS}. Install "
            "a supported version, e.g. pip install 'keras>=3.8,<4'."
        )
    _checked = True
