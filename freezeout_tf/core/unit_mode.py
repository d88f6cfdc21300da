"""Training or inference mode of a freeze unit, chosen by an in-graph flag.

A frozen unit runs in inference mode (BatchNormalization on its moving
statistics, which stay as they are; no dropout), an active unit in training
mode. Keras decides that mode in Python (`training=True/False`), so a
one-graph train step would need a branch per unit: `tf.cond(frozen,
inference_forward, training_forward)`. Differentiating through such branches
makes TensorFlow export every intermediate of the forward from the branch,
which is what made the step pathological under XLA.

Here the mode is a boolean tensor instead, and the forward has no branch:
while `FreezeOutModel`'s train step calls unit i with `training=True`
inside `unit_mode(leaves, flag_i)`, each *leaf* layer of the unit whose
`call` takes `training` reads `flag_i`:

* `BatchNormalization`: normalises with `where(flag, batch moments, moving
  statistics)` and assigns `where(flag, updated, unchanged)` to the moving
  statistics, so a frozen unit's statistics are rewritten with their own
  bits (bit-identical) and the output is that of inference mode exactly.
  The batch moments are taken over `batch[:n]`, n the batch size while the
  unit trains and 0 while it is frozen: a frozen unit's reductions run over
  an empty slice and cost nothing, where a branch per BatchNormalization
  doubled the step's trace (docs/design.md). A full slice is the input
  itself (TensorFlow forwards it, and its gradient's zero padding, without
  a copy). XLA wants static shapes, so under `jit_compile` the moments are
  taken over the whole batch and selected away.
* Any other leaf layer without non-trainable state (Dropout and its
  spatial, Gaussian and alpha variants, GaussianNoise, random augmentation
  layers): `where(flag, call(training=True), call(training=False))`; where
  both calls return the very same tensor (a Dropout of rate 0) there is
  nothing to select.
* Keras' `Dense` and `EinsumDense` take `training` but ignore it (only
  their float8 mode reads it, and a float8 layer is switched): they
  are left alone, with LoRA enabled too (its kernel is non-trainable state
  that `training` never touches). Switching them would compute every
  projection twice, once per mode; on transformers that made the step
  1.6-1.7x plain Keras'.
* A leaf layer with other non-trainable state that a step writes could
  not be kept unchanged while frozen; `mode_switched_leaves` rejects it
  with a clear error. State no op writes (a buffer such as CLIP's
  `position_ids`) is a constant, not refused: found by tracing the unit
  (`_WrittenState`).
* A container (a layer with sublayers) normally passes `training` on to
  its leaves and is left alone. One whose `call` reads `training` itself
  (by its source) is switched as a whole, like a stateless leaf; one that
  takes `training` and owns non-trainable variables of its own that a
  step writes is rejected.

Outside `unit_mode` (evaluate, predict, a plain `model(x, training=...)`)
the layers behave exactly as stock Keras layers. The switch is installed
per layer instance (the instance's `call` is wrapped), never on a Keras
class, so other models are not affected.
"""

import ast
import contextlib
import inspect
import textwrap
import threading

import keras
import numpy as np
import tensorflow as tf

from freezeout_tf._internals import keras_internals

__all__ = ["mode_switched_leaves", "unit_mode"]

# Under MirroredStrategy each replica is traced in its own thread, with its
# own flag tensors: keep the active flags per thread.
_active = threading.local()
_INSTALLED = "_freezeout_mode_switch"


def _flag_of(layer):
    """(flag, static_shapes, cache shared by the unit's leaves)."""
    return getattr(_active, "flags", {}).get(id(layer), (None, False, {}))


@contextlib.contextmanager
def unit_mode(leaves, training, static_shapes=False):
    """Within this context, `leaves` (from `mode_switched_leaves`) run in
    training mode where the boolean scalar tensor `training` is true and in
    inference mode where it is false, whatever `training=` they are called
    with.

    `static_shapes=True` (for a step compiled with XLA) keeps every tensor's
    shape independent of `training`: frozen BatchNormalization layers then
    compute their batch moments over the whole batch and discard them."""
    flags = _active.__dict__.setdefault("flags", {})
    shared = {}
    for layer in leaves:
        flags[id(layer)] = (training, static_shapes, shared)
    try:
        yield
    finally:
        for layer in leaves:
            flags.pop(id(layer), None)


def mode_switched_leaves(unit, unit_name="unit"):
    """Installs the in-graph mode switch on the leaf layers of `unit` whose
    mode matters, and returns them (to pass to `unit_mode`).

    Idempotent: a layer already switched is returned, not wrapped again.
    A layer not built yet that may make sublayers in its `build` is left
    out: call again once the unit is built.

    Args:
        unit: a Keras layer or model (one freeze unit).
        unit_name: how errors name the unit.

    Raises:
        ValueError: a leaf layer has training-mode behaviour this module
            cannot switch in the graph without moving frozen state.
    """
    keras_internals.check()
    leaves = []
    written = _WrittenState(unit)
    for layer in unit._flatten_layers(include_self=True):
        if layer._flatten_layers(include_self=False):
            # A container: passes `training` on to its leaves, or is
            # switched as a whole (or refused).
            leaves.extend(_switched_container(layer, unit_name, written))
            continue
        if not layer._call_has_training_arg or _ignores_training(layer):
            continue
        if _may_make_sublayers(layer):
            continue  # seen again once built (FreezeOutModel.build)
        if getattr(layer, _INSTALLED, False):
            leaves.append(layer)
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            _check_batch_norm(layer, unit_name)
            switched = _batch_norm_call(layer)
        elif written.any_of(layer.non_trainable_weights):
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) in {unit_name} "
                "takes a `training` argument and has non-trainable state "
                f"({[w.path for w in layer.non_trainable_weights]}); FreezeOut "
                "can switch only BatchNormalization and stateless layers "
                "(Dropout, noise, augmentation) between training and "
                "inference mode inside the graph. Move the layer into the "
                "head, or make it stateless."
            )
        else:
            switched = _generic_call(layer)
        # Instance attribute: Keras' Layer.__call__ calls `self.call`.
        object.__setattr__(layer, "call", switched)
        object.__setattr__(layer, _INSTALLED, True)
        leaves.append(layer)
    return leaves


def _may_make_sublayers(layer):
    """True for a layer not built yet whose class has its own `build`:
    it may make its sublayers there (keras_hub's TransformerEncoder does),
    so it cannot be told from a leaf yet. Switched as a leaf, its whole
    forward would run once per mode."""
    return (not layer.built
            and type(layer).build is not keras.layers.Layer.build
            and not isinstance(layer, keras.layers.BatchNormalization))


class _WrittenState:
    """Which non-trainable variables a unit's training step writes.

    A non-trainable variable no op assigns (a buffer such as SigLIP's
    `position_ids`, a frozen table) is constant: freezing has nothing to
    protect there. Found from the graph, not from names: the unit's call
    with `training=True` is traced once (only when a layer with
    non-trainable state would otherwise be refused) in a `FuncGraph`, and
    a variable counts as written when its resource handle feeds any op
    but a read (`ReadVariableOp`, a gather, its shape): an assign, or a
    nested function or control-flow op that might assign it."""

    _READS = frozenset({"ReadVariableOp", "ResourceGather",
                        "ResourceGatherNd", "VariableShape"})

    def __init__(self, unit):
        self.unit, self.ids = unit, None

    def any_of(self, variables):
        """True if the step writes one of `variables` (Keras variables);
        True for every one when the unit cannot be traced (not a
        functional model with inputs)."""
        if not variables:
            return False
        if self.ids is None:
            self.ids = self._trace()
        if self.ids is True:
            return True
        for v in variables:
            handles = _handle_ids(v)
            if not handles or handles & self.ids:
                return True
        return False

    def _trace(self):
        unit = self.unit
        inputs = getattr(unit, "inputs", None)
        if not isinstance(unit, keras.Model) or not inputs:
            return True
        specs = [tf.TensorSpec(t.shape, t.dtype) for t in inputs]

        def forward(*args):
            return unit(list(args) if len(args) > 1 else args[0],
                        training=True)

        with tf.init_scope():  # also when first built inside a train step
            graph = tf.function(forward).get_concrete_function(
                *specs).graph
        handles = {id(internal): external
                   for external, internal in graph.captures}
        written = set()
        for op in graph.get_operations():
            if op.type in self._READS:
                continue
            for t in op.inputs:
                if t.dtype == tf.resource and id(t) in handles:
                    written.add(id(handles[id(t)]))
        return written


def _handle_ids(variable):
    """Ids of the resource handles behind a Keras variable (and of its
    per-replica components under a distribution strategy)."""
    ids = set()
    value = variable.value
    for component in [value, *getattr(value, "values", ())]:
        try:
            ids.add(id(component.handle))
        except (AttributeError, ValueError):  # no handle out of a replica
            pass
    return ids


def _switched_container(layer, unit_name, written):
    """`[layer]` if the container `layer` reads `training` itself (its
    mode is then switched as a whole, like a stateless leaf: both modes
    computed, one selected), `[]` if it only passes `training` on to its
    sublayers (its leaves are switched).

    Raises:
        ValueError: the container takes `training` and owns non-trainable
            variables of its own (not its sublayers') that a step writes,
            which could move while its unit is frozen.
    """
    if not layer._call_has_training_arg:
        return []
    inner = {id(w) for sub in layer._flatten_layers(include_self=False)
             for w in sub.weights}
    own = [w for w in layer.weights
           if id(w) not in inner and not w.trainable]
    if written.any_of(own):
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) in {unit_name} "
            "has sublayers, takes a `training` argument and owns "
            f"non-trainable state of its own ({[w.path for w in own]}), "
            "which FreezeOut cannot keep unchanged while the unit is "
            "frozen. Move that state into a sublayer FreezeOut can switch "
            "(BatchNormalization, or a stateless layer), or move the layer "
            "into the head."
        )
    if getattr(layer, _INSTALLED, False):
        return [layer]
    if not _reads_training(type(layer).call):
        return []
    object.__setattr__(layer, "call", _generic_call(layer))
    object.__setattr__(layer, _INSTALLED, True)
    return [layer]


def _reads_training(call):
    """False if the source of `call` only passes `training` on: as
    `training=training`, as an argument of a call on `self` or `super()`,
    into a dict (`kwargs["training"] = training`), or in `training is
    None`; True if it reads it otherwise, or if the source is unavailable."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(call)))
    except (OSError, TypeError, SyntaxError):
        return True
    parents = {child: node for node in ast.walk(tree)
               for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Name) and node.id == "training"
                and isinstance(node.ctx, ast.Load)):
            continue
        parent = parents[node]
        if isinstance(parent, ast.keyword) and parent.arg == "training":
            continue
        if isinstance(parent, ast.Call) and node in parent.args:
            callee = parent.func
            while isinstance(callee, ast.Attribute):
                callee = callee.value
            if (isinstance(callee, ast.Name) and callee.id == "self") or (
                    isinstance(callee, ast.Call)
                    and getattr(callee.func, "id", "") == "super"):
                continue
        if isinstance(parent, ast.Assign) and all(
                isinstance(t, ast.Subscript) for t in parent.targets):
            continue
        if isinstance(parent, ast.Compare) and all(
                isinstance(op, (ast.Is, ast.IsNot)) for op in parent.ops):
            continue
        return True
    return False


def _ignores_training(layer):
    """True for a layer whose `call` is Keras' own `Dense` or `EinsumDense`
    call (a subclass that overrides `call` is switched like any other
    layer), except in float8 mode: that call takes `training` but only its
    float8 mode reads it (to update its scales). Its other non-trainable
    state (a kernel frozen by `enable_lora`, int8 scales) is never touched
    by `training`, so it is left alone whatever state it holds."""
    return (type(layer).call in _CALLS_IGNORING_TRAINING
            and getattr(layer, "quantization_mode", None) != "float8")


_CALLS_IGNORING_TRAINING = (keras.layers.Dense.call,
                            keras.layers.EinsumDense.call)


def _check_batch_norm(layer, unit_name):
    # `renorm` appeared in Keras 3.14; older releases have no renorm.
    if getattr(layer, "renorm", False):
        raise ValueError(
            f"BatchNormalization {layer.name!r} in {unit_name} uses "
            "renorm=True, which FreezeOut does not support inside a freeze "
            "unit (its renorm statistics would need the same in-graph "
            "switch). Use renorm=False, or move the layer into the head."
        )


def _generic_call(layer):
    plain_call = layer.call

    def call(*args, training=None, **kwargs):
        flag, _, _ = _flag_of(layer)
        if flag is None or not training:
            return plain_call(*args, training=training, **kwargs)
        return tf.nest.map_structure(
            lambda t, i: t if t is i else tf.where(flag, t, i),
            plain_call(*args, training=True, **kwargs),
            plain_call(*args, training=False, **kwargs),
        )

    return call


def _moments_while(flag, inputs, axes, window=None, otherwise=None):
    """Batch moments (as `tf.nn.moments` over `axes`, which hold the batch
    axis 0) of `inputs[:n]`, n the batch size where `flag` is true and 0
    where it is false: a frozen unit's reductions run over no example.

    The sums are divided by the element count of the whole `inputs`, so the
    division, and that of the gradient, stays on the reduced tensor (a mean
    over the slice's unknown size would divide the broadcast gradient
    element by element). Where `flag` is false the result is 0, never used.
    `window` (`_batch_window`) may be shared by the layers of a unit: each
    small op costs the executor about as much as a BatchNorm's arithmetic
    on a small activation.

    The gradient is written out (`_moments_gradient`): differentiated op by
    op, the slice's unknown batch size made every op after it take
    TensorFlow's broadcasting gradient (a Sum, a BroadcastTo and shape
    arithmetic per op: 143 Sum ops per DenseNet-BC L=22 step against plain
    Keras' 43, 30 ms of Sum in a 130 ms step).

    Where `flag` is false the result is 0, or `otherwise` (a `(mean,
    variance)` pair, BatchNorm's moving statistics) if given: selected
    inside the custom gradient, so that the selection adds no gradient ops
    to the trace (a `SelectV2` gradient is two selects and a broadcast
    reduction per input, twice per BatchNorm layer).
    """
    begin, sizes = window or _batch_window(flag, inputs)
    # Channels last: reduce without keeping dims, nothing to squeeze.
    keepdims = list(axes) != list(range(inputs.shape.rank - 1))
    dims = [inputs.shape[axis] for axis in axes]
    if None in dims:
        count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(inputs), axes)),
                        inputs.dtype)
    else:
        count = float(np.prod(dims))

    @tf.custom_gradient
    def moments(x):
        batch = tf.slice(x, begin, sizes)
        mean = tf.reduce_sum(batch, axes, keepdims=keepdims) / count
        variance = tf.reduce_sum(tf.math.squared_difference(batch, mean),
                                 axes, keepdims=keepdims) / count
        kept = mean  # broadcasts against x
        if keepdims:
            mean = tf.squeeze(mean, axes)
            variance = tf.squeeze(variance, axes)
        if otherwise is not None:
            # Frozen, the gradient below is zero whatever it is handed.
            mean = tf.where(flag, mean, otherwise[0])
            variance = tf.where(flag, variance, otherwise[1])

        def gradient(d_mean, d_variance):
            return _moments_gradient(flag, x, kept, count, d_mean,
                                     d_variance, keepdims, axes)

        return (mean, variance), gradient

    return moments(inputs)


def _moments_gradient(flag, x, mean, count, d_mean, d_variance, keepdims,
                      axes):
    """The gradient of `_moments_while`'s moments with respect to its
    input: `(d_mean + 2 d_variance (x - mean)) / count` (the variance's
    mean is held constant, as `tf.nn.moments` does), zero where `flag` is
    false (no example was taken)."""
    if keepdims:
        d_mean = tf.reshape(d_mean, tf.shape(mean))
        d_variance = tf.reshape(d_variance, tf.shape(mean))
    inverse = tf.cast(1.0, x.dtype) / count
    inverse = tf.where(flag, inverse, tf.zeros_like(inverse))
    scale = (2.0 * inverse) * d_variance
    shift = inverse * d_mean
    return (x - mean) * scale + shift


def _batch_window(flag, inputs):
    """`tf.slice`'s begin and sizes for `inputs[:n]`, n = batch size if
    `flag` else 0 (-1: the rest of an axis)."""
    rank = inputs.shape.rank
    size = tf.where(flag, tf.shape(inputs)[0], 0)
    return (tf.constant([0] * rank),
            tf.concat([[size], tf.constant([-1] * (rank - 1))], 0))


def _batch_norm_call(layer):
    """Keras' `BatchNormalization.call` (renorm off) with the mode a tensor."""
    plain_call = layer.call
    ops = keras.ops

    def call(inputs, training=None, mask=None):
        flag, static_shapes, shared = _flag_of(layer)
        if flag is None or not training or not layer.trainable:
            return plain_call(inputs, training=training, mask=mask)
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        inputs = ops.cast(inputs, compute_dtype)
        moving_mean = ops.cast(layer.moving_mean, inputs.dtype)
        moving_variance = ops.cast(layer.moving_variance, inputs.dtype)
        gamma = ops.cast(layer.gamma, inputs.dtype) if layer.scale else None
        beta = ops.cast(layer.beta, inputs.dtype) if layer.center else None
        if (static_shapes or mask is not None or layer.synchronized
                or 0 not in layer._reduction_axes):
            batch_mean, batch_variance = layer._moments(inputs, mask)
            mean = tf.where(flag, batch_mean, moving_mean)
            variance = tf.where(flag, batch_variance, moving_variance)
        else:
            rank = inputs.shape.rank
            if rank not in shared:  # one per unit and rank
                shared[rank] = _batch_window(flag, inputs)
            # The moving statistics where frozen.
            mean, variance = _moments_while(
                flag, inputs, layer._reduction_axes, shared[rank],
                otherwise=(moving_mean, moving_variance))
        momentum = layer.momentum
        # Frozen: the statistics are written back with their own bits.
        layer.moving_mean.assign(tf.where(
            flag, moving_mean * momentum + mean * (1.0 - momentum),
            moving_mean,
        ))
        layer.moving_variance.assign(tf.where(
            flag,
            moving_variance * momentum + variance * (1.0 - momentum),
            moving_variance,
        ))
        outputs = ops.batch_normalization(
            x=inputs, mean=mean, variance=variance, axis=layer.axis,
            offset=beta, scale=gamma, epsilon=layer.epsilon,
        )
        return ops.cast(outputs, layer.compute_dtype)

    return call
