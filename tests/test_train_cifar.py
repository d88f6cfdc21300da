"""scripts/train_cifar.py end to end, on tiny synthetic and mocked-tfds data:
outputs and log format, exact resume, a SIGKILL mid-run, divergence, a torn
checkpoint, and bad input (refused fast, in one line). The resume protocol
itself is tested in test_training.py."""

import glob
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train_cifar.py")

_spec = importlib.util.spec_from_file_location("train_cifar", SCRIPT)
train_cifar = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_cifar)

from freezeout_tf import checkpoint, training, training_log  # noqa: E402
from freezeout_tf.models import (  # noqa: E402
    densenet_bc_num_units,
    wide_resnet_num_units,
)

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
    rc = train_cifar.main(
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
        train_cifar.main(
            TINY + ["--epochs", "2", "--output-dir", str(out), "--save-weights", "demo"]
        )
        == 2
    )
    assert "--resume" in capsys.readouterr().err
    assert {p: _digest(p) for p in glob.glob(str(out / "demo.*"))} == before
    # Resuming a finished run does nothing and writes nothing.
    assert (
        train_cifar.main(
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
        rc = train_cifar.main(
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
                "--output-dir",
                str(out),
            ]
        )
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "cifar100" in stdout and "test images" in stdout and "linear" in stdout
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
    assert train_cifar.main(RESUME + ["--output-dir", str(out)]) == 0
    return out


def test_resume_gives_the_same_weights(uninterrupted, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        train_cifar.main(RESUME + ["--output-dir", str(out), "--stop-after", "2"]) == 0
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

    assert train_cifar.main(RESUME + ["--output-dir", str(out), "--resume"]) == 0
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
    assert train_cifar.main(changed + ["--output-dir", str(out), "--resume"]) == 2
    assert "--epochs 4 -> 6" in capsys.readouterr().err
    assert _digest(out / "run.keras") == before


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

    assert train_cifar.main(RESUME + ["--output-dir", str(out), "--resume"]) == 0
    records = training_log.read_log(str(out / "run.jsonl"))
    resumes = [r for r in records if "resume" in r]
    assert [r["resume"] for r in resumes] == [done]
    _assert_same_state(str(uninterrupted / "run.keras"), str(ckpt))


def test_help_lists_every_option(capsys):
    assert train_cifar.main(["--help"]) == 0
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
    parse = train_cifar.build_parser().parse_args
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
        train_cifar.main(
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
        (["-L", "11"], "--depth 11"),
        (["--model", "vgg", "-L", "12"], "--depth 12"),
        (["--dataset", "cifar10"], "download_and_prepare"),
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
    rc = train_cifar.main(
        base + argv + ["--output-dir", str(out), "--data-dir", str(tmp_path / "tfds")]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # no usage dump
    assert needle in err[0] and err[0].startswith("train_cifar.py: error: ")
    assert not out.exists()
    assert not (tmp_path / "tfds").exists()


def _run_script(argv, cwd):
    env = dict(
        os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the script's own default
    return subprocess.run(
        [sys.executable, SCRIPT] + argv, cwd=cwd, env=env,
        capture_output=True, text=True, timeout=300,
    )


def test_a_bad_option_is_refused_before_tensorflow_loads(tmp_path):
    start = time.perf_counter()
    proc = _run_script(["--t_0", "1.5", "--output-dir", str(tmp_path / "o")],
                       tmp_path)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        "train_cifar.py: error: --t_0 1.5 is not allowed: it must be in (0, 1] "
        "(see train_cifar.py --help)\n"
    )
    assert elapsed < 1.0, elapsed  # importing TensorFlow alone takes seconds
    assert not (tmp_path / "o").exists()


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
        assert (train_cifar._depth_error(model, depth) is None) == allowed, depth


def test_early_vgg_depths_agree_with_the_library():
    for depth in range(0, 30):
        try:
            config = training.vgg_config(depth)
        except ValueError:
            config = None
        assert train_cifar.VGG_DEPTHS.get(depth) == config, depth
        assert (train_cifar._depth_error("vgg", depth) is None) == bool(config)


def test_diverging_run_stops_with_status_3(tmp_path):
    out = tmp_path / "out"
    proc = _run_script(
        TINY + ["--epochs", "3", "--learning-rate", "1e6", "--output-dir",
                str(out), "--save-weights", "div"],
        tmp_path,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    (line,) = proc.stderr.splitlines()  # one line: no CUDA noise either
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
    assert train_cifar.main(RESUME + ["--output-dir", str(out), "--resume"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("train_cifar.py: error: --resume: ")
    assert "run.keras' is torn or not a checkpoint" in line
    assert {p: _digest(p) for p in glob.glob(str(out / "*"))} == before
