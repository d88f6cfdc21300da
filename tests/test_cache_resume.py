"""The prefix cache against runs that do not use it (issue 34): a resumed
cached run equals one unbroken run without the cache (not another
interrupted run, which could break the same way), and every `fit` starts
from an empty cache."""

import keras
import numpy as np
import tensorflow as tf

from test_backward_skip import LOSS, cnn_data, named_cnn
from freezeout_tf import FreezeOut, with_example_ids

N, BATCH, EPOCHS = 16, 4, 4
TOTAL = EPOCHS * N // BATCH


class Record(keras.callbacks.Callback):
    """Per-step losses, and the cache's levels when the fit starts."""

    def __init__(self):
        super().__init__()
        self.losses, self.levels_at_start = [], None

    def on_train_batch_begin(self, batch, logs=None):
        cache = self.model.prefix_cache
        if self.levels_at_start is None and cache is not None:
            self.levels_at_start = cache.levels.numpy().copy()

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(logs["loss"])


def fit(model, epochs, cache):
    """Unit 0 frozen from the start, the others on the schedule; the same
    shuffled order every epoch, so that a resumed fit sees the batches of
    an unbroken one."""
    if cache and model.prefix_cache is None:
        model.cache_frozen_prefix(N, max_bytes=2**20)
    x, y = cnn_data(N)
    ds = with_example_ids(tf.data.Dataset.from_tensor_slices((x, y)))
    ds = ds.shuffle(N, seed=1, reshuffle_each_iteration=False).batch(BATCH)
    record = Record()
    model.fit(ds, initial_epoch=epochs[0], epochs=epochs[1], verbose=0,
              shuffle=False,
              callbacks=[FreezeOut(t_0=0.5, frozen_from_start=1,
                                   total_steps=TOTAL), record])
    return record


def compiled():
    model = named_cnn()
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), LOSS)
    return model


def test_resumed_cached_run_equals_unbroken_uncached_run(tmp_path):
    unbroken = compiled()
    want = fit(unbroken, (0, EPOCHS), cache=False).losses
    model = compiled()
    first = fit(model, (0, 2), cache=True).losses
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    second = fit(loaded, (2, EPOCHS), cache=True).losses
    assert len(first + second) == len(want) == TOTAL
    np.testing.assert_allclose(first + second, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(loaded.weights, unbroken.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=a.path)
    assert loaded.prefix_cache.levels.numpy().min() >= 1  # it was used


def test_every_fit_starts_from_an_empty_cache():
    model = compiled()
    first = fit(model, (0, 2), cache=True)
    np.testing.assert_array_equal(first.levels_at_start, 0)
    assert model.prefix_cache.levels.numpy().min() >= 1  # filled
    # A second fit (e.g. after the frozen weights were changed by hand)
    # recomputes the prefix instead of trusting the outputs of the first.
    second = fit(model, (2, EPOCHS), cache=True)
    np.testing.assert_array_equal(second.levels_at_start, 0)
