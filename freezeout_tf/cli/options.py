"""The options of ``freezeout-train``: the parser and the checks of every value.

The standard library only: a bad option is refused in milliseconds, before
``freezeout_tf.cli.train`` loads TensorFlow (seconds). Every option of the
original FreezeOut script keeps its name and also has a hyphenated form
(``--t_0`` / ``--t-0``, ...).

Constants: ``RESUME_KEYS``, the options that must not change between a run
and its ``--resume``; ``EXIT_USAGE`` (2), ``EXIT_DIVERGED`` (3) and
``EXIT_INTERRUPTED`` (130), the exit statuses of bad input, of a diverged
run and of Ctrl-C.

Example:

>>> args = check_args(build_parser().parse_args(["--dataset", "synthetic"]))
>>> args.depth, args.growth_rate, args.learning_rate
(76, 12, 0.1)
>>> run_name(args)
'densenetbc76-12_synthetic_t0-0.8_cubic_scaled_e100_b50_seed0'
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn, Optional

__all__ = [
    "EXIT_DIVERGED",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "RESUME_KEYS",
    "UsageError",
    "build_parser",
    "check_args",
    "fit_verbosity",
    "run_name",
]

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
# Ctrl-C: 128 + SIGINT, as a shell reports a command that SIGINT ended.
EXIT_INTERRUPTED = 130
# The console script's name; scripts/train_cifar.py passes its own.
PROG = "freezeout-train"


class _DefaultsShown:
    """An argument group whose options' help ends with their default.

    Except defaults that are None (derived; the help says how) or a flag's
    True/False: ``argparse.ArgumentDefaultsHelpFormatter`` without them,
    through public calls only.
    """

    def __init__(self, group):
        self._group = group

    def add_argument(self, *names, **kwargs):
        default = kwargs.get("default")
        if (
            default is not None
            and not isinstance(default, bool)
            and "%(default)" not in kwargs["help"]
        ):
            kwargs["help"] += " (default: %(default)s)"
        return self._group.add_argument(*names, **kwargs)

    def add_mutually_exclusive_group(self, **kwargs):
        return _DefaultsShown(self._group.add_mutually_exclusive_group(**kwargs))


class _Parser(argparse.ArgumentParser):
    """Reports an error in one line, with a pointer to ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            EXIT_USAGE,
            f"{self.prog}: error: {message} (see {self.prog} --help)\n",
        )


class UsageError(Exception):
    """Bad input: reported as ``prog: error: message`` with exit status 2.

    Args:
        message: what is wrong, naming the bad value and what is allowed.
        options: False for input other than the options (e.g. a torn
            checkpoint), where pointing to ``--help`` would not help.

    Example:

    >>> UsageError("--epochs 0 is not allowed: it must be 1 or more").options
    True
    """

    def __init__(self, message: str, options: bool = True):
        super().__init__(message)
        self.options = options


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The parser of every option; each of the original script keeps its name.

    Its errors are one line, ``prog: error: ... (see prog --help)``, with
    exit status 2. Derived defaults (``None`` here) are filled by
    ``check_args``.

    Args:
        prog: the command's name in usage and error lines.

    Returns:
        An ``argparse.ArgumentParser``.

    Example:

    >>> args = build_parser().parse_args(["--t_0", "0.5", "--no-scale"])
    >>> args.t_0, args.scale_lr, args.depth
    (0.5, False, None)
    """
    p = _Parser(
        prog=prog,
        description=(
            "Train a network on CIFAR-10/100 with FreezeOut (progressively freezing "
            "layers). Options of the original script keep their names; each also has "
            "a hyphenated form."
        ),
    )
    net = _DefaultsShown(p.add_argument_group("network"))
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

    fo = _DefaultsShown(p.add_argument_group("FreezeOut"))
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

    data = _DefaultsShown(p.add_argument_group("data"))
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
        help="hold out the last 5,000 training images and evaluate on them",
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

    tr = _DefaultsShown(p.add_argument_group("training"))
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

    out = _DefaultsShown(p.add_argument_group("output"))
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
    """Fills the derived defaults of ``args`` and checks every value.

    Imports nothing heavy, so a bad option is refused in milliseconds.

    Args:
        args: options parsed by ``build_parser``; changed in place (depth,
            growth rate, learning rate and data set from the model and
            optimizer; ``verbose`` as ``fit_verbosity`` makes it).

    Returns:
        ``args``.

    Raises:
        UsageError: a value is not allowed; the message names it and what
            is allowed.

    Example:

    >>> try:
    ...     check_args(build_parser().parse_args(["--t_0", "1.5"]))
    ... except UsageError as err:
    ...     print(err)
    --t_0 1.5 is not allowed: it must be in (0, 1]
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
    # The library's own checks (freezeout_tf.validation loads no TensorFlow),
    # each refusal said as the option it came from.
    from freezeout_tf import validation

    def refuse_unless(shown, rule, check, *check_args, **check_kwargs):
        try:
            check(*check_args, **check_kwargs)
        except ValueError:
            raise UsageError(f"{shown} is not allowed: it must be {rule}") from None

    refuse_unless(f"--t_0 {args.t_0:g}", "in (0, 1]",  # also refuses nan
                  validation.check_t_0, args.t_0)
    refuse_unless(f"--epochs {args.epochs}", "1 or more",
                  validation.check_positive_int, "epochs", args.epochs)
    refuse_unless(f"--batch_size {args.batch_size}", "1 or more",
                  validation.check_positive_int, "batch_size", args.batch_size)
    refuse_unless(f"--learning-rate {args.learning_rate:g}", "> 0",
                  validation.check_number, "learning_rate", args.learning_rate,
                  0, low_open=True)
    refuse_unless(f"--dropout {args.dropout:g}", "in [0, 1)",
                  validation.check_rate, "dropout", args.dropout)
    refuse_unless(f"--steps-per-execution {args.steps_per_execution}",
                  "1 or more", validation.check_positive_int,
                  "steps_per_execution", args.steps_per_execution)
    refuse_unless(f"--synthetic-train-size {args.synthetic_train_size}",
                  "1 or more", validation.check_positive_int,
                  "synthetic_train_size", args.synthetic_train_size)
    refuse_unless(f"--synthetic-val-size {args.synthetic_val_size}",
                  "0 or more", validation.check_int, "synthetic_val_size",
                  args.synthetic_val_size, low=0)
    depth_error = _depth_error(args.model, args.depth)
    if depth_error:
        raise UsageError(f"--depth {args.depth} is not allowed: {depth_error}")
    if args.model != "vgg":
        refuse_unless(f"--growth-rate {args.growth_rate}", "1 or more",
                      validation.check_positive_int, "growth_rate",
                      args.growth_rate)
    if args.stop_after is not None:
        refuse_unless(f"--stop-after {args.stop_after}", "1 or more",
                      validation.check_positive_int, "stop_after",
                      args.stop_after)
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

    Args:
        choice: ``"auto"``, ``"0"``, ``"1"`` or ``"2"``.
        stream: where the output goes (its ``isatty``, if any, decides).

    Returns:
        0, 1 or 2.

    Example:

    >>> import io
    >>> fit_verbosity("auto", io.StringIO()), fit_verbosity("2", io.StringIO())
    (0, 2)
    """
    if choice == "auto":
        isatty = getattr(stream, "isatty", None)
        return 1 if isatty is not None and isatty() else 0
    return int(choice)


def run_name(args: argparse.Namespace) -> str:
    """The run's file name: ``--save-weights``, else the options that define it.

    Args:
        args: options filled by ``check_args``.

    Returns:
        ``NAME`` of ``NAME.keras``, ``NAME.jsonl``, ...

    Example:

    >>> args = build_parser().parse_args(["--model", "vgg", "--optimizer", "adam"])
    >>> run_name(check_args(args))
    'vgg19_cifar100_t0-0.8_cubic_scaled_e100_b50_seed0_adam'
    """
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


