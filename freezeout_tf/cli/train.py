#!/usr/bin/env python
"""Train a DenseNet-BC, Wide ResNet or VGG on CIFAR-10/100 with FreezeOut.

The Keras 3 / TensorFlow counterpart of the original FreezeOut training
script: every option of the original works under its original name and a
hyphenated one (``--t_0`` / ``--t-0``, ...).  Examples::

    # the original's default run: DenseNet-BC L=76 k=12 on CIFAR-100, which
    # tensorflow-datasets downloads (161 MiB) and prepares on first use under
    # --data-dir (default ~/tensorflow_datasets)
    python scripts/train_cifar.py --output-dir runs/densenet76

    # a one-minute demo on synthetic data (no download needed)
    python scripts/train_cifar.py --dataset synthetic -L 10 -k 4 --epochs 3

    # continue it after an interruption, at the exact step
    python scripts/train_cifar.py --dataset synthetic -L 10 -k 4 --epochs 3 --resume

Outputs, under ``--output-dir``: ``NAME.keras`` (checkpoint after every
epoch, with optimizer state, replaced atomically), ``NAME.jsonl`` (metrics
log, JSON lines, appended), ``NAME.args.json`` (the options of the run,
checked on ``--resume``) and ``tensorboard/NAME/`` (TensorBoard event files).
``NAME`` is ``--save-weights`` or derived from the options.  The run itself
is ``freezeout_tf.training``; this script parses options and prints.

Exit status: 0 done; 2 bad input (an option, or files that do not allow the
run, such as a torn checkpoint on ``--resume``) or a data set that could not
be downloaded (no network, a proxy that refuses, a checksum mismatch: within
seconds, see ``freezeout_tf.download``), refused with one line before
anything is written under ``--output-dir``; 3 the training loss became
non-finite: the run stopped in that epoch, and its last good checkpoint is
kept.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import List, NoReturn, Optional

# Only the standard library up to here: options are checked before
# TensorFlow (seconds to import) is loaded.

if __package__ in (None, ""):  # run as a script from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_DEPTH = {"densenet": 76, "wrn": 28, "vgg": 19}
DEFAULT_WIDTH = {"densenet": 12, "wrn": 10, "vgg": None}
VGG_DEPTHS = {11: "A", 13: "B", 16: "D", 19: "E"}
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3}
WHICH_DATASET = {"10": "cifar10", "100": "cifar100"}
# Options that must not change between a run and its --resume.
RESUME_KEYS = (
    "model",
    "depth",
    "growth_rate",
    "dropout",
    "dataset",
    "validate",
    "augment",
    "batch_size",
    "epochs",
    "t_0",
    "how_scale",
    "scale_lr",
    "seed",
    "optimizer",
    "learning_rate",
    "synthetic_train_size",
    "mixed_precision",
)
VERBOSE_CHOICES = ("auto", "0", "1", "2")
EXIT_USAGE = 2
EXIT_DIVERGED = 3


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except those that are None (derived; the help says how)."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Reports an error in one line, with a pointer to ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            EXIT_USAGE,
            f"{self.prog}: error: {message} (see {self.prog} --help)\n",
        )


class UsageError(Exception):
    """Bad input: reported as ``prog: error: message`` with exit status 2.

    ``options=False`` for input other than the options (e.g. a torn
    checkpoint), where pointing to ``--help`` would not help.
    """

    def __init__(self, message: str, options: bool = True):
        super().__init__(message)
        self.options = options


# ---------------------------------------------------------------------------
# options


def build_parser() -> argparse.ArgumentParser:
    """The options; each of the original script keeps its name."""
    p = _Parser(
        prog="train_cifar.py",
        description=(
            "Train a network on CIFAR-10/100 with FreezeOut (progressively freezing "
            "layers). Options of the original script keep their names; each also has "
            "a hyphenated form."
        ),
        formatter_class=_HelpFormatter,
    )
    net = p.add_argument_group("network")
    net.add_argument(
        "--model",
        choices=("densenet", "wrn", "vgg"),
        default="densenet",
        help="DenseNet-BC, Wide ResNet or VGG (with batch norm)",
    )
    net.add_argument(
        "-L",
        "--depth",
        type=int,
        default=None,
        help="network depth; default 76 for densenet ((L-4) %% 6 == 0), "
        "28 for wrn ((L-4) %% 6 == 0), 19 for vgg (11, 13, 16 or 19)",
    )
    net.add_argument(
        "-k",
        "--growth-rate",
        "--growth_rate",
        dest="growth_rate",
        type=int,
        default=None,
        help="growth rate of densenet (default 12) or widen factor of wrn "
        "(default 10); unused for vgg",
    )
    net.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="dropout rate in [0, 1) (densenet, wrn)",
    )

    fo = p.add_argument_group("FreezeOut")
    fo.add_argument(
        "--t_0",
        "--t-0",
        dest="t_0",
        type=float,
        default=0.8,
        help="fraction of training, before scaling, after which the first "
        "unit freezes; in (0, 1]",
    )
    fo.add_argument(
        "--how_scale",
        "--how-scale",
        dest="how_scale",
        default="cubic",
        choices=("linear", "squared", "cubic"),
        help="scaling of the freeze times t_i",
    )
    scale = fo.add_mutually_exclusive_group()
    scale.add_argument(
        "--scale_lr",
        "--scale-lr",
        dest="scale_lr",
        action="store_true",
        default=True,
        help="start each unit's learning rate at lr / t_i (default)",
    )
    scale.add_argument(
        "--no_scale",
        "--no-scale",
        "--no-scale-lr",
        dest="scale_lr",
        action="store_false",
        help="start every unit at the base rate",
    )
    fo.add_argument(
        "--const_time",
        "--const-time",
        dest="const_time",
        action="store_true",
        help="multiply the epochs by 1 / (1 - estimated speedup), rounded up, "
        "to spend the time of a run without FreezeOut",
    )

    data = p.add_argument_group("data")
    data.add_argument(
        "--dataset",
        choices=("cifar100", "cifar10", "synthetic"),
        default=None,
        help="data set (default cifar100, or as --which_dataset); 'synthetic' "
        "needs no download: random CIFAR-shaped images of 100 classes",
    )
    data.add_argument(
        "--which_dataset",
        "--which-dataset",
        dest="which_dataset",
        choices=("10", "100"),
        default=None,
        help="the original's switch: 10 = CIFAR-10, 100 = CIFAR-100",
    )
    data.add_argument(
        "--data-dir",
        "--data_dir",
        dest="data_dir",
        default=None,
        help="tensorflow-datasets data directory of cifar10/cifar100: "
        "downloaded and prepared there if it is not yet, unless --no-download "
        "(default $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )
    down = data.add_mutually_exclusive_group()
    down.add_argument(
        "--download",
        dest="download",
        action="store_true",
        default=True,
        help="download and prepare cifar10/cifar100 with tensorflow-datasets "
        "if it is not prepared under --data-dir (CIFAR-100: 161 MiB) (default)",
    )
    down.add_argument(
        "--no-download",
        "--no_download",
        dest="download",
        action="store_false",
        help="never download: refuse to start if the data set is not prepared "
        "under --data-dir (e.g. offline, with a copied data directory)",
    )
    aug = data.add_mutually_exclusive_group()
    aug.add_argument(
        "--augment",
        dest="augment",
        action="store_true",
        default=True,
        help="random crop (pad 4) and horizontal flip of training images (default)",
    )
    aug.add_argument(
        "--no-augment",
        "--no_augment",
        dest="augment",
        action="store_false",
        help="no augmentation",
    )
    val = data.add_mutually_exclusive_group()
    val.add_argument(
        "--validate",
        dest="validate",
        action="store_const",
        const="validate",
        default="validate",
        help="hold out the last 5,000 training images and evaluate on them (default)",
    )
    val.add_argument(
        "--no-validate",
        "--no_validate",
        dest="validate",
        action="store_const",
        const="none",
        help="train on all 50,000 images, evaluate on nothing",
    )
    val.add_argument(
        "--validate-test",
        "--validate_test",
        dest="validate",
        action="store_const",
        const="test",
        help="train on all 50,000 images, evaluate on the test set",
    )
    data.add_argument(
        "--synthetic-train-size",
        "--synthetic_train_size",
        dest="synthetic_train_size",
        type=int,
        default=2000,
        help="training images of --dataset synthetic",
    )
    data.add_argument(
        "--synthetic-val-size",
        "--synthetic_val_size",
        dest="synthetic_val_size",
        type=int,
        default=500,
        help="validation images of --dataset synthetic",
    )

    tr = p.add_argument_group("training")
    tr.add_argument("--epochs", type=int, default=100, help="epochs")
    tr.add_argument(
        "--batch_size",
        "--batch-size",
        dest="batch_size",
        type=int,
        default=50,
        help="images per batch",
    )
    tr.add_argument(
        "--optimizer",
        choices=("sgd", "adam", "adamw"),
        default="sgd",
        help="sgd: the original recipe (Nesterov momentum 0.9, L2 1e-4 added to "
        "the gradient); adam; adamw (Keras' default decoupled decay)",
    )
    tr.add_argument(
        "--learning-rate",
        "--learning_rate",
        "--lr",
        dest="learning_rate",
        type=float,
        default=None,
        help="base learning rate (default 0.1 for sgd, 0.001 for adam/adamw)",
    )
    tr.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed of weights, data order and augmentation",
    )
    tr.add_argument(
        "--deterministic",
        dest="deterministic",
        action="store_true",
        default=True,
        help="deterministic ops (tf.config.experimental.enable_op_determinism), "
        "so a resumed run ends with the same weights as an uninterrupted one (default)",
    )
    tr.add_argument(
        "--no-deterministic",
        dest="deterministic",
        action="store_false",
        help="allow non-deterministic (possibly faster) ops",
    )
    tr.add_argument(
        "--jit-compile",
        "--jit_compile",
        dest="jit_compile",
        action="store_true",
        help="compile the train step with XLA",
    )
    tr.add_argument(
        "--steps-per-execution",
        "--steps_per_execution",
        dest="steps_per_execution",
        type=int,
        default=1,
        help="train steps per tf.function call (the schedule stays exact per step)",
    )
    tr.add_argument(
        "--mixed-precision",
        "--mixed_precision",
        dest="mixed_precision",
        choices=("off", "float16", "bfloat16"),
        default="off",
        help="Keras mixed-precision policy (mixed_float16 / mixed_bfloat16)",
    )
    tr.add_argument(
        "--strategy",
        choices=("default", "mirrored", "multi-worker"),
        default="default",
        help="tf.distribute strategy: default (one device), mirrored "
        "(all local GPUs) or multi-worker (the cluster in TF_CONFIG; give "
        "each worker its own --output-dir)",
    )

    out = p.add_argument_group("output")
    out.add_argument(
        "--output-dir",
        "--output_dir",
        dest="output_dir",
        default="runs",
        help="directory of the checkpoint, metrics log and TensorBoard logs",
    )
    out.add_argument(
        "--save-weights",
        "--save_weights",
        dest="save_weights",
        default=None,
        help="name of the checkpoint (NAME.keras) and metrics log (NAME.jsonl); "
        "default derived from the options",
    )
    out.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint NAME.keras, at the exact step",
    )
    out.add_argument(
        "--stop-after",
        "--stop_after",
        dest="stop_after",
        type=int,
        default=None,
        metavar="EPOCH",
        help="stop after this epoch (the schedule still spans --epochs); "
        "continue later with --resume, e.g. on preemptible machines",
    )
    out.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="check the options, open the data set (never downloading it), "
        "build the model, print the plan and exit, writing nothing",
    )
    out.add_argument(
        "--summary", action="store_true", help="print the full Keras model summary"
    )
    out.add_argument(
        "--verbose",
        choices=VERBOSE_CHOICES,
        default="auto",
        help="Keras fit's output, besides the script's own line per epoch: 0 "
        "none, 1 a progress bar, 2 Keras' line per epoch; auto: 1 when stdout "
        "is a terminal, else 0 (a log file gets one plain line per epoch, no "
        "carriage returns or escape codes). Also the download's progress: "
        "tensorflow-datasets' bars with 1, plain lines otherwise",
    )
    return p


def _depth_error(model: str, depth: int) -> Optional[str]:
    """What is wrong with ``-L depth`` for ``model``, or None.

    The builders in ``freezeout_tf.models`` check the same rules once
    TensorFlow is loaded; these early copies only make a bad option fail
    fast, and a test checks that both agree.
    """
    if model == "vgg":
        if depth not in VGG_DEPTHS:
            return f"it must be one of {', '.join(map(str, VGG_DEPTHS))} for vgg"
        return None
    if depth < 10 or (depth - 4) % 6:
        example = "40, 76, 100" if model == "densenet" else "16, 22, 28"
        return (
            f"it must be 10 or more with (depth - 4) % 6 == 0 for {model} "
            f"(e.g. {example})"
        )
    return None


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fills derived defaults and checks every value; raises UsageError.

    Imports nothing heavy, so a bad option is refused in milliseconds.
    """
    if args.dataset is None:
        args.dataset = WHICH_DATASET[args.which_dataset or "100"]
    elif (
        args.which_dataset is not None
        and WHICH_DATASET[args.which_dataset] != args.dataset
    ):
        raise UsageError(
            f"--which_dataset {args.which_dataset} contradicts --dataset {args.dataset}"
        )
    if args.depth is None:
        args.depth = DEFAULT_DEPTH[args.model]
    if args.growth_rate is None:
        args.growth_rate = DEFAULT_WIDTH[args.model]
    if args.learning_rate is None:
        args.learning_rate = DEFAULT_LR[args.optimizer]
    if not 0.0 < args.t_0 <= 1.0:  # also refuses nan
        raise UsageError(f"--t_0 {args.t_0:g} is not allowed: it must be in (0, 1]")
    if args.epochs < 1:
        raise UsageError(f"--epochs {args.epochs} is not allowed: it must be 1 or more")
    if args.batch_size < 1:
        raise UsageError(
            f"--batch_size {args.batch_size} is not allowed: it must be 1 or more"
        )
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise UsageError(
            f"--learning-rate {args.learning_rate:g} is not allowed: it must be > 0"
        )
    if not 0.0 <= args.dropout < 1.0:
        raise UsageError(
            f"--dropout {args.dropout:g} is not allowed: it must be in [0, 1)"
        )
    if args.steps_per_execution < 1:
        raise UsageError(
            f"--steps-per-execution {args.steps_per_execution} is not allowed: "
            "it must be 1 or more"
        )
    if args.synthetic_train_size < 1 or args.synthetic_val_size < 0:
        raise UsageError(
            f"--synthetic-train-size {args.synthetic_train_size} / "
            f"--synthetic-val-size "
            f"{args.synthetic_val_size} are not allowed: need >= 1 and >= 0"
        )
    depth_error = _depth_error(args.model, args.depth)
    if depth_error:
        raise UsageError(f"--depth {args.depth} is not allowed: {depth_error}")
    if args.model != "vgg" and (args.growth_rate is None or args.growth_rate < 1):
        raise UsageError(
            f"--growth-rate {args.growth_rate} is not allowed: it must be 1 or more"
        )
    if args.stop_after is not None and args.stop_after < 1:
        raise UsageError(
            f"--stop-after {args.stop_after} is not allowed: it must be 1 or more"
        )
    args.verbose = fit_verbosity(args.verbose, sys.stdout)
    if args.save_weights is not None and (
        not args.save_weights
        or os.sep in args.save_weights
        or args.save_weights.startswith(".")
    ):
        raise UsageError(
            f"--save-weights {args.save_weights!r} is not allowed: it must be a "
            "plain file name (no directory; put directories in --output-dir)"
        )
    return args


def fit_verbosity(choice, stream) -> int:
    """Keras ``fit(verbose=...)`` for ``--verbose choice`` printing to ``stream``.

    ``auto`` is the progress bar (1) on a terminal and nothing (0) otherwise:
    piped or redirected, Keras' bar would write dozens of carriage returns and
    escape codes per epoch, and the script's own epoch line says it all.
    """
    if choice == "auto":
        isatty = getattr(stream, "isatty", None)
        return 1 if isatty is not None and isatty() else 0
    return int(choice)


def run_name(args: argparse.Namespace) -> str:
    """The default --save-weights: the options that define the run."""
    if args.save_weights:
        return args.save_weights
    net = {
        "densenet": f"densenetbc{args.depth}-{args.growth_rate}",
        "wrn": f"wrn{args.depth}-{args.growth_rate}",
        "vgg": f"vgg{args.depth}",
    }[args.model]
    parts = [
        net,
        args.dataset,
        f"t0-{args.t_0:g}",
        args.how_scale,
        "scaled" if args.scale_lr else "unscaled",
        f"e{args.epochs}",
        f"b{args.batch_size}",
        f"seed{args.seed}",
    ]
    if args.optimizer != "sgd":
        parts.append(args.optimizer)
    if args.const_time:
        parts.append("consttime")
    if args.dropout:
        parts.append(f"drop{args.dropout:g}")
    return "_".join(parts)


# ---------------------------------------------------------------------------
# main


def estimate_speedup(model, args: argparse.Namespace):
    """(speedup used for --const_time, description of the estimates)."""
    from freezeout_tf import speedup

    estimate = float(speedup.estimate_speedup(model, args.t_0, args.how_scale))
    text = f"{100 * estimate:.1f}% (from the model's per-unit costs)"
    if args.model == "densenet":
        m = (args.depth - 4) // 6
        original = float(
            speedup.calc_speedup(args.growth_rate, m, args.t_0, args.how_scale)
        )
        text += f"; original calc_speedup: {100 * original:.1f}%"
    return estimate, text


def count_params(variables) -> int:
    import numpy as np

    return int(sum(np.prod(v.shape) for v in variables))


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        check_args(args)
    except UsageError as err:
        return _exit_code(parser, err)
    except SystemExit as stop:  # --help (0) or an argparse error (2)
        return int(stop.code or 0)
    saved = _global_state()
    try:
        return _run(args)
    except UsageError as err:
        return _exit_code(parser, err)
    finally:
        _restore_global_state(saved)


def _exit_code(parser: argparse.ArgumentParser, err: UsageError) -> int:
    if not err.options:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        parser.error(str(err))
    except SystemExit as stop:
        return int(stop.code)
    raise AssertionError("ArgumentParser.error returned")  # pragma: no cover


def _import_tensorflow_quietly(gpus_wanted: bool) -> None:
    """Imports TensorFlow without its start-up noise on a machine with no GPU.

    TensorFlow's C++ libraries print lines such as ``Could not find cuda
    drivers`` and ``E0000 ... failed call to cuInit`` to the process's
    stderr before TF_CPP_MIN_LOG_LEVEL applies, so they are caught at the
    file descriptor while TensorFlow loads and looks for GPUs. They are
    shown after all when GPUs were asked for and none was found (then they
    say why), and never caught if TF_CPP_MIN_LOG_LEVEL asks for info or
    warnings (0 or 1).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] in "01":
        import tensorflow  # noqa: F401
        return
    import tempfile

    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
        if gpus_wanted and not gpus:
            caught.seek(0)
            sys.stderr.write(caught.read().decode("utf-8", "replace"))


def _global_state():
    """Process-wide settings that a run changes (``main`` may be called in-process)."""
    if "tensorflow" not in sys.modules:
        return None
    import keras
    from tensorflow.python.framework import config as tf_config

    return (
        keras.mixed_precision.global_policy().name,
        tf_config.is_op_determinism_enabled(),
    )


def _restore_global_state(saved) -> None:
    if "tensorflow" not in sys.modules:
        return
    import keras
    from tensorflow.python.framework import config as tf_config

    policy, deterministic = saved if saved is not None else ("float32", False)
    keras.mixed_precision.set_global_policy(policy)
    if deterministic:
        tf_config.enable_op_determinism()
    else:
        tf_config.disable_op_determinism()


def _run(args: argparse.Namespace) -> int:
    _import_tensorflow_quietly(gpus_wanted=args.strategy != "default")
    import keras
    import tensorflow as tf

    from freezeout_tf import (
        checkpoint,
        data,
        distribute,
        download,
        summaries,
        training,
        training_log,
    )
    from freezeout_tf.callback import FreezeOut
    from freezeout_tf.divergence import StopOnDivergence

    keras.backend.clear_session()
    keras.utils.set_random_seed(args.seed)
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    # freezeout_tf.distribute: the strategy first (a multi-worker one must be
    # made before other TF ops run), then the dtype policy.
    strategy = distribute.make_strategy(args.strategy)
    distribute.set_mixed_precision(args.mixed_precision)

    # 1. Open the data set, downloading it first if needed (nothing is written
    # under --output-dir before everything checks out).
    if args.dataset != "synthetic" and args.download and not args.dry_run:
        try:
            download.prepare(
                args.dataset,
                args.data_dir,
                progress="bar" if args.verbose == 1 else "lines",
            )
        except download.DownloadError as err:
            raise UsageError(str(err), options=False) from None
    try:
        ds = data.load_data(
            args.dataset,
            data_dir=args.data_dir,
            validation=args.validate,
            augment=args.augment,
            batch_size=args.batch_size,
            seed=args.seed,
            synthetic_train_size=args.synthetic_train_size,
            synthetic_validation_size=args.synthetic_val_size,
        )
    except data.DatasetNotFoundError as err:
        dry = " (--dry-run downloads nothing)" if args.dry_run and args.download else ""
        raise UsageError(f"{err}{dry}") from None
    except ValueError as err:
        raise UsageError(str(err)) from None

    # 2. Build the model, or load the checkpoint to resume.
    name = run_name(args)
    files = training.RunFiles(os.path.abspath(args.output_dir), name)
    run_args = {k: getattr(args, k) for k in RESUME_KEYS}
    with strategy.scope():
        try:
            start = training.start_or_resume(
                files,
                run_args,
                resume=args.resume,
                steps_per_epoch=ds.steps_per_epoch,
                build=lambda: training.build_model(
                    args.model,
                    args.depth,
                    args.growth_rate,
                    num_classes=ds.num_classes,
                    dropout=args.dropout,
                ),
                compile=lambda m: training.compile_model(
                    m,
                    training.make_optimizer(args.optimizer, args.learning_rate),
                    jit_compile=args.jit_compile,
                    steps_per_execution=args.steps_per_execution,
                ),
            )
        except training.RunError as err:
            if args.resume:
                raise UsageError(f"--resume: {err}", options=False) from None
            raise UsageError(
                f"{err}: pass --resume to continue it, or choose another "
                "--output-dir or --save-weights",
                options=False,
            ) from None
        except checkpoint.CheckpointError as err:
            raise UsageError(
                f"--resume: {err}; the file was left as it is", options=False
            ) from None
    model, initial_epoch = start.model, start.initial_epoch
    if start.restarted:
        print(f"--resume: {name} has no checkpoint yet; starting it from epoch 0")

    speedup, speedup_text = estimate_speedup(model, args)
    epochs = args.epochs
    if args.const_time:
        epochs = int(math.ceil(args.epochs / (1.0 - speedup) - 1e-9))

    # 3. Describe the run.
    trainable = count_params(model.trainable_variables)
    if args.summary:
        model.summary()
    net = {
        "densenet": f"DenseNet-BC L={args.depth} k={args.growth_rate}",
        "wrn": f"WRN-{args.depth}-{args.growth_rate}",
        "vgg": f"VGG-{args.depth} ({VGG_DEPTHS.get(args.depth)}) with BN",
    }[args.model]
    val_text = {
        "validate": f"validation on {ds.num_validation} held-out images",
        "test": f"evaluation on the {ds.num_validation} test images",
        "none": "no validation",
    }[args.validate]
    print(
        f"model: {net}, {model.num_units} freeze units + head, "
        f"{trainable:,} trainable parameters ({model.count_params():,} in all)"
    )
    print(
        f"data: {args.dataset}, {ds.num_train} training images, {val_text}, batch "
        f"{args.batch_size}, {ds.steps_per_epoch} steps/epoch, "
        f"augment {'on' if args.augment else 'off'}"
    )
    print(
        f"FreezeOut: t_0={args.t_0:g}, {args.how_scale}, "
        f"{'scaled' if args.scale_lr else 'unscaled'} lr; "
        f"estimated speedup {speedup_text}"
    )
    print(
        f"training: {epochs} epochs"
        + (
            f" (--const_time: {args.epochs} / (1 - {speedup:.4f}))"
            if args.const_time
            else ""
        )
        + f", {args.optimizer} lr {args.learning_rate:g}, seed {args.seed}"
        + (f", strategy {args.strategy}" if args.strategy != "default" else "")
        + (
            f", mixed precision {args.mixed_precision}"
            if args.mixed_precision != "off"
            else ""
        )
        + "; "
        f"output {os.path.join(files.directory, name)}.*"
    )
    if initial_epoch >= epochs:
        print(
            f"{files.checkpoint} has already trained {initial_epoch} of {epochs} "
            "epochs: nothing to do"
        )
        return 0
    if initial_epoch:
        print(
            f"resuming after epoch {initial_epoch} (step "
            f"{initial_epoch * ds.steps_per_epoch}) from {files.checkpoint}"
        )

    if args.dry_run:
        print("--dry-run: nothing written")
        return 0

    # 4. Only now write anything.
    metrics = training.open_log(
        files,
        run_args,
        resume=args.resume,
        initial_epoch=initial_epoch,
        steps_per_epoch=ds.steps_per_epoch,
        info={"epochs_run": epochs, "name": name},
    )
    divergence = StopOnDivergence(metrics)
    callbacks = [
        FreezeOut(t_0=args.t_0, how_scale=args.how_scale, scale_lr=args.scale_lr),
        divergence,
        training_log.MetricsLogger(metrics, epochs=epochs, num_units=model.num_units),
        summaries.FreezeOutSummaries(
            os.path.join(files.tensorboard, "freezeout"),
            num_units=model.num_units,
            total_steps=epochs * ds.steps_per_epoch,
            t_0=args.t_0,
            how_scale=args.how_scale,
            scale_lr=args.scale_lr,
        ),
        keras.callbacks.TensorBoard(log_dir=files.tensorboard, write_graph=False),
        checkpoint.EpochCheckpoint(files.checkpoint),
    ]
    if args.stop_after is not None:
        callbacks.append(training.StopAfter(args.stop_after))
    start_time = time.perf_counter()
    model.fit(
        ds.train(initial_epoch, epochs),
        epochs=epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=ds.steps_per_epoch,
        validation_data=ds.validation,
        callbacks=callbacks,
        verbose=args.verbose,
        shuffle=False,  # the pipeline shuffles, reproducibly per epoch
    )
    if divergence.diverged:
        kept = (
            f"the last good checkpoint {files.checkpoint} is kept"
            if os.path.exists(files.checkpoint)
            else "no checkpoint was written"
        )
        print(
            f"train_cifar.py: error: training diverged: the loss is "
            f"{divergence.loss} at step {divergence.step} of "
            f"{epochs * ds.steps_per_epoch} (epoch {divergence.epoch}); stopped, "
            f"{kept}; try a lower --learning-rate (this run: "
            f"{args.learning_rate:g})",
            file=sys.stderr,
        )
        return EXIT_DIVERGED
    done = (
        int(keras.ops.convert_to_numpy(model.batches_taken))
        // ds.steps_per_epoch
    )
    print(
        f"done: {done - initial_epoch} epochs in "
        f"{time.perf_counter() - start_time:.1f} s; "
        f"checkpoint {files.checkpoint}, log {files.log}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
