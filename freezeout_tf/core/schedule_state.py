"""The FreezeOut schedule as in-graph TensorFlow state.

The train step and the optimizer read the schedule from these variables and
compute the per-unit state from the model's clock (`batches_taken`), so a
freeze event changes *values*, never the traced graph: one trace serves the
whole run, and the schedule is exact per step even when several steps run
in one `tf.function` call (`steps_per_execution > 1`).

Host placement: every `tf.cond` of the step (the model's per-unit backward
branches, the optimizer's per-unit updates) branches on a frozen flag, and
TensorFlow's `If` kernel reads its predicate in host memory. So the clock,
the freeze steps and the comparisons that make the flags are placed on the
host (`HOST`): on a GPU no branch then waits on a device-to-host copy of a
flag computed on the device. On CPU this changes nothing.

The math mirrors `freezeout_tf.schedule.lr_multipliers`; the integer freeze
steps are computed there in float64 and only looked up here, so "frozen" is
decided exactly as the pure schedule decides it.
"""

import math

import numpy as np
import tensorflow as tf

from freezeout_tf import schedule

__all__ = ["HOST", "NEVER", "ScheduleState"]

# Freeze step of a unit that never freezes (no schedule set yet).
NEVER = np.iinfo(np.int64).max

# Where the schedule's integer state and the frozen flags live.
HOST = "/device:CPU:0"


class ScheduleState:
    """Holds the schedule of `num_units` freeze units plus the head.

    Until `set` is called, nothing is frozen and every multiplier is 1, so a
    `FreezeOutModel` trained without the `FreezeOut` callback behaves like a
    plain Keras model.

    Args:
        num_units: number of freeze units (the head not included).
        clock: the variable counting the batches taken (the model's
            `batches_taken`, created under `tf.device(HOST)`); the train step
            and the optimizer read the step from it. Not
            `optimizer.iterations`: a mixed-float16 loss-scale optimizer does
            not count the steps it skips.

    Example:

    >>> import keras
    >>> state = ScheduleState(2, keras.Variable(0, dtype="int64"))
    >>> state.freeze_prefix(1)
    >>> [bool(f) for f in state.frozen_flags()]
    [True, False]
    >>> state.frozen_flags()[0].device
    '/job:localhost/replica:0/task:0/device:CPU:0'
    """

    def __init__(self, num_units, clock=None):
        self.num_units = num_units
        self.clock = clock
        size = num_units + 1
        # Plain tf.Variables, not model weights: the callback sets them at the
        # start of every fit, so they need no saving, and they stay out of
        # the model's parameter counts.
        self.fractions = tf.Variable(
            np.ones(size, np.float32), trainable=False, name="fo_fractions"
        )
        # Adaptive freezing writes it in the train step, in replica context
        # under tf.distribute; every replica writes the same value. On the
        # host: the frozen flags are computed from it (module docstring).
        with tf.device(HOST):
            self.freeze_steps = tf.Variable(
                np.full(size, NEVER, np.int64), trainable=False,
                name="fo_steps",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
        self.total_steps = tf.Variable(
            1.0, dtype=tf.float32, trainable=False, name="fo_total_steps"
        )
        self.scale_lr = tf.Variable(False, trainable=False, name="fo_scale_lr")
        self.annealing = tf.Variable(False, trainable=False, name="fo_anneal")

    def set(self, total_steps, fractions, scale_lr=True, frozen_from_start=0):
        """Installs a schedule (`fractions` from `schedule.freeze_fractions`);
        the first `frozen_from_start` units are frozen from step 0."""
        fractions = np.asarray(fractions, np.float64)
        if fractions.shape != (self.num_units + 1,):
            raise ValueError(
                f"Expected {self.num_units + 1} fractions (one per unit plus "
                f"the head); got shape {fractions.shape}."
            )
        self.fractions.assign(fractions.astype(np.float32))
        self.freeze_steps.assign(
            schedule.freeze_steps(total_steps, fractions, frozen_from_start)
        )
        self.total_steps.assign(float(total_steps))
        self.scale_lr.assign(bool(scale_lr))
        self.annealing.assign(True)

    def freeze_prefix(self, k):
        """Freezes units 0..k-1 from now on, with no annealing: for
        benchmarks and tests that need a fixed number of frozen units."""
        steps = np.full(self.num_units + 1, NEVER, np.int64)
        steps[:k] = 0
        self.fractions.assign(np.ones(self.num_units + 1, np.float32))
        self.freeze_steps.assign(steps)
        self.annealing.assign(False)

    def clear(self):
        """Back to no schedule: nothing frozen, all multipliers 1."""
        self.fractions.assign(np.ones(self.num_units + 1, np.float32))
        self.freeze_steps.assign(np.full(self.num_units + 1, NEVER, np.int64))
        self.annealing.assign(False)

    def host_freeze_steps(self):
        """The freeze steps as a NumPy array (for callbacks, not the graph)."""
        return self.freeze_steps.numpy()

    # In-graph reads. `step` is the optimizer's iteration counter before the
    # update, i.e. the 0-based step being taken.

    def step(self):
        """The clock's value (the 0-based step being taken), read on the
        host."""
        with tf.device(HOST):
            return tf.identity(self.clock.value)

    def frozen(self, step, unit):
        """Scalar bool tensor: is `unit` (an int) frozen at `step`? Computed
        on the host, so it can feed a `tf.cond` with no device-to-host
        copy."""
        with tf.device(HOST):
            return tf.cast(step, tf.int64) >= self.freeze_steps[unit]

    def frozen_flags(self, step=None):
        """The frozen flag of every unit (not the head) at `step` (by
        default the clock's value), as a list of host-placed scalar bool
        tensors: what the train step and the optimizer branch on."""
        step = self.step() if step is None else step
        with tf.device(HOST):
            steps = tf.unstack(self.freeze_steps[:self.num_units],
                               num=self.num_units)
            step = tf.cast(step, tf.int64)
            return [step >= s for s in steps]

    def part_flags(self, step):
        """The frozen flag of every unit and the head at `step`, as one
        host-placed op's outputs (the optimizer's per-unit branches read
        them; one comparison per unit each cost an op per step)."""
        with tf.device(HOST):
            return tf.unstack(tf.cast(step, tf.int64) >= self.freeze_steps,
                              num=self.num_units + 1)

    def multipliers(self, step, flags):
        """The learning-rate multiplier of every unit and the head at
        `step` (as `multiplier`, elementwise), given `flags` from
        `part_flags(step)`: a list of scalar float32 tensors."""
        j = tf.cast(step, tf.float32)
        t = self.fractions
        cosine = 0.5 * (1.0 + tf.cos(math.pi * j / (t * self.total_steps)))
        initial = tf.where(self.scale_lr, 1.0 / t, 1.0)
        annealed = tf.where(tf.stack(flags), 0.0, initial * cosine)
        return tf.unstack(tf.where(self.annealing, annealed, 1.0),
                          num=self.num_units + 1)

    def multiplier(self, step, unit):
        """Scalar float32 tensor: learning-rate multiplier of `unit`."""
        t = self.fractions[unit]
        j = tf.cast(step, tf.float32)
        cosine = 0.5 * (1.0 + tf.cos(math.pi * j / (t * self.total_steps)))
        initial = tf.where(self.scale_lr, 1.0 / t, 1.0)
        annealed = tf.where(self.frozen(step, unit), 0.0, initial * cosine)
        return tf.where(self.annealing, annealed, 1.0)
