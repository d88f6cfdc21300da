"""Speedup estimates: the original's formula, per-unit FLOPs, the inverse."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from freezeout_tf.model import FreezeOutModel  # noqa: E402
from freezeout_tf.schedule import freeze_fractions  # noqa: E402
from freezeout_tf.speedup import (  # noqa: E402
    calc_speedup,
    densenet_costs,
    estimate_speedup,
    speedup_from_costs,
    t0_for_speedup,
    unit_flops,
)

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
