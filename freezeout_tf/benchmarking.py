"""Measuring helpers shared by the benchmark scripts (not used in training).

Every comparison in this project is made side by side in one process,
interleaved, by per-step medians: the machines are noisy, and a single
wall-clock sum hides stalls. These helpers give the scripts one way to do
that.
"""

import statistics
import time

import keras
import tensorflow as tf

__all__ = [
    "StepTimer",
    "lower_train_step",
    "median_ms",
    "plain_keras_model",
    "timed_steps",
]


class StepTimer(keras.callbacks.Callback):
    """Wall-clock time of every training step of `fit` (waits for each step
    to finish by reading its loss): pass it to `fit` in `callbacks`, then
    read `times`, in seconds."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])  # block until the step has run
        self.times.append(time.perf_counter() - self._start)


def plain_keras_model(model):
    """A stock `keras.Sequential` over the same freeze units and head as the
    `FreezeOutModel` `model` (shared layers and weights): the baseline every
    benchmark compares against."""
    return keras.Sequential(list(model.freeze_units) + [model.head])


def timed_steps(model, dataset, steps):
    """Runs `steps` training steps of `fit` and returns their times (s)."""
    timer = StepTimer()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0,
              callbacks=[timer])
    return timer.times


def lower_train_step(model, batch):
    """Traces `model.train_step` under XLA and lowers it to HLO.

    Args:
        model: a compiled model whose variables (and optimizer) are built.
        batch: an `(x, y)` tuple of tensors.

    Returns:
        dict with `trace_s` (Python tracing), `lower_s` (TensorFlow graph to
        HLO through the tf2xla bridge), `hlo_lines` and `hlo_conditionals`.
    """
    fn = tf.function(model.train_step, jit_compile=True)
    start = time.perf_counter()
    fn.get_concrete_function(batch)
    traced = time.perf_counter()
    hlo = fn.experimental_get_compiler_ir(batch)(stage="hlo")
    lowered = time.perf_counter()
    return {
        "trace_s": traced - start,
        "lower_s": lowered - traced,
        "hlo_lines": hlo.count("\n"),
        "hlo_conditionals": hlo.count(" conditional("),
    }


def median_ms(times):
    """Median of step times (s) in milliseconds."""
    return 1000.0 * statistics.median(times)
