"""The data pipelines: shapes, split sizes, reproducible order, augmentation,
normalisation, and the error for a data set that is not prepared."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from freezeout_tf import data


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


@pytest.fixture(scope="module")
def synthetic():
    return data.load_data(
        "synthetic",
        batch_size=32,
        seed=3,
        synthetic_train_size=200,
        synthetic_validation_size=70,
    )


def test_synthetic_sizes_and_shapes(synthetic):
    assert synthetic.num_classes == 100
    assert synthetic.num_train == 200 and synthetic.num_validation == 70
    assert synthetic.steps_per_epoch == 200 // 32
    batches = _batches(synthetic.train(0, 1))
    assert len(batches) == synthetic.steps_per_epoch
    for x, y in batches:  # drop_remainder: one shape, so one trace
        assert x.shape == (32, 32, 32, 3) and x.dtype == np.float32
        assert y.shape == (32,) and y.dtype == np.int32
    val = _batches(synthetic.validation)
    assert [len(y) for _, y in val] == [32, 32, 6]  # evaluation keeps every image


def test_synthetic_is_deterministic_and_learnable():
    a_x, a_y = data.make_synthetic_arrays(300, seed=1)
    b_x, b_y = data.make_synthetic_arrays(300, seed=1)
    np.testing.assert_array_equal(a_x, b_x)
    np.testing.assert_array_equal(a_y, b_y)
    assert a_x.shape == (300, 32, 32, 3) and a_x.dtype == np.uint8
    assert a_y.min() >= 0 and a_y.max() < 100
    # The class is visible in the mean colour: nearest class colour wins.
    means = a_x.reshape(300, -1, 3).mean(axis=1)
    palette = np.stack(
        [
            means[a_y == c].mean(axis=0) if np.any(a_y == c) else np.full(3, 1e9)
            for c in range(100)
        ]
    )
    pred = np.argmin(((means[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
    assert np.mean(pred == a_y) > 0.5


def test_epoch_order_does_not_depend_on_earlier_epochs(synthetic):
    steps = synthetic.steps_per_epoch
    full = _batches(synthetic.train(0, 3))
    resumed = _batches(synthetic.train(2, 3))
    assert len(full) == 3 * steps and len(resumed) == steps
    for (x1, y1), (x2, y2) in zip(full[2 * steps :], resumed):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    # ... and epochs differ from one another (reshuffled every epoch).
    assert not np.array_equal(full[0][1], full[steps][1])
    # The same seed gives the same stream; another seed another one.
    other = data.load_data("synthetic", batch_size=32, seed=4, synthetic_train_size=200)
    assert not np.array_equal(_batches(other.train(0, 1))[0][1], full[0][1])


def test_endless_train_pipeline(synthetic):
    ds = synthetic.train(5)
    assert (
        len(_batches(ds.take(3 * synthetic.steps_per_epoch)))
        == 3 * synthetic.steps_per_epoch
    )


def _normalized(images, name="synthetic"):
    mean, std = data.NORMALIZATION[name]
    return (images.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)


def test_no_augment_gives_normalized_images():
    d = data.load_data(
        "synthetic", batch_size=10, augment=False, synthetic_train_size=40
    )
    images, labels = data.make_synthetic_arrays(40, seed=1)
    for x, y in _batches(d.train(0, 1)):
        for xi, yi in zip(x, y):
            match = [
                i
                for i in range(40)
                if np.allclose(_normalized(images[i]), xi, atol=1e-5)
            ]
            assert match and labels[match[0]] == yi


def test_augmentation_is_a_padded_crop_and_maybe_a_flip():
    d = data.load_data(
        "synthetic", batch_size=8, augment=True, synthetic_train_size=8, seed=0
    )
    images, _ = data.make_synthetic_arrays(8, seed=1)
    order = np.asarray(_batches(d.train(0, 1))[0][1])
    x, y = _batches(d.train(0, 1))[0]
    np.testing.assert_array_equal(y, order)
    zero = _normalized(np.zeros((1, 1, 3), np.uint8))[0, 0]
    flips = shifts = 0
    for out in x:
        candidates = []
        for i in range(8):
            padded = np.pad(images[i], [[4, 4], [4, 4], [0, 0]])
            for dy in range(9):
                for dx in range(9):
                    crop = padded[dy : dy + 32, dx : dx + 32]
                    for flip in (False, True):
                        c = crop[:, ::-1] if flip else crop
                        if np.allclose(_normalized(c), out, atol=1e-5):
                            candidates.append((dy, dx, flip))
        assert candidates, "an augmented image is not a crop of a padded image"
        dy, dx, flip = candidates[0]
        flips += flip
        shifts += (dy, dx) != (4, 4)
        if (dy, dx) != (4, 4):  # the padding is black before normalisation
            assert np.any(np.all(np.isclose(out, zero, atol=1e-5), axis=-1))
    assert shifts > 0


def test_cifar_from_mocked_tfds(tmp_path):
    with tfds.testing.mock_data(num_examples=40):
        d = data.load_data("cifar100", data_dir=str(tmp_path), batch_size=16, seed=0)
        assert d.num_classes == 100 and d.steps_per_epoch == d.num_train // 16
        x, y = _batches(d.train(0, 1))[0]
        assert x.shape == (16, 32, 32, 3) and y.max() < 100
        assert d.validation is not None
        d10 = data.load_data(
            "cifar10", data_dir=str(tmp_path), validation="test", batch_size=16
        )
        assert d10.num_classes == 10 and d10.validation_split == "test"
        assert d10.num_validation > 0
        none = data.load_data(
            "cifar10", data_dir=str(tmp_path), validation="none", batch_size=16
        )
        assert none.validation is None and none.num_validation == 0


def test_missing_dataset_raises_one_clear_error(tmp_path):
    where = tmp_path / "nothing_here"
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_data("cifar100", data_dir=str(where))
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message
    assert "'cifar100'" in message and str(where) in message
    assert "download_and_prepare()" in message
    assert not where.exists()  # nothing created, nothing downloaded


@pytest.mark.parametrize(
    "kwargs, text",
    [
        (dict(dataset="imagenet"), "imagenet"),
        (dict(validation="sometimes"), "sometimes"),
        (dict(batch_size=0), "0"),
        (dict(dataset="synthetic", batch_size=64, synthetic_train_size=10), "64"),
    ],
)
def test_bad_arguments(kwargs, text):
    kwargs.setdefault("dataset", "synthetic")
    with pytest.raises(ValueError, match=text):
        data.load_data(**kwargs)


def test_default_data_dir_honours_tfds_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert data._default_data_dir(None) == str(tmp_path)
    assert data._default_data_dir("~/x") == os.path.expanduser("~/x")
