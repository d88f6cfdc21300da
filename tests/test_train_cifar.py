"""The training command (freezeout_tf.cli: the console script freezeout-train,
`python -m freezeout_tf.cli` and scripts/train_cifar.py) end to end, on tiny
synthetic and mocked-tfds data: outputs and log format, exact resume, a
SIGKILL mid-run, divergence, a torn checkpoint, bad input (refused fast, in
one line, before TensorFlow loads), the download of a data set that is not
prepared (a fake builder; a proxy at a closed port: one line, fast, nothing
written), and its output on a terminal (a pty) and piped. The resume
protocol itself is tested in test_training.py."""

import glob
import hashlib
import importlib
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from freezeout_tf.recipes import checkpoint, training, training_log
from freezeout_tf.cli import options
from freezeout_tf.cli import train as cli
from freezeout_tf.models import (
    densenet_bc_num_units,
    wide_resnet_num_units,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train_cifar.py")


def _synthetic_run(batch_size, train_size, val_size, *extra):
    """CLI options of a tiny DenseNet-BC (L=10, k=4) on synthetic data."""
    return [
        "--dataset", "synthetic", "-L", "10", "-k", "4",
        "--batch-size", str(batch_size),
        "--synthetic-train-size", str(train_size),
        "--synthetic-val-size", str(val_size),
        *extra,
        "--verbose", "0",
    ]


TINY = _synthetic_run(50, 200, 60)
# Resume / kill runs: 4 epochs of 16 steps, slow enough to be killed mid-epoch;
# dropout masks must also resume exactly.
RESUME = _synthetic_run(25, 400, 50, "--epochs", "4", "--dropout", "0.1") + [
    "--save-weights", "run",
]


_LOADED = {}


def _weights(path):
    key = (path, os.path.getmtime(path))
    if key not in _LOADED:
        _LOADED[key] = _load_state(path)
    return _LOADED[key]


def _load_state(path):
    model = checkpoint.load_checkpoint(path)
    return (
        [np.asarray(w) for w in model.get_weights()],
        [np.asarray(v) for v in model.optimizer.variables],
    )


def _assert_same_state(path_a, path_b):
    (wa, oa), (wb, ob) = _weights(path_a), _weights(path_b)
    assert len(wa) == len(wb) and len(oa) == len(ob)
    for a, b in zip(wa + oa, wb + ob):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_synthetic_end_to_end(tmp_path, capsys):
    import keras
    from tensorflow.python.framework import config as tf_config

    before = (
        tf_config.is_op_determinism_enabled(),
        keras.mixed_precision.global_policy().name,
    )
    out = tmp_path / "out"
    rc = cli.main(
        TINY + ["--epochs", "2", "--output-dir", str(out), "--save-weights", "demo"]
    )
    assert rc == 0
    # In-process runs leave the process-wide settings as they found them.
    assert (
        tf_config.is_op_determinism_enabled(),
        keras.mixed_precision.global_policy().name,
    ) == before
    stdout = capsys.readouterr().out
    assert "trainable parameters" in stdout and "estimated speedup" in stdout
    assert "epoch 2/2: train loss" in stdout and "active units" in stdout
    assert "val err" in stdout
    assert (out / "demo.keras").is_file() and (out / "demo.args.json").is_file()
    assert not glob.glob(str(out / ".*tmp*"))  # no leftover of the atomic write

    # The metrics log: one train and one validation record per epoch.
    records = training_log.read_log(str(out / "demo.jsonl"))
    assert len(records) == 4
    train = [r for r in records if "train_loss" in r]
    val = [r for r in records if "val_loss" in r]
    assert [r["epoch"] for r in train] == [1, 2] and [r["epoch"] for r in val] == [1, 2]
    for r in train:
        assert {
            "epoch",
            "train_loss",
            "time",
            "epoch_time",
            "active_units",
            "learning_rate",
            "train_err",
        } <= set(r)
        assert r["epoch_time"] > 0 and r["time"] > 1e9
    assert train[0]["active_units"] == 6 and train[-1]["active_units"] == 0
    for r in val:
        assert set(r) == {"epoch", "val_loss", "val_err", "time"}
        assert 0.0 <= r["val_err"] <= 100.0

    # The checkpoint has taken every step, with optimizer state.
    model = checkpoint.load_checkpoint(str(out / "demo.keras"))
    assert checkpoint.completed_epochs(model, 200 // 50) == 2

    # TensorBoard: Keras' scalars plus the schedule's.
    tb = out / "tensorboard" / "demo"
    assert glob.glob(str(tb / "train" / "events.*"))
    events = glob.glob(str(tb / "freezeout" / "events.*"))
    assert events
    import tensorflow as tf

    tags = set()
    for event in tf.compat.v1.train.summary_iterator(events[0]):
        tags.update(v.tag for v in event.summary.value)
    assert {
        "freezeout/base_learning_rate",
        "freezeout/active_units",
        "freezeout/lr_multipliers",
        "freezeout/epoch_time",
        "freezeout/val_err",
        "lr_multiplier/unit_0",
        "lr_multiplier/head",
    } <= tags

    # A second run into the same files is refused and changes nothing.
    before = {p: _digest(p) for p in glob.glob(str(out / "demo.*"))}
    assert (
        cli.main(
            TINY + ["--epochs", "2", "--output-dir", str(out), "--save-weights", "demo"]
        )
        == 2
    )
    assert "--resume" in capsys.readouterr().err
    assert {p: _digest(p) for p in glob.glob(str(out / "demo.*"))} == before
    # Resuming a finished run does nothing and writes nothing.
    assert (
        cli.main(
            TINY
            + [
                "--epochs",
                "2",
                "--output-dir",
                str(out),
                "--save-weights",
                "demo",
                "--resume",
            ]
        )
        == 0
    )
    assert {p: _digest(p) for p in glob.glob(str(out / "demo.*"))} == before


def test_mocked_cifar100_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    with tfds.testing.mock_data(num_examples=40):
        rc = cli.main(
            [
                "--which_dataset",
                "100",
                "--data-dir",
                str(tmp_path / "tfds"),
                "-L",
                "10",
                "-k",
                "4",
                "--batch_size",
                "20",
                "--epochs",
                "1",
                "--validate-test",
                "--no_scale",
                "--how_scale",
                "linear",
                "--t_0",
                "0.5",
                "--verbose",
                "0",
                "--no-download",
                "--output-dir",
                str(out),
            ]
        )
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "cifar100" in stdout and "test images" in stdout and "linear" in stdout
    assert "download" not in stdout
    (log,) = glob.glob(str(out / "*.jsonl"))
    assert "cifar100" in os.path.basename(log) and "unscaled" in os.path.basename(log)
    records = training_log.read_log(log)
    assert [sorted(r) for r in records] == [
        [
            "active_units",
            "epoch",
            "epoch_time",
            "learning_rate",
            "time",
            "train_err",
            "train_loss",
        ],
        ["epoch", "time", "val_err", "val_loss"],
    ]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: 4 epochs in one go."""
    out = tmp_path_factory.mktemp("uninterrupted")
    assert cli.main(RESUME + ["--output-dir", str(out)]) == 0
    return out


# In the slow set (28 s with its fixture), so that the README's command
# stays under 10 minutes on 2 cores; CI runs the slow set too.
@pytest.mark.slow
def test_resume_gives_the_same_weights(uninterrupted, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        cli.main(RESUME + ["--output-dir", str(out), "--stop-after", "2"]) == 0
    )
    records = training_log.read_log(str(out / "run.jsonl"))
    assert max(r["epoch"] for r in records) == 2
    assert (
        checkpoint.completed_epochs(
            checkpoint.load_checkpoint(str(out / "run.keras")), 16
        )
        == 2
    )
    log_before = (out / "run.jsonl").read_text()

    assert cli.main(RESUME + ["--output-dir", str(out), "--resume"]) == 0
    assert "resuming after epoch 2 (step 32)" in capsys.readouterr().out
    log_after = (out / "run.jsonl").read_text()
    assert log_after.startswith(log_before)  # appended, never truncated
    records = training_log.read_log(str(out / "run.jsonl"))
    assert {"resume": 2, "step": 32} == {k: records[4][k] for k in ("resume", "step")}
    assert [r["epoch"] for r in records if "train_loss" in r] == [1, 2, 3, 4]

    _assert_same_state(str(uninterrupted / "run.keras"), str(out / "run.keras"))
    # The per-epoch losses match too.
    ref = [
        r
        for r in training_log.read_log(str(uninterrupted / "run.jsonl"))
        if "train_loss" in r
    ]
    got = [r for r in records if "train_loss" in r]
    np.testing.assert_allclose(
        [r["train_loss"] for r in got], [r["train_loss"] for r in ref], rtol=1e-6
    )
    assert [r["active_units"] for r in got] == [r["active_units"] for r in ref]


def test_resume_with_other_options_is_refused(uninterrupted, tmp_path, capsys):
    out = tmp_path / "copy"
    out.mkdir()
    for name in ("run.keras", "run.jsonl", "run.args.json"):
        (out / name).write_bytes((uninterrupted / name).read_bytes())
    before = _digest(out / "run.keras")
    changed = list(RESUME)
    changed[changed.index("--epochs") + 1] = "6"
    assert cli.main(changed + ["--output-dir", str(out), "--resume"]) == 2
    assert "--epochs 4 -> 6" in capsys.readouterr().err
    assert _digest(out / "run.keras") == before


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    ckpt = out / "run.keras"
    env = dict(
        os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    stderr = open(tmp_path / "stderr.txt", "w+b")
    proc = subprocess.Popen(
        [sys.executable, SCRIPT] + RESUME + ["--output-dir", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env=env,
    )
    try:
        deadline = time.monotonic() + 240
        while not ckpt.exists():
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
        time.sleep(0.1)  # well into epoch 2 (about 0.5 s long)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()
    assert proc.returncode == -signal.SIGKILL
    # A CPU-only start prints none of TensorFlow's CUDA start-up lines.
    assert "cuda" not in (tmp_path / "stderr.txt").read_text().lower()
    done = checkpoint.completed_epochs(checkpoint.load_checkpoint(str(ckpt)), 16)
    assert 1 <= done < 4, "the run was not killed mid-way"

    assert cli.main(RESUME + ["--output-dir", str(out), "--resume"]) == 0
    records = training_log.read_log(str(out / "run.jsonl"))
    resumes = [r for r in records if "resume" in r]
    assert [r["resume"] for r in resumes] == [done]
    _assert_same_state(str(uninterrupted / "run.keras"), str(ckpt))


@pytest.mark.slow
def test_ctrl_c_prints_the_checkpoint_and_the_resume_command(
    uninterrupted, tmp_path
):
    out = tmp_path / "interrupted"
    ckpt = out / "run.keras"
    env = dict(
        os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    argv = RESUME + ["--output-dir", str(out)]
    proc = subprocess.Popen(
        [sys.executable, SCRIPT] + argv,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        cwd=tmp_path, text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not ckpt.exists():
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
        time.sleep(0.1)  # into epoch 2
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == options.EXIT_INTERRUPTED, err[-2000:]
    line = _last_line_after_warnings(err)  # one line: no traceback
    assert line == (
        f"train_cifar.py: interrupted; the last checkpoint is {ckpt}; to "
        f"continue: python {SCRIPT} {' '.join(argv)} --resume"
    )
    # What was written stays: the checkpoint of the epochs done, their log
    # records and the options; the printed command continues the run.
    done = checkpoint.completed_epochs(checkpoint.load_checkpoint(str(ckpt)), 16)
    assert 1 <= done < 4, "the run was not interrupted mid-way"
    records = training_log.read_log(str(out / "run.jsonl"))
    assert [r["epoch"] for r in records if "train_loss" in r][:done] == list(
        range(1, done + 1))
    resume = line.split("to continue: python ")[1].split()
    assert resume[0] == SCRIPT
    assert cli.main(resume[1:]) == 0
    _assert_same_state(str(uninterrupted / "run.keras"), str(ckpt))


def _main_interrupted(monkeypatch, argv, files=None):
    """``cli.main(argv)`` with a run that Ctrl-C stops (after ``files`` are
    known, if given)."""
    def interrupted_run(args, prog, started):
        if files is not None:
            started["run"] = files
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run", interrupted_run)
    try:
        return cli.main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main (a traceback, exit status 1)")


def test_ctrl_c_before_training_names_the_same_command(monkeypatch, capsys):
    argv = ["--dataset", "synthetic", "--epochs", "2"]
    assert _main_interrupted(monkeypatch, argv) == options.EXIT_INTERRUPTED
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "freezeout-train: interrupted before training started, nothing "
        "written; to start it again: freezeout-train --dataset synthetic "
        "--epochs 2"
    )


@pytest.mark.parametrize("saved", [True, False])
def test_ctrl_c_in_training_names_the_checkpoint(monkeypatch, capsys,
                                                 tmp_path, saved):
    files = training.RunFiles(str(tmp_path), "my run")
    if saved:
        open(files.checkpoint, "w").close()
    argv = ["--dataset", "synthetic", "--save-weights", "my run",
            "--output-dir", str(tmp_path)]
    rc = _main_interrupted(monkeypatch, argv, files)
    assert rc == options.EXIT_INTERRUPTED
    (line,) = capsys.readouterr().err.splitlines()
    where = (f"the last checkpoint is {files.checkpoint}" if saved else
             "no checkpoint yet (the first is written after epoch 1, to "
             f"{files.checkpoint})")
    assert line == (
        f"freezeout-train: interrupted; {where}; to continue: "
        f"freezeout-train --dataset synthetic --save-weights 'my run' "
        f"--output-dir {tmp_path} --resume"
    )


def test_help_lists_every_option(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for option in [
        "--t_0",
        "--t-0",
        "--how_scale",
        "--how-scale",
        "--no_scale",
        "--no-scale",
        "--scale_lr",
        "--batch_size",
        "--batch-size",
        "--which_dataset",
        "--which-dataset",
        "-L",
        "--depth",
        "-k",
        "--growth-rate",
        "--growth_rate",
        "--dropout",
        "--augment",
        "--no-augment",
        "--validate",
        "--no-validate",
        "--validate-test",
        "--epochs",
        "--const_time",
        "--seed",
        "--resume",
        "--model",
        "--save-weights",
        "--dataset",
        "--data-dir",
        "--output-dir",
        "--learning-rate",
        "--optimizer",
        "--jit-compile",
        "--steps-per-execution",
        "--synthetic-train-size",
        "--strategy",
        "--mixed-precision",
    ]:
        assert option in text, option


def test_original_and_hyphenated_names_agree():
    parse = options.build_parser().parse_args
    a = parse(
        [
            "--t_0",
            "0.5",
            "--how_scale",
            "linear",
            "--no_scale",
            "--batch_size",
            "64",
            "--which_dataset",
            "10",
            "--growth_rate",
            "24",
            "--const_time",
        ]
    )
    b = parse(
        [
            "--t-0",
            "0.5",
            "--how-scale",
            "linear",
            "--no-scale",
            "--batch-size",
            "64",
            "--which-dataset",
            "10",
            "--growth-rate",
            "24",
            "--const-time",
        ]
    )
    assert vars(a) == vars(b)
    assert (
        a.t_0,
        a.how_scale,
        a.scale_lr,
        a.batch_size,
        a.which_dataset,
        a.growth_rate,
        a.const_time,
    ) == (0.5, "linear", False, 64, "10", 24, True)
    d = parse([])
    assert (
        d.t_0,
        d.how_scale,
        d.scale_lr,
        d.batch_size,
        d.epochs,
        d.seed,
        d.model,
        d.augment,
        d.validate,
        d.dropout,
    ) == (0.8, "cubic", True, 50, 100, 0, "densenet", True, "validate", 0.0)
    assert parse(["--no-validate"]).validate == "none"
    assert parse(["--validate-test"]).validate == "test"
    assert parse(["--no-augment"]).augment is False


def test_const_time_scales_the_epochs(tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        cli.main(
            TINY
            + ["--epochs", "2", "--const_time", "--output-dir", str(out), "--dry-run"]
        )
        == 0
    )
    assert not out.exists()
    stdout = capsys.readouterr().out
    line = next(x for x in stdout.splitlines() if x.startswith("training:"))
    assert "--const_time: 2 / (1 - " in line
    epochs = int(line.split("training: ")[1].split(" epochs")[0])
    speedup = float(line.split("(1 - ")[1].split(")")[0])
    assert 0 < speedup < 1
    assert epochs == int(np.ceil(2 / (1 - speedup) - 1e-9)) > 2


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--t_0", "1.5"], "--t_0 1.5"),
        (["--how_scale", "quartic"], "quartic"),
        (["--epochs", "0"], "--epochs 0"),
        (["--batch-size", "-50"], "--batch_size -50"),
        (["--learning-rate", "nan"], "--learning-rate nan is not allowed"),
        (["--synthetic-val-size", "-1"],
         "--synthetic-val-size -1 is not allowed: it must be 0 or more"),
        (["-L", "11"], "--depth 11"),
        (["--model", "vgg", "-L", "12"], "--depth 12"),
        (["--dataset", "cifar10", "--no-download"], "download_and_prepare"),
        (["--dataset", "cifar10", "--dry-run"], "(--dry-run downloads nothing)"),
        (["--resume"], "no checkpoint"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(argv, needle, tmp_path, capsys):
    out = tmp_path / "out"
    base = [
        "--dataset",
        "synthetic",
        "-L",
        "10",
        "-k",
        "4",
        "--synthetic-train-size",
        "100",
    ]
    rc = cli.main(
        base + argv + ["--output-dir", str(out), "--data-dir", str(tmp_path / "tfds")]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # no usage dump
    assert needle in err[0] and err[0].startswith("freezeout-train: error: ")
    assert not out.exists()
    assert not (tmp_path / "tfds").exists()


def _last_line_after_warnings(stderr):
    """The command's one closing line; any line before it must be one of
    FreezeOut's warnings, one line each (these tiny runs freeze units
    before their BatchNorm statistics settle)."""
    *warned, line = stderr.splitlines()
    assert all(w.startswith("train_cifar.py: warning: FreezeOut: ")
               for w in warned), warned
    return line


def _run_script(argv, cwd):
    return subprocess.run(
        [sys.executable, SCRIPT] + argv, cwd=cwd, env=_script_env(),
        capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("command, prog", [
    ([SCRIPT], "train_cifar.py"),
    (["-m", "freezeout_tf.cli"], "python -m freezeout_tf.cli"),
])
def test_a_bad_option_is_refused_before_tensorflow_loads(command, prog, tmp_path):
    # -X importtime lists every module the process imports, on stderr.
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *command, "--t_0", "1.5",
         "--output-dir", str(tmp_path / "o")],
        cwd=tmp_path, env=_script_env(), capture_output=True, text=True,
        timeout=300,
    )
    elapsed = time.perf_counter() - start
    lines = proc.stderr.splitlines()
    imported = {x.rsplit("|", 1)[1].strip() for x in lines
                if x.startswith("import time:")}
    assert proc.returncode == 2 and proc.stdout == ""
    assert [x for x in lines if not x.startswith("import time:")] == [
        f"{prog}: error: --t_0 1.5 is not allowed: it must be in (0, 1] "
        f"(see {prog} --help)"
    ]
    assert "freezeout_tf.cli.options" in imported  # the listing is complete
    assert sorted(m for m in imported
                  if m.split(".")[0] in ("tensorflow", "keras")) == []
    assert elapsed < 3.0, elapsed  # issue 26's bound; TensorFlow alone takes seconds
    assert not (tmp_path / "o").exists()


def _console_scripts():
    """pyproject.toml's [project.scripts], read as text (tomllib is 3.11+)."""
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", text,
                        re.MULTILINE | re.DOTALL).group(1)
    return dict(re.findall(r'^([\w.-]+)\s*=\s*"([^"]+)"', section, re.MULTILINE))


def test_the_console_script_freezeout_train_is_main(capsys):
    scripts = _console_scripts()
    assert list(scripts) == ["freezeout-train"]
    module, function = scripts["freezeout-train"].split(":")
    entry = getattr(importlib.import_module(module), function)
    assert entry is cli.main
    assert entry(["--help"]) == 0  # what `freezeout-train --help` runs
    text = capsys.readouterr().out
    assert text.startswith("usage: freezeout-train ") and "--t_0" in text


@pytest.mark.parametrize("model, count", [
    ("densenet", densenet_bc_num_units), ("wrn", wide_resnet_num_units),
])
def test_early_depth_check_agrees_with_the_builders(model, count):
    for depth in range(0, 120):
        try:
            count(depth)
            allowed = True
        except ValueError:
            allowed = False
        assert (options._depth_error(model, depth) is None) == allowed, depth


def test_early_vgg_depths_agree_with_the_library():
    for depth in range(0, 30):
        try:
            config = training.vgg_config(depth)
        except ValueError:
            config = None
        assert options.VGG_DEPTHS.get(depth) == config, depth
        assert (options._depth_error("vgg", depth) is None) == bool(config)


def test_diverging_run_stops_with_status_3(tmp_path):
    out = tmp_path / "out"
    proc = _run_script(
        TINY + ["--epochs", "3", "--learning-rate", "1e6", "--output-dir",
                str(out), "--save-weights", "div"],
        tmp_path,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    line = _last_line_after_warnings(proc.stderr)  # no CUDA noise either
    assert line.startswith("train_cifar.py: error: training diverged: the loss is ")
    assert " at step " in line and "lower --learning-rate" in line

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    text = (out / "div.jsonl").read_text()
    records = [json.loads(x, parse_constant=refuse) for x in text.splitlines()]
    final = records[-1]
    assert final["diverged"] is True and final["loss"] is None
    assert f"at step {final['step']} of 12 (epoch {final['epoch']})" in line
    # Stopped in that epoch: no later epoch was logged, and no checkpoint
    # holds the diverged weights.
    assert max(r.get("epoch", 0) for r in records) == final["epoch"]
    assert not (out / "div.keras").exists() or checkpoint.completed_epochs(
        checkpoint.load_checkpoint(str(out / "div.keras")), 4
    ) < final["epoch"]


def test_resume_from_a_torn_checkpoint_exits_2_and_keeps_it(
    uninterrupted, tmp_path, capsys
):
    out = tmp_path / "torn"
    out.mkdir()
    for name in ("run.jsonl", "run.args.json"):
        (out / name).write_bytes((uninterrupted / name).read_bytes())
    data = (uninterrupted / "run.keras").read_bytes()
    (out / "run.keras").write_bytes(data[: len(data) // 3])
    before = {p: _digest(p) for p in glob.glob(str(out / "*"))}
    assert cli.main(RESUME + ["--output-dir", str(out), "--resume"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("freezeout-train: error: --resume: ")
    assert "run.keras' is torn or not a checkpoint" in line
    assert {p: _digest(p) for p in glob.glob(str(out / "*"))} == before


# ---------------------------------------------------------------------------
# downloading the data set, and the output on and off a terminal


class _PreparingBuilder:
    """``tfds.builder`` for a data set that is not prepared: its
    ``download_and_prepare`` checks that nothing is under --output-dir yet,
    then serves 100 random CIFAR-shaped examples per split."""

    def __init__(self, output_dir):
        self.output_dir, self.prepared, self.downloads = output_dir, False, []
        self.url_infos = {}

    def is_prepared(self):
        return self.prepared

    def download_and_prepare(self, download_dir=None, **kwargs):
        assert not os.path.exists(self.output_dir), "written before the data"
        self.downloads.append(download_dir)
        self.prepared = True

    def as_dataset(self, split, as_supervised=True, shuffle_files=False):
        import tensorflow as tf

        assert self.prepared, "read before it was prepared"
        rng = np.random.default_rng(len(split))
        images = rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 100, 100)
        return tf.data.Dataset.from_tensor_slices((images, labels))


def test_a_missing_data_set_is_downloaded_before_anything_is_written(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    builder = _PreparingBuilder(str(out))
    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: builder)
    argv = [
        "--dataset", "cifar100", "--data-dir", str(tmp_path / "tfds"),
        "-L", "10", "-k", "4", "--batch-size", "50", "--epochs", "1",
        "--output-dir", str(out),
    ]
    assert cli.main(argv) == 0
    assert builder.downloads == [str(tmp_path / "tfds" / "downloads")]
    stdout = capsys.readouterr().out.splitlines()
    assert stdout[0].startswith(
        f"data: cifar100 is not prepared under {tmp_path / 'tfds'}: downloading "
        "it with tensorflow-datasets"
    )
    assert stdout[1].startswith(f"data: cifar100 prepared under {tmp_path}")
    assert stdout[2].startswith("model: DenseNet-BC L=10 k=4")
    assert glob.glob(str(out / "*.keras"))


def _script_env(**extra):
    env = dict(
        os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the script's own default
    env.update(extra)
    return env


def test_download_through_a_refusing_proxy_is_one_line_and_writes_nothing(
    tmp_path,
):
    """The README's real job (CIFAR-100) without network: a proxy at a
    closed port on 127.0.0.1 refuses; tensorflow-datasets alone would retry
    for about 3.5 minutes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections refused
    port = sock.getsockname()[1]
    proxy = f"http://127.0.0.1:{port}"
    env = _script_env(**{v: proxy for v in (
        "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")})
    for var in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(var, None)
    out, tfds_dir = tmp_path / "runs" / "densenet76", tmp_path / "tfds"
    try:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, SCRIPT, "--output-dir", str(out),
             "--data-dir", str(tfds_dir)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )
        seconds = time.perf_counter() - start
    finally:
        sock.close()
    print(f"refusing proxy: exit {proc.returncode} after {seconds:.1f} s")
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line == (
        "train_cifar.py: error: could not download data set 'cifar100': cannot "
        f"connect to the proxy {proxy} ([Errno 111] Connection refused); check "
        "the network and the proxy settings (HTTPS_PROXY / https_proxy) and try "
        f"again, or prepare it on a machine with internet and copy "
        f"'{tfds_dir / 'cifar100'}' here"
    )
    assert seconds < 60  # the requirement; tensorflow-datasets alone: ~200 s
    assert not out.exists() and not (tmp_path / "runs").exists()
    assert not tfds_dir.exists()


def test_fit_verbosity():
    class Tty:
        def isatty(self):
            return True

    import io

    assert options.fit_verbosity("auto", Tty()) == 1
    assert options.fit_verbosity("auto", io.StringIO()) == 0
    assert options.fit_verbosity("auto", object()) == 0
    assert [options.fit_verbosity(v, Tty()) for v in "012"] == [0, 1, 2]
    assert options.build_parser().parse_args([]).verbose == "auto"


OUTPUT_RUN = [
    "--dataset", "synthetic", "-L", "10", "-k", "4", "--batch-size", "25",
    "--synthetic-train-size", "100", "--synthetic-val-size", "25",
    "--epochs", "2",
]


def test_piped_output_is_one_plain_line_per_epoch(tmp_path):
    proc = subprocess.run(
        [sys.executable, SCRIPT, *OUTPUT_RUN, "--output-dir", str(tmp_path / "o")],
        cwd=tmp_path, env=_script_env(), capture_output=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout.decode()
    assert "\r" not in text and "\x1b[" not in text
    lines = text.splitlines()
    assert [x.split(":")[0] for x in lines] == [
        "model", "data", "FreezeOut", "training", "epoch 1/2", "epoch 2/2", "done",
    ]


# In the slow set (9 s, a whole run under a pseudo-terminal), so that the
# README's command stays under 10 minutes; the piped run above checks the
# same script's output in the README's command.
@pytest.mark.slow
def test_a_terminal_gets_the_progress_bar(tmp_path):
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, *OUTPUT_RUN, "--output-dir", str(tmp_path / "o")],
        cwd=tmp_path, env=_script_env(), stdin=subprocess.DEVNULL,
        stdout=follower, stderr=subprocess.PIPE,
    )
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the script closed its end
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif proc.poll() is not None:
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    text = b"".join(chunks).decode("utf-8", "replace")
    # Keras' bar: redrawn in place, "4/4 ... step" per epoch.
    assert "\r" in text and "4/4" in text and "step" in text
    assert "epoch 2/2: train loss" in text
