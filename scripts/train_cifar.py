#!/usr/bin/env python
"""Train a DenseNet-BC, Wide ResNet or VGG on CIFAR-10/100 with FreezeOut.

The Keras 3 / TensorFlow counterpart of the original FreezeOut training
script: every option of the original works under its original name and a
hyphenated one (``--t_0`` / ``--t-0``, ...).  Examples::

    # the original's default run: DenseNet-BC L=76 k=12 on CIFAR-100
    python scripts/train_cifar.py --data-dir ~/tensorflow_datasets

    # a one-minute demo on synthetic data (no download needed)
    python scripts/train_cifar.py --dataset synthetic -L 10 -k 4 --epochs 3

    # continue it after an interruption, at the exact step
    python scripts/train_cifar.py --dataset synthetic -L 10 -k 4 --epochs 3 --resume

Outputs, under ``--output-dir``: ``NAME.keras`` (checkpoint after every
epoch, with optimizer state, replaced atomically), ``NAME.jsonl`` (metrics
log, JSON lines, appended), ``NAME.args.json`` (the options of the run,
checked on ``--resume``) and ``tensorboard/NAME/`` (TensorBoard event files).
``NAME`` is ``--save-weights`` or derived from the options.

Bad options exit with status 2 and a one-line message before anything is
written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import List, Optional

# Quieter TensorFlow start-up; an explicit setting by the user wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except those that are None (derived; the help says how)."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


class UsageError(Exception):
    """Bad input: reported as ``prog: error: message`` with exit status 2."""


# ---------------------------------------------------------------------------
# options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
        help="tensorflow-datasets data directory holding the prepared "
        "cifar10/cifar100 (default $TFDS_DATA_DIR or ~/tensorflow_datasets)",
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
        help="check the options, open the data set, build the model, print the "
        "plan and exit, writing nothing",
    )
    out.add_argument(
        "--summary", action="store_true", help="print the full Keras model summary"
    )
    out.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch",
    )
    return p


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fills derived defaults and checks every value; raises UsageError."""
    from freezeout_tf import schedule

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
    try:
        schedule.check_t_0(args.t_0)
    except ValueError:
        raise UsageError(
            f"--t_0 {args.t_0:g} is not allowed: it must be in (0, 1]"
        ) from None
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
    if args.model == "vgg" and args.depth not in VGG_DEPTHS:
        raise UsageError(
            f"--depth {args.depth} is not allowed for vgg: it must be one of "
            f"{', '.join(map(str, VGG_DEPTHS))}"
        )
    if args.model in ("densenet", "wrn"):
        from freezeout_tf import models

        count = (
            models.densenet_bc_num_units
            if args.model == "densenet"
            else models.wide_resnet_num_units
        )
        try:
            count(args.depth)
        except ValueError as err:
            raise UsageError(
                f"--depth {args.depth} is not allowed for {args.model}: {err}"
            ) from None
    if args.model != "vgg" and (args.growth_rate is None or args.growth_rate < 1):
        raise UsageError(
            f"--growth-rate {args.growth_rate} is not allowed: it must be 1 or more"
        )
    if args.stop_after is not None and args.stop_after < 1:
        raise UsageError(
            f"--stop-after {args.stop_after} is not allowed: it must be 1 or more"
        )
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
# model


def build_model(args: argparse.Namespace, num_classes: int):
    from freezeout_tf import models

    try:
        if args.model == "densenet":
            return models.densenet_bc(
                depth=args.depth,
                growth_rate=args.growth_rate,
                num_classes=num_classes,
                dropout=args.dropout,
                classifier_activation=None,
            )
        if args.model == "wrn":
            return models.wide_resnet(
                depth=args.depth,
                widen_factor=args.growth_rate,
                num_classes=num_classes,
                dropout=args.dropout,
                classifier_activation=None,
            )
        return models.vgg(
            VGG_DEPTHS[args.depth],
            num_classes=num_classes,
            batch_norm=True,
            classifier_activation=None,
        )
    except ValueError as err:
        raise UsageError(
            f"--model {args.model} -L {args.depth} -k {args.growth_rate}: {err}"
        ) from None


def make_optimizer(args: argparse.Namespace):
    import keras

    from freezeout_tf.optimizer import original_sgd

    if args.optimizer == "sgd":
        return original_sgd(args.learning_rate)
    if args.optimizer == "adam":
        return keras.optimizers.Adam(args.learning_rate)
    return keras.optimizers.AdamW(args.learning_rate)


def compile_model(model, args: argparse.Namespace) -> None:
    import keras

    model.compile(
        optimizer=make_optimizer(args),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=bool(args.jit_compile),
        steps_per_execution=args.steps_per_execution,
    )


def estimate_speedup(model, args: argparse.Namespace):
    """(speedup used for --const_time, description), or (None, reason)."""
    try:
        from freezeout_tf import speedup
    except ImportError as err:  # pragma: no cover - the module ships with the package
        return None, f"n/a ({err})"
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


# ---------------------------------------------------------------------------
# main


def _error(parser: argparse.ArgumentParser, message: str) -> int:
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or an argparse error (2)
        return int(stop.code or 0)
    saved = _global_state()
    try:
        return _run(args)
    except UsageError as err:
        return _error(parser, str(err))
    finally:
        _restore_global_state(saved)


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
    import keras
    from tensorflow.python.framework import config as tf_config

    policy, deterministic = saved if saved is not None else ("float32", False)
    keras.mixed_precision.set_global_policy(policy)
    if deterministic:
        tf_config.enable_op_determinism()
    else:
        tf_config.disable_op_determinism()


def _run(args: argparse.Namespace) -> int:
    check_args(args)

    import keras
    import tensorflow as tf

    from freezeout_tf import checkpoint, data, distribute, summaries, training_log
    from freezeout_tf.callback import FreezeOut

    keras.backend.clear_session()
    keras.utils.set_random_seed(args.seed)
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    # freezeout_tf.distribute: the strategy first (a multi-worker one must be
    # made before other TF ops run), then the dtype policy.
    strategy = distribute.make_strategy(args.strategy)
    distribute.set_mixed_precision(args.mixed_precision)

    # 1. Open the data set (nothing is written before everything checks out).
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
    except ValueError as err:  # DatasetNotFoundError is a ValueError
        raise UsageError(str(err)) from None

    # 2. Build the model (or load the checkpoint to resume).
    name = run_name(args)
    out_dir = os.path.abspath(args.output_dir)
    ckpt_path = os.path.join(out_dir, f"{name}.keras")
    log_path = os.path.join(out_dir, f"{name}.jsonl")
    args_path = os.path.join(out_dir, f"{name}.args.json")
    run_args = {k: getattr(args, k) for k in RESUME_KEYS}

    with strategy.scope():
        model = build_model(args, ds.num_classes)
        initial_epoch = 0
        fresh = not args.resume
        if args.resume and os.path.isfile(args_path):
            with open(args_path, encoding="utf-8") as f:
                saved = json.load(f)
            changed = [
                f"--{k} {saved.get(k)!r} -> {run_args[k]!r}"
                for k in RESUME_KEYS
                if k in saved and saved[k] != run_args[k]
            ]
            if changed:
                raise UsageError(
                    "--resume with options other than the run's: " + ", ".join(changed)
                )
        if args.resume and not os.path.isfile(ckpt_path):
            if not os.path.isfile(args_path):
                raise UsageError(
                    f"--resume: there is no checkpoint {ckpt_path!r} to resume"
                )
            # Stopped in its first epoch: start it over, appending to its log.
            print(f"--resume: {name} has no checkpoint yet; starting it from epoch 0")
            fresh = True
        if args.resume and not fresh:
            try:
                model = checkpoint.load_checkpoint(ckpt_path)
                initial_epoch = checkpoint.completed_epochs(model, ds.steps_per_epoch)
            except (ValueError, OSError) as err:
                raise UsageError(f"--resume: cannot use {ckpt_path!r}: {err}") from None
        elif not args.resume:
            for path in (ckpt_path, log_path):
                if os.path.exists(path):
                    raise UsageError(
                        f"{path!r} exists: pass --resume to continue that run, or "
                        "choose another --output-dir or --save-weights"
                    )
        if fresh:
            compile_model(model, args)

    speedup, speedup_text = estimate_speedup(model, args)
    epochs = args.epochs
    if args.const_time:
        if speedup is None:
            raise UsageError(
                f"--const_time needs the estimated speedup: {speedup_text}"
            )
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
        f"output {os.path.join(out_dir, name)}.*"
    )
    if initial_epoch >= epochs:
        print(
            f"{ckpt_path} has already trained {initial_epoch} of {epochs} epochs: "
            "nothing to do"
        )
        return 0
    if initial_epoch:
        print(
            f"resuming after epoch {initial_epoch} (step "
            f"{initial_epoch * ds.steps_per_epoch}) from {ckpt_path}"
        )

    if args.dry_run:
        print("--dry-run: nothing written")
        return 0

    # 4. Only now write anything.
    os.makedirs(out_dir, exist_ok=True)
    tmp = checkpoint.temporary_path(ckpt_path)
    if os.path.exists(tmp):  # a torn write of a killed run
        os.remove(tmp)
    if not args.resume:
        _write_json_atomic(args_path, dict(run_args, epochs_run=epochs, name=name))
    metrics = training_log.MetricsLog(log_path)
    if args.resume:
        metrics.append(
            {"resume": initial_epoch, "step": initial_epoch * ds.steps_per_epoch}
        )
    tb_dir = os.path.join(out_dir, "tensorboard", name)
    callbacks = [
        FreezeOut(t_0=args.t_0, how_scale=args.how_scale, scale_lr=args.scale_lr),
        training_log.MetricsLogger(metrics, epochs=epochs, num_units=model.num_units),
        summaries.FreezeOutSummaries(
            os.path.join(tb_dir, "freezeout"),
            num_units=model.num_units,
            total_steps=epochs * ds.steps_per_epoch,
            t_0=args.t_0,
            how_scale=args.how_scale,
            scale_lr=args.scale_lr,
        ),
        keras.callbacks.TensorBoard(log_dir=tb_dir, write_graph=False),
        checkpoint.EpochCheckpoint(ckpt_path),
    ]
    if args.stop_after is not None:
        callbacks.append(_StopAfter(args.stop_after))
    start = time.perf_counter()
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
    done = (
        int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        // ds.steps_per_epoch
    )
    print(
        f"done: {done - initial_epoch} epochs in {time.perf_counter() - start:.1f} s; "
        f"checkpoint {ckpt_path}, log {log_path}"
    )
    return 0


def _stop_after_class():
    import keras

    class StopAfter(keras.callbacks.Callback):
        """Ends fit after epoch ``last`` (1-based), once its checkpoint is saved."""

        def __init__(self, last):
            super().__init__()
            self.last = last

        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 >= self.last:
                self.model.stop_training = True

    return StopAfter


def _StopAfter(last):  # noqa: N802 - keeps keras out of the module's import time
    return _stop_after_class()(last)


def _write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
