"""With nothing frozen and no callback, a ViT split by `from_model` trains
as plain Keras trains the same model: the same batches in the same order,
and weights equal to float tolerance after every step.

The FreezeOut-vs-full comparisons of the fine-tuning benchmark rest on
this. It failed on a shuffled `tf.data` dataset: FreezeOut's symbolic
build (before the first step, `FreezeOutModel._maybe_symbolic_build`) read
one batch from a pass over the data that no step trained on, so the
dataset reshuffled and the run trained on other batches than plain Keras
(s6-vitfix)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hub_models import image_data, vit_classifier
from freezeout_tf import FreezeOutModel, with_example_ids
from freezeout_tf.core.prefix_cache import EXAMPLE_ID

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
N, BATCH, EPOCHS = 32, 8, 2
# Plain Keras' step and FreezeOut's per-unit one add the same terms in
# other orders.
RTOL, ATOL = 1e-5, 1e-6


def vit(split, seed=0):
    """The tiny ViT (no dropout): plain, or split into freeze units."""
    model = vit_classifier(seed=seed, num_layers=2)
    if split:
        model = FreezeOutModel.from_model(model)
        model.build((None, 16, 16, 3))
        assert model.num_units >= 3
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), LOSS)
    return model


def assert_same_weights(plain, split):
    # `from_model` shares the plain model's layers: compare by path.
    want = {v.path: v.numpy() for v in plain.trainable_variables}
    got = {v.path: v.numpy() for v in split.trainable_variables}
    assert sorted(got) == sorted(want)
    for path, value in want.items():
        np.testing.assert_allclose(got[path], value, rtol=RTOL, atol=ATOL,
                                   err_msg=path)


def test_steps_on_fixed_batches_equal_plain_keras():
    # The train step itself (no data order involved): learning rates of 1,
    # each variable (the class token, the position embedding, the head)
    # updated once, LayerNorm in training mode.
    x, y = image_data(N)
    plain, split = vit(split=False), vit(split=True)
    start = {v.path: v.numpy() for v in plain.trainable_variables}
    assert_same_weights(plain, split)  # one seed, one start
    for model in (plain, split):
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False,
                  verbose=0)
    assert_same_weights(plain, split)
    assert all(not np.array_equal(start[v.path], v.numpy())
               for v in plain.trainable_variables
               if "key/bias" not in v.path)  # softmax ignores key biases


def logged_batches(ds, log, key=None):
    """`ds` with each batch's example indices (`key` of its inputs, or the
    whole element) appended to `log` as the batch is read."""
    def note(i):
        log.append(tuple(i.numpy().tolist()))
        return i

    def read(*element):
        index = element[0][key] if key else element[0]
        logged = tf.py_function(note, [index], index.dtype)
        with tf.control_dependencies([logged]):
            return tf.nest.map_structure(tf.identity, element)

    return ds.map(read)


def shuffled(log):
    """Batches of the data, reshuffled at every pass, as `fit` reads them;
    the indices of each batch read go to `log`."""
    x, y = image_data(N)
    ds = tf.data.Dataset.range(N).shuffle(N, seed=0).batch(BATCH)
    ds = logged_batches(ds, log)
    return ds.map(lambda i: (tf.gather(x, i), tf.gather(y, i)))


@pytest.fixture(scope="module")
def shuffled_runs():
    """(model, batches read) of plain Keras and of FreezeOut, nothing
    frozen, fit on the same reshuffled dataset."""
    runs = []
    for split in (False, True):
        model, log = vit(split), []
        keras.utils.set_random_seed(1)  # the reshuffles' seeds
        model.fit(shuffled(log), epochs=EPOCHS, verbose=0)
        runs.append((model, log))
    return runs


def test_fit_reads_each_batch_once_as_plain_keras(shuffled_runs):
    (_, plain), (_, split) = shuffled_runs
    assert len(plain) == EPOCHS * N // BATCH
    assert split == plain


def test_shuffled_fit_equals_plain_keras(shuffled_runs):
    (plain, _), (split, _) = shuffled_runs
    assert_same_weights(plain, split)


def test_cached_fit_reads_each_batch_once():
    # The frozen-prefix cache's set-up also read a batch of its own.
    x, y = image_data(N)
    logs = []
    for cache in (False, True):
        model, log = vit(split=True), []
        if cache:
            model.cache_frozen_prefix(N, max_bytes=2**20)
        ds = with_example_ids(tf.data.Dataset.from_tensor_slices((x, y)))
        keras.utils.set_random_seed(1)
        ds = logged_batches(ds.shuffle(N, seed=0).batch(BATCH), log,
                            key=EXAMPLE_ID)
        model.fit(ds, epochs=EPOCHS, verbose=0)
        logs.append(log)
    assert len(logs[0]) == EPOCHS * N // BATCH
    assert logs[1] == logs[0]
