"""Speedup estimates: the original's formula, per-unit FLOPs, the inverse."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from freezeout_tf.core.macs import count_macs  # noqa: E402
from freezeout_tf.core.model import FreezeOutModel  # noqa: E402
from freezeout_tf.estimates.speedup import (  # noqa: E402
    calc_speedup,
    densenet_costs,
    estimate_speedup,
    gradient_bytes_saving,
    same_time_epochs,
    speedup_from_costs,
    t0_for_speedup,
    unit_flops,
)
from freezeout_tf.schedule import freeze_fractions  # noqa: E402

HW = 32 * 32


# The original's calc_speedup (docs/algorithm.md §5).


def test_calc_speedup_check_value():
    assert round(calc_speedup(12, 12, 0.8, "cubic"), 4) == 0.1778


def test_calc_speedup_by_hand_with_linear_quirk():
    k, m, t_0 = 12, 2, 0.5
    c = densenet_costs(k, m)
    # Stem, then q = 2, 3 (block 1), 2, 3 (block 2: floor(4 / 2) = 2),
    # 2, 3 (block 3).
    expected_costs = [3 * 2 * k * HW * 9]
    for q, hw in [(2, HW), (3, HW), (2, HW / 4), (3, HW / 4), (2, HW / 16),
                  (3, HW / 16)]:
        expected_costs.append(q * 4 * k * k * hw + 36 * k * k * hw)
    assert c == expected_costs
    t = [t_0 + (1 - t_0) * i / 7 for i in range(7)]  # divides by len(c) = 7
    saving = 1 - (sum(c) + sum(ci * ti for ci, ti in zip(c, t))) / (2 * sum(c))
    assert calc_speedup(k, m, t_0, "linear") == pytest.approx(1.3 * saving)
    cubic = 1 - (sum(c) + sum(ci * ti**3 for ci, ti in zip(c, t))) / (
        2 * sum(c))
    assert calc_speedup(k, m, t_0, "cubic") == pytest.approx(cubic)
    assert calc_speedup(k, m, 1.0, "cubic") == 0.0


@pytest.mark.parametrize(
    "args, match",
    [
        ((12, 12, 0.8, "quartic"), "how_scale.*quartic"),
        ((12, 12, 0.0, "cubic"), "t_0"),
        ((12, 12, 1.5, "cubic"), "t_0"),
        ((0, 12, 0.8, "cubic"), "growth_rate.*0"),
        ((12, 2.5, 0.8, "cubic"), "n_dense_blocks.*2.5"),
    ],
)
def test_calc_speedup_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        calc_speedup(*args)


# Per-unit FLOPs.


def test_unit_flops_match_hand_counts(tiny_densenet):
    # DenseNet-BC L=10 k=4: one layer per block; stem 8 channels.
    flops = unit_flops(tiny_densenet)
    assert len(flops) == tiny_densenet.num_units + 1 == 7
    k = 4
    assert flops[0] == HW * (2 * k) * 3 * 3 * 3  # stem conv 3x3, 3 -> 8
    # dense1_1: 1x1 8 -> 16, then 3x3 16 -> 4, at 32x32.
    assert flops[1] == HW * (8 * 4 * k) + HW * (9 * 4 * k * k)
    # transition1: 1x1 12 -> 6 at 32x32, before the pool.
    assert flops[2] == HW * 12 * 6
    # dense2_1 at 16x16 on 6 channels.
    assert flops[3] == (HW // 4) * (6 * 4 * k + 9 * 4 * k * k)
    # head: Dense 9 -> 10 (12 -> 6 -> 10 -> 5 -> 9 channels; BN, ReLU,
    # pooling not counted).
    assert flops[-1] == 9 * 10


def test_unit_flops_strided_block_and_shortcut(tiny_wrn):
    flops = unit_flops(tiny_wrn)
    # block2_1: 16 -> 32 channels, stride 2, output 16x16.
    out = 16 * 16 * 32
    assert flops[2] == out * 9 * 16 + out * 9 * 32 + out * 16


def test_unit_flops_nested_sequential_and_restores_layers():
    inner = keras.Sequential([keras.layers.Conv2D(4, 3, padding="same"),
                              keras.layers.ReLU()])
    unit = keras.Sequential([inner, keras.layers.Conv2D(2, 1, strides=2)])
    head = keras.Sequential([keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(3)])
    model = FreezeOutModel([unit], head)
    model.build((None, 8, 8, 3))
    x = np.ones((2, 8, 8, 3), "float32")
    before = keras.ops.convert_to_numpy(model(x))
    flops = unit_flops(model)  # input shape taken from the build: 8x8x3
    assert flops == [64 * 4 * 27 + 16 * 2 * 4, 2 * 3]
    # Larger input given explicitly.
    assert unit_flops(model, (16, 16, 3)) == [
        256 * 4 * 27 + 64 * 2 * 4, 2 * 3]
    for layer in model._flatten_layers():
        assert "call" not in vars(layer)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)),
                                  before)


# Transformers: EinsumDense, attention, raw einsum/matmul.

T, D = 16, 32  # sequence length and width of the transformer tests


def macs_of(layer, *inputs, batch=1, **kwargs):
    """What `count_macs` counts for one call of `layer` on zeros of the
    given shapes (without batch), and checks the layer is left as found."""
    tensors = [keras.ops.zeros((batch,) + s) for s in inputs]
    with count_macs([layer]) as counter:
        layer(*tensors, **kwargs)
    for sub in layer._flatten_layers():
        assert "call" not in vars(sub)
        assert "_compute_attention" not in vars(sub)
    return counter[0]


@pytest.mark.parametrize(
    "equation, output_shape, input_shape, expected",
    [
        # Q/K/V projection (T, D) -> (T, N, H): T * N * H outputs, D each.
        ("abc,cde->abde", (None, 2, 8), (T, D), T * 2 * 8 * D),
        # Output projection (T, N, H) -> (T, D): N * H each.
        ("abcd,cde->abe", (None, D), (T, 2, 8), T * D * 2 * 8),
        # A Dense written as an EinsumDense, with an ellipsis.
        ("...b,bc->...c", 5, (T, D), T * 5 * D),
    ],
)
def test_einsum_dense_hand_counts(equation, output_shape, input_shape,
                                  expected):
    layer = keras.layers.EinsumDense(equation, output_shape)
    assert macs_of(layer, input_shape) == expected
    # Per example, like Dense.
    assert macs_of(layer, input_shape, batch=3) == expected


def mha_hand_count(heads=2, key_dim=8, value_dim=8, t_q=T, t_k=T):
    projections = (t_q * heads * key_dim * D + t_k * heads * key_dim * D
                   + t_k * heads * value_dim * D)
    scores = heads * t_q * t_k * key_dim  # Q K^T
    mix = heads * t_q * t_k * value_dim  # A V
    output = t_q * D * heads * value_dim
    return projections + scores + mix + output


@pytest.mark.parametrize("dropout", [0.0, 0.1])  # fused / explicit einsums
@pytest.mark.parametrize("batch", [1, 2])
def test_multi_head_attention_hand_count(dropout, batch):
    layer = keras.layers.MultiHeadAttention(2, 8, dropout=dropout)
    assert macs_of(layer, (T, D), (T, D), batch=batch) == mha_hand_count()
    assert mha_hand_count() == 3 * 8192 + 2 * 4096 + 8192


def test_cross_attention_with_value_dim_hand_count():
    layer = keras.layers.MultiHeadAttention(2, 8, value_dim=4)
    assert macs_of(layer, (T, D), (24, D)) == mha_hand_count(
        value_dim=4, t_k=24)


def test_keras_hub_transformer_encoder_hand_count():
    encoder = keras_hub.layers.TransformerEncoder(intermediate_dim=64,
                                                  num_heads=2)
    key_dim = D // 2
    attention = mha_hand_count(heads=2, key_dim=key_dim, value_dim=key_dim)
    feed_forward = T * 64 * D + T * D * 64
    assert macs_of(encoder, (T, D)) == attention + feed_forward
    assert isinstance(encoder._self_attention_layer,
                      keras.layers.MultiHeadAttention)


class HandWrittenAttention(keras.layers.Layer):
    """Single-head attention with raw ops; its projection is a Dense."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.project = keras.layers.Dense(D)

    def call(self, x):
        q = self.project(x)
        scores = keras.ops.softmax(keras.ops.einsum("btd,bsd->bts", q, x))
        return keras.ops.matmul(scores, x)


def test_raw_einsum_and_matmul_in_a_custom_layer():
    layer = HandWrittenAttention()
    dense = T * D * D
    raw = T * T * D + T * T * D  # einsum, then matmul, at batch 1
    assert macs_of(layer, (T, D)) == dense + raw
    # Raw ops count the whole product, all of the batch.
    assert macs_of(layer, (T, D), batch=2) == dense + 2 * raw
    # Ops outside the given layers are not counted, and are put back.
    einsum, matmul = keras.ops.einsum, keras.ops.matmul
    x = keras.ops.zeros((1, T, D))
    with count_macs([layer]) as counter:
        keras.ops.einsum("btd,bsd->bts", x, x)
        keras.ops.matmul(x, keras.ops.zeros((D, 3)))
        assert counter[0] == 0
        assert keras.ops.einsum is not einsum
    assert keras.ops.einsum is einsum and keras.ops.matmul is matmul


class RawOp(keras.layers.Layer):
    """Calls `keras.ops.<op>` on zeros of `shapes` (looked up at call time:
    a function captured before the block is not counted)."""

    def __init__(self, op, *args, shapes, **kwargs):
        super().__init__()
        self.op, self.args, self.shapes, self.op_kwargs = (
            op, args, shapes, kwargs)

    def call(self, x):
        operands = [keras.ops.zeros(s) for s in self.shapes]
        return getattr(keras.ops, self.op)(*self.args, *operands,
                                           **self.op_kwargs)


@pytest.mark.parametrize(
    "op, args, shapes, expected",
    [
        ("einsum", ("btd,bsd->bts",), [(1, T, D), (1, T, D)], T * T * D),
        ("einsum", ("td,sd",), [(T, D), (T, D)], T * T * D),  # implicit
        # Broadcast ellipses: (2, 1) and (5,) -> (2, 5).
        ("einsum", ("...ij,...jk->...ik",), [(2, 1, 3, 4), (5, 4, 6)],
         2 * 5 * 3 * 4 * 6),
        # Three operands, left to right: (b i j k), then (b i k l).
        ("einsum", ("bij,jk,kl->bil",), [(1, 4, 5), (5, 6), (6, 7)],
         4 * 5 * 6 + 4 * 6 * 7),
        ("einsum", ("ij->ji",), [(4, 5)], 0),  # no products
        ("matmul", (), [(4,), (2, 4, 3)], 2 * 4 * 3),
        ("matmul", (), [(2, 1, 3, 4), (5, 4, 6)], 2 * 5 * 3 * 4 * 6),
        # Queries (B, T, N, H) meet S keys: QK^T with H, AV with Hv.
        ("dot_product_attention", (), [(1, T, 2, 8), (1, 24, 2, 8),
                                       (1, 24, 2, 4)], T * 2 * 24 * (8 + 4)),
    ],
)
def test_raw_op_hand_counts(op, args, shapes, expected):
    layer = RawOp(op, *args, shapes=shapes)
    assert macs_of(layer, (1,)) == expected


def test_count_macs_keeps_a_layers_own_call():
    # FreezeOut's unit mode shadows BatchNormalization's `call` on the
    # instance; counting chains to it and puts it back.
    norm = keras.layers.BatchNormalization()
    seen = []

    def own_call(*args, **kwargs):
        seen.append(1)
        return type(norm).call(norm, *args, **kwargs)

    object.__setattr__(norm, "call", own_call)
    unit = keras.Sequential([keras.layers.Dense(4), norm])
    with count_macs([unit]) as counter:
        unit(keras.ops.zeros((1, 3)))
    assert counter[0] == 12 and seen == [1]
    assert vars(norm)["call"] is own_call
    assert "call" not in vars(unit) and "call" not in vars(unit.layers[0])


def test_count_macs_blocks_cannot_be_nested():
    layer = keras.layers.Dense(2)
    with count_macs([layer]):
        with pytest.raises(RuntimeError, match="nested"):
            with count_macs([layer]):
                pass
    with count_macs([layer]) as counter:  # the first block cleaned up
        layer(keras.ops.zeros((1, 3)))
    assert counter[0] == 6


def transformer_model(num_blocks=3):
    keras.utils.set_random_seed(0)
    units = []
    for i in range(num_blocks):
        if i % 2:  # a functional unit
            inputs = keras.Input((T, D))
            block = keras_hub.layers.TransformerEncoder(64, 2)
            units.append(keras.Model(inputs, block(inputs)))
        else:
            units.append(keras.Sequential(
                [keras_hub.layers.TransformerEncoder(64, 2)]))
    head = keras.Sequential([keras.layers.GlobalAveragePooling1D(),
                             keras.layers.Dense(3)])
    model = FreezeOutModel(units, head)
    model.build((None, T, D))
    return model


def test_unit_flops_of_transformer_blocks():
    model = transformer_model()
    flops = unit_flops(model)  # input shape from the build: (16, 32)
    block = mha_hand_count(key_dim=D // 2, value_dim=D // 2) + 2 * T * 64 * D
    assert flops == [block, block, block, D * 3]
    fractions = freeze_fractions(model.num_units, 0.8, "cubic")
    assert estimate_speedup(model) == pytest.approx(
        speedup_from_costs(flops, fractions))
    assert estimate_speedup(model) > 0


# The better estimate and its inverse.


def test_speedup_from_costs_by_hand():
    # Forward 1 + 1, backward 2 + 2 -> C = 6; unit 0 backward half the time.
    assert speedup_from_costs([1.0, 1.0], [0.5, 1.0]) == pytest.approx(1 / 6)
    assert speedup_from_costs([5.0, 2.0], [1.0, 1.0]) == 0.0
    assert speedup_from_costs([0.0, 0.0], [0.5, 1.0]) == 0.0
    with pytest.raises(ValueError, match="same length"):
        speedup_from_costs([1.0, 1.0], [1.0])


def test_estimate_speedup_uses_unit_costs_and_schedule(tiny_densenet):
    flops = unit_flops(tiny_densenet)
    fractions = freeze_fractions(tiny_densenet.num_units, 0.8, "cubic")
    expected = 1 - sum(c + 2 * t * c for c, t in zip(flops, fractions)) / (
        3 * sum(flops))
    assert estimate_speedup(tiny_densenet) == pytest.approx(expected)
    assert estimate_speedup(tiny_densenet, t_0=1.0) == 0.0
    savings = [estimate_speedup(tiny_densenet, t) for t in (0.2, 0.5, 0.9)]
    assert savings[0] > savings[1] > savings[2] > 0
    with pytest.raises(ValueError, match="how_scale"):
        estimate_speedup(tiny_densenet, how_scale="cube")


@pytest.mark.parametrize("how_scale", ["linear", "cubic"])
def test_t0_for_speedup_round_trip(tiny_wrn, how_scale):
    for target in (0.05, 0.2):
        t_0 = t0_for_speedup(tiny_wrn, target, how_scale)
        assert 0 < t_0 <= 1
        assert estimate_speedup(tiny_wrn, t_0, how_scale) == pytest.approx(
            target, abs=1e-6)
    assert t0_for_speedup(tiny_wrn, 0.0) == 1.0


def test_t0_for_speedup_out_of_reach(tiny_wrn):
    with pytest.raises(ValueError, match="out of reach.*at most 0\\.[0-9]+"):
        t0_for_speedup(tiny_wrn, 0.9)
    with pytest.raises(ValueError, match=">= 0"):
        t0_for_speedup(tiny_wrn, -0.1)
    with pytest.raises(ValueError, match="number"):
        t0_for_speedup(tiny_wrn, "0.1")


def test_gradient_bytes_saving_by_hand():
    # Units of 24 and 20 parameters, a head of 10; linear t_0 = 0.5: the
    # units send their gradients for 0.5 and 0.75 of the run, the head for
    # all of it; BatchNorm's moving statistics are not sent.
    model = FreezeOutModel(
        [keras.layers.Dense(4), keras.Sequential(
            [keras.layers.Dense(4), keras.layers.BatchNormalization()])],
        keras.layers.Dense(2))
    model.build((None, 5))
    assert [sum(int(np.prod(v.shape)) for v in part.trainable_weights)
            for part in model.freeze_units + [model.head]] == [24, 28, 10]
    saving = gradient_bytes_saving(model, 0.5, "linear")
    assert saving == pytest.approx((24 * 0.5 + 28 * 0.25) / 62)
    assert gradient_bytes_saving(model, 1.0, "linear") == 0.0


def test_same_time_epochs():
    assert same_time_epochs(100, 0.0) == 100
    assert same_time_epochs(100, 0.2) == 125  # 100 / 0.8, not rounded up
    assert same_time_epochs(100, 0.234) == 131  # 130.5... rounded up
    assert same_time_epochs(3, np.float64(0.5)) == 6
    for epochs, speedup in [(0, 0.2), (2.5, 0.2), (True, 0.2), (100, 1.0),
                            (100, -0.1), (100, float("nan")), (100, "0.2")]:
        with pytest.raises(ValueError, match="epochs|speedup"):
            same_time_epochs(epochs, speedup)
