"""Stop a run at its first non-finite training loss.

Once the loss is NaN or infinite the weights are garbage, and every further
step (and every checkpoint) would only spread them. ``StopOnDivergence``
watches the loss after every batch, stops ``fit`` within that epoch, and
remembers where it happened, so a script can say so and exit with its own
status. Unlike ``keras.callbacks.TerminateOnNaN`` it keeps the step and the
loss, and can append a final record to a ``MetricsLog``.

``freezeout_tf.recipes.checkpoint.EpochCheckpoint`` refuses to save an epoch whose
loss or weights are not finite, so the last good checkpoint stays as it was.
Keras still runs the stopped epoch's validation and ``on_epoch_end``
callbacks (its ``fit`` loop always does).
"""

from __future__ import annotations

import math
from typing import Optional

import keras

__all__ = ["StopOnDivergence"]


class StopOnDivergence(keras.callbacks.Callback):
    """Stops training at the first batch whose training loss is not finite.

    Keras' ``loss`` log is the running mean over the epoch, so it turns
    non-finite at the first non-finite batch loss and stays so. With
    ``steps_per_execution > 1`` Keras reports once per execution, and
    ``step`` is the last step of the execution that saw it.

    Attributes:
        diverged: whether training was stopped.
        step: 1-based index of the training step (counted over the whole
            run, from ``initial_epoch``) after which the loss was seen to be
            non-finite; ``None`` until then.
        epoch: 1-based epoch of that step.
        loss: the non-finite loss value (``nan``, ``inf`` or ``-inf``).

    Args:
        log: a ``freezeout_tf.recipes.training_log.MetricsLog``; if given, a final
            record ``{"diverged": true, "step": ..., "epoch": ...,
            "loss": null}`` is appended at the end of training.

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(1e30), "mse")
    >>> stop = StopOnDivergence()
    >>> _ = model.fit(np.ones((8, 1)), np.full((8, 1), 1e20), batch_size=2,
    ...               epochs=3, callbacks=[stop], verbose=0)
    >>> stop.diverged, stop.epoch, stop.step <= 4
    (True, 1, True)
    """

    def __init__(self, log=None):
        super().__init__()
        self.log = log
        self.diverged = False
        self.step: Optional[int] = None
        self.epoch: Optional[int] = None
        self.loss: Optional[float] = None
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self.diverged, self.step, self.epoch, self.loss = False, None, None, None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or self.diverged:
            return
        loss = float(loss)
        if math.isfinite(loss):
            return
        steps = self.params.get("steps") or 0
        self.diverged = True
        self.loss = loss
        self.epoch = self._epoch + 1
        self.step = self._epoch * steps + batch + 1
        self.model.stop_training = True

    def on_train_end(self, logs=None):
        # At train end, so it follows the stopped epoch's own records.
        if self.diverged and self.log is not None:
            self.log.append(
                {
                    "diverged": True,
                    "epoch": self.epoch,
                    "step": self.step,
                    "loss": self.loss,
                }
            )
