"""Scaling out: pick a `tf.distribute` strategy and a mixed-precision policy.

FreezeOut itself needs nothing special under a strategy: build and compile
the model inside `strategy.scope()` and `fit` as usual. The train step keeps
its one traced graph, and the optimizer hooks (`freezeout_tf.core.optimizer`)
skip both the update *and* the gradient all-reduce of frozen units.

Example (it needs GPUs and data, so it is not run as a doctest)::

    strategy = make_strategy("mirrored")
    set_mixed_precision("bfloat16")
    with strategy.scope():
        model = freezeout_tf.models.densenet_bc(depth=100)
        model.compile(freezeout_tf.original_sgd(), loss, metrics=[...])
    model.fit(ds, epochs=100, callbacks=[FreezeOut()])

(`make_strategy("mirrored")` uses every local GPU; set the precision
before building the model.)
"""

import keras
import tensorflow as tf

__all__ = [
    "MIXED_PRECISION",
    "STRATEGIES",
    "make_strategy",
    "set_mixed_precision",
]

STRATEGIES = ("default", "mirrored", "multi-worker")
MIXED_PRECISION = {
    "off": "float32",
    "float16": "mixed_float16",
    "bfloat16": "mixed_bfloat16",
}


def make_strategy(name):
    """Returns the `tf.distribute.Strategy` called `name`.

    * `"default"`: no distribution (the current default strategy).
    * `"mirrored"`: `tf.distribute.MirroredStrategy` over every local GPU
      (or the CPU if there is none); synchronous, one replica per device.
    * `"multi-worker"`: `tf.distribute.MultiWorkerMirroredStrategy`, which
      reads the cluster and this process's role from the `TF_CONFIG`
      environment variable. Create it at program start, before any other
      TensorFlow op runs: it starts this worker's server. The returned
      strategy carries two fixes that Keras 3's `fit` needs under it (see
      `_work_around_keras_multi_worker`).

    Args:
        name: one of `"default"`, `"mirrored"`, `"multi-worker"`.

    Raises:
        ValueError: for any other name.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _work_around_keras_multi_worker(strategy)
        return strategy
    raise ValueError(
        f"Unknown strategy {name!r}; expected one of {list(STRATEGIES)}."
    )


def _work_around_keras_multi_worker(strategy):
    """Lets Keras 3 `fit` run under `MultiWorkerMirroredStrategy`.

    With TF 2.16-2.21 and Keras 3, `fit` under this strategy fails even for a
    plain `keras.Sequential` (keras-team/keras#20585,
    tensorflow/tensorflow#72388), in two places:

    * `_maybe_symbolic_build` calls `strategy.reduce("MEAN", (x, y))` on the
      whole nested batch, but the strategy's `_reduce_to` takes one value
      only ("Attempt to convert a value (PerReplica ...) to a Tensor");
    * `reduce_per_replica` averages each scalar log with
      `strategy.reduce("MEAN", v, axis=0)`, which has no axis 0 ("Invalid
      reduction dimension 0 for input with 0 dimensions").

    This patches the one strategy instance: nested values are reduced leaf
    by leaf, and `axis` is dropped for scalars (the mean over replicas is
    what Keras means). Results are otherwise unchanged.
    """
    extended = strategy.extended
    plain_reduce_to = extended._reduce_to
    plain_reduce = strategy.reduce

    def reduce_to(reduce_op, value, destinations, options):
        if isinstance(value, (list, tuple, dict)):
            return tf.nest.map_structure(
                lambda v: plain_reduce_to(reduce_op, v, destinations, options),
                value,
            )
        return plain_reduce_to(reduce_op, value, destinations, options)

    def reduce(reduce_op, value, axis=None):
        if axis is not None:
            local = tf.nest.map_structure(
                lambda v: strategy.experimental_local_results(v)[0], value
            )
            if all(
                getattr(t, "shape", None) is not None and t.shape.rank == 0
                for t in tf.nest.flatten(local)
            ):
                axis = None
        return plain_reduce(reduce_op, value, axis)

    extended._reduce_to = reduce_to
    strategy.reduce = reduce


def set_mixed_precision(name):
    """Sets Keras' global dtype policy; call it before building the model.

    * `"off"`: `float32` (Keras' default).
    * `"float16"`: `mixed_float16`: float16 compute, float32 variables;
      `compile` wraps the optimizer in a `LossScaleOptimizer`. For GPUs of
      compute capability 7.0 or newer.
    * `"bfloat16"`: `mixed_bfloat16`: bfloat16 compute, float32 variables,
      no loss scaling needed. For TPUs, Ampere-or-newer GPUs and recent CPUs.

    Frozen units stay bit-identical under every policy: their variables
    (float32) receive no update.

    Args:
        name: one of `"off"`, `"float16"`, `"bfloat16"`.

    Returns:
        The name of the policy set (e.g. `"mixed_bfloat16"`).

    Raises:
        ValueError: for any other name.
    """
    if name not in MIXED_PRECISION:
        raise ValueError(
            f"Unknown mixed precision {name!r}; expected one of "
            f"{list(MIXED_PRECISION)}."
        )
    policy = MIXED_PRECISION[name]
    keras.mixed_precision.set_global_policy(policy)
    return policy
