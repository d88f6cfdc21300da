"""The settle criterion (freezeout_tf.adaptive.criteria): its decision as a
NumPy function with hand-computed expectations, the in-graph step and the
train step's observer against it, and its settings refused when bad."""

import numpy as np
import pytest
import tensorflow as tf

from freezeout_tf import AdaptiveFreeze
from freezeout_tf.adaptive import (NOT_YET, IntervalState, Observation,
                                   settle_step, settled_prefix, share_change)
from freezeout_tf.core.schedule_state import NEVER
from test_adaptive import observe_norms

T, F = True, False


@pytest.mark.parametrize(
    "change, checked, streak, frozen, want_streak, want_freeze", [
        # Settled twice in a row: units 0 and 1 freeze together; unit 2
        # moved (its streak restarts), so unit 3 waits behind it.
        ([0.05, 0.02, 0.3, 0.01], [T] * 4, [1, 1, 1, 1], [F] * 4,
         [2, 2, 0, 2], [T, T, F, F]),
        # Settled once only: no freeze yet (patience 2).
        ([0.05, 0.02], [T, T], [0, 0], [F, F], [1, 1], [F, F]),
        # Behind a frozen prefix (unit 0, unchecked, keeps its count) the
        # next unit freezes; the one after it has settled only once.
        ([-1.0, 0.05, 0.05], [F, T, T], [5, 1, 0], [T, F, F],
         [5, 2, 1], [F, T, F]),
        # A change equal to the tolerance is not below it.
        ([0.1, 0.0], [T, T], [1, 1], [F, F], [0, 2], [F, F]),
        # The front unit moving holds back all that settled behind it.
        ([0.2, 0.0, 0.0], [T, T, T], [3, 3, 3], [F, F, F],
         [0, 4, 4], [F, F, F]),
        # An unchecked unit keeps its streak and does not freeze on it.
        ([0.0, 0.0], [F, T], [2, 1], [F, F], [2, 2], [F, F]),
    ])
def test_settled_prefix_by_hand(change, checked, streak, frozen,
                                want_streak, want_freeze):
    got_streak, got_freeze = settled_prefix(
        np.array(change), np.array(checked), np.array(streak),
        np.array(frozen), tolerance=0.1, patience=2)
    assert got_streak.tolist() == want_streak
    assert got_freeze.tolist() == want_freeze


def _reference(norms, interval, tolerance, patience, scheduled,
               share=False):
    """The settle (or share) criterion step by step in NumPy: interval
    means, their relative change (or their shares'), `settled_prefix` at
    each interval's end."""
    steps, n = norms.shape
    freeze = scheduled.copy()
    sums, count, checks = np.zeros(n), 0, 0
    ref, change = np.zeros(n), np.full(n, float(NOT_YET))
    streak = np.zeros(n, np.int64)
    for j in range(steps):
        active = j < freeze
        sums[active] += norms[j, active]
        count += 1
        if (j + 1) % interval:
            continue
        mean = sums / count
        checked = active & (checks > 0)
        ratio = np.abs(mean - ref) / np.maximum(ref, 1e-30)
        if share:
            ratio = share_change(mean, ref, checked)
        change[checked] = ratio[checked]
        streak, now = settled_prefix(ratio, checked, streak, freeze <= j + 1,
                                     tolerance, patience)
        freeze[now] = j + 1
        ref[active] = mean[active]
        sums[:], count, checks = 0, 0, checks + 1
    return freeze, change, streak


def _steps(norms, scheduled, interval, tolerance, patience, share=False):
    """`settle_step` over every row of `norms`; returns the freeze steps
    and the last `IntervalState`."""
    n = norms.shape[1]
    freeze = tf.constant(scheduled)
    state = IntervalState(
        interval_sum=tf.zeros(n), interval_steps=tf.constant(0, tf.int64),
        reference=tf.zeros(n), change=tf.fill([n], float(NOT_YET)),
        checks=tf.constant(0, tf.int64), streak=tf.zeros(n, tf.int64))
    for j in range(len(norms)):
        step = tf.constant(j, tf.int64)
        out = settle_step(
            Observation(step, tf.constant(norms[j]), j < freeze, freeze),
            state, interval, tolerance, patience, share=share)
        freeze = tf.where(out.freeze, step + 1, freeze)
        state = out.state
    return freeze, state


def test_settle_step_and_observer_match_the_numpy_decision():
    interval, tolerance, patience = 3, 0.1, 2
    # Each unit's gradient norm, constant over each 3-step interval:
    # unit 0 settles at intervals 2 and 3 (changes 0.025, 0.005) and
    # freezes at step 12; unit 1 settles, moves (0.29: its streak
    # restarts), settles twice and freezes at 15; unit 2 settled early and
    # waits for it; unit 3 decays until interval 9.
    levels = np.array([
        [3, 2, 1.95, 1.94, 1.94, 1.94, 1.94, 1.94, 1.94, 1.94, 1.94],
        [3, 3.1, 4, 4.1, 4.1, 4.1, 4.1, 4.1, 4.1, 4.1, 4.1],
        [2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3],
        [5, 4, 3, 2, 1.5, 1.2, 1.0, 0.9, 0.85, 0.84, 0.84]]).T
    norms = np.repeat(levels, interval, axis=0).astype(np.float32)
    steps, n = norms.shape
    scheduled = np.array([NEVER] * n, np.int64)
    want, want_change, want_streak = _reference(
        norms.astype(np.float64), interval, tolerance, patience, scheduled)
    np.testing.assert_array_equal(want, [12, 15, 15, 30])  # by hand
    decided = want < NEVER

    freeze, state = _steps(norms, scheduled, interval, tolerance, patience)
    np.testing.assert_array_equal(freeze.numpy(), want)
    np.testing.assert_allclose(state.change.numpy(), want_change, rtol=1e-4)
    np.testing.assert_array_equal(state.streak.numpy(), want_streak)

    # The observer the train step runs writes the same decisions.
    config = AdaptiveFreeze("settle", interval=interval, tolerance=tolerance,
                            patience=patience)
    adaptive, schedule_state = observe_norms(config, norms, scheduled)
    np.testing.assert_array_equal(
        schedule_state.host_freeze_steps()[:n], want)
    np.testing.assert_array_equal(adaptive.host_values().decided[decided],
                                  want[decided])


def test_settle_settings():
    config = AdaptiveFreeze("settle")
    assert (config.tolerance, config.patience, config.intervals) == (
        0.1, 2, 20)
    assert AdaptiveFreeze.from_config(config.get_config()) == config
    for kwargs, match in [
            (dict(tolerance=0), r"tolerance=0\): must be a finite number > 0"),
            (dict(patience=0), r"patience=0\): must be an integer >= 1"),
            (dict(percentile=50), r"percentile=50\): not a setting of "
             "criterion 'settle'")]:
        with pytest.raises(ValueError, match=match):
            AdaptiveFreeze("settle", **kwargs)
    with pytest.raises(ValueError, match=r"tolerance=0.1\): not a setting "
                       "of criterion 'rank'"):
        AdaptiveFreeze("rank", tolerance=0.1)


def test_share_change_by_hand():
    # Shares before 1/4, 1/4, 2/4; after 2/8, 3/8, 3/8 (unit 3 frozen,
    # left out of both sums): changes 0, 0.5, 0.25.
    got = share_change(np.array([2.0, 3.0, 3.0, 7.0]),
                       np.array([1.0, 1.0, 2.0, 9.0]),
                       np.array([True, True, True, False]))
    np.testing.assert_allclose(got, [0.0, 0.5, 0.25, 0.0])


def test_share_settles_where_the_whole_gradient_shrinks_alike():
    interval, tolerance, patience = 2, 0.1, 2
    # Every unit's norm halves each interval (a loss going to 0): settle
    # sees 50 % changes forever. Unit 2's falls slower (x 0.75), so its
    # share grows 50 % an interval, while units 0 and 1's shares move by
    # 1-2 %: share freezes those as soon as it can (settled at the first
    # two checks, the ends of intervals 2 and 3: step 6), not unit 2 and
    # so not unit 3 behind it.
    halving = 0.5 ** np.arange(8)[:, None]
    levels = halving * np.array([1.0, 2.0, 0.1, 1.0])
    levels[:, 2] *= 1.5 ** np.arange(8)
    norms = np.repeat(levels, interval, axis=0).astype(np.float32)
    steps, n = norms.shape
    scheduled = np.array([NEVER] * n, np.int64)
    settle, _, _ = _reference(norms.astype(np.float64), interval, tolerance,
                              patience, scheduled)
    assert np.all(settle == NEVER)
    want, want_change, _ = _reference(norms.astype(np.float64), interval,
                                      tolerance, patience, scheduled,
                                      share=True)
    np.testing.assert_array_equal(want, [6, 6, NEVER, NEVER])  # by hand

    freeze, state = _steps(norms, scheduled, interval, tolerance, patience,
                           share=True)
    np.testing.assert_array_equal(freeze.numpy(), want)
    np.testing.assert_allclose(state.change.numpy(), want_change, rtol=1e-4,
                               atol=1e-6)
    config = AdaptiveFreeze("share", interval=interval, tolerance=tolerance,
                            patience=patience)
    _, schedule_state = observe_norms(config, norms, scheduled)
    np.testing.assert_array_equal(
        schedule_state.host_freeze_steps()[:n], want)
