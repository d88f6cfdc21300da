"""Subprocess side of tests/test_distribute.py (not a test module).

    python _dist_worker.py mirrored OUT_DIR
        Two logical CPU devices (configured before TF initialises them),
        MirroredStrategy vs one device; writes OUT_DIR/mirrored.npz.
    python _dist_worker.py mirrored-float16 OUT_DIR
        The same under the mixed_float16 policy (loss scaling); writes
        OUT_DIR/mirrored_float16.npz.
    python _dist_worker.py multi-worker OUT_DIR   (TF_CONFIG set by caller)
        One MultiWorkerMirroredStrategy worker; writes
        OUT_DIR/worker{index}.npz.

Both train with FreezeOut across freeze events and record what the test
checks: final weights, unit 0's state right after its last training step
and at the end, trace counts, and the collective all-reduce ops (in the
graph and actually executed).
"""

import collections
import inspect
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests' conftest (tiny models) must win over the root one (doctests).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf  # noqa: E402

MODE, OUT = sys.argv[1], sys.argv[2]
if MODE.startswith("mirrored"):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

from conftest import LOSS, tiny_data, tiny_model  # noqa: E402
from freezeout_tf import (  # noqa: E402
    FreezeOut, FreezeOutModel, original_sgd,
)
from freezeout_tf.recipes.distribute import (  # noqa: E402
    make_strategy, set_mixed_precision,
)

STEPS_PER_EPOCH, EPOCHS, T_0 = 4, 3, 0.4  # global batch 16, 64 samples
# Unit 0 trains for FIRST_FREEZE steps, then is frozen.
# By hand (not from the schedule under test): t = 0.4 ** 3 = 0.064 of
# T = 12 steps, floor(0.768) + 1.
FIRST_FREEZE = 1
COLLECTIVES = ("CollectiveReduceV2", "NcclAllReduce", "CollectiveReduce")


def no_bn_model():
    """Conv+ReLU units: without BatchNorm, N replicas of batch B/N compute
    exactly the gradient of one device with batch B (up to summation order;
    BatchNorm would normalise each replica's B/N samples on their own).
    """
    keras.utils.set_random_seed(0)
    model = FreezeOutModel(
        [keras.Sequential([keras.layers.Conv2D(4, 3, padding="same"),
                           keras.layers.ReLU()]) for _ in range(4)],
        keras.Sequential([keras.layers.GlobalAveragePooling2D(),
                          keras.layers.Dense(5)]),
    )
    model.build((None, 8, 8, 3))
    return model


def inner_optimizer(model):
    """The optimizer that applies the updates: a LossScaleOptimizer (mixed
    float16) keeps the slots and the count of applied steps in its inner
    one (Keras 3.8's wrapper has an `iterations` of its own that never
    advances; 3.9 made it the inner one's)."""
    return getattr(model.optimizer, "inner_optimizer", model.optimizer)


def applied_steps(model):
    return int(keras.ops.convert_to_numpy(inner_optimizer(model).iterations))


def unit_state(model, i):
    """Weights (incl. BN moving statistics) and optimizer slots of unit i."""
    unit = model.freeze_units[i]
    opt = inner_optimizer(model)
    values = [np.array(v.numpy()) for v in unit.weights]
    for layer in unit._flatten_layers():
        for w in layer._trainable_variables:
            values.append(np.array(opt.momentums[opt._get_variable_index(w)]
                                   .numpy()))
    return values


class Snapshot(keras.callbacks.Callback):
    """Unit 0's state right after `at_step` steps (its last training step)."""

    def __init__(self, at_step):
        super().__init__()
        self.at_step, self.values = at_step, None

    def on_train_batch_end(self, batch, logs=None):
        if applied_steps(self.model) == self.at_step:
            self.values = unit_state(self.model, 0)


def fit(strategy, make_model, snapshot=None):
    with strategy.scope():
        model = make_model()
        model.compile(original_sgd(), LOSS)
    x, y = tiny_data()
    callbacks = [FreezeOut(t_0=T_0)] + ([snapshot] if snapshot else [])
    model.fit(x, y, batch_size=16, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=callbacks)
    return model


def tracing_count(model):
    """How often Keras' train tf.function was traced."""
    fn = inspect.getclosurevars(model.train_function).nonlocals[
        "multi_step_on_iterator"]
    return fn.experimental_get_tracing_count()


def graph_collectives(model):
    """Collective all-reduce ops of the traced train function, as
    {function name: [op names]}; "" is the outermost graph."""
    fn = inspect.getclosurevars(model.train_function).nonlocals[
        "multi_step_on_iterator"]
    graph_def = fn._list_all_concrete_functions()[0].graph.as_graph_def()
    found = {}
    for name, nodes in [("", graph_def.node)] + [
            (f.signature.name, f.node_def) for f in graph_def.library.function]:
        ops = [n.name for n in nodes if n.op in COLLECTIVES]
        if ops:
            found[name] = ops
    return json.dumps(found)


def freeze_steps(model):
    return [int(s) for s in model.schedule_state.host_freeze_steps()[:-1]]


def mirrored():
    strategy = make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2, strategy.extended.worker_devices
    out = {}
    # 1. Same global batch on one device and on two replicas; executed ops
    #    of the two-replica run traced with the debugger (no tensor values).
    one = fit(tf.distribute.get_strategy(), no_bn_model)
    dump = tempfile.mkdtemp()
    tf.debugging.experimental.enable_dump_debug_info(
        dump, tensor_debug_mode="NO_TENSOR", circular_buffer_size=-1,
        op_regex="|".join(COLLECTIVES))
    snap = Snapshot(at_step=FIRST_FREEZE)
    two = fit(strategy, no_bn_model, snap)
    tf.debugging.experimental.disable_dump_debug_info()
    from tensorflow.python.debug.lib import debug_events_reader

    with debug_events_reader.DebugDataReader(dump) as reader:
        reader.update()
        executed = collections.Counter(
            t.op_type for t in reader.graph_execution_traces()
            if t.op_type in COLLECTIVES)
    out["executed_collectives"] = sum(executed.values())
    for i, (a, b) in enumerate(zip(one.weights, two.weights)):
        out[f"one_{i}"], out[f"two_{i}"] = a.numpy(), b.numpy()
    out["num_weights"] = len(one.weights)
    out["freeze_steps"] = freeze_steps(two)
    out["train_step_traces"] = two.train_step_traces
    out["tracing_count"] = tracing_count(two)
    out["graph_collectives"] = graph_collectives(two)
    # 2. Unit 0 (kernel, bias, momentum) is bit-identical from its freeze
    #    step on.
    out["snapshot_taken"] = snap.values is not None
    for i, (a, b) in enumerate(zip(snap.values or [], unit_state(two, 0))):
        out[f"snap_{i}"], out[f"end_{i}"] = a, b
    out["num_state"] = len(snap.values or [])
    np.savez(os.path.join(OUT, "mirrored.npz"), **out)


def mirrored_float16():
    """Mixed float16 (a LossScaleOptimizer) on two replicas vs one device."""
    set_mixed_precision("float16")
    strategy = make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2, strategy.extended.worker_devices
    one = fit(tf.distribute.get_strategy(), no_bn_model)
    snap = Snapshot(at_step=FIRST_FREEZE)
    two = fit(strategy, no_bn_model, snap)
    out = {"num_weights": len(one.weights),
           "optimizer": type(two.optimizer).__name__,
           "compute_dtype": two.freeze_units[0].layers[0].compute_dtype,
           "iterations": [applied_steps(m) for m in (one, two)],
           "tracing_count": tracing_count(two),
           "snapshot_taken": snap.values is not None,
           "num_state": len(snap.values or [])}
    for i, (a, b) in enumerate(zip(one.weights, two.weights)):
        out[f"one_{i}"], out[f"two_{i}"] = a.numpy(), b.numpy()
    for i, (a, b) in enumerate(zip(snap.values or [], unit_state(two, 0))):
        out[f"snap_{i}"], out[f"end_{i}"] = a, b
    np.savez(os.path.join(OUT, "mirrored_float16.npz"), **out)


def multi_worker():
    strategy = make_strategy("multi-worker")  # first: starts the server
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    snap = Snapshot(at_step=FIRST_FREEZE)
    model = fit(strategy, tiny_model, snap)
    opt = model.optimizer
    out = {f"t_{i}": v.numpy() for i, v in enumerate(model.trainable_variables)}
    out.update({f"m_{i}": v.numpy() for i, v in enumerate(opt.momentums)})
    out["num_trainable"] = len(model.trainable_variables)
    out["replicas"] = strategy.num_replicas_in_sync
    out["freeze_steps"] = freeze_steps(model)
    out["iterations"] = applied_steps(model)
    out["tracing_count"] = tracing_count(model)
    out["snapshot_taken"] = snap.values is not None
    for i, (a, b) in enumerate(zip(snap.values or [], unit_state(model, 0))):
        out[f"snap_{i}"], out[f"end_{i}"] = a, b
    out["num_state"] = len(snap.values or [])
    out["graph_collectives"] = graph_collectives(model)
    np.savez(os.path.join(OUT, f"worker{index}.npz"), **out)


if __name__ == "__main__":
    {"mirrored": mirrored, "mirrored-float16": mirrored_float16,
     "multi-worker": multi_worker}[MODE]()
