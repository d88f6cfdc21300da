"""The `FreezeOut` Keras callback: installs the schedule, tracks freezes."""

import inspect
import math
import warnings

import keras
import numpy as np

from freezeout_tf import schedule, validation
from freezeout_tf.adaptive import criteria as fo_adaptive
from freezeout_tf.core.model import FreezeOutModel
from freezeout_tf.core.schedule_state import NEVER

__all__ = ["BatchNormLagWarning", "FreezeOut", "settling_steps", "unit_figures"]


class _LoggedCount(float):
    """A count in `logs` that Keras' progress bar prints as an integer.

    The bar divides every value by a count of 1 and formats it with `.4f`
    (or `.4e`), so a plain `int` shows as `6.0000`; this keeps the value
    (a float, for `History`, `CSVLogger`, `TensorBoard`) and its rendering.
    """

    def __truediv__(self, other):
        return _LoggedCount(float(self) / other)

    def __format__(self, spec):
        return str(int(self))

    def __repr__(self):
        return str(int(self))

    __str__ = __repr__


def _settling_fix(steps):
    """The BatchNormalization that settles within `steps` (the momentum of
    the original recipe, 0.9, where that is soon enough)."""
    if steps <= 0:
        return ("trained statistics (a unit frozen from the start never "
                "updates them)")
    momentum = min(0.9, math.floor(100 * 0.01 ** (1 / steps)) / 100)
    return (f"BatchNormalization(momentum={momentum:g}) (about "
            f"{settling_steps(momentum)} steps)")


class BatchNormLagWarning(UserWarning):
    """A unit freezes before its BatchNormalization's moving statistics
    could have left their initial values (see `FreezeOut`)."""


def settling_steps(momentum):
    """Steps after which a BatchNormalization's moving statistics keep at
    most 1 % of their initial values: `momentum ** steps <= 0.01`.

    Args:
        momentum: the layer's `momentum`, in [0, 1].

    Returns:
        int, or `math.inf` for a momentum of 1 (the statistics never move).

    Example:

    >>> settling_steps(0.99), settling_steps(0.9)
    (459, 44)
    """
    if momentum >= 1:
        return math.inf
    if momentum <= 0:
        return 1
    return math.ceil(math.log(0.01) / math.log(momentum))


def _fresh_batch_norms(leaves):
    """The BatchNormalization layers among `leaves` whose moving statistics
    are still their initial zeros and ones (not built yet, or not trained:
    not a pretrained layer)."""
    fresh = []
    for layer in leaves:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        if layer.built and not (
                np.all(keras.ops.convert_to_numpy(layer.moving_mean) == 0)
                and np.all(keras.ops.convert_to_numpy(layer.moving_variance) == 1)):
            continue
        fresh.append(layer)
    return fresh


def _stacklevel_outside_frameworks():
    """The `stacklevel` of the first caller outside Keras, TensorFlow and
    this package: a warning then names the line of the user's `fit`."""
    # inspect.currentframe() is this function's frame; two back is the
    # caller of the function that warns.
    level, frame = 2, inspect.currentframe().f_back.f_back
    while frame is not None and frame.f_globals.get("__name__", "").split(
            ".")[0] in ("keras", "tensorflow", "freezeout_tf"):
        level, frame = level + 1, frame.f_back
    return level


def unit_figures(model):
    """Each unit's adaptive figures, for TensorBoard and the metrics log.

    Read from the model's in-graph state (one host read): `unit{i}_freeze_step`
    (the step unit `i` freezes from, decided or scheduled; `-1`: not frozen
    and not scheduled) and `unit{i}_change` (the criterion's last value for
    it; `-1`: not checked yet), for every unit. They stay out of `fit`'s
    logs, where the progress bar would print them all on one line:
    `FreezeOutSummaries` and `MetricsLogger` write them, and the
    `FreezeOut` callback keeps them per epoch in its `unit_history`.

    Args:
        model: a `FreezeOutModel`.

    Returns:
        dict of name -> value (int freeze steps, float changes); empty if
        no adaptive criterion has run on the model.
    """
    state = model.adaptive_state
    if int(keras.ops.convert_to_numpy(state.seen)) == 0:
        return {}
    steps = model.schedule_state.host_freeze_steps()[:-1]
    figures = {}
    for i, (at, value) in enumerate(zip(steps, state.host_values().change)):
        figures[f"unit{i}_freeze_step"] = (
            int(at) if at != NEVER else fo_adaptive.NOT_YET)
        figures[f"unit{i}_change"] = float(value)
    return figures


@keras.saving.register_keras_serializable(package="freezeout_tf")
class FreezeOut(keras.callbacks.Callback):
    """Trains a `FreezeOutModel` with the FreezeOut schedule.

    At the start of `fit` it derives the run's total number of steps
    (`epochs * steps_per_epoch`), and writes the schedule into the model's
    in-graph state; from then on the train step itself freezes units and
    sets per-unit learning rates at the exact step, with one traced graph.
    As units freeze the callback also sets their `trainable = False`, so
    `model.summary()` and saved models show it, and it adds to the logs
    `active_units` (freeze units still training, the head not counted; the
    progress bar prints it as an integer) and `first_active_lr` (the
    learning rate of the first unit still training, or of the head once all
    are frozen, for the next step). The optimizer's base rate is not
    logged: it stays constant while the units' rates anneal
    (`FreezeOutSummaries` and `MetricsLogger` record it).

    Put it before `CSVLogger` / `TensorBoard` in the callback list so that
    those see the added logs.

    BatchNorm: a frozen unit normalizes with its BatchNormalization's moving
    statistics. If a unit whose statistics start from their initial values
    (a model trained from scratch) freezes before they can have caught up,
    `settling_steps(momentum)` (459 steps at Keras' default momentum 0.99,
    44 at 0.9), the model gets worse from its freeze step on; the callback
    then warns once, in one line with the fix (`BatchNormLagWarning`):
    `BatchNormalization(momentum=0.9)`, or a longer run.

    Resuming: the schedule is a function of the model's count of batches
    taken (`model.batches_taken`, saved with the model). To continue a run,
    call `fit(..., epochs=E_total, initial_epoch=E_done)` on a model that has
    taken
    `E_done * steps_per_epoch` steps (a loaded checkpoint, or the same model
    after an earlier `fit`); anything else is rejected before training.

    Args:
        t_0: fraction of training, before scaling, at which the first unit
            freezes; in (0, 1].
        how_scale: `"linear"`, `"squared"` or `"cubic"`.
        scale_lr: divide each unit's initial learning rate by its t_i.
        total_steps: total steps of the run; by default
            `epochs * steps_per_epoch` of the `fit` call.
        frozen_from_start: how many units, from the first, stay frozen from
            step 0 (fine-tuning a pretrained network: its early units keep
            their weights and cost no backward pass); the schedule above
            then applies to the other units, unit `frozen_from_start`
            freezing first. At most the model's number of units.
        adaptive: an `AdaptiveFreeze`: also freeze units by an adaptive
            criterion decided in the train step (`freezeout_tf.adaptive`;
            `AdaptiveFreeze()` is the default rank criterion). With
            `t_0=None` the criterion alone freezes units and learning rates
            follow the optimizer; with a `t_0` a unit freezes at the earlier
            of its t_i and the criterion's decision. Each unit's freeze step
            and criterion value (`unit_figures`) are kept per epoch in
            `unit_history` (name -> list, as `History.history`) and written
            by `FreezeOutSummaries` and `MetricsLogger`, not to the logs
            (the progress bar would print them all); `active_units` is read
            from the graph at epoch ends only (per batch it holds the
            epoch's first value), so that training never waits on the host.
            The criterion's state is saved with the model, so a checkpoint
            resumes it exactly.
        adaptive_batch_logs: with `adaptive`, read the criterion's state
            after every batch (one host read each, which waits for the
            step) to log a fresh `active_units` and `first_active_change`
            (the criterion's last value for the first unit still training)
            per batch, for the progress bar. Off by default.

    Example:

    >>> model = freezeout_tf.models.densenet_bc(depth=40)  # doctest: +SKIP
    >>> model.compile(freezeout_tf.original_sgd(),  # doctest: +SKIP
    ...               "sparse_categorical_crossentropy", metrics=["accuracy"])
    >>> model.fit(train_ds, epochs=100,  # doctest: +SKIP
    ...           callbacks=[FreezeOut(t_0=0.8)])
    >>> FreezeOut(t_0=None, adaptive=AdaptiveFreeze())
    FreezeOut(t_0=None, adaptive=AdaptiveFreeze(criterion='rank', percentile=50.0, intervals=10))
    """

    def __init__(self, t_0=0.8, how_scale="cubic", scale_lr=True,
                 total_steps=None, frozen_from_start=0, adaptive=None,
                 adaptive_batch_logs=False):
        super().__init__()
        if isinstance(adaptive, dict):  # from get_config
            adaptive = fo_adaptive.AdaptiveFreeze.from_config(adaptive)
        if adaptive is not None and not isinstance(
                adaptive, fo_adaptive.AdaptiveFreeze):
            raise ValueError(
                f"FreezeOut(adaptive={adaptive!r}): must be None or an "
                "freezeout_tf.AdaptiveFreeze(...)."
            )
        if t_0 is None and adaptive is None:
            raise ValueError(
                "FreezeOut(t_0=None) needs adaptive=AdaptiveFreeze(...): "
                "without a schedule only the adaptive criterion can freeze "
                "units. Pass a t_0 in (0, 1], or an adaptive criterion."
            )
        if t_0 is not None:
            validation.check_t_0(t_0)
        validation.check_how_scale(how_scale)
        if total_steps is not None:
            validation.check_total_steps(total_steps)
        validation.check_frozen_from_start(frozen_from_start)
        self.frozen_from_start = int(frozen_from_start)
        self.t_0 = t_0
        self.how_scale = how_scale
        self.scale_lr = bool(scale_lr)
        self.total_steps = total_steps
        self.adaptive = adaptive
        validation.check_bool("adaptive_batch_logs", adaptive_batch_logs,
                              call="FreezeOut")
        self.adaptive_batch_logs = adaptive_batch_logs
        self._observer = None
        self._configured = False
        self._freeze_steps = None
        self._schedule = None  # (total_steps, fractions) of this fit
        self.unit_history = {}  # with adaptive: unit_figures per epoch
        self._lagging = {}  # unit -> its fresh BatchNorm layers, unchecked

    def get_config(self):
        return {
            "t_0": self.t_0,
            "how_scale": self.how_scale,
            "scale_lr": self.scale_lr,
            "total_steps": self.total_steps,
            "frozen_from_start": self.frozen_from_start,
            "adaptive": (None if self.adaptive is None
                         else self.adaptive.get_config()),
            "adaptive_batch_logs": self.adaptive_batch_logs,
        }

    def __repr__(self):
        if self.adaptive is None:
            return f"FreezeOut(t_0={self.t_0!r})"
        return f"FreezeOut(t_0={self.t_0!r}, adaptive={self.adaptive!r})"

    def on_train_begin(self, logs=None):
        if not isinstance(self.model, FreezeOutModel):
            raise ValueError(
                "FreezeOut needs a freezeout_tf.FreezeOutModel; got "
                f"{type(self.model).__name__}. Build one from your units "
                "with FreezeOutModel(units, head) or "
                "FreezeOutModel.from_sequential(...)."
            )
        validation.check_frozen_from_start(self.frozen_from_start,
                                         self.model.num_units)
        steps = self.params.get("steps")
        if self.t_0 is not None and self.total_steps is None and not steps:
            raise ValueError(
                "FreezeOut needs the number of steps per epoch to place the "
                "schedule, but it cannot be known here (steps="
                f"{steps!r}: an endless or unsized dataset). Pass "
                "steps_per_epoch= to fit, or total_steps= to FreezeOut."
            )
        if self.adaptive is not None:  # after every check that can fail
            self._start_adaptive(steps)
            self.unit_history = {}
        self._configured = False
        self._lagging = {}
        for i in range(self.model.num_units):
            fresh = _fresh_batch_norms(self.model._unit_leaves(i))
            if fresh:
                self._lagging[i] = fresh

    def _start_adaptive(self, steps):
        """Readies the criterion's state for this run and adds the criterion
        to the train step; a train function traced without it is remade."""
        total = self.total_steps
        if total is None and steps:
            total = self.params["epochs"] * steps
        self.model.adaptive_state.start(self.adaptive, total,
                                        self.frozen_from_start)
        self._observer = self.model.adaptive_state.observer(
            self.adaptive, self.model.schedule_state)
        self.model.gradient_observers.append(self._observer)
        if self.model.train_function is not None:
            self.model.make_train_function(force=True)

    def on_train_end(self, logs=None):
        if self._observer is not None:
            # A later fit without this callback must not keep deciding: it
            # gets a train function traced without the observer.
            self.model.gradient_observers.remove(self._observer)
            self._observer = None
            self.model.train_function = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._configured:
            return
        # First epoch of this fit: `epoch` is fit's initial_epoch.
        steps = self.params.get("steps")
        done = self._iterations()
        if self.t_0 is None:
            self._place_adaptive_only(done)
            return
        if self.total_steps is None:
            expected = epoch * steps
            if done != expected:
                raise ValueError(
                    f"Cannot place the FreezeOut schedule: the model has "
                    f"taken {done} steps, but fit starts at epoch {epoch} "
                    f"(= {expected} steps at {steps} steps per epoch). To "
                    f"continue a run, pass initial_epoch={done // steps} "
                    f"(with epochs = the run's total epochs); to start over, "
                    f"recompile with a fresh optimizer."
                )
            total = self.params["epochs"] * steps
        else:
            total = self.total_steps
            if done >= total:
                raise ValueError(
                    f"The FreezeOut schedule of total_steps={total} is over: "
                    f"the model has already taken {done} steps. Pass the "
                    f"run's real total_steps, or recompile with a fresh "
                    f"optimizer to start over."
                )
        k = self.frozen_from_start
        fractions = schedule.freeze_fractions(
            self.model.num_units, self.t_0, self.how_scale, k
        )
        state = self.model.schedule_state
        state.set(total, fractions, self.scale_lr, k)
        freeze_steps = state.host_freeze_steps()
        self._schedule = (total, fractions)
        self._finish_placing(freeze_steps, done)

    def _place_adaptive_only(self, done):
        """No schedule: multipliers 1, only frozen_from_start and the
        criterion's decisions freeze units."""
        state = self.model.schedule_state
        state.clear()
        freeze_steps = state.host_freeze_steps()
        freeze_steps[:self.frozen_from_start] = 0
        self._schedule = None
        self._finish_placing(freeze_steps, done)

    def _finish_placing(self, freeze_steps, done):
        if self.adaptive is not None:
            # Decisions of earlier steps (this run before a resume) stand.
            decided = self.model.adaptive_state.host_values().decided
            freeze_steps[:-1] = fo_adaptive.merge_freeze_steps(
                freeze_steps[:-1], decided)
            self.model.schedule_state.freeze_steps.assign(freeze_steps)
        self._freeze_steps = freeze_steps[:-1]
        self._configured = True
        self._sync_trainable(done, read=True)
        self._warn_batch_norm_lag()

    def _warn_batch_norm_lag(self):
        """Warns once if a unit with fresh BatchNorm statistics freezes
        (scheduled or decided) before they settle; checks each unit once
        its freeze step is known."""
        lagging = []
        for i in sorted(self._lagging):
            at = int(self._freeze_steps[i])
            if at == NEVER:
                continue
            for layer in self._lagging.pop(i):
                needed = settling_steps(float(layer.momentum))
                if at < needed:
                    lagging.append((i, at, layer, needed))
                    break
        if not lagging:
            return
        i, at, layer, needed = lagging[0]
        more = (f" ({len(lagging)} units in all)" if len(lagging) > 1
                else "")
        self._lagging = {}  # once per fit
        warnings.warn(
            f"FreezeOut: unit {i} freezes after {at} steps{more}, but its "
            f"BatchNormalization {layer.name!r} (momentum={layer.momentum:g}) "
            f"needs about {needed} for its moving statistics, which a frozen "
            "unit normalizes with, to leave their initial values; the model "
            f"will get worse from there. Fix: {_settling_fix(at)}, or train "
            "longer.",
            BatchNormLagWarning, stacklevel=_stacklevel_outside_frameworks())

    def on_train_batch_end(self, batch, logs=None):
        self._sync_trainable(self._iterations(), logs,
                             read=self.adaptive_batch_logs)

    def on_epoch_end(self, epoch, logs=None):
        self._sync_trainable(self._iterations(), logs, read=True)
        if self.adaptive is not None:
            for name, value in unit_figures(self.model).items():
                self.unit_history.setdefault(name, []).append(value)
            self._warn_batch_norm_lag()  # units the criterion froze

    def _log_adaptive(self, logs, frozen):
        change = self.model.adaptive_state.host_values().change
        logs["first_active_change"] = (
            float(change[frozen]) if frozen < len(change)
            else float(fo_adaptive.NOT_YET))

    def _iterations(self):
        return int(keras.ops.convert_to_numpy(self.model.batches_taken))

    def num_frozen(self, step):
        """Units frozen for the step after `step` steps were taken."""
        return int(np.sum(step >= self._freeze_steps))

    def _sync_trainable(self, step, logs=None, read=False):
        """Mirrors the in-graph frozen state in the units' `trainable` flags
        (for summary and saving; the graph does not read them). With a
        criterion the freeze steps are read back from the graph only when
        `read`: at epoch ends, or per batch when asked for."""
        if self.adaptive is not None and read:
            # The train step may have frozen units since the last call.
            self._freeze_steps = (
                self.model.schedule_state.host_freeze_steps()[:-1])
        frozen = self.num_frozen(step)
        for i, unit in enumerate(self.model.freeze_units):
            if unit.trainable != (i >= frozen):
                unit.trainable = i >= frozen
        if logs is not None:
            base = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            multiplier = 1.0  # no schedule: the optimizer's rate
            if self._schedule is not None:
                total, fractions = self._schedule
                # lr_multipliers has the head last, so index `frozen` is the
                # first unit still training, or the head once all are frozen.
                multiplier = schedule.lr_multipliers(
                    step, total, fractions, self.scale_lr
                )[frozen]
            if self.adaptive is not None and self.adaptive_batch_logs:
                self._log_adaptive(logs, frozen)
            logs["active_units"] = _LoggedCount(self.model.num_units - frozen)
            logs["first_active_lr"] = base * float(multiplier)
