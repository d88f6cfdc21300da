"""The metrics log of a training run: JSON lines, as the original wrote them.

One record per epoch for training and one for validation, each with a time
stamp (``time``, seconds since the epoch)::

    {"epoch": 1, "train_loss": 4.31, "train_err": 97.1, "active_units": 9,
     "learning_rate": 0.1, "epoch_time": 12.5, "time": 1795620000.1}
    {"epoch": 1, "val_loss": 4.12, "val_err": 95.3, "time": 1795620000.1}

With adaptive freezing the training record also has each unit's figures
(``freezeout_tf.callbacks.freezeout.unit_figures``): ``unit{i}_freeze_step``
and ``unit{i}_change``.

``epoch`` counts completed epochs (1 = after the first, as Keras' progress
bar numbers them); errors are percent.  The file is only ever appended to,
one flushed line per record: a resumed run adds a ``{"resume": E, ...}``
record and then continues, so records of an epoch that a killed run logged
but did not checkpoint may appear twice; the later one is the one that
counts.

Every line is strict JSON (RFC 8259, as ``jq`` reads it): a value that is not
finite, such as the loss of a diverged run, is written as ``null``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional

import keras

from freezeout_tf.callbacks.freezeout import unit_figures

__all__ = ["MetricsLog", "MetricsLogger", "read_log"]


class MetricsLog:
    """Appends JSON records, one per line, flushed and fsynced each time."""

    def __init__(self, path: str):
        self.path = path

    def append(self, record: Dict[str, Any]) -> None:
        """Appends ``record`` (a ``time`` stamp is added if missing).

        Example:

        >>> import tempfile
        >>> log = MetricsLog(os.path.join(tempfile.mkdtemp(), "run.jsonl"))
        >>> log.append({"epoch": 1, "train_loss": float("nan"), "time": 0})
        >>> open(log.path).read()
        '{"epoch": 1, "train_loss": null, "time": 0}\\n'
        """
        record = {key: _json_value(value) for key, value in record.items()}
        record.setdefault("time", time.time())
        line = json.dumps(record, sort_keys=False, allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def _json_value(value):
    """``value`` as strict JSON allows it: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_log(path: str) -> List[Dict[str, Any]]:
    """All records of a metrics log (a torn last line from a crash is skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _error_percent(accuracy: Optional[float]) -> Optional[float]:
    return None if accuracy is None else round(100.0 * (1.0 - float(accuracy)), 4)


class MetricsLogger(keras.callbacks.Callback):
    """Writes the per-epoch records and prints one summary line per epoch.

    Put it after the ``FreezeOut`` callback so ``logs`` holds
    ``active_units``. The base ``learning_rate`` is read from the optimizer,
    and with adaptive freezing each unit's figures from the model.
    """

    def __init__(
        self,
        log: MetricsLog,
        *,
        epochs: int,
        num_units: Optional[int] = None,
        stream=None,
        print_epochs: bool = True,
    ):
        super().__init__()
        self.log = log
        self.epochs = epochs
        self.num_units = num_units
        self.stream = stream
        self.print_epochs = print_epochs
        self._start = None
        self._pending = None

    def _flush_line(self):
        # Printed at the next epoch's start (or the end of training), after
        # Keras' progress bar has finished its line.
        if self._pending is not None and self.print_epochs:
            print(self._pending, file=self.stream or sys.stdout, flush=True)
        self._pending = None

    def on_epoch_begin(self, epoch, logs=None):
        self._flush_line()
        self._start = time.perf_counter()

    def on_train_end(self, logs=None):
        self._flush_line()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        elapsed = time.perf_counter() - (self._start or time.perf_counter())
        logs["epoch_time"] = elapsed
        now = time.time()
        train = {"epoch": epoch + 1, "train_loss": _float(logs.get("loss"))}
        if "accuracy" in logs:
            train["train_err"] = _error_percent(logs["accuracy"])
        if "active_units" in logs:
            train["active_units"] = int(round(float(logs["active_units"])))
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            base = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
            train["learning_rate"] = float(f"{base:.7g}")
        if hasattr(self.model, "adaptive_state"):
            train.update(unit_figures(self.model))
        train["epoch_time"] = round(elapsed, 3)
        train["time"] = now
        self.log.append(train)
        line = f"epoch {epoch + 1}/{self.epochs}: train loss {train['train_loss']:.4f}"
        if "val_loss" in logs:
            val = {
                "epoch": epoch + 1,
                "val_loss": _float(logs["val_loss"]),
                "val_err": _error_percent(logs.get("val_accuracy")),
                "time": now,
            }
            self.log.append(val)
            line += f", val loss {val['val_loss']:.4f}"
            if val["val_err"] is not None:
                line += f", val err {val['val_err']:.2f}%"
        if "active_units" in train:
            total = f"/{self.num_units}" if self.num_units else ""
            line += f", active units {train['active_units']}{total}"
        line += f", {elapsed:.1f} s"
        self._pending = line


def _float(value) -> Optional[float]:
    return None if value is None else float(value)
