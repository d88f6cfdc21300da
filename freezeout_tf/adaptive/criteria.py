"""Adaptive freezing: units freeze by a criterion on their gradients,
decided inside the traced train step.

Three criteria (docs/algorithm.md §9), all from the same signal: g_i, the
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
functions of tensors, separate from the variables that hold the state.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from freezeout_tf import schedule
from freezeout_tf.core.schedule_state import HOST, NEVER

__all__ = [
    "AdaptiveFreeze",
    "AdaptiveState",
    "CRITERIA",
    "DEFAULT_CRITERION",
    "NOT_YET",
    "active_percentile",
    "criterion_step",
    "merge_freeze_steps",
    "pace_step",
    "rank_step",
    "unit_norms",
]

# Freeze step / criterion value of a unit the criterion has not frozen (or
# not checked) yet; also what the callback logs for it.
NOT_YET = -1

CRITERIA = ("rank", "pace", "threshold")
# Chosen by the pre-registered evaluation (benchmarks/adaptive.md).
DEFAULT_CRITERION = "rank"

# Each criterion's settings and their defaults.
_DEFAULTS = {
    "rank": {"percentile": 50.0, "intervals": 10, "interval": None},
    "pace": {"t_0": 0.5, "percentile": 50.0, "intervals": 10,
             "interval": None},
    "threshold": {"window": 20, "threshold": 0.05, "interval": 20},
}


def _check(name, value, kind, low, low_open, high=None):
    ok_type = (isinstance(value, (int, np.integer)) if kind == "int"
               else isinstance(value, (int, float, np.integer, np.floating)))
    ok = (not isinstance(value, bool) and ok_type and np.isfinite(value)
          and (value > low if low_open else value >= low)
          and (high is None or value <= high))
    if not ok:
        if kind == "int":
            allowed = f"an integer >= {low}"
        elif high is None:
            allowed = f"a finite number > {low}"
        else:
            allowed = f"a number in {'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"AdaptiveFreeze({name}={value!r}): must be {allowed}.")


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
        criterion: `"rank"`, `"pace"` or `"threshold"`. By default `"rank"`,
            or `"threshold"` when `window` or `threshold` is given (the
            settings of the first version of this class).
        percentile: rank and pace: the percentile (0, 100] of the training
            units' changes below which a unit counts as settled (50).
        intervals: rank and pace: evaluation intervals over the run (10);
            an interval is `total_steps // intervals` steps, so the callback
            must know the run's length (or give `interval`).
        interval: steps between checks. Rank and pace: overrides
            `intervals`. Threshold: 20 by default.
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
                 interval=None, t_0=None, window=None, threshold=None):
        given = {k: v for k, v in dict(
            percentile=percentile, intervals=intervals, interval=interval,
            t_0=t_0, window=window, threshold=threshold).items()
            if v is not None}
        if criterion is None:
            criterion = ("threshold" if "window" in given
                         or "threshold" in given else DEFAULT_CRITERION)
        if criterion not in CRITERIA:
            raise ValueError(
                f"AdaptiveFreeze(criterion={criterion!r}): must be one of "
                f"{', '.join(map(repr, CRITERIA))}.")
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
            if name in ("window", "interval"):
                _check(name, value, "int", 1, False)
            elif name == "intervals":
                _check(name, value, "int", 2, False)
            elif name == "threshold":
                _check(name, value, "float", 0, True)
            elif name == "percentile":
                _check(name, value, "float", 0, True, 100)
            elif name == "t_0":
                _check(name, value, "float", 0, True, 1)
        self.criterion = criterion
        self._settings = {
            k: (None if v is None else int(v) if k in (
                "window", "interval", "intervals") else float(v))
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


def criterion_step(step, norms, active, scheduled, ema, reference, change,
                   seen, checks, config):
    """One step of the threshold criterion, as a pure function of tensors.

    Args:
        step: the 0-based step just taken (int64 scalar).
        norms: float32 `[n]`, each unit's gradient norm at `step`.
        active: bool `[n]`, units that trained at `step`.
        scheduled: int64 `[n]`, each unit's freeze step so far.
        ema: float32 `[n]`, the moving average of each unit's norm.
        reference: float32 `[n]`, the moving average at the last check.
        change: float32 `[n]`, each unit's last relative change
            (`NOT_YET` before its first).
        seen: int64 scalar, steps averaged.
        checks: int64 scalar, checks done.
        config: an `AdaptiveFreeze`.

    Returns:
        A dict of the new `ema`, `reference`, `change`, `seen`, `checks`,
        and `freeze` (bool `[n]`: units that freeze from `step + 1` by the
        criterion).

    Example:

    >>> import tensorflow as tf
    >>> out = criterion_step(
    ...     tf.constant(3, tf.int64), tf.constant([1.0, 1.0]),
    ...     tf.constant([True, True]), tf.constant([10, 10], tf.int64),
    ...     tf.constant([1.01, 1.5]), tf.constant([1.0, 1.0]),
    ...     tf.constant([-1.0, -1.0]), tf.constant(3, tf.int64), tf.constant(1, tf.int64),
    ...     AdaptiveFreeze(window=2, threshold=0.1, interval=2))
    >>> out["change"].numpy().round(3), out["freeze"].numpy()
    (array([0.005, 0.25 ], dtype=float32), array([ True, False]))
    """
    step = tf.cast(step, tf.int64)
    first = tf.equal(seen, 0)
    smoothed = ema + (norms - ema) / float(config.window)
    # Frozen units keep their last average (their gradient is a zero stand-in).
    new_ema = tf.where(active, tf.where(first, norms, smoothed), ema)
    new_seen = seen + 1
    is_check = tf.equal((step + 1) % config.interval, 0)
    has_reference = checks > 0
    checked = is_check & has_reference & active
    ratio = tf.abs(new_ema - reference) / tf.maximum(reference, 1e-30)
    trigger = (checked & (new_seen >= config.window)
               & (ratio < config.threshold))
    # Prefix rule: unit i may freeze at step + 1 only if units 0..i-1 are
    # frozen by then (already, by the schedule, or by this same decision).
    frozen_next = scheduled <= step + 1
    allowed = tf.math.cumprod(
        tf.cast(frozen_next | trigger, tf.int32), exclusive=False) > 0
    freeze = allowed & ~frozen_next
    return {
        "ema": new_ema,
        "reference": tf.where(is_check, new_ema, reference),
        "seen": new_seen,
        "checks": checks + tf.cast(is_check, tf.int64),
        # Frozen units keep their last value, for the logs.
        "change": tf.where(checked, ratio, change),
        "freeze": freeze,
    }


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


def _interval_signal(step, norms, active, interval_sum, interval_steps,
                     reference, change, checks, interval):
    """The rank and pace signal: each unit's mean gradient norm over an
    interval and its relative change from the previous interval's."""
    is_check = tf.equal((step + 1) % interval, 0)
    total = tf.where(active, interval_sum + norms, interval_sum)
    count = interval_steps + 1
    mean = total / tf.cast(count, tf.float32)
    checked = is_check & (checks > 0) & active
    ratio = tf.abs(mean - reference) / tf.maximum(reference, 1e-30)
    return checked, ratio, {
        "interval_sum": tf.where(is_check, tf.zeros_like(total), total),
        "interval_steps": tf.where(is_check, tf.zeros_like(count), count),
        "reference": tf.where(is_check & active, mean, reference),
        "change": tf.where(checked, ratio, change),
        "checks": checks + tf.cast(is_check, tf.int64),
    }


def _prefix(scheduled, step, wants):
    """Units that freeze from `step + 1`: those that want to and whose
    predecessors are all frozen by then (frozen units stay a prefix)."""
    frozen_next = scheduled <= step + 1
    allowed = tf.math.cumprod(
        tf.cast(frozen_next | wants, tf.int32), exclusive=False) > 0
    return allowed & ~frozen_next


def rank_step(step, norms, active, scheduled, interval_sum, interval_steps,
              reference, change, checks, interval, percentile):
    """One step of the rank criterion (AutoFreeze), as a pure function.

    Args:
        step: the 0-based step just taken (int64 scalar).
        norms: float32 `[n]`, each unit's gradient norm at `step`.
        active: bool `[n]`, units that trained at `step`.
        scheduled: int64 `[n]`, each unit's freeze step so far.
        interval_sum: float32 `[n]`, norms summed over the current interval.
        interval_steps: int64 scalar, steps in it so far.
        reference: float32 `[n]`, each unit's mean over the last interval.
        change: float32 `[n]`, each unit's last relative change
            (`NOT_YET` before its first).
        checks: int64 scalar, intervals ended so far.
        interval: steps per interval (int or int64 scalar).
        percentile: a unit below this percentile of the training units'
            changes counts as settled.

    Returns:
        A dict of the new `interval_sum`, `interval_steps`, `reference`,
        `change`, `checks`, and `freeze` (bool `[n]`: units that freeze
        from `step + 1`).

    Example: at the end of the second interval, unit 0 changed least, and
    unit 2 (below the median too) must wait for unit 1:

    >>> import tensorflow as tf
    >>> out = rank_step(
    ...     tf.constant(3, tf.int64), tf.constant([1.0, 1.0, 1.0, 1.0]),
    ...     tf.fill([4], True), tf.fill([4], tf.int64.max),
    ...     tf.constant([1.0, 2.0, 1.0, 3.0]), tf.constant(1, tf.int64),
    ...     tf.constant([1.0, 1.0, 1.0, 1.0]), tf.fill([4], -1.0),
    ...     tf.constant(1, tf.int64), 2, 50)
    >>> out["change"].numpy(), out["freeze"].numpy()
    (array([0. , 0.5, 0. , 1. ], dtype=float32), array([ True, False, False, False]))
    """
    step = tf.cast(step, tf.int64)
    interval = tf.cast(interval, tf.int64)
    checked, ratio, out = _interval_signal(
        step, norms, active, interval_sum, interval_steps, reference, change,
        checks, interval)
    threshold = active_percentile(ratio, checked, percentile)
    out["freeze"] = _prefix(scheduled, step, checked & (ratio < threshold))
    return out


def pace_step(step, norms, active, scheduled, target, interval_sum,
              interval_steps, reference, change, checks, interval,
              percentile):
    """One step of the pace criterion, as a pure function.

    The arguments other than `target` are those of `rank_step`.

    Args:
        target: int64 `[n]`, each unit's target freeze step.

    Returns:
        As `rank_step`, plus the new `target`: at the end of an interval a
        training unit's target moves `interval` steps earlier if its change
        is below the percentile, later if not; a unit freezes (in prefix
        order) once its target is reached.

    Example:

    >>> import tensorflow as tf
    >>> out = pace_step(
    ...     tf.constant(3, tf.int64), tf.constant([1.0, 1.0, 1.0]),
    ...     tf.fill([3], True), tf.fill([3], tf.int64.max),
    ...     tf.constant([5, 8, 9], tf.int64),
    ...     tf.constant([1.0, 2.0, 3.0]), tf.constant(1, tf.int64),
    ...     tf.constant([1.0, 1.0, 1.0]), tf.fill([3], -1.0),
    ...     tf.constant(1, tf.int64), 2, 50)
    >>> out["target"].numpy(), out["freeze"].numpy()
    (array([ 3, 10, 11]), array([ True, False, False]))
    """
    step = tf.cast(step, tf.int64)
    interval = tf.cast(interval, tf.int64)
    checked, ratio, out = _interval_signal(
        step, norms, active, interval_sum, interval_steps, reference, change,
        checks, interval)
    threshold = active_percentile(ratio, checked, percentile)
    move = tf.where(ratio < threshold, -interval, interval)
    placed = target < NEVER // 2
    target = tf.where(checked & placed, target + move, target)
    out["target"] = target
    out["freeze"] = _prefix(scheduled, step, target <= step + 1)
    return out


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


@keras.saving.register_keras_serializable(package="freezeout_tf")
class AdaptiveState(keras.layers.Layer):
    """The criterion's state: non-trainable variables the model owns.

    Variables: `ema`, `reference`, `change`, `interval_sum` (float32 `[n]`),
    `decided` (int64 `[n]`, the step the criterion froze each unit from,
    `NOT_YET` if not), `target` (int64 `[n]`, pace's target freeze steps),
    `seen`, `checks`, `interval_steps` and `interval` (int64 scalars: steps
    observed, checks done, steps into the current interval, steps per
    interval of this run). Each is written in the train step with
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
            if config.criterion == "pace" and total_steps is None:
                config.check_interval(None)  # the same clear error
            self.target.assign(config.initial_targets(
                self.num_units, total_steps or 1, frozen_from_start))

    def _run(self, config, step, norms, active, scheduled):
        """The threshold criterion's step on the current state; returns its
        outputs and the names of the state variables they update."""
        out = criterion_step(
            step, norms, active, scheduled, self.ema.value,
            self.reference.value, self.change.value, self.seen.value,
            self.checks.value, config)
        out.pop("seen")
        return out, ["reference", "change", "checks", "ema"]

    def _write(self, out, names, step, steps):
        """Writes a step's outputs: the state variables `names` and the
        decisions, into `decided` and the schedule's freeze steps
        (`steps`)."""
        n = self.num_units
        for name in names:
            getattr(self, name).assign(out[name])
        self.decided.assign(
            tf.where(out["freeze"], step + 1, self.decided.value))
        # Only freeze steps change; the head's entry stays as it is.
        new_steps = tf.where(out["freeze"], step + 1, steps[:n])
        steps.assign(tf.concat([new_steps, steps[n:]], 0))

    def _interval_observe(self, config, step, norms, active, steps):
        """Rank and pace. Only at an interval's end (or, for pace, once a
        training unit's target is reached) can the step decide anything;
        at the other steps the full step would only add the norms to the
        interval's running sum and count, and a cheap branch does just that,
        for a fraction of the ops and writes (benchmarks/adaptive.md,
        cost)."""
        names = ["reference", "change", "checks", "interval_sum",
                 "interval_steps"]
        if config.criterion == "pace":
            names.append("target")
        # Read here what every step needs; the rest only in the branches.
        state = {name: getattr(self, name).value
                 for name in ("interval_sum", "interval_steps", "interval")}
        with tf.device(HOST):  # the cond's predicate (schedule_state)
            scheduled = steps[:self.num_units]
            decides = tf.equal((step + 1) % state["interval"], 0)
            if config.criterion == "pace":
                decides |= tf.reduce_any(
                    (self.target.value <= step + 1) & (scheduled > step + 1))

        def full():
            args = [state["interval_sum"], state["interval_steps"],
                    self.reference.value, self.change.value,
                    self.checks.value, state["interval"], config.percentile]
            if config.criterion == "rank":
                return rank_step(step, norms, active, scheduled, *args)
            return pace_step(step, norms, active, scheduled,
                             self.target.value, *args)

        def accumulate():
            return {"interval_sum": tf.where(
                        active, state["interval_sum"] + norms,
                        state["interval_sum"]),
                    "interval_steps": state["interval_steps"] + 1}

        if tf.distribute.has_strategy():
            # A replica's variable write synchronises the replicas, which
            # a tf.cond branch cannot hold: the branches compute, the
            # writes follow.
            def unchanged():
                out = {k: tf.identity(getattr(self, k).value) for k in names}
                out.update(accumulate(), freeze=tf.zeros_like(active))
                return out

            out = tf.cond(decides, lambda: {
                k: v for k, v in full().items() if k in (*names, "freeze")},
                unchanged)
            self._write(out, names, step, steps)
            return

        def decide():
            self._write(full(), names, step, steps)
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
                out, names = self._run(config, step, norms, active, steps[:n])
                self._write(out, names, step, steps)
            else:
                self._interval_observe(config, step, norms, active, steps)
            self.seen.assign(self.seen.value + 1)

        return observe

    def host_values(self):
        """`(decided, change)` as NumPy arrays, for callbacks and logs."""
        return (keras.ops.convert_to_numpy(self.decided),
                keras.ops.convert_to_numpy(self.change))
