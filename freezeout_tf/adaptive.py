"""Adaptive freezing: each unit freezes when its gradient norm has settled,
decided inside the traced train step.

The criterion (docs/algorithm.md §9), per freeze unit i and 0-based step j:

* `g_i` is the norm of unit i's gradient at step j, summed over replicas
  under `tf.distribute` (so every replica decides from the same numbers;
  the criterion below is a *relative* change, so the sum's scale does not
  matter).
* `s_i` smooths it: an exponential moving average with span `window` steps,
  `s_i <- s_i + (g_i - s_i) / window`, started at the first `g_i`.
* Every `interval` steps (when `(j + 1) % interval == 0`) the criterion is
  checked: `change_i = |s_i - r_i| / r_i`, with `r_i` the value of `s_i` at
  the previous check. Unit i *triggers* when `change_i < threshold`, the
  average has seen at least `window` steps and a previous check exists.
* Frozen units stay a prefix: a triggered unit freezes (from step j + 1)
  only if every unit before it is frozen by then, or freezes at the same
  step. A triggered unit that has to wait is checked again later.

The decision is written into the schedule's in-graph freeze steps
(`ScheduleState.freeze_steps[i] = j + 1`), from which the train step skips
the unit's backward pass and the optimizer its updates, as for a scheduled
freeze; so a decision costs no retrace and no host round trip.

The criterion's state lives in `AdaptiveState`, a layer of non-trainable
Keras variables that every `FreezeOutModel` owns (`model.adaptive_state`,
idle unless the callback runs the criterion): a `.keras` checkpoint saves
it with the weights, so a resumed run freezes at the
same steps as an uninterrupted one.

The step math (`criterion_step`) is a pure function of tensors, separate
from the variables that hold its state.
"""

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "AdaptiveFreeze",
    "AdaptiveState",
    "NOT_YET",
    "criterion_step",
    "merge_freeze_steps",
    "unit_norms",
]

# Freeze step / criterion value of a unit the criterion has not frozen (or
# not checked) yet; also what the callback logs for it.
NOT_YET = -1


def _check(name, value, kind, low, low_open):
    ok_type = (isinstance(value, (int, np.integer)) if kind == "int"
               else isinstance(value, (int, float, np.integer, np.floating)))
    if isinstance(value, bool) or not ok_type or not (
        value > low if low_open else value >= low
    ) or not np.isfinite(value):
        allowed = (f"an integer >= {low}" if kind == "int"
                   else f"a finite number > {low}")
        raise ValueError(f"AdaptiveFreeze({name}={value!r}): must be {allowed}.")


@keras.saving.register_keras_serializable(package="freezeout_tf")
class AdaptiveFreeze:
    """Settings of the adaptive freezing criterion (see the module docstring).

    Pass it to the `FreezeOut` callback: `FreezeOut(t_0=None,
    adaptive=AdaptiveFreeze(...))` freezes by the criterion only (learning
    rates follow the optimizer); `FreezeOut(t_0=0.8, adaptive=...)` keeps the
    FreezeOut schedule and freezes each unit at the earlier of its t_i and
    its trigger (its annealed learning rate is cut to zero there).

    Args:
        window: span, in steps, of the moving average of each unit's
            gradient norm; an integer >= 1.
        threshold: a unit triggers when the relative change of its average
            between two checks is below this; a number > 0.
        interval: steps between checks; an integer >= 1.

    Example:

    >>> AdaptiveFreeze(window=20, threshold=0.05, interval=20)
    AdaptiveFreeze(window=20, threshold=0.05, interval=20)
    >>> AdaptiveFreeze(window=0)
    Traceback (most recent call last):
    ...
    ValueError: AdaptiveFreeze(window=0): must be an integer >= 1.
    """

    def __init__(self, window=20, threshold=0.05, interval=20):
        _check("window", window, "int", 1, False)
        _check("threshold", threshold, "float", 0, True)
        _check("interval", interval, "int", 1, False)
        self.window = int(window)
        self.threshold = float(threshold)
        self.interval = int(interval)

    def get_config(self):
        return {"window": self.window, "threshold": self.threshold,
                "interval": self.interval}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"AdaptiveFreeze({args})"

    def __eq__(self, other):
        return (isinstance(other, AdaptiveFreeze)
                and self.get_config() == other.get_config())


def criterion_step(step, norms, active, scheduled, ema, reference, change,
                   seen, checks, config):
    """One step of the criterion, as a pure function of tensors.

    Args:
        step: the 0-based step just taken (int64 scalar).
        norms: float32 `[n]`, each unit's gradient norm at `step`.
        active: bool `[n]`, units that trained at `step`.
        scheduled: int64 `[n]`, each unit's freeze step so far.
        ema, reference: float32 `[n]`, the moving average and its value at
            the last check.
        change: float32 `[n]`, each unit's last relative change
            (`NOT_YET` before its first).
        seen, checks: int64 scalars, steps averaged and checks done.
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


def unit_norms(unit_grads, frozen):
    """Float32 `[n]`: each unit's gradient norm, summed over replicas.

    Args:
        unit_grads: per unit (the head last, ignored), its gradient list.
        frozen: per unit, a bool tensor; a frozen unit's norm is 0 and is
            not computed (its gradients are zero stand-ins).

    Under a `tf.distribute` strategy (called in replica context) the norms
    are all-reduced in one collective of n floats, so every replica reads
    the same values.
    """
    norms = []
    for grads, is_frozen in zip(unit_grads, frozen):
        def norm(grads=grads):
            squares = [tf.reduce_sum(tf.square(tf.cast(g, tf.float32)))
                       for g in grads]
            return tf.sqrt(tf.add_n(squares)) if squares else tf.constant(0.0)
        norms.append(tf.cond(is_frozen, lambda: tf.constant(0.0), norm))
    norms = tf.stack(norms)
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

    Variables: `ema`, `reference`, `change` (float32 `[n]`), `decided`
    (int64 `[n]`, the step the criterion froze each unit from, `NOT_YET`
    if not), `seen` and `checks` (int64 scalars). Each is written in the
    train step with `only_first_replica` aggregation: every replica computes
    the same value from all-reduced norms, and one copy is kept in sync.

    Args:
        num_units: freeze units of the model (the head not counted).
    """

    def __init__(self, num_units, **kwargs):
        kwargs.setdefault("name", "adaptive_state")
        super().__init__(trainable=False, **kwargs)
        self.num_units = int(num_units)

        def weight(name, shape, dtype, value):
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
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        config.update(num_units=self.num_units)
        return config

    def observer(self, config, schedule_state):
        """A `FreezeOutModel.gradient_observers` entry that runs the
        criterion with `config` and writes its decisions into
        `schedule_state.freeze_steps`."""

        def observe(step, unit_grads, frozen):
            step = tf.cast(step, tf.int64)
            n = self.num_units
            steps = schedule_state.freeze_steps
            out = criterion_step(
                step, unit_norms(unit_grads[:n], frozen),
                tf.logical_not(tf.stack(frozen)), steps[:n],
                self.ema.value, self.reference.value, self.change.value,
                self.seen.value, self.checks.value, config,
            )
            for name in ("ema", "reference", "change", "seen", "checks"):
                getattr(self, name).assign(out[name])
            self.decided.assign(
                tf.where(out["freeze"], step + 1, self.decided.value))
            # Only freeze steps change; the head's entry stays as it is.
            new_steps = tf.where(out["freeze"], step + 1, steps[:n])
            steps.assign(tf.concat([new_steps, steps[n:]], 0))

        return observe

    def host_values(self):
        """`(decided, change)` as NumPy arrays, for callbacks and logs."""
        return (keras.ops.convert_to_numpy(self.decided),
                keras.ops.convert_to_numpy(self.change))
