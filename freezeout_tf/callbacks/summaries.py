"""TensorBoard summaries of the FreezeOut schedule.

``FreezeOutSummaries`` writes, at the end of every epoch and at the run's
global step: the base learning rate, the number of active units, each unit's
learning-rate multiplier (one scalar per unit and a histogram over units),
the epoch time and the validation error; with adaptive freezing also each
unit's freeze step and criterion value (``unit_figures``, which stay out of
the progress bar).  Use it next to ``keras.callbacks.TensorBoard`` (which
writes loss and accuracy), after the ``FreezeOut`` callback.
"""

from __future__ import annotations

import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from freezeout_tf import schedule
from freezeout_tf.callbacks.freezeout import unit_figures

__all__ = ["FreezeOutSummaries"]


class FreezeOutSummaries(keras.callbacks.Callback):
    """Per-epoch schedule summaries under ``log_dir``.

    Args:
        log_dir: directory of the event files (e.g. ``<output>/tensorboard/freezeout``).
        num_units: freeze units of the model (the head not counted).
        total_steps: steps of the whole run (``epochs * steps_per_epoch``).
        t_0: the run's FreezeOut `t_0`; None for adaptive freezing alone
            (every multiplier is then 1).
        how_scale: the run's FreezeOut `how_scale`.
        scale_lr: the run's FreezeOut `scale_lr`.
    """

    def __init__(
        self,
        log_dir: str,
        *,
        num_units: int,
        total_steps: int,
        t_0: Optional[float],
        how_scale: str,
        scale_lr: bool,
    ):
        super().__init__()
        self.log_dir = log_dir
        self.total_steps = int(total_steps)
        self.num_units = int(num_units)
        self.fractions = (None if t_0 is None else
                          schedule.freeze_fractions(num_units, t_0, how_scale))
        self.scale_lr = bool(scale_lr)
        self._writer: Optional[tf.summary.SummaryWriter] = None
        self._start = None

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        elapsed = time.perf_counter() - (self._start or time.perf_counter())
        step = int(keras.ops.convert_to_numpy(self.model.batches_taken))
        # Multipliers of the step the next update will take (the last one
        # taken is step - 1); clipped at the end of the run.
        at = min(max(step - 1, 0), self.total_steps)
        if self.fractions is None:
            multipliers = np.ones(self.num_units + 1)
        else:
            multipliers = schedule.lr_multipliers(
                at, self.total_steps, self.fractions, self.scale_lr
            )
        base = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        with self._writer.as_default(step=step):
            tf.summary.scalar("freezeout/base_learning_rate", base)
            if "active_units" in logs:
                tf.summary.scalar("freezeout/active_units", float(logs["active_units"]))
            tf.summary.scalar("freezeout/epoch_time", elapsed)
            if "val_accuracy" in logs:
                tf.summary.scalar(
                    "freezeout/val_err", 100.0 * (1.0 - float(logs["val_accuracy"]))
                )
            tf.summary.histogram(
                "freezeout/lr_multipliers", multipliers.astype(np.float32)
            )
            width = len(str(len(multipliers) - 1))
            for i, m in enumerate(multipliers):
                name = "head" if i == len(multipliers) - 1 else f"unit_{i:0{width}d}"
                tf.summary.scalar(f"lr_multiplier/{name}", float(m))
            for name, value in unit_figures(self.model).items():
                tf.summary.scalar(f"adaptive/{name}", float(value))
        self._writer.flush()
