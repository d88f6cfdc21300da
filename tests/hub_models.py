"""Tiny KerasHub classifiers for the transformer tests (random weights from
a config: nothing is downloaded)."""

import os
import subprocess
import sys

import keras
import keras_hub
import numpy as np

SEQ, VOCAB, CLASSES = 8, 50, 3
TEXT_INPUTS = ("token_ids", "segment_ids", "padding_mask")


def bert_classifier(seed=0, dropout=0.0, num_layers=3, head="pooled"):
    """BertBackbone + Dense head, on the backbone's pooled output (its
    [CLS] position through the pooler) or on `sequence_output[:, 0]`."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB, num_layers=num_layers, num_heads=2,
        hidden_dim=16, intermediate_dim=32, max_sequence_length=SEQ,
        dropout=dropout,
    )
    inputs = {name: keras.Input((None,), dtype="int32", name=name)
              for name in TEXT_INPUTS}
    outputs = backbone(inputs)
    if head == "pooled":
        features = outputs["pooled_output"]
    else:
        features = outputs["sequence_output"][:, 0, :]
    logits = keras.layers.Dense(CLASSES, name="classifier")(features)
    return keras.Model(inputs, logits, name="bert_classifier")


def vit_classifier(seed=0, dropout=0.0, num_layers=3):
    """ViTBackbone + average pooling of its sequence output + Dense head."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(16, 16, 3), patch_size=4, num_layers=num_layers,
        num_heads=2, hidden_dim=16, mlp_dim=32, dropout_rate=dropout,
    )
    images = keras.Input((16, 16, 3), name="images")
    features = keras.layers.GlobalAveragePooling1D()(backbone(images))
    logits = keras.layers.Dense(CLASSES, name="classifier")(features)
    return keras.Model(images, logits, name="vit_classifier")


def deit_classifier(seed=0, dropout=0.0, num_layers=3):
    """DeiTBackbone (its encoder returns empty hidden-state and score
    tensors beside the hidden state, and its blocks `None` scores) +
    average pooling + Dense head."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.DeiTBackbone(
        image_shape=(16, 16, 3), patch_size=4, num_layers=num_layers,
        num_heads=2, hidden_dim=16, intermediate_dim=32,
        dropout_rate=dropout,
    )
    images = keras.Input((16, 16, 3), name="images")
    features = keras.layers.GlobalAveragePooling1D(name="pool")(backbone(images))
    logits = keras.layers.Dense(CLASSES, name="classifier")(features)
    return keras.Model(images, logits, name="deit_classifier")


def deberta_classifier(seed=0, dropout=0.0, num_layers=2):
    """DebertaV3Backbone (its relative embeddings are made once, from the
    embeddings' output, and read by every block) + Dense head on
    `sequence_output[:, 0]`. Inputs: token ids and padding mask."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.DebertaV3Backbone(
        vocabulary_size=VOCAB, num_layers=num_layers, num_heads=2,
        hidden_dim=16, intermediate_dim=32, max_sequence_length=SEQ,
        bucket_size=4, dropout=dropout,
    )
    inputs = {name: keras.Input((None,), dtype="int32", name=name)
              for name in ("token_ids", "padding_mask")}
    features = backbone(inputs)[:, 0, :]
    logits = keras.layers.Dense(CLASSES, name="classifier")(features)
    return keras.Model(inputs, logits, name="deberta_classifier")


def deberta_data(n=32, seed=0):
    """`text_data` without segment ids (DeBERTa-v3 reads none)."""
    x, y = text_data(n, seed)
    del x["segment_ids"]
    return x, y


def esm_classifier(seed=0, num_layers=2):
    """ESMProteinClassifier: one input, `token_ids`; its backbone computes
    the padding mask from it (`token_ids != 0`) and every block reads it."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ESMBackbone(
        vocabulary_size=VOCAB, num_layers=num_layers, num_heads=2,
        hidden_dim=16, intermediate_dim=32, dropout=0.0,
    )
    return keras_hub.models.ESMProteinClassifier(
        backbone=backbone, num_classes=CLASSES, preprocessor=None)


def text_data(n=32, seed=0):
    """Token ids with a padding mask that really masks: each example has
    2..SEQ real tokens, the rest padded with random ids (so that a mask
    that did not mask would change the output)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, SEQ + 1, size=n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype("int32")
    x = {
        "token_ids": rng.integers(1, VOCAB, size=(n, SEQ)).astype("int32"),
        "segment_ids": (rng.random((n, SEQ)) < 0.5).astype("int32") * mask,
        "padding_mask": mask,
    }
    y = (x["token_ids"][:, 0] % CLASSES).astype("int32")
    return x, y


def image_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 16, 16, 3)).astype("float32")
    y = rng.integers(0, CLASSES, size=n).astype("int32")
    return x, y


LM_SEQ, LM_VOCAB = 12, 64


def gpt2_causal_lm(seed=0, num_layers=2):
    """GPT2CausalLM: its token embedding is tied (the lookup in the first
    unit and the output projection in the head read one variable)."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=LM_VOCAB, num_layers=num_layers, num_heads=2,
        hidden_dim=16, intermediate_dim=32, dropout=0.0,
        max_sequence_length=LM_SEQ,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone,
                                         preprocessor=None)


def llama3_causal_lm(seed=0, num_layers=2):
    """Llama3CausalLM, untied: the lookup reads `embeddings`, the output
    projection `reverse_embeddings`."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=LM_VOCAB, num_layers=num_layers, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
    )
    return keras_hub.models.Llama3CausalLM(backbone=backbone,
                                           preprocessor=None)


def gemma3_causal_lm(seed=0, num_layers=2):
    """Gemma3CausalLM, tied: the task calls its backbone as
    `backbone(inputs=inputs)` (a keyword, where GPT-2 passes it
    positionally)."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.Gemma3Backbone(
        vocabulary_size=LM_VOCAB, image_size=16, num_layers=num_layers,
        num_query_heads=2, num_key_value_heads=1, hidden_dim=16,
        intermediate_dim=32, head_dim=8,
    )
    return keras_hub.models.Gemma3CausalLM(backbone=backbone,
                                           preprocessor=None)


def lm_data(n=16, seed=0):
    """`(x, y, sample_weight)` as CausalLM preprocessing makes them: token
    ids and padding mask, the ids shifted by one as labels, and the padding
    mask (shifted) as the token loss' sample weight. Each example has
    3..LM_SEQ real tokens; padding ids are random, so that a loss that did
    not mask would see them."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, LM_VOCAB, size=(n, LM_SEQ + 1)).astype("int32")
    lengths = rng.integers(3, LM_SEQ + 2, size=n)
    mask = (np.arange(LM_SEQ + 1)[None, :] < lengths[:, None]).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}
    return x, ids[:, 1:], mask[:, 1:].astype("float32")


def assert_resume_equals_unbroken(make, data, path, epochs=4, batch_size=8,
                                  save=None, load=None):
    """Save, load and resume equal an unbroken run.

    `make()` gives a compiled FreezeOutModel (the same one at every call);
    `data` is `(x, y)` or `(x, y, sample_weight)`. One model trains
    `epochs` epochs on the FreezeOut schedule; another trains half of them
    (some unit frozen by then), is saved to `path` with `save(model, path)`
    (default `model.save`) and loaded with `load(path)` (default
    `keras.saving.load_model`), and resumes to the end. Asserts the loaded
    model predicts as the saved one with the same units frozen, resumes in
    one trace, and ends with the unbroken run's weights, optimizer
    variables (slots, iterations) and step count.

    Returns:
        `(saved, loaded)` models, for checks of their own.
    """
    x, y, *weights = data
    sample_weight = weights[0] if weights else None
    steps = -(-len(y) // batch_size) * epochs

    def fit(model, initial_epoch, end, total_steps=None):
        from freezeout_tf import FreezeOut
        model.fit(x, y, sample_weight=sample_weight, batch_size=batch_size,
                  epochs=end, shuffle=False, initial_epoch=initial_epoch,
                  verbose=0, callbacks=[FreezeOut(
                      t_0=0.3, how_scale="linear", total_steps=total_steps)])

    whole = make()
    fit(whole, 0, epochs)
    model = make()
    fit(model, 0, epochs // 2, total_steps=steps)
    frozen = [not u.trainable for u in model.freeze_units]
    assert any(frozen)
    (save or (lambda m, p: m.save(p)))(model, path)
    loaded = (load or keras.saving.load_model)(path)
    assert [not u.trainable for u in loaded.freeze_units] == frozen
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-6)
    fit(loaded, epochs // 2, epochs)
    assert loaded.train_step_traces == 1
    assert int(loaded.batches_taken) == int(whole.batches_taken) == steps
    for a, b in zip(whole.weights + whole.optimizer.variables,
                    loaded.weights + loaded.optimizer.variables,
                    strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=a.path)
    return model, loaded


WORKER = os.path.join(os.path.dirname(__file__), "_hub_dist_worker.py")


def assert_mirrored_matches_one_device(tmp_path, *worker_args):
    """Runs `_hub_dist_worker.py` (MirroredStrategy on two logical CPUs
    against one device, in a process of its own) and asserts: two
    replicas, one trace of the step (its Python body runs once per
    replica), some unit frozen at the end, and equal weights."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, WORKER, str(tmp_path),
                           *worker_args], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = np.load(tmp_path / "hub_mirrored.npz")
    assert int(r["replicas"]) == 2 and int(r["traces"]) == 2
    assert int(r["frozen_at_end"]) > 0
    for i in range(int(r["num_weights"])):
        np.testing.assert_allclose(r[f"two_{i}"], r[f"one_{i}"],
                                   rtol=1e-4, atol=1e-6)


def step_and_plain_gradients(model, original, x, y, k, loss):
    """`(by_var, reference, tol)`: `model`'s gradients (by variable id) in
    one step with its first `k` units frozen, a plain `tf.GradientTape`'s
    of `original` on the same batch (in `original.trainable_variables`
    order), and a tolerance against the gradients' overall scale (some are
    zero in exact arithmetic, a key bias cannot change a softmax, so only
    rounding is left of them)."""
    import tensorflow as tf
    fractions = np.array([0.05] * k + [0.9] * (model.num_units - k) + [1.0])
    model.schedule_state.set(100, fractions)
    model.batches_taken.assign(10)
    _, _, grads = tf.function(model.compute_freezeout_gradients)(x, y)
    by_var = {id(v): g for v, g in zip(model.trainable_variables, grads)}

    @tf.function
    def plain(x, y):
        with tf.GradientTape() as tape:
            value = loss(y, original(x, training=True))
        return tape.gradient(value, original.trainable_variables)

    reference = [tf.convert_to_tensor(r).numpy() for r in plain(x, y)]
    tol = 1e-5 * max(np.max(np.abs(r)) for r in reference)
    return by_var, reference, tol
