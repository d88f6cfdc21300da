"""Adaptive freezing: units freeze by a criterion on their gradients,
decided inside the traced train step.

Five criteria (docs/algorithm.md §9), all from the same signal: g_i, the
norm of freeze unit i's gradient at a step, summed over replicas under
`tf.distribute` (one all-reduce of n floats, so every replica decides from
the same numbers; every criterion is scale-free).

* `"rank"` (the default; AutoFreeze, Liu et al. 2021): the run is cut into
  `intervals` evaluation intervals. At the end of each, every unit still
  training gets `change_i = |m_i - r_i| / r_i`, with `m_i` the mean of g_i
  over the interval and `r_i` that of the previous interval. The front
  units whose change is below the `percentile`-th percentile of the
  training units' changes freeze (from the next step). No threshold to
  set: the comparison is among units, so it fires whatever the scale of the
  changes.
* `"pace"`: the FreezeOut schedule's spacing (`t_0`, cubic) gives each unit
  a target freeze step; at the end of each interval the same ranking moves
  the target of a unit whose change is below the percentile one interval
  earlier, and of one above it one interval later. A unit freezes when its
  (moved) target is reached.
* `"settle"` (AutoFreeze's signal with an absolute test): the same
  interval means and relative changes as rank; a unit counts as settled
  at an interval's end when its change is below `tolerance`, and freezes
  (in prefix order) once it has been settled at `patience` interval ends
  in a row. Unlike rank it freezes nothing by fiat (rank freezes the
  front half of the units' ranking at every check, whether or not any of
  them settled), and unlike threshold it compares interval means, whose
  minibatch noise shrinks with the interval's length. The decision is
  `settled_prefix`, a NumPy function of the changes (the in-graph step
  `settle_step` is tested against it).
* `"share"`: settle on each unit's share of the training units' summed
  interval means (`m_i / sum_j m_j`, the same units in both intervals,
  `share_change`) instead of its mean: when the whole network's gradient
  shrinks alike (a loss going to 0 on a small fine-tuning set), every
  share stays put and the units count as settled, where settle sees each
  mean still falling.
* `"threshold"`: an exponential moving average `s_i` of g_i with span
  `window` steps; every `interval` steps a unit freezes when
  `|s_i - r_i| / r_i < threshold`, `r_i` the value of `s_i` at the previous
  check (after `window` steps and one earlier check).

In every criterion frozen units stay a prefix: a unit freezes only if
every unit before it is frozen by then, or freezes at the same step; one
that has to wait is looked at again later. The decision is written into the
schedule's in-graph freeze steps (`ScheduleState.freeze_steps[i] = j + 1`),
from which the train step skips the unit's backward pass and the optimizer
its updates, as for a scheduled freeze; so a decision costs no retrace and
no host round trip.

The criterion's state lives in `AdaptiveState`, a layer of non-trainable
Keras variables that every `FreezeOutModel` owns (`model.adaptive_state`,
idle unless the callback runs a criterion): a `.keras` checkpoint saves it
with the weights, so a resumed run freezes at the same steps as an
uninterrupted one.

The step math (`criterion_step`, `rank_step`, `pace_step`) is pure
functions of tensors, separate from the variables that hold the state: an
`Observation` of the step and the criterion's state (`ThresholdState` or
`IntervalState`) in, a `CriterionStep` (the new state, the units to
freeze) out.
"""

import contextlib
from typing import NamedTuple, Optional, Union

import keras
import numpy as np
import tensorflow as tf

from freezeout_tf import schedule, validation
from freezeout_tf.core.schedule_state import HOST, NEVER

__all__ = [
    "AdaptiveFreeze",
    "AdaptiveState",
    "CRITERIA",
    "CriterionStep",
    "DEFAULT_CRITERION",
    "HostValues",
    "IntervalState",
    "NOT_YET",
    "Observation",
    "ThresholdState",
    "active_percentile",
    "criterion_step",
    "merge_freeze_steps",
    "pace_step",
    "rank_step",
    "settle_step",
    "settled_prefix",
    "share_change",
    "unit_norms",
]

# Freeze step / criterion value of a unit the criterion has not frozen (or
# not checked) yet; also what the callback logs for it.
NOT_YET = -1

CRITERIA = ("rank", "pace", "settle", "share", "threshold")
# Chosen by the pre-registered evaluation (benchmarks/adaptive/adaptive.md).
DEFAULT_CRITERION = "rank"

# Each criterion's settings and their defaults.
_DEFAULTS = {
    "rank": {"percentile": 50.0, "intervals": 10, "interval": None},
    "pace": {"t_0": 0.5, "percentile": 50.0, "intervals": 10,
             "interval": None},
    "settle": {"tolerance": 0.1, "patience": 2, "intervals": 20,
               "interval": None},
    "share": {"tolerance": 0.1, "patience": 2, "intervals": 20,
              "interval": None},
    "threshold": {"window": 20, "threshold": 0.05, "interval": 20},
}


@keras.saving.register_keras_serializable(package="freezeout_tf")
class AdaptiveFreeze:
    """Settings of an adaptive freezing criterion (see the module docstring).

    Pass it to the `FreezeOut` callback: `FreezeOut(t_0=None,
    adaptive=AdaptiveFreeze())` freezes by the criterion only (learning
    rates follow the optimizer); `FreezeOut(t_0=0.8, adaptive=...)` keeps the
    FreezeOut schedule and freezes each unit at the earlier of its t_i and
    the criterion's decision (its annealed learning rate is cut to zero
    there).

    Args:
        criterion: `"rank"`, `"pace"`, `"settle"`, `"share"` or
            `"threshold"`. By default `"rank"`,
            or `"threshold"` when `window` or `threshold` is given (the
            settings of the first version of this class).
        percentile: rank and pace: the percentile (0, 100] of the training
            units' changes below which a unit counts as settled (50).
        intervals: rank, pace, settle and share: evaluation intervals
            over the run (10; settle and share 20);
            an interval is `total_steps // intervals` steps, so the callback
            must know the run's length (or give `interval`).
        interval: steps between checks. Rank, pace, settle, share: overrides
            `intervals`. Threshold: 20 by default.
        tolerance: settle and share: a unit whose relative change between two
            intervals' mean gradient norms is below this counts as settled
            at that check (0.1).
        patience: settle and share: checks in a row a unit must be settled before it
            freezes (2).
        t_0: pace: the schedule's t_0 (0, 1] that places the initial
            targets (0.5).
        window: threshold: span, in steps, of the moving average (20).
        threshold: threshold: a unit triggers when the relative change of
            its average between two checks is below this (0.05).

    Example:

    >>> AdaptiveFreeze()
    AdaptiveFreeze(criterion='rank', percentile=50.0, intervals=10)
    >>> AdaptiveFreeze(window=20, threshold=0.05, interval=20)
    AdaptiveFreeze(criterion='threshold', window=20, threshold=0.05, interval=20)
    >>> AdaptiveFreeze("pace", t_0=0.3, interval=40)
    AdaptiveFreeze(criterion='pace', t_0=0.3, percentile=50.0, intervals=10, interval=40)
    >>> AdaptiveFreeze(window=0)
    Traceback (most recent call last):
    ...
    ValueError: AdaptiveFreeze(window=0): must be an integer >= 1.
    >>> AdaptiveFreeze("rank", window=5)
    Traceback (most recent call last):
    ...
    ValueError: AdaptiveFreeze(window=5): not a setting of criterion 'rank'; its settings are percentile, intervals, interval.
    """

    def __init__(self, criterion=None, *, percentile=None, intervals=None,
                 interval=None, t_0=None, window=None, threshold=None,
                 tolerance=None, patience=None):
        given = {k: v for k, v in dict(
            percentile=percentile, intervals=intervals, interval=interval,
            t_0=t_0, window=window, threshold=threshold,
            tolerance=tolerance, patience=patience).items()
            if v is not None}
        if criterion is None:
            criterion = ("threshold" if "window" in given
                         or "threshold" in given else DEFAULT_CRITERION)
        validation.check_choice("criterion", criterion, CRITERIA,
                                call="AdaptiveFreeze")
        defaults = _DEFAULTS[criterion]
        for name, value in given.items():
            if name not in defaults:
                raise ValueError(
                    f"AdaptiveFreeze({name}={value!r}): not a setting of "
                    f"criterion {criterion!r}; its settings are "
                    f"{', '.join(defaults)}.")
        settings = {**defaults, **given}
        for name, value in settings.items():
            if value is None:
                continue
            check = dict(name=name, value=value, call="AdaptiveFreeze")
            if name in ("window", "interval", "patience"):
                validation.check_int(low=1, **check)
            elif name == "intervals":
                validation.check_int(low=2, **check)
            elif name in ("threshold", "tolerance"):
                validation.check_number(low=0, low_open=True, **check)
            elif name == "percentile":
                validation.check_number(low=0, high=100, low_open=True,
                                        **check)
            elif name == "t_0":
                validation.check_number(low=0, high=1, low_open=True,
                                        **check)
        self.criterion = criterion
        self._settings = {
            k: (None if v is None else int(v) if k in (
                "window", "interval", "intervals", "patience") else float(v))
            for k, v in settings.items()}

    def __getattr__(self, name):
        settings = self.__dict__.get("_settings", {})
        if name in settings:
            return settings[name]
        raise AttributeError(
            f"AdaptiveFreeze({self.__dict__.get('criterion')!r}) has no "
            f"setting {name!r}")

    def get_config(self):
        config = {"criterion": self.criterion}
        config.update({k: v for k, v in self._settings.items()
                       if v is not None})
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"AdaptiveFreeze({args})"

    def __eq__(self, other):
        return (isinstance(other, AdaptiveFreeze)
                and self.get_config() == other.get_config())

    def check_interval(self, total_steps):
        """Steps between checks in a run of `total_steps` steps (None:
        unknown); raises if it cannot be known."""
        if self.interval is not None:
            return self.interval
        if total_steps is None:
            raise ValueError(
                f"{self!r} places {self.intervals} intervals over the run, "
                "but the run's length cannot be known here (an endless or "
                "unsized dataset). Pass steps_per_epoch= to fit, "
                "total_steps= to FreezeOut, or interval= (steps) to "
                "AdaptiveFreeze.")
        return max(1, int(total_steps) // self.intervals)

    def initial_targets(self, num_units, total_steps, frozen_from_start=0):
        """Pace: each unit's first target freeze step (int64 `[n]`), the
        cubic FreezeOut schedule with this `t_0` over `total_steps`; other
        criteria: `NEVER`.

        Example:

        >>> AdaptiveFreeze("pace", t_0=0.5).initial_targets(3, 100)
        array([13, 30, 58])
        """
        if self.criterion != "pace":
            return np.full(num_units, NEVER, np.int64)
        fractions = schedule.freeze_fractions(num_units, self.t_0, "cubic",
                                              frozen_from_start)
        return schedule.freeze_steps(total_steps, fractions,
                                     frozen_from_start)[:num_units]


class Observation(NamedTuple):
    """What a criterion sees at a step: the step and each unit's signal.

    A tuple of tensors, so a `tf.function` takes it as one argument.

    Attributes:
        step: the 0-based step just taken (int64 scalar).
        norms: float32 `[n]`, each unit's gradient norm at `step`.
        active: bool `[n]`, units that trained at `step`.
        scheduled: int64 `[n]`, each unit's freeze step so far.
    """

    step: tf.Tensor
    norms: tf.Tensor
    active: tf.Tensor
    scheduled: tf.Tensor


class ThresholdState(NamedTuple):
    """The threshold criterion's state (`criterion_step`), as tensors.

    Attributes:
        ema: float32 `[n]`, the moving average of each unit's norm.
        reference: float32 `[n]`, the moving average at the last check.
        change: float32 `[n]`, each unit's last relative change (`NOT_YET`
            before its first).
        seen: int64 scalar, steps averaged.
        checks: int64 scalar, checks done.
    """

    ema: tf.Tensor
    reference: tf.Tensor
    change: tf.Tensor
    seen: tf.Tensor
    checks: tf.Tensor


class IntervalState(NamedTuple):
    """The rank and pace criteria's state (`rank_step`, `pace_step`).

    Attributes:
        interval_sum: float32 `[n]`, norms summed over the current interval.
        interval_steps: int64 scalar, steps in it so far.
        reference: float32 `[n]`, each unit's mean over the last interval.
        change: float32 `[n]`, each unit's last relative change (`NOT_YET`
            before its first).
        checks: int64 scalar, intervals ended so far.
        target: pace: int64 `[n]`, each unit's target freeze step; rank
            and settle: None.
        streak: settle: int64 `[n]`, each unit's count of interval ends in
            a row at which it was settled; rank and pace: None.
    """

    interval_sum: tf.Tensor
    interval_steps: tf.Tensor
    reference: tf.Tensor
    change: tf.Tensor
    checks: tf.Tensor
    target: Optional[tf.Tensor] = None
    streak: Optional[tf.Tensor] = None


class CriterionStep(NamedTuple):
    """A criterion's step: its new state and the units it freezes.

    Attributes:
        state: the new state, of the type the step was given.
        freeze: bool `[n]`, units that freeze from `step + 1` by the
            criterion.
    """

    state: Union[ThresholdState, IntervalState]
    freeze: tf.Tensor


def criterion_step(observed, state, config):
    """One step of the threshold criterion, as a pure function of tensors.

    Args:
        observed: an `Observation`.
        state: the `ThresholdState` before the step.
        config: an `AdaptiveFreeze`.

    Returns:
        A `CriterionStep` with the new `ThresholdState`.

    Example:

    >>> import tensorflow as tf
    >>> out = criterion_step(
    ...     Observation(tf.constant(3, tf.int64), tf.constant([1.0, 1.0]),
    ...                 tf.constant([True, True]),
    ...                 tf.constant([10, 10], tf.int64)),
    ...     ThresholdState(ema=tf.constant([1.01, 1.5]),
    ...                    reference=tf.constant([1.0, 1.0]),
    ...                    change=tf.constant([-1.0, -1.0]),
    ...                    seen=tf.constant(3, tf.int64),
    ...                    checks=tf.constant(1, tf.int64)),
    ...     AdaptiveFreeze(window=2, threshold=0.1, interval=2))
    >>> out.state.change.numpy().round(3), out.freeze.numpy()
    (array([0.005, 0.25 ], dtype=float32), array([ True, False]))
    """
    step = tf.cast(observed.step, tf.int64)
    norms, active = observed.norms, observed.active
    ema, reference = state.ema, state.reference
    first = tf.equal(state.seen, 0)
    smoothed = ema + (norms - ema) / float(config.window)
    # Frozen units keep their last average (their gradient is a zero stand-in).
    new_ema = tf.where(active, tf.where(first, norms, smoothed), ema)
    new_seen = state.seen + 1
    is_check = tf.equal((step + 1) % config.interval, 0)
    has_reference = state.checks > 0
    checked = is_check & has_reference & active
    ratio = tf.abs(new_ema - reference) / tf.maximum(reference, 1e-30)
    trigger = (checked & (new_seen >= config.window)
               & (ratio < config.threshold))
    return CriterionStep(
        ThresholdState(
            ema=new_ema,
            reference=tf.where(is_check, new_ema, reference),
            # Frozen units keep their last value, for the logs.
            change=tf.where(checked, ratio, state.change),
            seen=new_seen,
            checks=state.checks + tf.cast(is_check, tf.int64),
        ),
        _prefix(observed.scheduled, step, trigger))


def active_percentile(values, mask, q):
    """The `q`-th percentile (linear interpolation, as `np.percentile`) of
    `values[mask]`; 0 where `mask` is all false.

    Example:

    >>> import tensorflow as tf
    >>> float(active_percentile(tf.constant([4.0, 1.0, 9.0, 2.0]),
    ...                         tf.constant([True, True, False, True]), 50))
    2.0
    """
    k = tf.reduce_sum(tf.cast(mask, tf.int32))
    top = tf.maximum(k - 1, 0)
    ordered = tf.sort(tf.where(mask, values, np.inf))
    pos = float(q) / 100.0 * tf.cast(top, tf.float32)
    low = tf.cast(tf.floor(pos), tf.int32)
    high = tf.minimum(low + 1, top)
    v_low, v_high = tf.gather(ordered, low), tf.gather(ordered, high)
    value = v_low + (pos - tf.floor(pos)) * (v_high - v_low)
    return tf.where(k > 0, value, 0.0)


def _interval_signal(step, observed, state, interval):
    """The rank and pace signal: each unit's mean gradient norm over an
    interval and its relative change from the previous interval's.
    Returns `(checked, ratio, updated)`: `updated` holds the new values
    of the state's fields but the target."""
    norms, active = observed.norms, observed.active
    is_check = tf.equal((step + 1) % interval, 0)
    total = tf.where(active, state.interval_sum + norms, state.interval_sum)
    count = state.interval_steps + 1
    mean = total / tf.cast(count, tf.float32)
    checked = is_check & (state.checks > 0) & active
    ratio = (tf.abs(mean - state.reference)
             / tf.maximum(state.reference, 1e-30))
    return checked, ratio, dict(
        interval_sum=tf.where(is_check, tf.zeros_like(total), total),
        interval_steps=tf.where(is_check, tf.zeros_like(count), count),
        reference=tf.where(is_check & active, mean, state.reference),
        change=tf.where(checked, ratio, state.change),
        checks=state.checks + tf.cast(is_check, tf.int64),
    )


def _prefix(scheduled, step, wants):
    """Units that freeze from `step + 1`: those that want to and whose
    predecessors are all frozen by then (frozen units stay a prefix)."""
    frozen_next = scheduled <= step + 1
    allowed = tf.math.cumprod(
        tf.cast(frozen_next | wants, tf.int32), exclusive=False) > 0
    return allowed & ~frozen_next


def rank_step(observed, state, interval, percentile):
    """One step of the rank criterion (AutoFreeze), as a pure function.

    Args:
        observed: an `Observation`.
        state: the `IntervalState` before the step (its `target` unused).
        interval: steps per interval (int or int64 scalar).
        percentile: a unit below this percentile of the training units'
            changes counts as settled.

    Returns:
        A `CriterionStep` with the new `IntervalState`.

    Example: at the end of the second interval, unit 0 changed least, and
    unit 2 (below the median too) must wait for unit 1:

    >>> import tensorflow as tf
    >>> out = rank_step(
    ...     Observation(tf.constant(3, tf.int64), tf.fill([4], 1.0),
    ...                 tf.fill([4], True), tf.fill([4], tf.int64.max)),
    ...     IntervalState(interval_sum=tf.constant([1.0, 2.0, 1.0, 3.0]),
    ...                   interval_steps=tf.constant(1, tf.int64),
    ...                   reference=tf.fill([4], 1.0),
    ...                   change=tf.fill([4], -1.0),
    ...                   checks=tf.constant(1, tf.int64)),
    ...     interval=2, percentile=50)
    >>> out.state.change.numpy(), out.freeze.numpy()
    (array([0. , 0.5, 0. , 1. ], dtype=float32), array([ True, False, False, False]))
    """
    step = tf.cast(observed.step, tf.int64)
    interval = tf.cast(interval, tf.int64)
    checked, ratio, updated = _interval_signal(step, observed, state,
                                               interval)
    threshold = active_percentile(ratio, checked, percentile)
    return CriterionStep(
        IntervalState(**updated, target=state.target, streak=state.streak),
        _prefix(observed.scheduled, step, checked & (ratio < threshold)))


def pace_step(observed, state, interval, percentile):
    """One step of the pace criterion, as a pure function.

    Args:
        observed: an `Observation`.
        state: the `IntervalState` before the step, with each unit's
            `target` freeze step.
        interval: steps per interval (int or int64 scalar).
        percentile: as in `rank_step`.

    Returns:
        A `CriterionStep` with the new `IntervalState`: at the end of an
        interval a training unit's target moves `interval` steps earlier if
        its change is below the percentile, later if not; a unit freezes
        (in prefix order) once its target is reached.

    Example:

    >>> import tensorflow as tf
    >>> out = pace_step(
    ...     Observation(tf.constant(3, tf.int64), tf.fill([3], 1.0),
    ...                 tf.fill([3], True), tf.fill([3], tf.int64.max)),
    ...     IntervalState(interval_sum=tf.constant([1.0, 2.0, 3.0]),
    ...                   interval_steps=tf.constant(1, tf.int64),
    ...                   reference=tf.fill([3], 1.0),
    ...                   change=tf.fill([3], -1.0),
    ...                   checks=tf.constant(1, tf.int64),
    ...                   target=tf.constant([5, 8, 9], tf.int64)),
    ...     interval=2, percentile=50)
    >>> out.state.target.numpy(), out.freeze.numpy()
    (array([ 3, 10, 11]), array([ True, False, False]))
    """
    step = tf.cast(observed.step, tf.int64)
    interval = tf.cast(interval, tf.int64)
    checked, ratio, updated = _interval_signal(step, observed, state,
                                               interval)
    threshold = active_percentile(ratio, checked, percentile)
    move = tf.where(ratio < threshold, -interval, interval)
    target = state.target
    placed = target < NEVER // 2
    target = tf.where(checked & placed, target + move, target)
    return CriterionStep(IntervalState(**updated, target=target),
                         _prefix(observed.scheduled, step,
                                 target <= step + 1))


def settled_prefix(change, checked, streak, frozen, tolerance, patience):
    """The settle criterion's decision at an interval's end, in NumPy.

    Args:
        change: float `[n]`, each unit's relative change
            `|m_i - r_i| / r_i` of its mean gradient norm from the previous
            interval's.
        checked: bool `[n]`, units checked now (training, with a previous
            interval to compare with); the others keep their streak.
        streak: int `[n]`, interval ends in a row each unit was settled at,
            before this one.
        frozen: bool `[n]`, units frozen already (a prefix).
        tolerance: a change below this counts as settled.
        patience: a unit freezes once settled at this many ends in a row.

    Returns:
        `(streak, freeze)`: the new streaks and the units that freeze now
        (each wants to and every unit before it is frozen or freezes now).

    Example: unit 0 settled a second time and freezes; unit 1 has settled
    twice too, so it freezes with it; unit 2 moved (its streak restarts)
    and unit 3, settled, must wait for it:

    >>> s, f = settled_prefix(np.array([0.05, 0.02, 0.3, 0.01]),
    ...                       np.array([True] * 4), np.array([1, 1, 1, 1]),
    ...                       np.array([False] * 4), 0.1, 2)
    >>> s.tolist(), f.tolist()
    ([2, 2, 0, 2], [True, True, False, False])
    """
    change, checked = np.asarray(change), np.asarray(checked, bool)
    frozen = np.asarray(frozen, bool)
    streak = np.where(checked, np.where(change < tolerance,
                                        np.asarray(streak) + 1, 0), streak)
    wants = checked & (streak >= patience)
    allowed = np.cumprod(frozen | wants) > 0
    return streak, allowed & ~frozen


def share_change(mean, reference, mask):
    """Each unit's relative change of its share of the `mask` units' sum,
    from `reference` (the previous interval's means) to `mean`, in NumPy;
    0 outside `mask`.

    Args:
        mean: float `[n]`, each unit's mean gradient norm this interval.
        reference: float `[n]`, the previous interval's means.
        mask: bool `[n]`, the units compared (training, checked); the
            shares are of their sums only.

    Returns:
        float `[n]`: `|s_i - p_i| / p_i`, with `s`, `p` the shares of
        `mean` and `reference` over `mask`.

    Example: every mean halved (the shares did not move), then unit 1
    doubled its share of two:

    >>> share_change(np.array([1.0, 2.0]), np.array([2.0, 4.0]),
    ...              np.array([True, True])).tolist()
    [0.0, 0.0]
    >>> share_change(np.array([1.0, 3.0, 9.0]), np.array([1.0, 1.0, 5.0]),
    ...              np.array([True, True, False])).round(3).tolist()
    [0.5, 0.5, 0.0]
    """
    mask = np.asarray(mask, bool)
    now = np.where(mask, mean, 0.0)
    before = np.where(mask, reference, 0.0)
    now = now / max(now.sum(), 1e-30)
    before = before / max(before.sum(), 1e-30)
    return np.where(mask, np.abs(now - before) / np.maximum(before, 1e-30),
                    0.0)


def _share_change(mean, reference, mask):
    """`share_change` in TensorFlow (the in-graph step)."""
    now = tf.where(mask, mean, 0.0)
    before = tf.where(mask, reference, 0.0)
    now = now / tf.maximum(tf.reduce_sum(now), 1e-30)
    before = before / tf.maximum(tf.reduce_sum(before), 1e-30)
    return tf.where(mask, tf.abs(now - before) / tf.maximum(before, 1e-30),
                    0.0)


def settle_step(observed, state, interval, tolerance, patience,
                share=False):
    """One step of the settle criterion, as a pure function of tensors:
    `settled_prefix` at each interval's end, on rank's signal.

    Args:
        observed: an `Observation`.
        state: the `IntervalState` before the step, with each unit's
            `streak`.
        interval: steps per interval (int or int64 scalar).
        tolerance: as in `settled_prefix`.
        patience: as in `settled_prefix`.
        share: the share criterion: the change of each unit's share of
            the checked units' summed means (`share_change`).

    Returns:
        A `CriterionStep` with the new `IntervalState` (its `change`: the
        changes tested).

    Example: the second interval ends; units 0 and 1 changed less than
    10 % (unit 0 for the second time in a row), unit 2 did not:

    >>> import tensorflow as tf
    >>> out = settle_step(
    ...     Observation(tf.constant(3, tf.int64), tf.fill([3], 1.0),
    ...                 tf.fill([3], True), tf.fill([3], tf.int64.max)),
    ...     IntervalState(interval_sum=tf.constant([1.1, 0.9, 3.0]),
    ...                   interval_steps=tf.constant(1, tf.int64),
    ...                   reference=tf.fill([3], 1.0),
    ...                   change=tf.fill([3], -1.0),
    ...                   checks=tf.constant(2, tf.int64),
    ...                   streak=tf.constant([1, 0, 0], tf.int64)),
    ...     interval=2, tolerance=0.1, patience=2)
    >>> out.state.streak.numpy(), out.freeze.numpy()
    (array([2, 1, 0]), array([ True, False, False]))
    """
    step = tf.cast(observed.step, tf.int64)
    interval = tf.cast(interval, tf.int64)
    checked, ratio, updated = _interval_signal(step, observed, state,
                                               interval)
    if share:
        # `updated["reference"]` holds this interval's means on a check.
        ratio = _share_change(updated["reference"], state.reference,
                              checked)
        updated["change"] = tf.where(checked, ratio, state.change)
    streak = tf.where(checked, tf.where(ratio < tolerance,
                                        state.streak + 1,
                                        tf.zeros_like(state.streak)),
                      state.streak)
    return CriterionStep(
        IntervalState(**updated, target=state.target, streak=streak),
        _prefix(observed.scheduled, step, checked & (streak >= patience)))


def unit_norms(unit_grads, frozen):
    """Float32 `[n]`: each unit's gradient norm, summed over replicas.

    Args:
        unit_grads: per unit (the head last, ignored), its gradient list.
        frozen: per unit, a bool tensor; a frozen unit's norm is 0 (its
            gradients are zero stand-ins).

    One `l2_loss` per gradient tensor, one segment sum and a few ops over
    the `[n]` vector (no branch per unit: a frozen unit's zeros are summed
    like the rest and masked). Under a `tf.distribute` strategy (called in replica context)
    the norms are all-reduced in one collective of n floats, so every
    replica reads the same values.
    """
    # l2_loss: sum(g ** 2) / 2, one op per tensor; one sum per unit.
    halves, units = [], []
    for i, grads in enumerate(unit_grads):
        halves += [tf.nn.l2_loss(tf.cast(g, tf.float32)) for g in grads]
        units += [i] * len(grads)
    norms = tf.sqrt(2.0 * tf.math.unsorted_segment_sum(
        tf.stack(halves), units, len(unit_grads)) if halves
        else tf.zeros([len(unit_grads)]))
    norms = tf.where(tf.stack(frozen), 0.0, norms)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        norms = context.all_reduce(tf.distribute.ReduceOp.SUM, norms)
    return norms


def merge_freeze_steps(scheduled, decided):
    """The earlier of each unit's scheduled and decided freeze step.

    Example:

    >>> merge_freeze_steps(np.array([5, 9, 12]), np.array([3, -1, 14]))
    array([ 3,  9, 12])
    """
    scheduled = np.asarray(scheduled)
    decided = np.asarray(decided)
    return np.where(decided >= 0, np.minimum(scheduled, decided), scheduled)


def _fields(state, names):
    """`{name: state.name}` for `names`, in that order."""
    return {name: getattr(state, name) for name in names}


class HostValues(NamedTuple):
    """`AdaptiveState.host_values()`: the criterion's decisions so far.

    Attributes:
        decided: int64 `[n]`, the step each unit was frozen from by the
            criterion, `NOT_YET` if not.
        change: float32 `[n]`, each unit's last relative change, `NOT_YET`
            before its first.
    """

    decided: np.ndarray
    change: np.ndarray


@keras.saving.register_keras_serializable(package="freezeout_tf")
class AdaptiveState(keras.layers.Layer):
    """The criterion's state: non-trainable variables the model owns.

    Variables: `ema`, `reference`, `change`, `interval_sum` (float32 `[n]`),
    `decided` (int64 `[n]`, the step the criterion froze each unit from,
    `NOT_YET` if not), `target` (int64 `[n]`, pace's target freeze steps),
    `seen`, `checks`, `interval_steps` and `interval` (int64 scalars: steps
    observed, checks done, steps into the current interval, steps per
    interval of this run; settle keeps its per-unit streaks in `target`). Each is written in the train step with
    `only_first_replica` aggregation: every replica computes the same value
    from all-reduced norms, and one copy is kept in sync.

    Args:
        num_units: freeze units of the model (the head not counted).
    """

    def __init__(self, num_units, **kwargs):
        kwargs.setdefault("name", "adaptive_state")
        super().__init__(trainable=False, **kwargs)
        self.num_units = int(num_units)

        def weight(name, shape, dtype, value):
            # The integer state (counts, intervals, targets, decisions)
            # makes the predicate of the criterion's tf.cond and the freeze
            # steps: on the host, as the schedule's (schedule_state.HOST).
            place = (tf.device(HOST) if dtype == "int64"
                     else contextlib.nullcontext())
            with place:
                return self.add_weight(
                    shape=shape, dtype=dtype, name=name, trainable=False,
                    initializer=keras.initializers.Constant(value),
                    aggregation="only_first_replica",
                )

        n = (self.num_units,)
        self.ema = weight("ema", n, "float32", 0.0)
        self.reference = weight("reference", n, "float32", 0.0)
        self.change = weight("change", n, "float32", NOT_YET)
        self.decided = weight("decided", n, "int64", NOT_YET)
        self.seen = weight("seen", (), "int64", 0)
        self.checks = weight("checks", (), "int64", 0)
        self.interval_sum = weight("interval_sum", n, "float32", 0.0)
        self.interval_steps = weight("interval_steps", (), "int64", 0)
        self.target = weight("target", n, "int64", NEVER)
        self.interval = weight("interval", (), "int64", 1)
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        config.update(num_units=self.num_units)
        return config

    def start(self, config, total_steps, frozen_from_start=0):
        """Readies the state for a fit with criterion `config` over a run of
        `total_steps` steps (None: unknown): the steps per interval, and,
        on a fresh run (nothing observed yet), pace's targets. A resumed
        run keeps its state."""
        if config.criterion == "threshold":
            self.interval.assign(config.interval)
            return
        self.interval.assign(config.check_interval(total_steps))
        if int(keras.ops.convert_to_numpy(self.seen)) == 0:
            if config.criterion in ("settle", "share"):  # streaks
                self.target.assign(np.zeros(self.num_units, np.int64))
                return
            if config.criterion == "pace" and total_steps is None:
                config.check_interval(None)  # the same clear error
            self.target.assign(config.initial_targets(
                self.num_units, total_steps or 1, frozen_from_start))

    def _threshold_observe(self, config, observed, steps):
        """The threshold criterion's step on the current state, written."""
        out = criterion_step(observed, ThresholdState(
            ema=self.ema.value, reference=self.reference.value,
            change=self.change.value, seen=self.seen.value,
            checks=self.checks.value), config)
        # `seen` is counted by the observer, for every criterion.
        self._write(_fields(out.state, ["reference", "change", "checks",
                                        "ema"]),
                    out.freeze, observed.step, steps)

    def _write(self, updates, freeze, step, steps):
        """Writes a step's outputs: the state variables named in `updates`
        (name -> value) and the decisions `freeze`, into `decided` and the
        schedule's freeze steps (`steps`)."""
        n = self.num_units
        for name, value in updates.items():
            getattr(self, name).assign(value)
        self.decided.assign(tf.where(freeze, step + 1, self.decided.value))
        # Only freeze steps change; the head's entry stays as it is.
        new_steps = tf.where(freeze, step + 1, steps[:n])
        steps.assign(tf.concat([new_steps, steps[n:]], 0))

    def _interval_observe(self, config, step, norms, active, steps):
        """Rank and pace. Only at an interval's end (or, for pace, once a
        training unit's target is reached) can the step decide anything;
        at the other steps the full step would only add the norms to the
        interval's running sum and count, and a cheap branch does just that,
        for a fraction of the ops and writes (benchmarks/adaptive/adaptive.md,
        cost)."""
        pace = config.criterion == "pace"
        settle = config.criterion in ("settle", "share")
        names = ["reference", "change", "checks", "interval_sum",
                 "interval_steps"] + (["target"] if pace or settle else [])
        # Read here what every step needs; the rest only in the branches.
        current = {name: getattr(self, name).value
                   for name in ("interval_sum", "interval_steps", "interval")}
        with tf.device(HOST):  # the cond's predicate (schedule_state)
            scheduled = steps[:self.num_units]
            decides = tf.equal((step + 1) % current["interval"], 0)
            if pace:
                decides |= tf.reduce_any(
                    (self.target.value <= step + 1) & (scheduled > step + 1))
        observed = Observation(step, norms, active, scheduled)

        def full():
            state = IntervalState(
                interval_sum=current["interval_sum"],
                interval_steps=current["interval_steps"],
                reference=self.reference.value, change=self.change.value,
                checks=self.checks.value,
                target=self.target.value if pace else None,
                streak=self.target.value if settle else None)
            if settle:
                out = settle_step(observed, state, current["interval"],
                                  config.tolerance, config.patience,
                                  share=config.criterion == "share")
                # settle keeps its streaks in the `target` variable.
                out = out._replace(state=out.state._replace(
                    target=out.state.streak))
            else:
                out = (pace_step if pace else rank_step)(
                    observed, state, current["interval"], config.percentile)
            return _fields(out.state, names), out.freeze

        def accumulate():
            return {"interval_sum": tf.where(
                        active, current["interval_sum"] + norms,
                        current["interval_sum"]),
                    "interval_steps": current["interval_steps"] + 1}

        if tf.distribute.has_strategy():
            # A replica's variable write synchronises the replicas, which
            # a tf.cond branch cannot hold: the branches compute, the
            # writes follow.
            def unchanged():
                updates = {k: tf.identity(getattr(self, k).value)
                           for k in names}
                updates.update(accumulate())
                return updates, tf.zeros_like(active)

            updates, freeze = tf.cond(decides, full, unchanged)
            self._write(updates, freeze, step, steps)
            return

        def decide():
            self._write(*full(), step, steps)
            return tf.constant(True)

        def add():
            for name, value in accumulate().items():
                getattr(self, name).assign(value)
            return tf.constant(False)

        tf.cond(decides, decide, add)

    def observer(self, config, schedule_state):
        """A `FreezeOutModel.gradient_observers` entry that runs the
        criterion `config` and writes its decisions into
        `schedule_state.freeze_steps`."""

        def observe(step, unit_grads, frozen):
            with tf.device(HOST):
                step = tf.cast(step, tf.int64)
            n = self.num_units
            steps = schedule_state.freeze_steps
            norms = unit_norms(unit_grads[:n], frozen)
            active = tf.logical_not(tf.stack(frozen))
            if config.criterion == "threshold":
                self._threshold_observe(
                    config, Observation(step, norms, active, steps[:n]),
                    steps)
            else:
                self._interval_observe(config, step, norms, active, steps)
            self.seen.assign(self.seen.value + 1)

        return observe

    def host_values(self):
        """The criterion's decisions so far, for callbacks and logs.

        Returns:
            A `HostValues` of NumPy arrays.
        """
        return HostValues(decided=keras.ops.convert_to_numpy(self.decided),
                          change=keras.ops.convert_to_numpy(self.change))
