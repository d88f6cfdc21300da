"""``main``: the training command's run and what it prints.

The run itself is ``freezeout_tf.recipes.training`` (files, exact resume, the
callbacks), ``freezeout_tf.recipes.data`` and ``freezeout_tf.recipes.download``; this module
parses the options (``freezeout_tf.cli.options``), calls those and prints.
It imports only the standard library at module level: TensorFlow loads
after the options have been checked, so a bad option is refused in
milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import sys
import time
import warnings
from typing import List, Optional

from freezeout_tf.cli.options import (
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    RESUME_KEYS,
    VGG_DEPTHS,
    UsageError,
    build_parser,
    check_args,
    run_name,
)

__all__ = ["main"]


def main(argv: Optional[List[str]] = None, prog: str = PROG) -> int:
    """Runs the training command: the console script ``freezeout-train``.

    Bad input is refused with one line on stderr, ``prog: error: ...``,
    before TensorFlow loads (options) or before anything is written (files,
    the data set). Process-wide settings that a run changes (the dtype
    policy, op determinism) are restored afterwards, so ``main`` can also
    be called in-process.

    Args:
        argv: the options (default ``sys.argv[1:]``); see ``--help``.
        prog: the command's name in usage and error lines.

    Ctrl-C (``KeyboardInterrupt``) ends the run with one line on stderr,
    naming the last checkpoint (written after every epoch, replaced
    atomically, so an interrupted save keeps the previous one) and the
    command that continues the run, the same options with ``--resume``.

    Returns:
        The exit status: 0 done (also ``--help``), 2 bad input, 3 the
        training loss became non-finite (the last good checkpoint is kept),
        130 interrupted by Ctrl-C.

    Example:

    >>> main(["--epochs", "0"])  # one line on stderr: freezeout-train: error: ...
    2
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
        check_args(args)
    except UsageError as err:
        return _exit_code(parser, err)
    except SystemExit as stop:  # --help (0) or an argparse error (2)
        return int(stop.code or 0)
    saved = _global_state()
    files = {}  # the run's RunFiles once known, for an interruption
    try:
        with _one_line_warnings(prog):
            return _run(args, prog, files)
    except UsageError as err:
        return _exit_code(parser, err)
    except KeyboardInterrupt:
        if sys.stdout.isatty():  # end a progress bar's unfinished line
            print(flush=True)
        print(_interrupted(prog, argv, files.get("run")), file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        _restore_global_state(saved)


@contextlib.contextmanager
def _one_line_warnings(prog: str):
    """FreezeOut's own warnings (e.g. `BatchNormLagWarning`) as one
    `prog: warning: ...` line each, like the command's errors: Python's
    default format adds the source line of the script's `main` call."""
    with warnings.catch_warnings():
        default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if category.__module__.startswith("freezeout_tf."):
                print(f"{prog}: warning: {message}", file=sys.stderr)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _interrupted(prog: str, argv: List[str], files) -> str:
    """The line printed on Ctrl-C: the last checkpoint and how to go on."""
    command = _command(prog) + argv
    if files is None:  # before anything was written under --output-dir
        return (f"{prog}: interrupted before training started, nothing "
                f"written; to start it again: {shlex.join(command)}")
    if os.path.exists(files.checkpoint):
        where = f"the last checkpoint is {files.checkpoint}"
    else:
        where = f"no checkpoint yet (the first is written after epoch 1, to {files.checkpoint})"
    return (f"{prog}: interrupted; {where}; to continue: "
            f"{shlex.join(command + ['--resume'] * ('--resume' not in argv))}")


def _command(prog: str) -> List[str]:
    """The words that run this command again: ``prog``, or for a script
    (``train_cifar.py``) ``python`` and the script's path as invoked."""
    if prog.endswith(".py"):
        script = sys.argv[0] if sys.argv[0].endswith(prog) else prog
        return ["python", script]
    return shlex.split(prog)


def _estimated_speedup(model, args: argparse.Namespace):
    """(speedup used for --const_time, description of the estimates)."""
    from freezeout_tf.estimates import speedup

    estimate = float(speedup.estimate_speedup(model, args.t_0, args.how_scale))
    text = f"{100 * estimate:.1f}% (from the model's per-unit costs)"
    if args.model == "densenet":
        m = (args.depth - 4) // 6
        original = float(
            speedup.calc_speedup(args.growth_rate, m, args.t_0, args.how_scale)
        )
        text += f"; original calc_speedup: {100 * original:.1f}%"
    return estimate, text


def _count_params(variables) -> int:
    return int(sum(math.prod(v.shape) for v in variables))


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


def _run(args: argparse.Namespace, prog: str, started: dict) -> int:
    _import_tensorflow_quietly(gpus_wanted=args.strategy != "default")
    import keras
    import tensorflow as tf

    from freezeout_tf.recipes import (checkpoint, data, distribute, download,
                                      training)
    from freezeout_tf.estimates.speedup import same_time_epochs

    keras.backend.clear_session()
    keras.utils.set_random_seed(args.seed)
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    # freezeout_tf.recipes.distribute: the strategy first (a multi-worker one must be
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

    speedup, speedup_text = _estimated_speedup(model, args)
    epochs = same_time_epochs(args.epochs, speedup) if args.const_time else args.epochs

    # 3. Describe the run.
    trainable = _count_params(model.trainable_variables)
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
    started["run"] = files
    metrics = training.open_log(
        files,
        run_args,
        resume=args.resume,
        initial_epoch=initial_epoch,
        steps_per_epoch=ds.steps_per_epoch,
        info={"epochs_run": epochs, "name": name},
    )
    run = training.run_callbacks(
        files,
        metrics,
        num_units=model.num_units,
        epochs=epochs,
        steps_per_epoch=ds.steps_per_epoch,
        t_0=args.t_0,
        how_scale=args.how_scale,
        scale_lr=args.scale_lr,
        stop_after=args.stop_after,
    )
    start_time = time.perf_counter()
    model.fit(
        ds.train(initial_epoch, epochs),
        epochs=epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=ds.steps_per_epoch,
        validation_data=ds.validation,
        callbacks=run.callbacks,
        verbose=args.verbose,
        shuffle=False,  # the pipeline shuffles, reproducibly per epoch
    )
    divergence = run.divergence
    if divergence.diverged:
        kept = (
            f"the last good checkpoint {files.checkpoint} is kept"
            if os.path.exists(files.checkpoint)
            else "no checkpoint was written"
        )
        print(
            f"{prog}: error: training diverged: the loss is "
            f"{divergence.loss} at step {divergence.step} of "
            f"{epochs * ds.steps_per_epoch} (epoch {divergence.epoch}); stopped, "
            f"{kept}; try a lower --learning-rate (this run: "
            f"{args.learning_rate:g})",
            file=sys.stderr,
        )
        return EXIT_DIVERGED
    done = checkpoint.completed_epochs(model, ds.steps_per_epoch)
    print(
        f"done: {done - initial_epoch} epochs in "
        f"{time.perf_counter() - start_time:.1f} s; "
        f"checkpoint {files.checkpoint}, log {files.log}"
    )
    return 0
