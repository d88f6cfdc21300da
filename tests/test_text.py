"""freezeout_tf.recipes.text: byte-level windows of the standard library's sources."""

import os

import keras
import numpy as np
import pytest

from freezeout_tf.recipes import text


def _package(root, name, files):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for rel, data in {"__init__.py": b"", **files}.items():
        path = os.path.join(root, name, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


@pytest.fixture
def root(tmp_path):
    _package(str(tmp_path), "alpha", {"a.py": b"x = 1\n" * 7,
                                      "sub/b.py": "s = 'caf\u00e9'\n".encode()})
    _package(str(tmp_path), "beta", {f"m{i}.py": b"y%d\n" % i * (i + 1)
                                     for i in range(5)})
    (tmp_path / "notes.txt").write_text("not a package")
    (tmp_path / "loose.py").write_text("not in a package")
    return str(tmp_path)


def test_windows_reproduce_each_file_with_padding_weighted_zero(root):
    files = text.package_files(["alpha"], root)
    assert [os.path.relpath(f, root) for f in files] == [
        "alpha/__init__.py", "alpha/a.py", "alpha/sub/b.py"]
    arrays = text.windows(files, sequence_length=8)
    ids, labels = arrays["token_ids"], arrays["labels"]
    weight, mask = arrays["sample_weight"], arrays["padding_mask"]
    # Labels are the ids shifted by one inside each window.
    np.testing.assert_array_equal(labels[:, :-1], ids[:, 1:])
    # Weight 0 exactly where the label is padding; mask False exactly on
    # padded inputs; padding only at the end of a window.
    np.testing.assert_array_equal(weight == 0, labels == text.PAD_ID)
    np.testing.assert_array_equal(~mask, ids == text.PAD_ID)
    assert (weight == 0).any() and weight.dtype == np.float32
    assert not (np.diff(mask.astype(int), axis=1) > 0).any()
    # Every target is a real next byte once: the weighted labels of a
    # file's windows are its bytes followed by END_ID.
    expected = []
    for path in files:
        with open(path, "rb") as f:
            expected += list(f.read()) + [text.END_ID]
    assert list(labels[weight > 0]) == expected
    assert text.decode(ids[1]).startswith("x = 1\n")
    assert "caf\u00e9" in "".join(text.decode(r) for r in ids[-2:])


def test_ids_in_range_and_deterministic_on_the_real_stdlib():
    a = text.stdlib_corpus(["json"], "html", sequence_length=32)
    b = text.stdlib_corpus(["json"], "html", sequence_length=32)
    for part in ("pretrain", "fine_tune", "heldout"):
        for key in ("token_ids", "labels", "padding_mask", "sample_weight"):
            np.testing.assert_array_equal(a[part][key], b[part][key])
        assert a[part]["files"] == b[part]["files"]
        ids = a[part]["token_ids"]
        assert ids.dtype == np.int32 and ids.shape[1] == 32
        assert ids.min() >= 0 and ids.max() < text.VOCABULARY_SIZE
        assert a[part]["labels"].max() < text.VOCABULARY_SIZE


def test_the_fine_tuning_package_is_held_out(root):
    corpus = text.stdlib_corpus(["alpha"], "beta", sequence_length=4,
                                holdout_fraction=0.4, root=root)
    beta = os.path.join(root, "beta") + os.sep
    assert corpus["pretrain"]["files"] == text.package_files(["alpha"], root)
    assert not any(f.startswith(beta) for f in corpus["pretrain"]["files"])
    train, heldout = corpus["fine_tune"]["files"], corpus["heldout"]["files"]
    assert sorted(train + heldout) == text.package_files(["beta"], root)
    assert not set(train) & set(heldout)
    assert [os.path.basename(f) for f in heldout] == ["m1.py", "m4.py"]
    # No held-out text reaches the fine-tuning windows: m4.py's bytes
    # ("y4\n" x 5) are only in the held-out part.
    assert b"y4" not in bytes(
        int(i) for i in corpus["fine_tune"]["labels"].ravel() if i < 256)
    assert b"y4\ny4" in bytes(
        int(i) for i in corpus["heldout"]["labels"].ravel() if i < 256)


def test_split_files_spreads_the_held_out_files():
    train, test = text.split_files(list("abcdefghij"), 0.2)
    assert test == ["e", "j"] and len(train) == 8


@pytest.mark.parametrize("call, match", [
    (lambda r: text.package_files(["alpha", "gamma"], r), r"'gamma'.*alpha"),
    (lambda r: text.package_files("alpha", r), "non-empty list"),
    (lambda r: text.stdlib_corpus(["alpha", "beta"], "beta", 8, root=r),
     "'beta' is also in pretrain_packages"),
    (lambda r: text.split_files(["a", "b"], 1.0), r"\(0, 1\); got 1.0"),
    (lambda r: text.split_files(["a"], 0.2), "leaves 0 to train on and 1"),
    (lambda r: text.windows(text.package_files(["alpha"], r), 1),
     "sequence_length must be an integer >= 2; got 1"),
])
def test_bad_input_is_refused_by_name(root, call, match):
    with pytest.raises(ValueError, match=match):
        call(root)


def test_max_bytes_caps_what_is_read(root):
    arrays = text.windows(text.package_files(["beta"], root), 4, max_bytes=5)
    # __init__.py is empty; m0.py gives "y0\n", m1.py its first 2 bytes.
    assert list(arrays["labels"][arrays["sample_weight"] > 0]) == (
        [text.END_ID] + list(b"y0\n") + [text.END_ID] + list(b"y1")
        + [text.END_ID])


def test_dataset_batches_feed_a_byte_llama_and_token_loss_skips_padding(root):
    arrays = text.windows(text.package_files(["alpha"], root), 8)
    n = len(arrays["labels"])
    ds = text.lm_dataset(arrays, batch_size=4)
    x, y, w = next(iter(ds))
    assert sorted(x) == ["padding_mask", "token_ids"]
    assert x["token_ids"].shape == (4, 8) and w.dtype == "float32"
    model = text.byte_llama(num_layers=1, hidden_dim=8, num_heads=2, seed=0)
    logits = model.predict(
        {"token_ids": arrays["token_ids"],
         "padding_mask": arrays["padding_mask"]}, verbose=0)
    assert logits.shape == (n, 8, text.VOCABULARY_SIZE)
    ce = keras.ops.convert_to_numpy(keras.ops.sparse_categorical_crossentropy(
        arrays["labels"], logits, from_logits=True))
    real = arrays["sample_weight"] > 0
    expected = ce[real].mean()
    assert abs(expected - ce.mean()) > 1e-4  # padding would change it
    np.testing.assert_allclose(text.token_loss(model, ds), expected,
                               rtol=1e-5)
    shuffled = [b[1].numpy() for b in text.lm_dataset(
        arrays, 4, shuffle_seed=0, repeat=True).take(3)]
    assert all(s.shape == (4, 8) for s in shuffled)


def test_generate_text_continues_each_prompt():
    model = text.byte_llama(num_layers=1, hidden_dim=8, num_heads=2, seed=0)
    model.compile(sampler="greedy")
    with pytest.raises(ValueError, match="no room"):
        text.generate_text(model, ["0123456789a"], 12)
    out = text.generate_text(model, ["def ", "import"], 12)
    assert out[0].startswith("def ") and out[1].startswith("import")
    assert out == text.generate_text(model, ["def ", "import"], 12)
