"""Byte-level text for causal language models, from offline sources.

Every machine with Python has real text offline: the standard library's own
``.py`` source files (``sysconfig.get_paths()["stdlib"]``). This module reads
them, package by package, into byte-level token sequences for a KerasHub
causal LM fed token ids directly (no tokenizer, no preset download):

* ids 0-255 are the bytes, `END_ID` marks the start and the end of a file,
  `PAD_ID` pads the last window of a file (`VOCABULARY_SIZE` ids in all);
* a file is cut into windows of `sequence_length + 1` tokens that overlap
  by one, so every next-token target is counted once; each window gives
  ``x = {"token_ids", "padding_mask"}`` (what ``keras_hub`` ``CausalLM``
  takes, its preprocessor's output), the labels ``y`` (the ids shifted by
  one) and ``sample_weight`` (1 where the label is a real token, 0 on
  padding);
* packages split the corpus by domain: pretrain on some, fine-tune on a
  package held out from pretraining, and measure on a held-out part of its
  files (whole files, so no window leaks across the split).

Everything is sorted and deterministic: the same Python installation gives
the same arrays.

Example:

>>> corpus = stdlib_corpus(["json"], "html", sequence_length=64)
>>> sorted(corpus)
['fine_tune', 'heldout', 'pretrain']
>>> corpus["pretrain"]["token_ids"].shape[1]
64
"""

import os
import sysconfig

import numpy as np

from freezeout_tf import validation

__all__ = [
    "END_ID",
    "PAD_ID",
    "VOCABULARY_SIZE",
    "byte_llama",
    "decode",
    "encode",
    "generate_text",
    "lm_dataset",
    "package_files",
    "split_files",
    "stdlib_corpus",
    "stdlib_dir",
    "stdlib_packages",
    "token_loss",
    "windows",
]

END_ID = 256
PAD_ID = 257
VOCABULARY_SIZE = 258


def stdlib_dir():
    """The directory of this interpreter's standard library sources."""
    return sysconfig.get_paths()["stdlib"]


def stdlib_packages(root=None):
    """The standard library's top-level packages (directories with an
    ``__init__.py``) under `root` (default `stdlib_dir()`), sorted."""
    root = root or stdlib_dir()
    return sorted(
        name for name in os.listdir(root)
        if os.path.isfile(os.path.join(root, name, "__init__.py")))


def package_files(packages, root=None):
    """The ``.py`` files of `packages` (their subpackages included), sorted.

    Args:
        packages: names of top-level packages under `root`.
        root: default `stdlib_dir()`.

    Returns:
        list of absolute paths, sorted by package, then by path.

    Raises:
        ValueError: a name is not a package under `root` (the error lists
            the packages there), or no package is given.

    Example:

    >>> [os.path.basename(f) for f in package_files(["json"])][:2]
    ['__init__.py', 'decoder.py']
    """
    root = root or stdlib_dir()
    if isinstance(packages, str) or not packages:
        raise ValueError(
            f"packages must be a non-empty list of package names; got "
            f"{packages!r}.")
    known = stdlib_packages(root)
    unknown = [p for p in packages if p not in known]
    if unknown:
        raise ValueError(
            f"not a package under {root}: {unknown}; the packages there are "
            f"{known}.")
    files = []
    for package in packages:
        found = []
        for dirpath, dirnames, filenames in os.walk(
                os.path.join(root, package)):
            dirnames.sort()
            found += [os.path.join(dirpath, f) for f in filenames
                      if f.endswith(".py")]
        files += sorted(found)
    return files


def split_files(files, holdout_fraction):
    """Splits files into a training and a held-out part, spread evenly over
    the (sorted) list: ``k = max(1, round(f * n))`` of the `n` files are
    held out, file ``i`` when ``floor((i + 1) * k / n)`` exceeds
    ``floor(i * k / n)``.

    Args:
        files: the files, in a deterministic order.
        holdout_fraction: `f`, in (0, 1).

    Returns:
        `(train_files, heldout_files)`, both non-empty.

    Raises:
        ValueError: `holdout_fraction` outside (0, 1), or a part would be
            empty.

    Example:

    >>> split_files(["a", "b", "c", "d"], 0.25)
    (['a', 'b', 'c'], ['d'])
    """
    validation.check_number("holdout_fraction", holdout_fraction, 0, 1,
                            low_open=True, high_open=True)
    n = len(files)
    k = max(1, round(holdout_fraction * n))
    heldout = [(i + 1) * k // n > i * k // n for i in range(n)]
    train = [f for f, h in zip(files, heldout) if not h]
    test = [f for f, h in zip(files, heldout) if h]
    if not train or not test:
        raise ValueError(
            f"holdout_fraction={holdout_fraction!r} of {len(files)} files "
            f"leaves {len(train)} to train on and {len(test)} held out; both "
            f"must be at least 1.")
    return train, test


def encode(text):
    """Bytes (or a `str`, as UTF-8) as an int32 array of ids 0-255.

    Example:

    >>> encode("d\u00e9f").tolist()
    [100, 195, 169, 102]
    """
    if isinstance(text, str):
        text = text.encode("utf-8")
    return np.frombuffer(text, dtype=np.uint8).astype(np.int32)


def decode(ids):
    """Ids back to text: bytes 0-255 as UTF-8 (invalid sequences replaced),
    stopping at the first `END_ID` after the first id; `PAD_ID` dropped.

    Example:

    >>> decode([END_ID, *encode("def f():"), END_ID, 120, PAD_ID])
    'def f():'
    """
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if END_ID in ids[1:]:
        ids = ids[:ids.index(END_ID, 1)]
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def windows(files, sequence_length, max_bytes=None):
    """Files as next-token windows for a causal LM.

    Each file becomes ``[END_ID] + its bytes + [END_ID]``, cut into windows
    of `sequence_length + 1` tokens that start every `sequence_length`
    tokens (the last one padded with `PAD_ID`; a window with no target left
    is dropped).

    Args:
        files: paths, read in this order.
        sequence_length: tokens per example, at least 2.
        max_bytes: stop reading once this many bytes are read (the last
            file truncated); `None` reads everything.

    Returns:
        dict of numpy arrays with `sequence_length` columns: `token_ids`
        (int32), `padding_mask` (bool, True on real tokens), `labels`
        (int32: the next token) and `sample_weight` (float32: 1 where the
        label is a real token, 0 on padding).

    Raises:
        ValueError: `sequence_length` < 2, `max_bytes` < 1, or no text.

    Example:

    >>> w = windows(package_files(["json"]), sequence_length=16)
    >>> w["token_ids"].shape[1], bool(w["sample_weight"].min() == 0)
    (16, True)
    """
    validation.check_int("sequence_length", sequence_length, low=2)
    if max_bytes is not None:
        validation.check_positive_int("max_bytes", max_bytes,
                                      "None or a positive integer")
    chunks, read = [], 0
    for path in files:
        if max_bytes is not None and read >= max_bytes:
            break
        with open(path, "rb") as f:
            data = f.read()
        if max_bytes is not None:
            data = data[:max_bytes - read]
        read += len(data)
        ids = np.concatenate([[END_ID], encode(data), [END_ID]])
        for start in range(0, len(ids) - 1, sequence_length):
            chunk = ids[start:start + sequence_length + 1]
            chunks.append(np.pad(chunk, (0, sequence_length + 1 - len(chunk)),
                                 constant_values=PAD_ID))
    if not chunks:
        raise ValueError(f"no text in {len(files)} files.")
    ids = np.stack(chunks).astype(np.int32)
    real = ids != PAD_ID
    return {"token_ids": ids[:, :-1], "padding_mask": real[:, :-1],
            "labels": ids[:, 1:],
            "sample_weight": real[:, 1:].astype(np.float32)}


def stdlib_corpus(pretrain_packages, fine_tune_package, sequence_length,
                  holdout_fraction=0.2, max_bytes=None, root=None):
    """The standard library's sources split by package, as `windows`.

    Args:
        pretrain_packages: packages to pretrain on.
        fine_tune_package: a package not among them: the new domain.
        sequence_length: tokens per example.
        holdout_fraction: share of the fine-tuning package's files held out
            (`split_files`).
        max_bytes: cap on the bytes read for each part (`windows`).
        root: default `stdlib_dir()`.

    Returns:
        dict of `windows` dicts: `pretrain`, `fine_tune` (the package's
        training files) and `heldout` (its held-out files); each also has
        `files`, the paths it was read from (before `max_bytes`).

    Raises:
        ValueError: `fine_tune_package` is also a pretraining package, or as
            raised by `package_files`, `split_files` and `windows`.
    """
    if fine_tune_package in pretrain_packages:
        raise ValueError(
            f"fine_tune_package {fine_tune_package!r} is also in "
            f"pretrain_packages {list(pretrain_packages)}: it must be held "
            f"out of pretraining.")
    pretrain = package_files(pretrain_packages, root)
    train, heldout = split_files(
        package_files([fine_tune_package], root), holdout_fraction)
    parts = {"pretrain": pretrain, "fine_tune": train, "heldout": heldout}
    return {name: {**windows(files, sequence_length, max_bytes),
                   "files": files}
            for name, files in parts.items()}


def lm_dataset(arrays, batch_size, shuffle_seed=None, repeat=False):
    """`windows` arrays as a `tf.data.Dataset` of
    ``({"token_ids", "padding_mask"}, labels, sample_weight)`` batches.

    Args:
        arrays: a dict from `windows` (or `stdlib_corpus`).
        batch_size: examples per batch; the last, smaller batch is kept
            unless `repeat`.
        shuffle_seed: shuffle the windows (each epoch anew) with this seed;
            `None` keeps their order.
        repeat: repeat forever (then pass `steps_per_epoch` to `fit`).

    Returns:
        a `tf.data.Dataset`.

    Example:

    >>> ds = lm_dataset(windows(package_files(["json"]), 16), batch_size=4)
    >>> x, y, w = next(iter(ds))
    >>> sorted(x), tuple(y.shape), w.dtype.name
    (['padding_mask', 'token_ids'], (4, 16), 'float32')
    """
    import tensorflow as tf

    x = {"token_ids": arrays["token_ids"],
         "padding_mask": arrays["padding_mask"]}
    ds = tf.data.Dataset.from_tensor_slices(
        (x, arrays["labels"], arrays["sample_weight"]))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(arrays["labels"]), seed=shuffle_seed)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size, drop_remainder=repeat).prefetch(2)


def byte_llama(num_layers, hidden_dim, num_heads, intermediate_dim=None,
               num_key_value_heads=None, tie_weights=False, seed=None):
    """A KerasHub ``Llama3CausalLM`` over `VOCABULARY_SIZE` byte ids, built
    from a config (random weights, nothing downloaded, no preprocessor:
    it takes ``{"token_ids", "padding_mask"}``).

    Args:
        num_layers: decoder blocks.
        hidden_dim: width.
        num_heads: query heads.
        intermediate_dim: feed-forward width; default `2 * hidden_dim`.
        num_key_value_heads: default `num_heads`.
        tie_weights: tie the input embedding and the output projection.
        seed: seed the weights (`keras.utils.set_random_seed`).

    Returns:
        a ``keras_hub.models.Llama3CausalLM``.

    Example:

    >>> lm = byte_llama(num_layers=2, hidden_dim=16, num_heads=2, seed=0)
    >>> lm.backbone.num_layers, lm.backbone.vocabulary_size
    (2, 258)
    """
    import keras
    import keras_hub

    if seed is not None:
        keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=VOCABULARY_SIZE, num_layers=num_layers,
        num_query_heads=num_heads, hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim or 2 * hidden_dim,
        num_key_value_heads=num_key_value_heads or num_heads,
        tie_word_embeddings=tie_weights,
    )
    return keras_hub.models.Llama3CausalLM(backbone=backbone,
                                           preprocessor=None)


def token_loss(model, dataset):
    """Mean next-token cross-entropy (nats) over the real tokens of
    `dataset`, each token counted once (``exp`` of it is the perplexity).

    Keras' own `evaluate` averages per batch over every position, padding
    included; this divides the weighted sum by the sum of the weights.

    Args:
        model: maps ``{"token_ids", "padding_mask"}`` to logits (a
            ``CausalLM`` or a ``FreezeOutModel`` split from one).
        dataset: batches of ``(x, labels, sample_weight)`` (`lm_dataset`).

    Returns:
        float.

    Example:

    >>> lm = byte_llama(num_layers=1, hidden_dim=8, num_heads=2, seed=0)
    >>> data = lm_dataset(windows(package_files(["json"]), 32), 64)
    >>> 5.0 < token_loss(lm, data) < 6.0  # untrained: about log(258)
    True
    """
    import keras

    total = weight = 0.0
    for x, y, w in dataset:
        logits = model.predict_on_batch(x)
        ce = keras.ops.sparse_categorical_crossentropy(
            y, logits, from_logits=True)
        total += float(keras.ops.sum(ce * w))
        weight += float(keras.ops.sum(w))
    return total / weight


def generate_text(causal_lm, prompts, length):
    """Continues each prompt with the causal LM's `generate()`.

    The prompts are encoded as bytes after an `END_ID` (the start of a
    file), padded to `length` tokens, and generated without stop tokens;
    the output is decoded up to the first `END_ID` (the end of a file).

    Args:
        causal_lm: a ``keras_hub`` ``CausalLM`` without a preprocessor; it
            samples with the sampler it was compiled with
            (``compile(sampler=...)``; KerasHub's default is top-k).
        prompts: a list of `str`.
        length: total tokens per sequence, prompt included.

    Returns:
        list of `str`, each prompt followed by its continuation.

    Raises:
        ValueError: the model has a preprocessor, or a prompt leaves no room
            for a new token.

    Example:

    >>> lm = byte_llama(num_layers=1, hidden_dim=8, num_heads=2, seed=0)
    >>> lm.compile(sampler="greedy")
    >>> generate_text(lm, ["import "], length=16)[0].startswith("import ")
    True
    """
    if getattr(causal_lm, "preprocessor", None) is not None:
        raise ValueError(
            "causal_lm has a preprocessor; generate_text feeds byte ids and "
            "needs preprocessor=None.")
    encoded = [np.concatenate([[END_ID], encode(p)]) for p in prompts]
    too_long = [p for p, e in zip(prompts, encoded) if len(e) >= length]
    if too_long:
        raise ValueError(
            f"length={length} leaves no room to generate after the prompts "
            f"{too_long}; each prompt takes its bytes + 1 tokens.")
    token_ids = np.full((len(prompts), length), PAD_ID, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for row, ids in enumerate(encoded):
        token_ids[row, :len(ids)] = ids
        mask[row, :len(ids)] = True
    out = causal_lm.generate({"token_ids": token_ids, "padding_mask": mask},
                             stop_token_ids=None)
    return [decode(row) for row in np.asarray(out["token_ids"])]
