"""The private Keras internals FreezeOut relies on, and a guard for them.

FreezeOut needs a few things Keras does not expose publicly: the
optimizer's per-variable update loop (to skip frozen units and scale their
learning rates), the variables a layer was built to train (they stay the
same after `trainable = False`), a layer's leaves and whether its `call`
takes `training`, the step where a layer's symbolic call makes its outputs
(to trace a container of blocks whose blocks also return `None`),
BatchNormalization's batch moments and their axes, a
functional model's graph of nodes, and, for the cost estimate, where
MultiHeadAttention computes its attention and over which axes.

(Not checked here: saving a layer called in two parts,
`FreezeOutModel.get_config` edits the functional config format, its
`inbound_nodes`, `keras_history` and the `shared_object_id` that
`load_model` honours; `tests/test_causal_lm.py` round-trips it.)

They are listed here, once (`PRIVATE_NAMES`, each with the modules that
use it and what breaks if it changes; the TensorFlow and tensorflow-datasets
ones are in `freezeout_tf._internals.tf_internals`). A test scans the package and fails
when a module uses a private name not listed for it.

`check()` runs at `compile` (and when the train step is built):

* every method and attribute in `_METHODS` / `_ATTRIBUTES` exists with the
  expected parameters;
* a behavioural probe (`update_routing_problems`): a tiny SGD with momentum
  and weight decay, with FreezeOut's hooks attached (`freezeout_tf.
  core.optimizer`), takes two eager steps on a frozen and an active variable;
  the frozen one and its momentum must not move, the active one must. If
  `apply()` stopped routing updates through `_distributed_tf_update_step`
  or weight decay through `_apply_weight_decay`, frozen units would move
  silently; the probe makes that a loud error with the version instead.
  The probe also records what FreezeOut's own code did in it (the frozen
  flags its hook read, which variables the hook updated): a wrong result
  there is a bug of freezeout_tf, not a change of Keras, and raises
  `FreezeOutInternalError` saying so, not `KerasInternalsError`.

Example:

>>> from freezeout_tf._internals import keras_internals
>>> keras_internals.check()
>>> keras_internals.SUPPORTED_KERAS
'>=3.8,<4'
"""

import inspect
import random
import threading

import keras
import numpy as np
import tensorflow as tf

__all__ = ["PRIVATE_NAMES", "SUPPORTED_KERAS", "SUPPORTED_TENSORFLOW",
           "TESTED_KERAS", "FreezeOutInternalError", "KerasInternalsError",
           "check", "problems", "record_symbolic_call",
           "update_routing_problems"]

# The supported ranges: pyproject.toml's dependency specifiers must say the
# same (tests/test_internals_guard.py checks it).
SUPPORTED_KERAS = ">=3.8,<4"
SUPPORTED_TENSORFLOW = ">=2.16,<2.22"
# What the guard's errors say: CI tests both ends of the range (the oldest
# from .ci/constraints-oldest.txt, and the newest release).
TESTED_KERAS = (f"{SUPPORTED_KERAS} (CI tests its oldest release, 3.8.0, "
                "and its newest)")

# Every private Keras name the package uses: name -> (modules using it,
# what breaks if Keras changes it). Attributes are matched by name by the
# scan test; entries in parentheses are not attribute names (no scan can
# see them) and are listed for the reader.
PRIVATE_NAMES = {
    "_distributed_tf_update_step": (
        ("optimizer",), "the per-unit skip of frozen updates and slots, and "
        "the per-unit learning rates (checked by the probe)"),
    "_apply_weight_decay": (
        ("optimizer",), "frozen units would get decoupled weight decay "
        "(checked by the probe)"),
    "_all_reduce_sum_gradients": (
        ("optimizer",), "frozen units' gradients would be all-reduced "
        "under tf.distribute (wasted bandwidth, same result)"),
    "_var_key": (("optimizer",), "variables could not be mapped to units"),
    "_keras_history": (
        ("functional",), "a nested model called one rank off (Keras' "
        "_adjust_input_rank) could not be inlined: the squeeze or "
        "expand_dims recorded as its own call is found from the symbolic "
        "tensor's history (tests/test_functional.py: "
        "test_nested_model_called_one_rank_off_is_adjusted_as_keras_does)"),
    "_inbound_nodes": (
        ("functional",), "the same: the node of that recorded call"),
    "_use_weight_decay": (
        ("optimizer",), "exclusions from weight decay would be ignored"),
    "_distribution_strategy": (
        ("optimizer",), "the weight-decay hook's merge_call"),
    "_flatten_layers": (
        ("functional", "lora", "macs", "model", "ownership", "prefix_cache",
         "unit_mode"),
        "a unit's leaves and containers, its variables, MHA layers to "
        "count, a cached unit's activity regularizers, whether every "
        "layer is built (fit's shapes-only symbolic build)"),
    "_trainable_variables": (
        ("ownership",),
        "the variables of a unit that is already frozen; which variables a "
        "part holds when ownership is decided"),
    "_call_has_training_arg": (
        ("unit_mode",), "which leaves get the in-graph mode switch"),
    "_moments": (("unit_mode",), "BatchNormalization's batch moments"),
    "_reduction_axes": (("unit_mode",), "BatchNormalization's moment axes"),
    "_maybe_symbolic_build": (
        ("model",), "building the optimizer's slots before the first step"),
    "_get_iterator": (
        ("model",), "fit's symbolic build takes the batch's shapes from the "
        "dataset's element spec (TFEpochIterator._get_iterator: the dataset "
        "each epoch iterates); reading a batch instead would open an extra "
        "pass and reshuffle the data"),
    "_loss_tracker": (("model",), "the loss reported by the train step"),
    "_compute_attention": (
        ("macs",), "counting attention's QK^T and AV MACs"),
    "_attention_axes": (("macs",), "the axes of those products"),
    "_nodes_by_depth": (
        ("functional",), "cutting a functional model into units"),
    "_functional": (
        ("functional",), "cutting a Sequential model into units"),
    "(Node)": (
        ("keras_internals",), "record_symbolic_call records a layer's "
        "symbolic call where Keras before 3.10 did so in symbolic_call "
        "itself: without it, containers of blocks stay whole there"),
    "(Node.arguments)": (
        ("functional",), "a node's input tensors and call arguments (the "
        "class is keras.src.ops.node.Node, not public)"),
    "(instance-level call replacement)": (
        ("unit_mode", "macs"), "object.__setattr__(layer, 'call', ...): "
        "the mode switch and the MAC counter rely on Layer.__call__ calling "
        "self.call; if it called type(self).call, nothing would switch"),
    "(instance-level get_config replacement)": (
        ("layer_configs",), "saving a split model whose layer's own "
        "get_config does not round-trip relies on Keras' serialization "
        "calling the instance's get_config"),
    "(copy of BatchNormalization.call)": (
        ("unit_mode",), "_batch_norm_call re-implements Keras' "
        "BatchNormalization.call (renorm off); a change to Keras' "
        "normalisation (e.g. of the moving-statistics update) would not "
        "reach frozen-aware units"),
}

# (owner, method name, parameters after `self`, in order).
_METHODS = [
    ("optimizer", "_distributed_tf_update_step",
     ("distribution", "grads_and_vars", "learning_rate")),
    ("optimizer", "_apply_weight_decay", ("variables",)),
    ("optimizer", "_all_reduce_sum_gradients", ("grads_and_vars",)),
    ("optimizer", "_var_key", ("variable",)),
    ("optimizer", "_use_weight_decay", ("variable",)),
    ("layer", "_flatten_layers", ("include_self", "recursive")),
    # A layer's symbolic call is its output spec (Layer.__call__ records
    # the node): functional._record_tensors_only overrides it per layer.
    ("layer", "symbolic_call", ("args", "kwargs")),
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
    ("batch_norm", "_reduction_axes"),
    ("model", "_loss_tracker"),
    ("model", "_distribute_strategy"),
    ("multi_head_attention", "_attention_axes"),
]

_checked = False
# Keras 3.10 moved recording a symbolic call's node from
# Operation.symbolic_call to the end of Layer.__call__ (Layer then
# overrides symbolic_call to return the output spec only).
_LAYER_CALL_RECORDS_NODE = "symbolic_call" in vars(keras.layers.Layer)
# The probe's gradient and the weight decay, momentum and learning rate it
# uses: any of the three would move a frozen variable that is not skipped.
_PROBE = {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 0.5}


class KerasInternalsError(RuntimeError):
    """A private Keras internal FreezeOut relies on has changed."""


class FreezeOutInternalError(RuntimeError):
    """freezeout_tf's own code gave a wrong result in the guard's probe
    (a bug of freezeout_tf; Keras did what the probe expects of it)."""


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


def update_routing_problems():
    """What went wrong in the behavioural probe of the optimizer hooks
    (empty if nothing): a frozen variable with its momentum must not move
    over two steps of SGD with momentum and weight decay; an active one
    must. Eager and tiny.

    Raises:
        FreezeOutInternalError: when the fault is freezeout_tf's own (its
            schedule state gave the hook wrong frozen flags, or its hook
            updated the frozen variable or skipped the active one), naming
            what was wrong: not a Keras change.

    It runs in a thread of its own: there no `tf.distribute` strategy scope,
    `tf.function` trace or Keras dtype policy of the caller applies (all
    are per thread), so the probe sees stock Keras on one device."""
    result = {}

    def run():
        try:
            result["found"] = _probe()
        except Exception as err:  # re-raised in the caller's thread
            result["error"] = err

    thread = threading.Thread(target=run, name="freezeout_probe")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["found"]


def _probe():
    # Imported here: optimizer and schedule_state do not import this module.
    from freezeout_tf.core import optimizer as fo_optimizer
    from freezeout_tf.core.schedule_state import ScheduleState

    opt = keras.optimizers.SGD(**_PROBE)
    frozen = keras.Variable(np.ones(2, np.float32), name="probe_frozen")
    active = keras.Variable(np.ones(2, np.float32), name="probe_active")
    clock = keras.Variable(0, dtype="int64", trainable=False)
    state = ScheduleState(1, clock)
    state.freeze_prefix(1)  # unit 0 frozen, the head (unit 1) active
    # What FreezeOut's own code does in the probe: the flags its hook reads
    # and the variables its hook hands to the optimizer's update_step.
    seen = {"flags": [], "updated": set(), "in_hook": False, "calls": 0}
    part_flags, plain_update_step = state.part_flags, opt.update_step

    def recorded_flags(step):
        flags = part_flags(step)
        seen["flags"].append([bool(f) for f in flags])
        return flags

    def recorded_update_step(gradient, variable, learning_rate):
        if seen["in_hook"]:
            seen["updated"].add(variable.name)
        return plain_update_step(gradient, variable, learning_rate)

    state.part_flags = recorded_flags
    opt.update_step = recorded_update_step
    fo_optimizer.attach_schedule(opt, [frozen, active], [0, 1], state)
    hook = opt._distributed_tf_update_step

    def recorded_hook(*args, **kwargs):
        seen["in_hook"] = True
        seen["calls"] += 1
        try:
            return hook(*args, **kwargs)
        finally:
            seen["in_hook"] = False

    opt._distributed_tf_update_step = recorded_hook
    opt.build([frozen, active])
    grad = tf.ones(2)
    for _ in range(2):
        opt.apply([grad, grad], [frozen, active])
        clock.assign_add(1)
    own = _own_faults(seen)
    if own:
        raise FreezeOutInternalError(
            f"freezeout_tf's own code is wrong, not Keras "
            f"{keras.__version__}: {'; '.join(own)}. This is a bug of "
            "freezeout_tf (freezeout_tf.core.schedule_state / "
            "freezeout_tf.core.optimizer); please report it.")
    found = []
    if not seen["calls"]:
        found.append("optimizer.apply never called FreezeOut's "
                     "_distributed_tf_update_step hook")
    if not np.array_equal(keras.ops.convert_to_numpy(frozen), [1, 1]):
        found.append("a frozen variable moved (optimizer.apply no longer "
                     "routes updates through _distributed_tf_update_step, "
                     "or weight decay through _apply_weight_decay)")
    if np.array_equal(keras.ops.convert_to_numpy(active), [1, 1]):
        found.append("an active variable did not move (the hooks skip "
                     "every update)")
    return found


def _own_faults(seen):
    """FreezeOut's own wrong results in the probe, from what it recorded:
    unit 0 is frozen and the head active at both steps (by hand:
    `freeze_prefix(1)` sets freeze steps [0, never])."""
    faults = []
    wrong = [flags for flags in seen["flags"] if flags != [True, False]]
    if wrong:
        faults.append(
            f"ScheduleState.part_flags gave the frozen flags {wrong[0]} for "
            "unit 0 frozen from step 0 and the head active, expected "
            "[True, False]")
    if seen["calls"]:  # the hook ran (else Keras no longer calls it)
        updated = " ".join(sorted(seen["updated"]))
        if "probe_frozen" in updated:
            faults.append("FreezeOut's update hook updated the frozen "
                          "variable")
        if "probe_active" not in updated:
            faults.append("FreezeOut's update hook skipped the active "
                          "variable")
    return faults


def check():
    """Raises `KerasInternalsError` if an internal has changed (once per
    process; cheap afterwards).

    Raises:
        KerasInternalsError: naming each change, the Keras version and the
            supported range.
        FreezeOutInternalError: when the probe finds freezeout_tf's own
            code at fault instead (`update_routing_problems`).
    """
    global _checked
    if _checked:
        return
    # The samples and the probe draw default seeds from Python's `random`
    # (Keras' initializers and seed generators): leave the caller's
    # sequence as it was, or the first FreezeOutModel of a process would
    # shift every seed drawn after it, e.g. a loaded model's dropout seeds
    # (issue 24's drifting resume).
    state = random.getstate()
    try:
        found = problems()
        if not found:  # the probe needs the hooks' internals
            found = update_routing_problems()
    finally:
        random.setstate(state)
    if found:
        raise KerasInternalsError(
            f"freezeout_tf does not support Keras {keras.__version__}: "
            f"{'; '.join(found)}. Supported Keras: {TESTED_KERAS}. Install "
            f"a supported version, e.g. pip install 'keras{SUPPORTED_KERAS}'."
        )
    _checked = True


def record_symbolic_call(layer, args, kwargs, outputs):
    """Records a symbolic call of `layer` as a node of the Keras graph, for
    a replacement of `layer.symbolic_call` that returns `outputs`: since
    Keras 3.10 `Layer.__call__` records it after `symbolic_call` returns,
    before that `symbolic_call` itself did, so a replacement must.

    Args:
        layer: the `keras.layers.Layer` called.
        args: the call's positional arguments (symbolic tensors among them).
        kwargs: its keyword arguments.
        outputs: the `keras.KerasTensor`s the call returns.

    Example:

    >>> layer = keras.layers.Dense(2)
    >>> def output_spec_only(*args, **kwargs):  # a replacement
    ...     outputs = layer.compute_output_spec(*args, **kwargs)
    ...     record_symbolic_call(layer, args, kwargs, outputs)
    ...     return outputs
    >>> layer.symbolic_call = output_spec_only
    >>> x = keras.Input((3,))
    >>> keras.Model(x, layer(x)).layers[-1] is layer
    True
    """
    if not _LAYER_CALL_RECORDS_NODE:
        from keras.src.ops.node import Node

        Node(operation=layer, call_args=args, call_kwargs=kwargs,
             outputs=outputs)
