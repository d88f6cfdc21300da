"""How much training compute FreezeOut saves: estimates and their inverse.

Two estimates:

* `calc_speedup`: the original's formula for DenseNet-BC on 32x32 inputs
  (docs/algorithm.md §5), kept exactly, quirks included, to compare with the paper.
* `estimate_speedup`: for any built `FreezeOutModel`, from the real forward
  cost of each unit (`unit_flops`) and a backward pass costing twice the
  forward.

`t0_for_speedup` inverts `estimate_speedup`: which `t_0` saves a given
fraction of compute.

The arithmetic lives in `speedup_from_costs` (plain numbers, no
TensorFlow); only `unit_flops` runs the model, counting with `count_macs`
(which `freezeout_tf.functional` also uses to balance its units): convs,
dense and einsum-dense layers, attention (MultiHeadAttention and the
einsums/matmuls of hand-written attention).
"""

import contextlib
import functools
import inspect
import math
import numbers
import re
import sys

import keras
import numpy as np
import tensorflow as tf

from freezeout_tf import keras_internals, schedule, side_inputs

__all__ = [
    "calc_speedup",
    "count_macs",
    "densenet_costs",
    "estimate_speedup",
    "gradient_bytes_saving",
    "same_time_epochs",
    "speedup_from_costs",
    "t0_for_speedup",
    "unit_flops",
    "with_free_dimension",
]


def densenet_costs(growth_rate, n_dense_blocks):
    """The per-layer forward costs the original `calc_speedup` uses.

    Multiply-accumulates for one 32x32 image: the stem conv
    `3 * 2k * 32^2 * 9`, then each bottleneck layer of block `b`
    `q * 4k^2 * HW_b + 36 * k^2 * HW_b` with `HW_b` = 32^2, 16^2, 8^2, and
    `q` (the layer's input channels in units of `k`) starting at 2, +1
    after every layer and halved (floored) after every block. Transitions
    and the head are not listed.

    Args:
        growth_rate: `k`.
        n_dense_blocks: `m`, layers per dense block (the original's name).

    Returns:
        list of `3 * m + 1` ints.
    """
    schedule.check_positive_int("growth_rate", growth_rate)
    schedule.check_positive_int("n_dense_blocks", n_dense_blocks)
    k = int(growth_rate)
    costs = [3 * (2 * k) * 32**2 * 9]
    q = 2
    for hw in (32**2, 16**2, 8**2):
        for _ in range(int(n_dense_blocks)):
            costs.append(q * 4 * k * k * hw + 36 * k * k * hw)
            q += 1
        q = math.floor(q * 0.5)
    return costs


def calc_speedup(growth_rate, n_dense_blocks, t_0=0.8, how_scale="cubic"):
    """The original FreezeOut's speedup estimate for a DenseNet-BC, exactly.

    With `c` the costs of `densenet_costs` (`L = 3m + 1` of them):
    `C = 2 * sum(c)` without FreezeOut and
    `C_f = sum(c) + sum_i c_i * scale(t_0 + (1 - t_0) * i / L)` with it;
    the result is `1 - C_f / C`, times 1.3 for linear scaling.

    Quirks kept from the original (use `estimate_speedup` for a real
    model):

    * the backward pass of a layer is taken to cost the same as its
      forward pass;
    * transitions and the head are not counted, and `q` is halved as a
      whole number of `k`, which drifts from the real channel count when
      it is odd (block 3 is assumed to start at 9k channels instead of
      9.5k for m = 12);
    * the schedule divides by `L = 3m + 1`, the number of listed layers,
      not by the head index `3m + 3` that the training schedule uses;
    * with `how_scale="linear"` the result is multiplied by 1.3, an
      unexplained fudge factor of the original.

    Args:
        growth_rate: `k`.
        n_dense_blocks: `m`, layers per dense block (`(depth - 4) // 6`
            for DenseNet-BC).
        t_0: fraction of training, before scaling, at which the first unit
            freezes; in (0, 1].
        how_scale: `"linear"`, `"squared"` or `"cubic"`.

    Returns:
        float: the estimated fraction of training compute saved.

    Example:

    >>> round(calc_speedup(12, 12, 0.8, "cubic"), 4)
    0.1778
    """
    schedule.check_t_0(t_0)
    schedule.check_how_scale(how_scale)
    costs = densenet_costs(growth_rate, n_dense_blocks)
    total = 2 * sum(costs)
    with_freezeout = sum(costs) + sum(
        c * float(schedule.scale(t_0 + (1 - t_0) * float(i) / len(costs),
                                 how_scale))
        for i, c in enumerate(costs)
    )
    saving = 1 - float(with_freezeout) / total
    return 1.3 * saving if how_scale == "linear" else saving


def speedup_from_costs(costs, fractions):
    """Fraction of training compute saved, from per-unit costs.

    Each unit's forward costs `c_i` and its backward `2 * c_i` (gradients
    with respect to both its input and its weights). Without FreezeOut a
    step costs `sum(3 * c_i)`. With it, every unit still runs its forward,
    but unit `i` runs its backward only for the fraction `t_i` of training:
    `C_f = sum(c_i + 2 * t_i * c_i)`.

    Args:
        costs: forward costs of the units and the head (any unit).
        fractions: `t_i` for each entry of `costs` (the head's is 1), e.g.
            from `freeze_fractions`.

    Returns:
        float `1 - C_f / C` in [0, 1); 0 when everything costs 0.

    Example:

    >>> speedup_from_costs([1.0, 1.0], [0.5, 1.0])
    0.16666666666666663
    """
    costs = np.asarray(costs, dtype=np.float64)
    fractions = np.asarray(fractions, dtype=np.float64)
    if costs.shape != fractions.shape or costs.ndim != 1:
        raise ValueError(
            f"costs and fractions must be 1-D and of the same length; got "
            f"shapes {costs.shape} and {fractions.shape}."
        )
    if np.any(costs < 0):
        raise ValueError(f"costs must be >= 0; got {costs.tolist()}.")
    total = 3.0 * costs.sum()
    if total == 0:
        return 0.0
    with_freezeout = costs.sum() + 2.0 * (fractions * costs).sum()
    return float(1.0 - with_freezeout / total)


def gradient_bytes_saving(model, t_0=0.8, how_scale="cubic"):
    """Fraction of the all-reduced gradient bytes FreezeOut saves on `model`.

    Under `tf.distribute` a frozen unit's gradients are not all-reduced
    (`optimizer._unit_all_reduce`): unit `i` sends its `p_i` trainable
    parameters for the fraction `t_i` of training only, the head always.
    So the saving is `1 - sum(t_i * p_i) / sum(p_i)` (all float32 or all of
    one dtype: bytes are proportional to parameters).

    Args:
        model: a built `FreezeOutModel`.
        t_0: fraction of training, before scaling, at which unit 0 freezes.
        how_scale: `"linear"`, `"squared"` or `"cubic"`.

    Returns:
        float in [0, 1).

    Example:

    >>> model = densenet_bc(depth=40, growth_rate=12)
    >>> round(gradient_bytes_saving(model), 3)
    0.23
    """
    params = np.array([
        sum(int(np.prod(v.shape)) for v in part.trainable_weights)
        for part in list(model.freeze_units) + [model.head]], np.float64)
    fractions = schedule.freeze_fractions(model.num_units, t_0, how_scale)
    return float(1.0 - (fractions * params).sum() / params.sum())


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


class _Count:
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
    `freezeout_tf.keras_internals`); the ops by replacing them, for the
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
    state = _Count()
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


def _default_input_shape(model):
    try:
        shape = model.get_build_config()["input_shape"]
    except (TypeError, KeyError, AttributeError):
        shape = None
    if shape is None:
        # A model from `FreezeOutModel.from_model`: its first unit is a
        # functional model that knows its input shape.
        inputs = getattr(model.freeze_units[0], "inputs", None)
        if inputs and len(inputs) == 1:
            shape = inputs[0].shape
    if shape is not None:
        shape = tuple(shape)[1:]
        if all(d is not None for d in shape):
            return shape
    return (32, 32, 3)


def unit_flops(model, input_shape=None):
    """Forward multiply-accumulates of each freeze unit and of the head.

    Runs one forward pass on a single zero input and, on the way, counts
    (with `count_macs`) inside each unit, nested `Sequential`s, functional
    models and custom layers included:

    * each call of a `Conv1D`/`Conv2D`/`Conv3D`, `Dense`, `EinsumDense`,
      depthwise or separable conv: (output elements) x (kernel elements
      per output element), i.e. `H_out * W_out * C_out * kh * kw * C_in /
      groups` for a conv, `units * in` for a Dense, the output elements
      times the kernel axes its equation contracts for an `EinsumDense`
      (`T * N * H * D` for a query projection), `H_out * W_out * C_out *
      kh * kw` for a depthwise conv, and a separable conv its depthwise
      plus its pointwise part;
    * the attention of each `MultiHeadAttention` (KerasHub's
      `CachedMultiHeadAttention` and other subclasses included), besides
      its `EinsumDense` projections: `QK^T` and `AV`,
      `N * T_q * T_k * (key_dim + value_dim)` per example;
    * each `keras.ops.einsum` (operand by operand, left to right: a
      pairwise product costs the product of the sizes of all its
      indices), `keras.ops.matmul` and `keras.ops.dot_product_attention`
      that a layer other than those above calls itself, e.g. a
      hand-written attention, over the whole (one-example) batch.

    A layer called twice counts twice.

    Left out: normalisation, activations, softmax, pooling, padding,
    embeddings, concatenation, additions, dropout, biases, and any other
    layer or op (transposed convs, `keras.ops.dot`/`tensordot`, the `@`
    operator, TensorFlow ops called directly, a `keras.ops` function a
    layer captured before counting began, e.g. as a default argument, and
    `keras.ops` called on the symbolic inputs of a functional model, which
    run as graph operations). They are cheap next to the convs and matmuls
    of the networks here.

    Args:
        model: a `FreezeOutModel` (built, or buildable by one call).
        input_shape: shape of one input without the batch dimension (for a
            model with side inputs, a dict of them by input name, each
            defaulting to the input's declared shape with a `None`
            dimension taken as 32, or 8 or 1 where the model does not
            accept 32); by default the model's built input
            shape, else the input shape of
            its first unit if that is a functional model with a fixed one
            (as from `FreezeOutModel.from_model`), else `(32, 32, 3)`.

    Returns:
        list of `model.num_units + 1` ints: the units' costs, then the
        head's, per example.

    Example:

    >>> model = densenet_bc(depth=40, growth_rate=12)
    >>> unit_flops(model)[0]  # stem: 32 * 32 * 24 * 3 * 3 * 3
    663552
    """
    parts = list(model.freeze_units) + [model.head]
    if model.input_names is None and input_shape is None:
        input_shape = _default_input_shape(model)

    def count(free):
        if model.input_names is None:
            x, side = keras.ops.zeros((1,) + tuple(input_shape)), None
        else:
            x = None
            side = side_inputs.zero_side_inputs(parts, model.input_names,
                                                input_shape, length=free)
        costs = []
        with count_macs(parts) as counter:
            for part in parts:
                counter[0] = 0
                names = (None if side is None
                         else side_inputs.part_input_names(part))
                x = part(side_inputs.arguments(names, x, side),
                         training=False)
                costs.append(int(counter[0]))
        return costs

    return with_free_dimension(count)


# Stand-ins for a `None` input dimension (a sequence length) when counting
# costs, tried in turn: a position embedding caps the sequence length.
FREE_DIMENSIONS = (32, 8, 1)


def with_free_dimension(count):
    """`count(d)` for the first stand-in `d` of `FREE_DIMENSIONS` the model
    accepts (the last one's error is raised)."""
    for free in FREE_DIMENSIONS[:-1]:
        try:
            return count(free)
        except (ValueError, tf.errors.InvalidArgumentError):
            continue
    return count(FREE_DIMENSIONS[-1])


def estimate_speedup(model, t_0=0.8, how_scale="cubic", input_shape=None):
    """Fraction of training compute that FreezeOut saves on `model`.

    Per unit forward cost `c_i` from `unit_flops`, backward `2 * c_i`;
    unit `i` runs its backward for the fraction
    `t_i = freeze_fractions(n, t_0, how_scale)[i]` of training and the head
    always (see `speedup_from_costs`). Unlike `calc_speedup` this counts
    the real layers of the model (transitions and head included), and is
    a compute estimate: wall-clock time also depends on the parts not
    counted and on the hardware.

    Args:
        model: a `FreezeOutModel`.
        t_0: fraction of training, before scaling, at which the first unit
            freezes; in (0, 1].
        how_scale: `"linear"`, `"squared"` or `"cubic"`.
        input_shape: see `unit_flops`.

    Returns:
        float in [0, 1): `1 - C_f / C`.

    Example:

    >>> model = densenet_bc(depth=76, growth_rate=12)
    >>> round(estimate_speedup(model, t_0=0.8), 3)
    0.234
    """
    fractions = schedule.freeze_fractions(model.num_units, t_0, how_scale)
    return speedup_from_costs(unit_flops(model, input_shape), fractions)


def same_time_epochs(epochs, speedup):
    """Epochs of a FreezeOut run that take the compute of `epochs` without it.

    The original's `--const_time`: with a fraction `speedup` of training
    compute saved, `epochs / (1 - speedup)` epochs cost what `epochs` plain
    ones do; rounded up (a float error just above a whole number is not).

    Args:
        epochs: epochs of the run without FreezeOut, an int >= 1.
        speedup: fraction of training compute saved, in [0, 1) (e.g.
            `estimate_speedup`).

    Returns:
        int >= `epochs`.

    Raises:
        ValueError: `epochs` is not an int >= 1, or `speedup` is not a
            number in [0, 1).

    Example:

    >>> same_time_epochs(100, 0.2), same_time_epochs(100, 0.234)
    (125, 131)
    """
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or (
        epochs < 1
    ):
        raise ValueError(f"epochs must be an int >= 1; got {epochs!r}.")
    if isinstance(speedup, bool) or not isinstance(speedup, numbers.Real) or not (
        0 <= speedup < 1  # also refuses nan
    ):
        raise ValueError(
            f"speedup must be a fraction of compute saved, in [0, 1); got "
            f"{speedup!r}."
        )
    return int(math.ceil(epochs / (1.0 - speedup) - 1e-9))


def _limit_fractions(num_units, how_scale):
    """`freeze_fractions` at t_0 -> 0+ (where it is continuous)."""
    i = np.arange(num_units + 1, dtype=np.float64)
    return schedule.scale(i / num_units, how_scale)


def t0_for_speedup(model, target, how_scale="cubic", input_shape=None,
                   tol=1e-9):
    """The `t_0` at which `estimate_speedup(model, t_0, how_scale)` equals
    `target`.

    The saving falls monotonically from its supremum as `t_0 -> 0+` (unit
    0 never trains) to 0 at `t_0 = 1`; the answer is found by bisection on
    (0, 1], with `unit_flops` run only once.

    Args:
        model: a `FreezeOutModel`.
        target: the fraction of training compute to save, in
            `[0, max)`; `max` is the saving as `t_0 -> 0+`.
        how_scale: `"linear"`, `"squared"` or `"cubic"`.
        input_shape: see `unit_flops`.
        tol: width of the final bracket on `t_0`.

    Returns:
        float `t_0` in (0, 1].

    Raises:
        ValueError: `target` is not a number, is negative, or is at or
            beyond what any `t_0` reaches (the message gives that maximum).

    Example:

    >>> model = wide_resnet(depth=16, widen_factor=4)
    >>> t_0 = t0_for_speedup(model, 0.2)
    >>> round(estimate_speedup(model, t_0), 6)
    0.2
    """
    schedule.check_how_scale(how_scale)
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or (
        not np.isfinite(target)
    ):
        raise ValueError(f"target must be a number; got {target!r}.")
    if target < 0:
        raise ValueError(
            f"target must be a fraction of compute saved, >= 0; got "
            f"{target!r}."
        )
    costs = unit_flops(model, input_shape)
    n = model.num_units

    def saving(t_0):
        return speedup_from_costs(
            costs, schedule.freeze_fractions(n, t_0, how_scale)
        )

    maximum = speedup_from_costs(costs, _limit_fractions(n, how_scale))
    if target >= maximum:
        raise ValueError(
            f"target {target!r} is out of reach: with how_scale="
            f"{how_scale!r} this model saves at most {maximum:.4f} of its "
            f"training compute (as t_0 -> 0), and only less for any t_0 in "
            f"(0, 1]."
        )
    if target == 0:
        return 1.0
    lo, hi = 0.0, 1.0  # saving(lo+) > target >= saving(hi)
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if saving(mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
