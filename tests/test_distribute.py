"""Scaling out: MirroredStrategy, MultiWorkerMirroredStrategy, mixed precision.

The strategy runs happen in subprocesses (tests/_dist_worker.py): logical
devices must be configured before TensorFlow initialises, and a
multi-worker strategy owns its process. Each subprocess writes what it saw
to an .npz; the assertions are here.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import LOSS, tiny_data, tiny_model
from freezeout_tf import FreezeOut, original_sgd
from freezeout_tf.recipes.distribute import make_strategy, set_mixed_precision

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "_dist_worker.py")
TIMEOUT = 240  # seconds per subprocess; a hung collective fails, not hangs
# The name scope of the workers' optimizer's ops (SGDWithL2): its name in
# recent Keras, its base class's in Keras 3.8 (CI's oldest lane).
OPTIMIZER_SCOPES = ("sgd_with_l2", "SGD/")
NUM_UNITS, STEPS = 4, 12  # the workers' run: 4 units, 3 epochs of 4 steps
# Its freeze steps by hand (t_0 = 0.4, cubic): t_i = (0.4 + 0.6 i / 4) ** 3
# = 0.064, 0.166, 0.343, 0.614; t_i * 12 = 0.77, 2.0 (1.9965), 4.1, 7.4;
# floor + 1.
HAND_FREEZE_STEPS = [1, 2, 5, 8]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def _finish(procs):
    """Waits for every process (bounded), kills any left; returns outputs."""
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT)
            outputs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    return outputs


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _gradient_collectives(found):
    """{function: [collective ops]} -> the ops of the optimizer's gradient
    all-reduce, grouped by the function (graph) holding them."""
    return {fn: [op for op in ops if op.startswith(OPTIMIZER_SCOPES)]
            for fn, ops in json.loads(str(found)).items()
            if any(op.startswith(OPTIMIZER_SCOPES) for op in ops)}


def _assert_per_unit_conds(found, per_branch):
    """Every gradient all-reduce sits in the not-frozen branch of a per-unit
    cond: one branch per unit and the head, none at the top level."""
    grads = _gradient_collectives(found)
    assert len(grads) == NUM_UNITS + 1, grads
    for fn, ops in grads.items():
        assert "_cond" in fn and "_false_" in fn, fn  # cond(frozen, skip, reduce)
        assert len(ops) == per_branch, (fn, ops)


def test_bad_names_are_rejected_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'tpu'.*'default', 'mirrored', "
                                         r"'multi-worker'"):
        make_strategy("tpu")
    with pytest.raises(ValueError, match=r"'fp16'.*'off', 'float16', "
                                         r"'bfloat16'"):
        set_mixed_precision("fp16")
    assert make_strategy("default") is tf.distribute.get_strategy()


def test_mirrored_two_devices_matches_one_device(tmp_path):
    out = _finish([subprocess.Popen(
        [sys.executable, WORKER, "mirrored", str(tmp_path)], env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)])
    r = np.load(tmp_path / "mirrored.npz")
    # Same global batch (16) on one device and on two replicas of 8.
    for i in range(int(r["num_weights"])):
        np.testing.assert_allclose(r[f"two_{i}"], r[f"one_{i}"],
                                   rtol=1e-5, atol=1e-6)
    # One trace; train_step's Python body runs once per replica in it.
    assert int(r["tracing_count"]) == 1
    assert int(r["train_step_traces"]) == 2, out
    # Unit 0 (kernel, bias, their momentum) is bit-identical from its freeze
    # step to the end (BatchNorm units: see the multi-worker test).
    assert bool(r["snapshot_taken"]) and int(r["num_state"]) == 4
    for i in range(int(r["num_state"])):
        assert np.array_equal(r[f"snap_{i}"], r[f"end_{i}"]), i
    # No collective traffic for frozen units: in the graph, each unit's
    # all-reduce (one op per device) is inside its cond...
    _assert_per_unit_conds(r["graph_collectives"], per_branch=2)
    # ... and at run time only active units and the head launched one.
    freeze = np.asarray(r["freeze_steps"])
    assert list(freeze) == HAND_FREEZE_STEPS
    active = [NUM_UNITS - int(np.sum(j >= freeze)) for j in range(STEPS)]
    assert int(r["executed_collectives"]) == 2 * sum(a + 1 for a in active)
    assert int(r["executed_collectives"]) < 2 * STEPS * (NUM_UNITS + 1)


def test_mirrored_float16_two_devices_matches_one_device(tmp_path):
    _finish([subprocess.Popen(
        [sys.executable, WORKER, "mirrored-float16", str(tmp_path)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)])
    r = np.load(tmp_path / "mirrored_float16.npz")
    assert str(r["optimizer"]) == "LossScaleOptimizer"
    assert str(r["compute_dtype"]) == "float16"
    assert list(r["iterations"]) == [STEPS, STEPS]  # no step skipped
    assert int(r["tracing_count"]) == 1
    # Same global batch on one device and on two replicas: float16 compute
    # sums the batch in another order, hence the looser tolerance. Its
    # scale: TensorFlow 2.16 (CI's oldest lane) puts two replicas up to
    # 2.7e-4 from one device (unit 3's bias; 2.21: 1.1e-4), where float16
    # itself moves the one-device run up to 6.2e-4 from float32's. A wrong
    # update is far outside it: a learning rate 10 % too high on the two
    # replicas puts them up to 2e-2 apart (measured, same run).
    for i in range(int(r["num_weights"])):
        assert r[f"two_{i}"].dtype in (np.float32, np.int64)  # + counter
        np.testing.assert_allclose(r[f"two_{i}"], r[f"one_{i}"],
                                   rtol=1e-3, atol=5e-4)
    # Unit 0 (kernel, bias, their momentum) bit-identical once frozen.
    assert bool(r["snapshot_taken"]) and int(r["num_state"]) == 4
    for i in range(int(r["num_state"])):
        assert np.array_equal(r[f"snap_{i}"], r[f"end_{i}"]), i


@pytest.mark.slow
def test_multi_worker_two_processes_end_identical(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    try:
        for index in range(2):
            tf_config = {"cluster": cluster,
                         "task": {"type": "worker", "index": index}}
            procs.append(subprocess.Popen(
                [sys.executable, WORKER, "multi-worker", str(tmp_path)],
                env=_env(TF_CONFIG=json.dumps(tf_config)),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    finally:
        _finish(procs)
    w0, w1 = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
    for r in (w0, w1):
        assert int(r["replicas"]) == 2 and int(r["iterations"]) == STEPS
        assert int(r["tracing_count"]) == 1
        assert bool(r["snapshot_taken"]) and int(r["num_state"]) == 8
        for i in range(int(r["num_state"])):  # frozen unit 0 never moved
            assert np.array_equal(r[f"snap_{i}"], r[f"end_{i}"]), i
        _assert_per_unit_conds(r["graph_collectives"], per_branch=1)
    # Trainable variables and optimizer slots: bit-identical on both workers.
    assert int(w0["num_trainable"]) == int(w1["num_trainable"]) == 16
    for key in w0.files:
        if key.startswith(("t_", "m_")):
            assert np.array_equal(w0[key], w1[key]), key
    # (BatchNorm moving statistics are per replica in Keras 3 --
    # aggregation "none" -- so each worker keeps its own; not compared.)


def _unit_state(model, i):
    opt = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    unit = model.freeze_units[i]
    values = [v.numpy().copy() for v in unit.weights]
    for layer in unit._flatten_layers():
        for w in layer._trainable_variables:
            values.append(opt.momentums[opt._get_variable_index(w)].numpy())
    return values


@pytest.fixture
def restore_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def _steps_taken(model):
    # The inner optimizer's count: Keras 3.8's LossScaleOptimizer (CI's
    # oldest lane) keeps an `iterations` of its own that never advances.
    opt = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    return int(opt.iterations.numpy())


@pytest.mark.parametrize("name", ["bfloat16", "float16"])
def test_mixed_precision_trains_and_keeps_frozen_units(name, restore_policy):
    assert set_mixed_precision(name) == f"mixed_{name}"
    x, y = tiny_data()
    model = tiny_model()
    model.compile(original_sgd(), LOSS)
    first = HAND_FREEZE_STEPS[0]
    snaps = {}

    class Snap(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if _steps_taken(self.model) == first:
                snaps["unit0"] = _unit_state(self.model, 0)

    start_head = [v.numpy().copy() for v in model.head.trainable_weights]
    history = model.fit(x, y, batch_size=16, epochs=3, shuffle=False,
                        verbose=0, callbacks=[FreezeOut(t_0=0.4), Snap()])
    assert model.train_step_traces == 1
    assert _steps_taken(model) == STEPS  # no skipped step
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["active_units"][-1] == 0
    # Compute in the low precision, every variable stays float32.
    assert model.freeze_units[0](x[:2]).dtype == name
    assert {v.dtype for v in model.weights
            if "int" not in v.dtype} == {"float32"}  # counters are int64
    if name == "float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    for before, after in zip(snaps["unit0"], _unit_state(model, 0)):
        assert np.array_equal(before, after)
    assert any(not np.array_equal(a, b.numpy())
               for a, b in zip(start_head, model.head.trainable_weights))


# scripts/train_cifar.py --strategy / --mixed-precision (style of
# tests/test_train_cifar.py: tiny synthetic DenseNet-BC runs).

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train_cifar.py")
CLI_TINY = ["--dataset", "synthetic", "-L", "10", "-k", "4",
            "--batch-size", "50", "--synthetic-train-size", "100",
            "--synthetic-val-size", "50", "--verbose", "0", "--epochs", "2"]


def _epoch_records(path):
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if "train_loss" in r]


def test_cli_mirrored_bfloat16(tmp_path):
    proc = subprocess.run(
        [sys.executable, SCRIPT, *CLI_TINY, "--strategy", "mirrored",
         "--mixed-precision", "bfloat16", "--output-dir", str(tmp_path),
         "--save-weights", "run"],
        env=_env(PYTHONPATH=ROOT), capture_output=True, text=True,
        timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    records = _epoch_records(tmp_path / "run.jsonl")
    assert len(records) == 2 and records[-1]["active_units"] == 0
    assert all(np.isfinite(r["train_loss"]) for r in records)


@pytest.mark.slow
def test_cli_multi_worker(tmp_path):
    # A one-worker cluster: the real MultiWorkerMirroredStrategy code path
    # (collective ops, the Keras fixes) at the cost of one process; two
    # workers are covered by test_multi_worker_two_processes_end_identical.
    port, = _free_ports(1)
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}"]},
                 "task": {"type": "worker", "index": 0}}
    _finish([subprocess.Popen(
        [sys.executable, SCRIPT, *CLI_TINY, "--strategy", "multi-worker",
         "--output-dir", str(tmp_path), "--save-weights", "run"],
        env=_env(PYTHONPATH=ROOT, TF_CONFIG=json.dumps(tf_config)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)])
    records = _epoch_records(tmp_path / "run.jsonl")
    assert len(records) == 2 and records[-1]["active_units"] == 0
    assert (tmp_path / "run.keras").is_file()


def test_cli_rejects_unknown_strategy(tmp_path):
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--strategy", "tpu", "--output-dir",
         str(tmp_path)], env=_env(PYTHONPATH=ROOT), capture_output=True,
        text=True, timeout=TIMEOUT)
    assert proc.returncode == 2 and "multi-worker" in proc.stderr
