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
TensorFlow); only `unit_flops` runs the model, counting with
`freezeout_tf.core.macs.count_macs` (which the splitter also uses to balance
its units): convs, dense and einsum-dense layers, attention
(MultiHeadAttention and the einsums/matmuls of hand-written attention).
"""

import math

import keras
import numpy as np

from freezeout_tf import schedule, validation
from freezeout_tf.core import side_inputs
from freezeout_tf.core.macs import count_macs, with_free_dimension

__all__ = [
    "calc_speedup",
    "densenet_costs",
    "estimate_speedup",
    "gradient_bytes_saving",
    "same_time_epochs",
    "speedup_from_costs",
    "t0_for_speedup",
    "unit_flops",
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
    validation.check_positive_int("growth_rate", growth_rate)
    validation.check_positive_int("n_dense_blocks", n_dense_blocks)
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
    validation.check_t_0(t_0)
    validation.check_how_scale(how_scale)
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

    return with_free_dimension(count, parts)


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
    validation.check_int("epochs", epochs, 1, allowed="an int >= 1")
    validation.check_number(
        "speedup", speedup, 0, 1, high_open=True,
        allowed="a fraction of compute saved, in [0, 1)")
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
    validation.check_how_scale(how_scale)
    validation.check_number(
        "target", target, 0,
        allowed="a finite number >= 0 (the fraction of compute saved)")
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
