"""Subprocess side of tests/test_adaptive.py's MirroredStrategy test.

    python _adaptive_dist_worker.py OUT_DIR

Two logical CPU devices (configured before TF initialises them). Writes
OUT_DIR/adaptive.npz: the all-reduced norms each replica read, and a
two-replica adaptive fit's freeze steps, per-replica criterion state and
first frozen unit's state.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from conftest import LOSS, tiny_data, tiny_model  # noqa: E402
from freezeout_tf import AdaptiveFreeze, FreezeOut  # noqa: E402
from freezeout_tf.adaptive import unit_norms  # noqa: E402
from freezeout_tf.recipes.distribute import make_strategy  # noqa: E402
from test_adaptive import SnapshotAtFreeze, _freeze_steps  # noqa: E402

EPOCHS, STEPS_PER_EPOCH = 6, 4


def replica_norms(strategy):
    """Each replica's all-reduced norm of a gradient that differs by replica."""

    def fn():
        ctx = tf.distribute.get_replica_context()
        scale = tf.cast(ctx.replica_id_in_sync_group, tf.float32) + 1.0
        return unit_norms([[tf.fill([3], scale)]], [tf.constant(False)])[0]

    result = strategy.run(tf.function(fn))
    return [float(v) for v in strategy.experimental_local_results(result)]


def main(out_dir):
    strategy = make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    out = {"replica_norms": np.array(replica_norms(strategy))}
    with strategy.scope():
        model = tiny_model()
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), LOSS)
    x, y = tiny_data()
    snap = SnapshotAtFreeze()
    model.fit(x, y, batch_size=16, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=[FreezeOut(t_0=None, adaptive=AdaptiveFreeze(
                  interval=2)), snap])
    out["replicas"] = strategy.num_replicas_in_sync
    # One trace; train_step's Python body runs once per replica in it.
    out["train_step_traces"] = model.train_step_traces
    out["total"] = EPOCHS * STEPS_PER_EPOCH
    out["freeze_steps"] = _freeze_steps(model)
    state = list(model.adaptive_state.weights) + [
        model.schedule_state.freeze_steps]
    out["num_state"] = len(state)
    for i, v in enumerate(state):
        # The MirroredVariable under a Keras variable, or the tf.Variable.
        copies = getattr(v, "_value", v).values
        for r, c in enumerate(copies):
            out[f"replica{r}_{i}"] = c.numpy()
    first = min(snap.values) if snap.values else None
    snapped = snap.values.get(first, [])
    from test_train_step import unit_state

    out["num_snap"] = len(snapped)
    for i, (a, b) in enumerate(zip(snapped, unit_state(model, first or 0))):
        out[f"snap_{i}"], out[f"end_{i}"] = a, b
    np.savez(os.path.join(out_dir, "adaptive.npz"), **out)


if __name__ == "__main__":
    main(sys.argv[1])
