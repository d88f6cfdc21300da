"""The pure schedule against hand-computed values (docs/algorithm.md §2-3)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from freezeout_tf import schedule
from freezeout_tf.core.schedule_state import ScheduleState


@pytest.mark.parametrize(
    "how_scale, expected",
    [
        ("linear", [0.8, 0.85, 0.9, 0.95, 1.0]),
        ("squared", [0.64, 0.7225, 0.81, 0.9025, 1.0]),
        ("cubic", [0.512, 0.614125, 0.729, 0.857375, 1.0]),
    ],
)
def test_freeze_fractions_by_hand(how_scale, expected):
    np.testing.assert_allclose(
        schedule.freeze_fractions(4, 0.8, how_scale), expected, rtol=1e-12
    )


def test_head_never_freezes_and_fractions_grow():
    t = schedule.freeze_fractions(39, 0.5, "cubic")
    assert len(t) == 40 and t[-1] == 1.0 and t[0] == 0.125
    assert np.all(np.diff(t) > 0)


# (how_scale, t of unit 0 at t_0=0.8): at step t*T/2 the cosine is exactly
# one half, so the multiplier is 0.5 unscaled and 0.5/t scaled.
@pytest.mark.parametrize(
    "how_scale, t, half_step, scaled",
    [
        ("linear", 0.8, 400, 0.625),
        ("squared", 0.64, 320, 0.78125),
        ("cubic", 0.512, 256, 0.9765625),
    ],
)
def test_lr_multipliers_by_hand(how_scale, t, half_step, scaled):
    fr = schedule.freeze_fractions(4, 0.8, how_scale)
    T = 1000
    assert schedule.lr_multipliers(0, T, fr, scale_lr=True)[0] == pytest.approx(
        1 / t
    )
    assert schedule.lr_multipliers(0, T, fr, scale_lr=False)[0] == 1.0
    assert schedule.lr_multipliers(half_step, T, fr, True)[0] == pytest.approx(
        scaled
    )
    assert schedule.lr_multipliers(half_step, T, fr, False)[0] == pytest.approx(
        0.5
    )
    # Head: plain cosine over the whole run, never divided (t = 1).
    assert schedule.lr_multipliers(500, T, fr, True)[-1] == pytest.approx(0.5)


def test_freeze_step_is_first_step_past_t_times_T():
    fr = schedule.freeze_fractions(4, 0.8, "cubic")  # t_0 = 0.512
    T = 1000
    steps = schedule.freeze_steps(T, fr)
    assert steps[0] == 513 and steps[-1] == T + 1
    # Step 512 = t*T: still training (multiplier cos(pi) = 0), 513 frozen.
    assert schedule.lr_multipliers(512, T, fr)[0] == pytest.approx(0.0, abs=1e-12)
    assert schedule.lr_multipliers(511, T, fr)[0] > 0
    assert schedule.num_frozen(512, T, fr) == 0
    assert schedule.num_frozen(513, T, fr) == 1
    assert schedule.num_frozen(T - 1, T, fr) == 4


def test_freeze_step_when_t_times_T_is_not_integer():
    fr = np.array([0.3, 1.0])
    steps = schedule.freeze_steps(10, fr)  # 0.3 * 10 = 3.0000000000000004
    assert steps[0] == int(math.floor(0.3 * 10)) + 1


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: schedule.freeze_fractions(4, 1.5), "t_0 must be .* got 1.5"),
        (lambda: schedule.freeze_fractions(4, 0.0), "t_0 must be"),
        (lambda: schedule.freeze_fractions(4, 0.8, "quartic"), "'quartic'"),
        (lambda: schedule.freeze_fractions(0), "num_units .* got 0"),
        (lambda: schedule.freeze_steps(0, [1.0]), "total_steps .* got 0"),
        (lambda: schedule.lr_multipliers(0, -3, [1.0]), "got -3"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("scale_lr", [True, False])
def test_in_graph_state_matches_pure_schedule_every_step(scale_lr):
    fr = schedule.freeze_fractions(5, 0.3, "squared")
    T = 60
    state = ScheduleState(5)
    state.set(T, fr, scale_lr)

    @tf.function
    def graph(step):
        return (
            tf.stack([state.multiplier(step, u) for u in range(6)]),
            tf.stack([state.frozen(step, u) for u in range(6)]),
        )

    fs = schedule.freeze_steps(T, fr)
    for step in range(T):
        mult, frozen = graph(tf.constant(step, tf.int64))
        expected = schedule.lr_multipliers(step, T, fr, scale_lr)
        np.testing.assert_allclose(mult.numpy(), expected, rtol=2e-6, atol=1e-6)
        np.testing.assert_array_equal(frozen.numpy(), step >= fs)


def test_state_without_schedule_is_plain_training():
    state = ScheduleState(3)
    assert float(state.multiplier(tf.constant(10**6, tf.int64), 0)) == 1.0
    assert not bool(state.frozen(tf.constant(10**6, tf.int64), 0))


# Every unit's freeze step by hand, floor(t_i * T) + 1 with t_i of
# test_freeze_fractions_by_hand (t_0 = 0.8, four units) and T = 999 (no
# t_i * T an integer): unit 0 and the head alone let an off-by-one in
# another unit through (issue 34).
@pytest.mark.parametrize(
    "how_scale, expected",
    [
        # 0.8 * 999 = 799.2, 0.85 * 999 = 849.15, 0.9 * 999 = 899.1, ...
        ("linear", [800, 850, 900, 950, 1000]),
        # 0.512 * 999 = 511.488, 0.614125 * 999 = 613.51, 0.729 * 999 =
        # 728.27, 0.857375 * 999 = 856.52
        ("cubic", [512, 614, 729, 857, 1000]),
    ],
)
def test_every_units_freeze_step_by_hand(how_scale, expected):
    fr = schedule.freeze_fractions(4, 0.8, how_scale)
    np.testing.assert_array_equal(schedule.freeze_steps(999, fr), expected)
    # The in-graph state freezes each unit at that step, not one earlier.
    state = ScheduleState(4)
    state.set(999, fr)
    for unit, at in enumerate(expected):
        before = state.part_flags(tf.constant(at - 1, tf.int64))
        after = state.part_flags(tf.constant(at, tf.int64))
        assert not bool(before[unit]) and bool(after[unit]), (unit, at)
    assert schedule.num_frozen(999, 999, fr) == 4
    # Two units frozen from the start: units 2, 3 and the head follow the
    # schedule of two units (t_0 + 0.2 * i / 2: unit 0's, 2's and the
    # head's t_i above).
    fr = schedule.freeze_fractions(4, 0.8, how_scale, frozen_from_start=2)
    np.testing.assert_array_equal(
        schedule.freeze_steps(999, fr, frozen_from_start=2),
        [0, 0, expected[0], expected[2], expected[4]])
