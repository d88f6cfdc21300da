"""CIFAR-10/100 (and a synthetic stand-in) as ``tf.data`` pipelines.

The training pipeline is a pure function of ``(seed, epoch, step)``: epoch ``e`` is
shuffled with a stateless permutation keyed on ``(seed, e)`` and each batch is
augmented with stateless random ops keyed on ``(seed, global batch index)``.
So the batches of epoch ``e`` are the same whether the iterator ran epochs
``0 .. e-1`` before or the run was resumed at ``e`` -- which is what makes a
resumed run end with the same weights as an uninterrupted one.

Images are held in memory (CIFAR is 150 MB as uint8), like the original
PyTorch script; the split follows the original: with validation on, the last
5,000 training images (tfds split ``train[45000:]``) are held out.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

# `validation` is an argument of load_data here.
from freezeout_tf import validation as checks
from freezeout_tf.recipes.download import default_data_dir

__all__ = [
    "DATASETS",
    "VALIDATION_MODES",
    "NORMALIZATION",
    "DatasetNotFoundError",
    "CifarData",
    "load_data",
    "make_synthetic_arrays",
]

DATASETS = ("cifar100", "cifar10", "synthetic")
VALIDATION_MODES = ("validate", "test", "none")

#: Per-channel (mean, std) of the training images, docs/algorithm.md §6.
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
NORMALIZATION["synthetic"] = NORMALIZATION["cifar100"]

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "synthetic": 100}
IMAGE_SHAPE = (32, 32, 3)
NUM_TRAIN_IMAGES = 50000
NUM_HELD_OUT = 5000
PAD = 4

# Streams of the stateless RNG, so that shuffling and augmentation never share
# a key.
_SHUFFLE_STREAM = 1
_AUGMENT_STREAM = 2


class DatasetNotFoundError(ValueError):
    """The data set is not prepared under ``data_dir`` (``load_data`` never
    downloads; ``freezeout_tf.recipes.download.prepare`` does)."""


@dataclasses.dataclass(frozen=True)
class CifarData:
    """The training and evaluation pipelines of one data set.

    ``train(initial_epoch, epochs)`` builds the training pipeline from epoch
    ``initial_epoch`` on: ``steps_per_epoch`` batches of ``batch_size`` per
    epoch (the remainder of each shuffled epoch is dropped, so every batch has
    the same shape); pass ``steps_per_epoch`` to ``fit`` as well.
    ``validation`` is ``None`` with validation off.
    """

    name: str
    num_classes: int
    num_train: int
    num_validation: int
    batch_size: int
    steps_per_epoch: int
    seed: int
    augment: bool
    validation_split: str  # "validate", "test" or "none"
    validation: Optional[tf.data.Dataset]
    train_images: np.ndarray = dataclasses.field(repr=False)
    train_labels: np.ndarray = dataclasses.field(repr=False)

    def train(
        self, initial_epoch: int = 0, epochs: Optional[int] = None
    ) -> tf.data.Dataset:
        """Batches of epochs ``initial_epoch .. epochs - 1`` (endless if None)."""
        return _train_pipeline(
            self.train_images,
            self.train_labels,
            name=self.name,
            batch_size=self.batch_size,
            steps_per_epoch=self.steps_per_epoch,
            seed=self.seed,
            augment=self.augment,
            initial_epoch=initial_epoch,
            epochs=epochs,
        )


# ---------------------------------------------------------------------------
# pipelines


def _normalize(images: tf.Tensor, name: str) -> tf.Tensor:
    mean, std = NORMALIZATION[name]
    x = tf.cast(images, tf.float32) / 255.0
    return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def _augment_batch(images: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Pad 4 with zeros, random 32x32 crop and random horizontal flip, per image.

    Done on a whole uint8 batch with two gathers, which is much cheaper than a
    per-image map; ``key`` is a stateless RNG seed of shape [2].
    """
    batch = tf.shape(images)[0]
    height, width = IMAGE_SHAPE[0], IMAGE_SHAPE[1]
    padded = tf.pad(images, [[0, 0], [PAD, PAD], [PAD, PAD], [0, 0]])
    offsets = tf.random.stateless_uniform(
        [batch, 2], seed=key, minval=0, maxval=2 * PAD + 1, dtype=tf.int32
    )
    flip = tf.random.stateless_uniform(
        [batch], seed=key[::-1], minval=0, maxval=2, dtype=tf.int32
    )
    rows = offsets[:, :1] + tf.range(height)[tf.newaxis, :]  # [B, 32]
    forward = tf.range(width)[tf.newaxis, :]
    cols = offsets[:, 1:] + tf.where(
        flip[:, tf.newaxis] > 0, width - 1 - forward, forward
    )
    out = tf.gather(padded, rows, axis=1, batch_dims=1)  # [B, 32, 40, 3]
    out = tf.gather(out, cols, axis=2, batch_dims=1)  # [B, 32, 32, 3]
    return out


def _train_pipeline(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    name: str,
    batch_size: int,
    steps_per_epoch: int,
    seed: int,
    augment: bool,
    initial_epoch: int = 0,
    epochs: Optional[int] = None,
) -> tf.data.Dataset:
    num = int(images.shape[0])
    per_epoch = steps_per_epoch * batch_size
    images_t = tf.constant(images, tf.uint8)
    labels_t = tf.constant(labels, tf.int32)
    root = tf.constant([0, int(seed)], tf.int64)
    shuffle_key = tf.random.experimental.stateless_fold_in(root, _SHUFFLE_STREAM)
    augment_key = tf.random.experimental.stateless_fold_in(root, _AUGMENT_STREAM)
    last = np.iinfo(np.int64).max if epochs is None else int(epochs)

    def one_epoch(epoch):
        key = tf.random.experimental.stateless_fold_in(shuffle_key, epoch)
        order = tf.random.experimental.stateless_shuffle(
            tf.range(num, dtype=tf.int32), seed=key
        )
        order = tf.reshape(order[:per_epoch], [steps_per_epoch, batch_size])
        steps = tf.range(steps_per_epoch, dtype=tf.int64) + epoch * steps_per_epoch
        return tf.data.Dataset.from_tensor_slices((steps, order))

    def make_batch(global_step, index):
        x = tf.gather(images_t, index)
        if augment:
            key = tf.random.experimental.stateless_fold_in(augment_key, global_step)
            x = _augment_batch(x, key)
        x = tf.ensure_shape(_normalize(x, name), (batch_size,) + IMAGE_SHAPE)
        y = tf.ensure_shape(tf.gather(labels_t, index), (batch_size,))
        return x, y

    ds = tf.data.Dataset.range(int(initial_epoch), last).flat_map(one_epoch)
    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _eval_pipeline(
    images: np.ndarray, labels: np.ndarray, *, name: str, batch_size: int
):
    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    ds = ds.batch(batch_size)
    ds = ds.map(
        lambda x, y: (_normalize(x, name), y), num_parallel_calls=tf.data.AUTOTUNE
    )
    return ds.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------
# sources


def make_synthetic_arrays(
    num: int, num_classes: int = 100, *, seed: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
    """Deterministic CIFAR-shaped uint8 images whose class is learnable.

    Each class has a fixed mean colour (drawn once, independent of ``seed``);
    an image is its class colour plus a coarse 4x4 pattern and pixel noise, so
    a network can learn the labels and a demo shows the loss falling.
    """
    palette = np.random.default_rng(12345).uniform(40, 215, size=(num_classes, 3))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=num).astype(np.int32)
    coarse = rng.normal(0, 20, size=(num, 4, 4, 3))
    coarse = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
    noise = rng.normal(0, 20, size=(num,) + IMAGE_SHAPE)
    images = palette[labels][:, None, None, :] + coarse + noise
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels


def _tfds_arrays(
    name: str, split: str, data_dir: Optional[str]
) -> Tuple[np.ndarray, np.ndarray]:
    """Loads a split of a prepared tfds data set into memory; never downloads
    (``freezeout_tf.recipes.download.prepare`` does)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise DatasetNotFoundError(
            f"data set {name!r} needs tensorflow-datasets, which failed to import: "
            f"{err}"
        ) from err
    where = default_data_dir(data_dir)
    builder = tfds.builder(name, data_dir=where)
    # ``as_dataset`` only reads (it never downloads, unlike ``tfds.load``) and
    # raises AssertionError when the prepared files are missing.  It is also
    # what ``tfds.testing.mock_data`` replaces, so tests can run it.
    try:
        ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    except (
        AssertionError,
        FileNotFoundError,
        tfds.core.registered.DatasetNotFoundError,
    ) as err:
        raise DatasetNotFoundError(
            f"data set {name!r} is not prepared under {where!r}; prepare it on a "
            f"machine with internet with: python -c "
            f"\"import tensorflow_datasets as tfds; tfds.builder('{name}', "
            f"data_dir='{where}').download_and_prepare()\" and copy the directory "
            f"'{os.path.join(where, name)}' to this machine (or pass --data-dir)"
        ) from err
    # Not ``batch_size=-1``: it needs the split sizes, which a mocked builder
    # does not have.
    images, labels = [], []
    for x, y in tfds.as_numpy(ds.batch(5000).prefetch(1)):
        images.append(np.asarray(x, np.uint8))
        labels.append(np.asarray(y).astype(np.int32))
    if not images:
        raise DatasetNotFoundError(
            f"split {split!r} of data set {name!r} under {where!r} is empty"
        )
    return np.concatenate(images), np.concatenate(labels)


def load_data(
    dataset: str = "cifar100",
    *,
    data_dir: Optional[str] = None,
    validation: str = "validate",
    augment: bool = True,
    batch_size: int = 50,
    seed: int = 0,
    synthetic_train_size: int = 2000,
    synthetic_validation_size: int = 500,
) -> CifarData:
    """Opens a data set and builds its pipelines.

    ``validation``: ``"validate"`` holds out the last 5,000 training images
    (``train[:45000]`` / ``train[45000:]``) and evaluates on them; ``"test"``
    trains on all 50,000 and evaluates on the test set; ``"none"`` trains on
    all 50,000 and evaluates on nothing.  For ``"synthetic"``, the sizes are
    ``synthetic_train_size`` / ``synthetic_validation_size``.

    Raises ``ValueError`` for bad arguments and ``DatasetNotFoundError`` (a
    ``ValueError``) when a tfds data set is not prepared under ``data_dir``.
    """
    checks.check_choice("dataset", dataset, DATASETS)
    checks.check_choice("validation", validation, VALIDATION_MODES)
    checks.check_positive_int("batch_size", batch_size)

    val_images = val_labels = None
    if dataset == "synthetic":
        checks.check_positive_int("synthetic_train_size", synthetic_train_size)
        checks.check_int("synthetic_validation_size",
                         synthetic_validation_size, low=0)
        train_images, train_labels = make_synthetic_arrays(
            synthetic_train_size, NUM_CLASSES[dataset], seed=1
        )
        if validation != "none" and synthetic_validation_size > 0:
            val_images, val_labels = make_synthetic_arrays(
                synthetic_validation_size, NUM_CLASSES[dataset], seed=2
            )
    elif validation == "validate":
        train_images, train_labels = _tfds_arrays(
            dataset, f"train[:{NUM_TRAIN_IMAGES - NUM_HELD_OUT}]", data_dir
        )
        val_images, val_labels = _tfds_arrays(
            dataset, f"train[{NUM_TRAIN_IMAGES - NUM_HELD_OUT}:]", data_dir
        )
    else:
        train_images, train_labels = _tfds_arrays(dataset, "train", data_dir)
        if validation == "test":
            val_images, val_labels = _tfds_arrays(dataset, "test", data_dir)

    num_train = int(train_images.shape[0])
    steps_per_epoch = num_train // batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch size {batch_size} is larger than the {num_train} training images "
            f"of {dataset!r}"
        )
    validation_ds = None
    num_validation = 0
    if val_images is not None:
        num_validation = int(val_images.shape[0])
        validation_ds = _eval_pipeline(
            val_images, val_labels, name=dataset, batch_size=batch_size
        )
    return CifarData(
        name=dataset,
        num_classes=NUM_CLASSES[dataset],
        num_train=num_train,
        num_validation=num_validation,
        batch_size=int(batch_size),
        steps_per_epoch=steps_per_epoch,
        seed=int(seed),
        augment=bool(augment),
        validation_split=validation,
        validation=validation_ds,
        train_images=train_images,
        train_labels=train_labels,
    )
