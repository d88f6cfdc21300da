"""A training run kept in files, and resuming it exactly.

A run called ``NAME`` in a directory keeps four things there (``RunFiles``):
``NAME.keras``, the checkpoint after the last completed epoch (written by
``freezeout_tf.recipes.checkpoint.EpochCheckpoint``); ``NAME.jsonl``, the metrics
log (``freezeout_tf.recipes.training_log``); ``NAME.args.json``, the options that
define the run; and ``tensorboard/NAME/``.

The resume protocol (``start_or_resume``, then ``open_log``):

1. A new run refuses to start over an existing checkpoint or log.
2. A resumed run must have the options it was started with (every key of
   ``options`` that the saved options also have).
3. Its model is the checkpoint, which has taken a whole number of epochs;
   ``fit(..., initial_epoch=E)`` then continues the FreezeOut schedule at
   the exact step.  A run stopped before its first checkpoint starts over.
4. Nothing is written before all that checked out; the log is only ever
   appended to, with a ``{"resume": E, "step": S}`` record.

``freezeout-train`` (``freezeout_tf.cli``, also ``scripts/train_cifar.py``)
is this module plus options and printing; a notebook resumes the same way
(``train``, ``options`` and ``EPOCHS`` are yours)::

    files = RunFiles("runs", "demo")
    start = start_or_resume(
        files, options, resume=True, steps_per_epoch=40,
        build=lambda: build_model("densenet", 40, 12, num_classes=10),
        compile=lambda m: compile_model(m, make_optimizer("sgd", 0.1)))
    log = open_log(files, options, resume=True,
                   initial_epoch=start.initial_epoch, steps_per_epoch=40)
    run = run_callbacks(files, log, num_units=start.model.num_units,
                        epochs=EPOCHS, steps_per_epoch=40)
    start.model.fit(train, epochs=EPOCHS, initial_epoch=start.initial_epoch,
                    callbacks=run.callbacks)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional

import keras

from freezeout_tf import models
from freezeout_tf.callbacks import summaries
from freezeout_tf.callbacks.divergence import StopOnDivergence
from freezeout_tf.callbacks.freezeout import FreezeOut
from freezeout_tf.core.optimizer import original_sgd
from freezeout_tf.recipes import checkpoint, training_log

__all__ = [
    "ARCHITECTURES",
    "OPTIMIZERS",
    "RunCallbacks",
    "RunError",
    "RunFiles",
    "RunStart",
    "StopAfter",
    "build_model",
    "compile_model",
    "make_optimizer",
    "open_log",
    "run_callbacks",
    "start_or_resume",
    "vgg_config",
    "write_json_atomic",
]

ARCHITECTURES = ("densenet", "wrn", "vgg")
OPTIMIZERS = ("sgd", "adam", "adamw")


class RunError(ValueError):
    """The files of a run do not allow what was asked (start, or resume)."""


# ---------------------------------------------------------------------------
# model and optimizer factories


def vgg_config(depth: int) -> str:
    """The VGG configuration with ``depth`` weight layers (its convs + 3).

    Example:

    >>> vgg_config(19), vgg_config(16)
    ('E', 'D')
    """
    by_depth = {
        models.vgg_num_units(name) + 3: name for name in sorted(models.VGG_CONFIGS)
    }
    if depth not in by_depth:
        raise ValueError(
            f"a VGG has depth {', '.join(map(str, sorted(by_depth)))}; got {depth!r}"
        )
    return by_depth[depth]


def build_model(
    architecture: str,
    depth: int,
    width: Optional[int] = None,
    *,
    num_classes: int,
    dropout: float = 0.0,
):
    """One of the original's networks, with a logits output.

    Args:
        architecture: ``"densenet"`` (DenseNet-BC), ``"wrn"`` (Wide ResNet)
            or ``"vgg"`` (VGG with batch norm).
        depth: the network's depth ``L`` (for VGG 11, 13, 16 or 19).
        width: DenseNet's growth rate ``k`` or WRN's widen factor; unused by
            VGG.
        num_classes: outputs of the classifier.
        dropout: dropout rate (DenseNet, WRN).

    Returns:
        A built ``FreezeOutModel`` whose outputs are logits (compile it with
        ``compile_model``).

    Raises:
        ValueError: an unknown architecture, or a depth or width it cannot
            have.

    Example:

    >>> build_model("densenet", 10, 4, num_classes=10).num_units
    6
    """
    if architecture == "densenet":
        return models.densenet_bc(
            depth=depth,
            growth_rate=width,
            num_classes=num_classes,
            dropout=dropout,
            classifier_activation=None,
        )
    if architecture == "wrn":
        return models.wide_resnet(
            depth=depth,
            widen_factor=width,
            num_classes=num_classes,
            dropout=dropout,
            classifier_activation=None,
        )
    if architecture == "vgg":
        return models.vgg(
            vgg_config(depth),
            num_classes=num_classes,
            batch_norm=True,
            classifier_activation=None,
        )
    raise ValueError(
        f"architecture must be one of {list(ARCHITECTURES)}; got {architecture!r}"
    )


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """A fresh optimizer by name, with a constant base learning rate.

    ``"sgd"`` is the original recipe (``original_sgd``: Nesterov momentum
    0.9, L2 1e-4 added to the gradient); ``"adam"`` and ``"adamw"`` are
    Keras' with their defaults.

    Example:

    >>> make_optimizer("adam", 1e-3).__class__.__name__
    'Adam'
    """
    if name == "sgd":
        return original_sgd(learning_rate)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate)
    raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}; got {name!r}")


def compile_model(
    model,
    optimizer: keras.optimizers.Optimizer,
    *,
    jit_compile: bool = False,
    steps_per_execution: int = 1,
) -> None:
    """Compiles a ``build_model`` network: cross-entropy on logits, accuracy.

    Example:

    >>> model = build_model("densenet", 10, 4, num_classes=10)
    >>> compile_model(model, make_optimizer("sgd", 0.1))
    >>> round(float(model.optimizer.learning_rate), 6)
    0.1
    """
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=bool(jit_compile),
        steps_per_execution=steps_per_execution,
    )


# ---------------------------------------------------------------------------
# the files of a run


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """Where the run ``name`` keeps its files under ``directory``.

    Example:

    >>> files = RunFiles("/runs", "demo")
    >>> files.checkpoint, files.log, files.options, files.tensorboard
    ('/runs/demo.keras', '/runs/demo.jsonl', '/runs/demo.args.json', \
'/runs/tensorboard/demo')
    """

    directory: str
    name: str

    def _path(self, suffix: str) -> str:
        return os.path.join(self.directory, self.name + suffix)

    @property
    def checkpoint(self) -> str:
        return self._path(".keras")

    @property
    def log(self) -> str:
        return self._path(".jsonl")

    @property
    def options(self) -> str:
        return self._path(".args.json")

    @property
    def tensorboard(self) -> str:
        return os.path.join(self.directory, "tensorboard", self.name)


@dataclasses.dataclass
class RunStart:
    """What ``start_or_resume`` found.

    Attributes:
        model: the compiled model to ``fit``.
        initial_epoch: epochs already trained (``fit``'s ``initial_epoch``).
        resumed: whether ``model`` is the run's checkpoint.
        restarted: ``--resume`` of a run stopped before its first checkpoint,
            which therefore starts over (appending to its log).
    """

    model: Any
    initial_epoch: int
    resumed: bool
    restarted: bool = False


def _changed_options(files: RunFiles, options: Mapping[str, Any]) -> list:
    with open(files.options, encoding="utf-8") as f:
        saved = json.load(f)
    return [
        f"--{key} {saved[key]!r} -> {value!r}"
        for key, value in options.items()
        if key in saved and saved[key] != value
    ]


def start_or_resume(
    files: RunFiles,
    options: Mapping[str, Any],
    *,
    resume: bool,
    steps_per_epoch: int,
    build: Callable[[], Any],
    compile: Callable[[Any], None],  # noqa: A002 - mirrors Model.compile
) -> RunStart:
    """Checks the run's files and returns the model to train; writes nothing.

    Args:
        files: the run's ``RunFiles``.
        options: the options that define the run (JSON values); on resume
            they must equal the saved ones.
        resume: continue the run in ``files`` rather than start a new one.
        steps_per_epoch: steps of one epoch (to count the checkpoint's
            epochs).
        build: makes the fresh model (called inside the caller's strategy
            scope, if any).
        compile: compiles a fresh model (a loaded checkpoint comes compiled).

    Raises:
        RunError: a new run over existing files; a resume with other
            options, or of a run that does not exist.
        freezeout_tf.recipes.checkpoint.CheckpointError: the checkpoint is torn,
            foreign, or not a whole number of epochs; it is left as it is.
    """
    if not resume:
        for path in (files.checkpoint, files.log):
            if os.path.exists(path):
                raise RunError(f"{path!r} exists: that run has started")
        model = build()
        compile(model)
        return RunStart(model, 0, resumed=False)

    has_options = os.path.isfile(files.options)
    if has_options:
        changed = _changed_options(files, options)
        if changed:
            raise RunError(
                "resuming with options other than the run's: " + ", ".join(changed)
            )
    if not os.path.isfile(files.checkpoint):
        if not has_options:
            raise RunError(
                f"there is no checkpoint {files.checkpoint!r} to resume"
            )
        model = build()
        compile(model)
        return RunStart(model, 0, resumed=False, restarted=True)
    model = checkpoint.load_checkpoint(files.checkpoint)
    epochs = checkpoint.completed_epochs(model, steps_per_epoch)
    return RunStart(model, epochs, resumed=True)


def open_log(
    files: RunFiles,
    options: Mapping[str, Any],
    *,
    resume: bool,
    initial_epoch: int,
    steps_per_epoch: int,
    info: Optional[Dict[str, Any]] = None,
) -> training_log.MetricsLog:
    """Starts writing a run checked by ``start_or_resume``: its first writes.

    Creates the directory, removes the temporary file of a checkpoint write
    that a killed run left, saves ``options`` (plus ``info``, which resume
    does not compare) for a new run, and appends a resume record to the log
    of a resumed one.

    Returns:
        The run's ``MetricsLog``.
    """
    os.makedirs(files.directory, exist_ok=True)
    torn = checkpoint.temporary_path(files.checkpoint)
    if os.path.exists(torn):
        os.remove(torn)
    if not resume:
        write_json_atomic(files.options, {**options, **(info or {})})
    log = training_log.MetricsLog(files.log)
    if resume:
        log.append(
            {"resume": initial_epoch, "step": initial_epoch * steps_per_epoch}
        )
    return log


def write_json_atomic(path: str, obj) -> None:
    """Writes ``obj`` as JSON to ``path``: all of it or, if killed, nothing.

    Example:

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "options.json")
    >>> write_json_atomic(path, {"epochs": 3})
    >>> json.load(open(path))
    {'epochs': 3}
    """
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class StopAfter(keras.callbacks.Callback):
    """Ends ``fit`` after epoch ``last`` (1-based), after its checkpoint.

    The schedule still spans the ``fit`` call's ``epochs``: resume later to
    finish the run (e.g. on preemptible machines). Put it after
    ``EpochCheckpoint`` in the callback list.

    Args:
        last: the last epoch to train in this call, 1-based.
    """

    def __init__(self, last: int):
        super().__init__()
        self.last = last

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= self.last:
            self.model.stop_training = True


@dataclasses.dataclass(frozen=True)
class RunCallbacks:
    """The callbacks of a run (``run_callbacks``).

    Attributes:
        callbacks: the list for ``fit(callbacks=...)``, in order.
        divergence: the ``StopOnDivergence`` among them: after ``fit``,
            whether (and at which step) the training loss became non-finite.
    """

    callbacks: List[keras.callbacks.Callback]
    divergence: StopOnDivergence


def run_callbacks(
    files: RunFiles,
    log: training_log.MetricsLog,
    *,
    num_units: int,
    epochs: int,
    steps_per_epoch: int,
    t_0: float = 0.8,
    how_scale: str = "cubic",
    scale_lr: bool = True,
    stop_after: Optional[int] = None,
) -> RunCallbacks:
    """The callbacks of a run kept in ``files``, as ``freezeout-train`` uses them.

    In this order: ``FreezeOut``'s schedule; ``StopOnDivergence`` (appends
    its record to ``log``); the metrics log (``MetricsLogger``); TensorBoard,
    the schedule's scalars under ``files.tensorboard/freezeout`` and Keras'
    beside them; the checkpoint after every epoch (``EpochCheckpoint``); and,
    if ``stop_after`` is given, ``StopAfter`` after the checkpoint, so the
    last epoch is saved before ``fit`` ends.

    Args:
        files: the run's ``RunFiles``.
        log: the run's ``MetricsLog`` (from ``open_log``).
        num_units: the model's freeze units.
        epochs: the ``epochs`` of the ``fit`` call (the schedule spans them).
        steps_per_epoch: training steps per epoch.
        t_0: FreezeOut's ``t_0`` (see ``FreezeOut``).
        how_scale: FreezeOut's ``how_scale``.
        scale_lr: FreezeOut's ``scale_lr``.
        stop_after: end ``fit`` after this epoch (1-based), or None.

    Returns:
        A ``RunCallbacks``.

    Example:

    >>> files = RunFiles("/runs", "demo")
    >>> log = training_log.MetricsLog(files.log)
    >>> run = run_callbacks(files, log, num_units=3, epochs=4,
    ...                     steps_per_epoch=10, stop_after=2)
    >>> [type(c).__name__ for c in run.callbacks]  # doctest: +NORMALIZE_WHITESPACE
    ['FreezeOut', 'StopOnDivergence', 'MetricsLogger', 'FreezeOutSummaries',
     'TensorBoard', 'EpochCheckpoint', 'StopAfter']
    """
    divergence = StopOnDivergence(log)
    callbacks = [
        FreezeOut(t_0=t_0, how_scale=how_scale, scale_lr=scale_lr),
        divergence,
        training_log.MetricsLogger(log, epochs=epochs, num_units=num_units),
        summaries.FreezeOutSummaries(
            os.path.join(files.tensorboard, "freezeout"),
            num_units=num_units,
            total_steps=epochs * steps_per_epoch,
            t_0=t_0,
            how_scale=how_scale,
            scale_lr=scale_lr,
        ),
        keras.callbacks.TensorBoard(log_dir=files.tensorboard, write_graph=False),
        checkpoint.EpochCheckpoint(files.checkpoint),
    ]
    if stop_after is not None:
        callbacks.append(StopAfter(stop_after))
    return RunCallbacks(callbacks, divergence)
