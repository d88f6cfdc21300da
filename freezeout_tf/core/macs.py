"""Counting multiply-accumulates, op by op, while layers run.

`count_macs` counts the convs, dense and einsum-dense layers, attention
(MultiHeadAttention and the einsums/matmuls of hand-written attention) that
run inside a block; `with_free_dimension` picks a stand-in for a `None`
input dimension the model accepts. Both the splitter
(`freezeout_tf.split.functional`, to balance its units) and the cost
estimates (`freezeout_tf.estimates.speedup.unit_flops`) count with them, so
they live here, below both.

Layer: core state. Imports only `freezeout_tf._internals`.
"""

import contextlib
import functools
import inspect
import re
import sys

import keras
import numpy as np
import tensorflow as tf

from freezeout_tf._internals import keras_internals

__all__ = ["FREE_DIMENSIONS", "count_macs", "with_free_dimension"]

# Layers whose cost `count_macs` counts, and the kernel elements each output
# element costs: kh * kw * in / groups for a conv, `in` for a Dense, kh * kw
# for a depthwise conv, for a separable conv its depthwise part spread over
# the outputs plus its pointwise part, and for an EinsumDense the kernel
# elements its equation contracts.
_COUNTED = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Dense,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.EinsumDense,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
)


def _prod(dims):
    return int(np.prod([int(d) for d in dims], dtype=np.int64))


def _macs(layer, outputs):
    elements = _prod(tuple(outputs.shape)[1:])
    if isinstance(layer, keras.layers.EinsumDense):
        # "input,kernel->output": the kernel axes absent from the output
        # are summed over for each output element.
        _, kernel_spec, output_spec = re.split(
            "->|,", layer.equation.replace(" ", ""))
        return elements * _prod(
            d for letter, d in zip(kernel_spec, layer.kernel.shape)
            if letter not in output_spec)
    if isinstance(layer, (keras.layers.DepthwiseConv1D,
                          keras.layers.DepthwiseConv2D)):
        return elements * _prod(tuple(layer.kernel.shape)[:-2])
    if isinstance(layer, (keras.layers.SeparableConv1D,
                          keras.layers.SeparableConv2D)):
        depthwise = tuple(layer.depthwise_kernel.shape)
        positions = elements // int(outputs.shape[-1])
        return (positions * _prod(depthwise)
                + elements * int(layer.pointwise_kernel.shape[-2]))
    return elements * _prod(tuple(layer.kernel.shape)[:-1])


def _attention_macs(layer, query, key, value):
    """QK^T and AV of `MultiHeadAttention._compute_attention`, per example:
    projected `query` (B, T..., N, H), `key` (B, S..., N, H) and `value`
    (B, S..., N, Hv); each of the `T * N` query rows meets `S` keys."""
    axes = layer._attention_axes
    if axes is None:  # Keras' default: every axis but batch, heads, features
        axes = tuple(range(1, len(key.shape) - 2))
    keys = _prod(key.shape[a] for a in axes)
    rows = _prod(tuple(query.shape)[1:-1])
    return rows * keys * (int(query.shape[-1]) + int(value.shape[-1]))


def _einsum_terms(term, ndim, ellipsis):
    """The index labels of one einsum operand; `...` covers the axes its
    letters leave over, labelled from the right (they broadcast so)."""
    if "..." not in term:
        return list(term)
    left, right = term.split("...")
    width = ndim - len(left) - len(right) if ndim is not None else ellipsis
    return list(left) + [("...", i) for i in reversed(range(width))] + list(
        right)


def _einsum_macs(subscripts, *operands, **kwargs):
    """An einsum evaluated operand by operand, left to right: each pairwise
    product costs the product of the sizes of all the indices it involves."""
    shapes = [tuple(np.shape(x)) for x in operands]
    spec = subscripts.replace(" ", "")
    inputs, arrow, output = spec.partition("->")
    inputs = inputs.split(",")
    if len(inputs) < 2 or len(inputs) != len(shapes):
        return 0  # one operand: sums and transpositions, no products
    sizes = {}
    terms = []
    for term, shape in zip(inputs, shapes):
        labels = _einsum_terms(term, len(shape), 0)
        for label, d in zip(labels, shape):
            sizes[label] = max(sizes.get(label, 1), d)
        terms.append(set(labels))
    ellipsis = {label for t in terms for label in t
                if isinstance(label, tuple)}
    if arrow:
        kept = set(output.replace("...", "")) | ellipsis
    else:  # implicit output: the letters that appear once
        letters = [label for t in inputs for label in t.replace("...", "")]
        kept = {c for c in letters if letters.count(c) == 1} | ellipsis
    macs = 0
    current = terms[0]
    for i, term in enumerate(terms[1:], start=1):
        together = current | term
        macs += _prod(sizes[label] for label in together)
        current = together & (kept.union(*terms[i + 1:]))
    return macs


def _matmul_macs(x1, x2):
    a, b = tuple(np.shape(x1)), tuple(np.shape(x2))
    a = (1,) + a if len(a) == 1 else a
    b = b + (1,) if len(b) == 1 else b
    batch = np.broadcast_shapes(a[:-2], b[:-2])
    return _prod(batch) * _prod(a[-2:]) * int(b[-1])


def _dot_product_attention_macs(query, key, value, *args, **kwargs):
    # query (B, T, N, H), key (B, S, K, H), value (B, S, K, Hv); every one
    # of the B * T * N query rows meets S keys.
    q, k, v = (tuple(np.shape(x)) for x in (query, key, value))
    return _prod(q[:-1]) * int(k[-3]) * (int(q[-1]) + int(v[-1]))


# The `keras.ops` functions counted when a layer calls them directly, and
# their cost: the whole product (all of the batch; at batch 1, as
# `unit_flops` runs, that is per example).
_RAW_OPS = {
    "einsum": _einsum_macs,
    "matmul": _matmul_macs,
    "dot_product_attention": _dot_product_attention_macs,
}

_active = []  # the state of the running `count_macs` block, if any


class _CountMacsBlock:
    """One `count_macs` block: the counter, how deep the running calls are
    in the given layers (`inside`), and in counted layers or attention
    (`exact`, whose own ops are already counted by shape)."""

    def __init__(self):
        self.counter = [0]
        self.inside = 0
        self.exact = 0

    @contextlib.contextmanager
    def call(self, given, exact):
        self.inside += given
        self.exact += exact
        try:
            yield
        finally:
            self.inside -= given
            self.exact -= exact

    def counting_raw(self):
        return bool(self.inside) and not self.exact and tf.executing_eagerly()


def _shadow_raw_ops(state):
    """Replaces `keras.ops.einsum` & co. in every loaded module that holds
    them (`keras.ops`, `keras.src.ops`, `from keras.ops import einsum`,
    ...) by counting versions; returns what to put back."""
    originals = {name: getattr(keras.ops, name) for name in _RAW_OPS}
    replaced = []

    def counting(name, original):
        signature = inspect.signature(original)
        cost = _RAW_OPS[name]

        @functools.wraps(original)
        def counting_op(*args, **kwargs):
            outputs = original(*args, **kwargs)
            if state.counting_raw():
                bound = signature.bind(*args, **kwargs)
                state.counter[0] += cost(*bound.args, **bound.kwargs)
            return outputs

        return counting_op

    wrappers = {name: counting(name, f) for name, f in originals.items()}
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, original in originals.items():
            if namespace.get(name) is original:
                namespace[name] = wrappers[name]
                replaced.append((namespace, name, original))
    return replaced


@contextlib.contextmanager
def count_macs(layers):
    """Counts the multiply-accumulates of `layers` while the block runs.

    Inside the block, every call of a `Conv1D`/`Conv2D`/`Conv3D`, `Dense`,
    `EinsumDense`, depthwise or separable conv, and the attention of every
    `MultiHeadAttention` (and subclass, such as KerasHub's
    `CachedMultiHeadAttention`), that is, or is nested in, one of `layers`
    adds its cost (see `unit_flops`) to the yielded counter; so do the
    `keras.ops.einsum`, `keras.ops.matmul` and
    `keras.ops.dot_product_attention` that other layers call directly
    (a hand-written attention, say) while one of `layers` runs. Read the
    counter with `counter[0]` and reset it by assigning to it.

    The attention is counted by shadowing the private
    `MultiHeadAttention._compute_attention` of each instance (listed in
    `freezeout_tf._internals.keras_internals`); the ops by replacing them, for the
    block only, in every loaded module that holds them. Ops called inside
    a counted layer or attention are not counted again. Only eager calls
    count: not the symbolic run that builds a layer (Keras' build by
    running `call`), nor a `tf.function`. Blocks cannot be nested, and
    other threads' calls of the same layers count too.

    Args:
        layers: Keras layers or models whose (nested) layers to count.

    Raises:
        RuntimeError: another `count_macs` block is running.

    Example:

    >>> conv = keras.layers.Conv2D(8, 3, padding="same")
    >>> with count_macs([conv]) as counter:
    ...     _ = conv(keras.ops.zeros((1, 4, 4, 3)))
    >>> counter[0]  # 4 * 4 * 8 * 3 * 3 * 3
    3456
    """
    if _active:
        raise RuntimeError(
            "count_macs blocks cannot be nested: one is already running."
        )
    state = _CountMacsBlock()
    given = {id(part) for part in layers}
    shadowed = {}  # id -> layer whose `call` is shadowed

    def shadow_tree(root):
        # Also run at each call: a layer's build may have created layers
        # (MultiHeadAttention's projections, a KerasHub block's sublayers).
        for layer in root._flatten_layers(include_self=True, recursive=True):
            if id(layer) not in shadowed:
                shadowed[id(layer)] = layer
                replace(layer, "call", wrap(layer))
                if isinstance(layer, keras.layers.MultiHeadAttention):
                    replace(layer, "_compute_attention",
                            wrap_attention(layer))

    saved = []  # (layer, name, its own attribute or None): to put back

    def replace(layer, name, value):
        # A layer may already shadow `call` itself (FreezeOutModel's
        # BatchNorm hook does): keep that and chain to it.
        saved.append((layer, name, vars(layer).get(name)))
        object.__setattr__(layer, name, value)

    def wrap(layer):
        original = layer.call
        counted = isinstance(layer, _COUNTED)

        def counting_call(*args, **kwargs):
            shadow_tree(layer)
            with state.call(id(layer) in given, counted):
                outputs = original(*args, **kwargs)
            if counted and tf.executing_eagerly():
                state.counter[0] += _macs(layer, outputs)
            return outputs

        return counting_call

    def wrap_attention(layer):
        original = layer._compute_attention
        signature = inspect.signature(original)

        def counting_attention(*args, **kwargs):
            with state.call(0, 1):
                outputs = original(*args, **kwargs)
            if not tf.executing_eagerly():
                return outputs
            arguments = signature.bind(*args, **kwargs).arguments
            state.counter[0] += _attention_macs(
                layer, arguments["query"], arguments["key"],
                arguments["value"])
            return outputs

        return counting_attention

    keras_internals.check()
    _active.append(state)
    replaced = []
    try:
        # Shadow `call` (and `_compute_attention`) on the instances only,
        # for the block; `Layer.__call__` looks `self.call` up at call time.
        for part in layers:
            shadow_tree(part)
        replaced = _shadow_raw_ops(state)
        yield state.counter
    finally:
        for namespace, name, original in replaced:
            namespace[name] = original
        for layer, name, own in reversed(saved):
            if own is None:
                object.__delattr__(layer, name)
            else:
                object.__setattr__(layer, name, own)
        _active.clear()


# Stand-ins for a `None` input dimension (a sequence length) when counting
# costs, tried in turn, those a position embedding allows only.
FREE_DIMENSIONS = (32, 8, 1)


def with_free_dimension(count, layers=()):
    """`count(d)` for the first stand-in `d` of `FREE_DIMENSIONS` the model
    accepts (the last one's error is raised).

    A stand-in longer than a position embedding of `layers` (one with a
    `sequence_length`, as KerasHub's `PositionEmbedding`) is not tried:
    the failing slice would print a framework warning line to stderr.

    Args:
        count: a function of the stand-in dimension.
        layers: the Keras layers or models `count` runs.

    Returns:
        What `count` returns.

    Example:

    >>> with_free_dimension(lambda d: d)
    32
    """
    cap = _sequence_cap(layers)
    candidates = [d for d in FREE_DIMENSIONS if d <= cap] or [cap]
    for free in candidates[:-1]:
        try:
            return count(free)
        except (ValueError, tf.errors.InvalidArgumentError):
            continue
    return count(candidates[-1])


def _sequence_cap(layers):
    """The shortest `sequence_length` of the position embeddings nested in
    `layers`, or the longest stand-in if there is none."""
    cap = FREE_DIMENSIONS[0]
    for root in layers:
        for layer in root._flatten_layers(include_self=True, recursive=True):
            length = getattr(layer, "sequence_length", None)
            if ("Position" in type(layer).__name__
                    and isinstance(length, int) and length > 0):
                cap = min(cap, length)
    return cap
