"""Atomic ``.keras`` checkpoints, written after every epoch, and resuming.

A checkpoint is the whole model with its compiled optimizer (so its iteration
counter and momentum / Adam slots).  It is first written to a temporary file
in the same directory, flushed to disk and then moved over the old one with
``os.replace``, so a run killed at any moment leaves either the previous
checkpoint or the new one, never a torn file.

Keras does not save the state of random seed generators (dropout's), so a
resumed run with dropout would draw other masks than an uninterrupted one;
``save_atomic`` adds those states to the ``.keras`` archive (an extra member
that Keras ignores) and ``load_checkpoint`` restores them.

Keras saves a LoRA layer's kernel merged with its factors and not the
factors (``freezeout_tf.split.lora``): ``save_atomic`` adds the unmerged kernels
and the factors as another member, and ``load_checkpoint`` restores them, so
a LoRA run resumes exactly.

The FreezeOut schedule is a function of the model's ``batches_taken``; a loaded
checkpoint taken after epoch ``E`` has taken ``E * steps_per_epoch`` steps, and
``fit(initial_epoch=E)`` continues the schedule at the exact step.

``EpochCheckpoint`` never saves an epoch whose training loss or weights are
not finite: after a divergence the last good checkpoint stays as it was.
``load_checkpoint`` reports a torn, foreign or unreadable file as one
``CheckpointError`` and leaves it untouched.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from typing import List, Optional

import keras
import numpy as np

from freezeout_tf.split import lora

__all__ = [
    "CheckpointError",
    "EpochCheckpoint",
    "completed_epochs",
    "is_finite_state",
    "load_checkpoint",
    "save_atomic",
    "temporary_path",
]


class CheckpointError(ValueError):
    """A checkpoint is missing or does not fit the run that wants to resume it."""


def temporary_path(path: str) -> str:
    """Where ``save_atomic`` writes before the rename (Keras needs ``.keras``)."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.tmp.keras")


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


RNG_MEMBER = "freezeout_rng_state.json"


def _rng_variables(model: keras.Model) -> List:
    """The model's seed-generator states, in model order."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def save_atomic(model: keras.Model, path: str) -> None:
    """Saves ``model`` (with optimizer state) to ``path``, atomically."""
    if not path.endswith(".keras"):
        raise ValueError(f"checkpoint path must end in .keras, got {path!r}")
    tmp = temporary_path(path)
    try:
        model.save(tmp, include_optimizer=True)
        states = [
            np.asarray(keras.ops.convert_to_numpy(v)).tolist()
            for v in _rng_variables(model)
        ]
        factors = lora.values(_parts(model))
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(RNG_MEMBER, json.dumps(states))
            if factors is not None:
                archive.writestr(lora.LORA_MEMBER, factors)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable
        _fsync_path(os.path.dirname(os.path.abspath(path)))
    except OSError:  # pragma: no cover - directories cannot be fsynced everywhere
        pass


def load_checkpoint(path: str) -> keras.Model:
    """Loads a checkpoint written by ``save_atomic`` (compiled, with optimizer).

    Raises:
        CheckpointError: ``path`` is missing, is not a readable ``.keras``
            archive (e.g. torn by a full disk or a copy cut short), or holds
            something other than a ``FreezeOutModel``. The file is left as
            it is.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint to resume at {path!r}")
    if not zipfile.is_zipfile(path):  # Keras would call it "not found"
        raise CheckpointError(
            f"{path!r} is torn or not a checkpoint: it is not a .keras (zip) archive"
        )
    # Imported when needed; importing them registers the serializable classes.
    import freezeout_tf.models  # noqa: F401
    import freezeout_tf.core.optimizer  # noqa: F401
    from freezeout_tf.core.model import FreezeOutModel

    try:
        model = keras.saving.load_model(path, compile=True)
        with zipfile.ZipFile(path) as archive:
            states = (
                json.loads(archive.read(RNG_MEMBER))
                if RNG_MEMBER in archive.namelist()
                else None
            )
            factors = (
                archive.read(lora.LORA_MEMBER)
                if lora.LORA_MEMBER in archive.namelist()
                else None
            )
    except Exception as err:  # Keras raises many types for a bad archive
        raise CheckpointError(
            f"{path!r} is not a readable checkpoint ({type(err).__name__}: "
            f"{_first_line(err)})"
        ) from err
    if not isinstance(model, FreezeOutModel):
        raise CheckpointError(
            f"{path!r} holds a {type(model).__name__}, not a FreezeOutModel "
            "checkpoint"
        )
    if model._lora_factors_lost:
        if factors is None:
            raise CheckpointError(
                f"{path!r} holds a LoRA model without its LoRA factors (saved "
                "by model.save, which merges them into the kernels): save "
                "LoRA runs with save_atomic or EpochCheckpoint to resume them"
            )
        lora.restore(_parts(model), factors)
        model._lora_factors_lost = False
    variables = _rng_variables(model)
    if states is not None and len(states) == len(variables):
        for variable, state in zip(variables, states):
            variable.assign(np.asarray(state, dtype=variable.dtype))
    return model


def _parts(model: keras.Model) -> List:
    # A FreezeOutModel's units and head; any other model is one part.
    units = getattr(model, "freeze_units", None)
    return [model] if units is None else units + [model.head]


def completed_epochs(model: keras.Model, steps_per_epoch: int) -> int:
    """Epochs a loaded model has trained, from its count of batches taken.

    Raises ``CheckpointError`` when the counter is not a whole number of
    epochs (the checkpoint was made with another batch size or data set).
    """
    optimizer: Optional[keras.optimizers.Optimizer] = getattr(model, "optimizer", None)
    if optimizer is None:
        raise CheckpointError(
            "the checkpoint has no optimizer state; it cannot be resumed"
        )
    steps = int(keras.ops.convert_to_numpy(model.batches_taken))
    if steps % steps_per_epoch:
        raise CheckpointError(
            f"the checkpoint has taken {steps} steps, not a whole number of epochs of "
            f"{steps_per_epoch} steps: was it made with another batch size or data set?"
        )
    return steps // steps_per_epoch


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"


def is_finite_state(model: keras.Model) -> bool:
    """Whether every weight and optimizer variable of ``model`` is finite."""
    optimizer = getattr(model, "optimizer", None)
    variables = list(model.weights) + list(optimizer.variables if optimizer else [])
    return all(
        np.isfinite(keras.ops.convert_to_numpy(v)).all()
        for v in variables
        if keras.backend.is_float_dtype(v.dtype)
    )


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves an atomic checkpoint to ``path`` at the end of every epoch.

    An epoch whose training loss or state is not finite is not saved, so a
    diverged run keeps its last good checkpoint (see
    ``freezeout_tf.callbacks.divergence``). ``skipped`` lists such epochs (0-based).
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.skipped: List[int] = []

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if (loss is not None and not math.isfinite(float(loss))) or not (
            is_finite_state(self.model)
        ):
            self.skipped.append(epoch)
            return
        save_atomic(self.model, self.path)
