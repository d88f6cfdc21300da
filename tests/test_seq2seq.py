"""Encoder-decoders (BART) and vision encoders (CLIP) split block by block
(issue 32): a layer called by several units belongs to the first, the
encoder's output is carried to every decoder block, and constant
non-trainable state (CLIP's `position_ids`) is not refused."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from freezeout_tf import FreezeOut, FreezeOutModel, schedule
from hub_models import step_and_plain_gradients
from test_transformers import unit_state

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
VOCAB, SEQ = 50, 8
# Cut right after these: unit 0 is the encoder's embeddings and first
# block, unit 1 its second block, unit 2 the decoder's embeddings and first
# block, unit 3 its second; the head is the output projection.
BOUNDARIES = ["transformer_encoder_layer_0", "transformer_encoder_layer_1",
              "transformer_decoder_layer_0"]
# Prefixes of the variable paths of units 0 and 1, read off the layer
# names above: with 2 units frozen, these (the shared token embedding
# too, owned by unit 0) get no gradient.
FROZEN_2 = ("token_embedding/", "encoder_position_embedding/",
            "encoder_embeddings_layer_norm/", "transformer_encoder_layer_0/",
            "transformer_encoder_layer_1/")


def bart_lm(seed=0, lora=False):
    """A tiny BartSeq2SeqLM, no preprocessor (the sizes of KerasHub's own
    BART tests, with a 50-token vocabulary)."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BartBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=SEQ, dropout=0.0)
    if lora:
        backbone.enable_lora(2)
    return keras_hub.models.BartSeq2SeqLM(backbone=backbone,
                                          preprocessor=None)


def seq2seq_data(n, seed=1):
    rng = np.random.default_rng(seed)
    x = {"encoder_token_ids": rng.integers(1, VOCAB, (n, SEQ)),
         "encoder_padding_mask": np.ones((n, SEQ), bool),
         "decoder_token_ids": rng.integers(1, VOCAB, (n, SEQ)),
         "decoder_padding_mask": np.ones((n, SEQ), bool)}
    x = {k: v.astype("int32") if v.dtype != bool else v for k, v in x.items()}
    return x, rng.integers(1, VOCAB, (n, SEQ)).astype("int32")


def split(lm):
    model = FreezeOutModel.from_model(lm, boundaries=BOUNDARIES)
    model.compile(keras.optimizers.AdamW(1e-2, weight_decay=0.1), LOSS)
    return model


def test_encoder_blocks_then_decoder_blocks_and_the_embedding_is_unit_0s():
    lm = bart_lm()
    model = FreezeOutModel.from_model(lm)  # one unit per segment
    names = [[layer.name for layer in unit.layers]
             for unit in model.freeze_units]
    unit_of = {n: i for i, unit in enumerate(names) for n in unit}
    blocks = ["transformer_encoder_layer_0", "transformer_encoder_layer_1",
              "transformer_decoder_layer_0", "transformer_decoder_layer_1"]
    # In forward order, each block in its own unit.
    assert [unit_of[b] for b in blocks] == sorted(
        set(unit_of[b] for b in blocks))
    embedding = lm.backbone.token_embedding.embeddings
    assert model.variable_units([embedding]) == [0]
    # The decoder's lookup and the output projection read it as foreign.
    readers = [i for i, reads in enumerate(model._foreign_reads())
               for _, variables in reads
               if any(v is embedding for v in variables)]
    assert readers[-1] == model.num_units and len(readers) == 2
    assert unit_of["transformer_encoder_layer_1"] <= readers[0] < unit_of[
        "transformer_decoder_layer_0"] + 1
    # The encoder's output is carried into every decoder block's unit.
    for b in blocks[2:]:
        inputs = [t.name for t in model.freeze_units[unit_of[b]].inputs]
        assert "freezeout_hidden_0" in inputs, (b, inputs)


@pytest.mark.parametrize("lora,k", [(False, 0), (False, 2), (True, 2)],
                         ids=["shared-0", "shared-2", "lora-2"])
def test_gradients_equal_plain_tape_with_k_frozen(lora, k):
    original = bart_lm(lora=lora)
    model = split(original)
    assert model.num_units == 4
    x, y = seq2seq_data(4)
    x = {n: tf.constant(v) for n, v in x.items()}
    y = tf.constant(y)
    by_var, reference, tol = step_and_plain_gradients(model, original, x, y,
                                                      k, LOSS)
    assert len(reference) == len(by_var) > 0
    frozen = [v.path for v in original.trainable_variables
              if k and v.path.startswith(FROZEN_2)]
    assert (len(frozen) > 0) == (k > 0)
    if k and not lora:
        assert "token_embedding/embeddings" in frozen
    for v, r in zip(original.trainable_variables, reference):
        g = by_var[id(v)].numpy()
        if v.path in frozen:
            assert not np.any(g), v.path
        else:
            assert np.max(np.abs(g - r)) <= tol, v.path


@pytest.mark.parametrize("lora", [
    False,
    # In the slow set, so that the README's command stays under 10 minutes
    # on 2 cores; CI runs the slow set too.
    pytest.param(True, marks=pytest.mark.slow)], ids=["shared", "lora"])
def test_one_trace_unit_0_bit_identical_and_generate_after(lora):
    lm = bart_lm(lora=lora)
    model = split(lm)
    x, y = seq2seq_data(16)
    epochs, t_0 = 4, 0.3
    fractions = schedule.freeze_fractions(model.num_units, t_0, "cubic")
    at = schedule.freeze_steps(2 * epochs, fractions)[0]
    snap = {}

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.batches_taken) == at:
                snap["unit 0"] = unit_state(self.model, 0)

    model.optimizer.build(model.trainable_variables)
    history = model.fit(x, y, batch_size=8, epochs=epochs, verbose=0,
                        callbacks=[FreezeOut(t_0=t_0), Snapshot()])
    assert model.train_step_traces == 1
    assert history.history["active_units"][-1] == 0
    assert np.all(np.isfinite(history.history["loss"]))
    after = unit_state(model, 0)
    assert len(after) == len(snap["unit 0"]) > 2
    for a, b in zip(snap["unit 0"], after):
        assert np.array_equal(a, b)
    if not lora:  # the shared embedding froze with unit 0
        embedding = lm.backbone.token_embedding.embeddings.numpy()
        assert any(np.array_equal(embedding, a) for a in after)
    # The original Seq2SeqLM generates with the trained weights: greedy,
    # the token after a 2-token decoder prompt is the split model's argmax.
    prompt = dict(x)
    prompt["decoder_padding_mask"] = np.broadcast_to(np.arange(SEQ) < 2,
                                                     (16, SEQ)).copy()
    np.testing.assert_allclose(lm.predict(prompt, verbose=0),
                               model.predict(prompt, verbose=0), atol=1e-5)
    want = np.argmax(model.predict(prompt, verbose=0)[:, 1], axis=-1)
    lm.compile(sampler="greedy")
    out = lm.generate(prompt, stop_token_ids=None)
    np.testing.assert_array_equal(np.asarray(out["decoder_token_ids"])[:, 2],
                                  want)


def test_clip_vision_encoder_under_a_dense_head_splits_and_fits():
    keras.utils.set_random_seed(0)
    encoder = keras_hub.models.CLIPVisionEncoder(
        patch_size=4, hidden_dim=8, num_layers=2, num_heads=2,
        intermediate_dim=16, image_shape=(16, 16, 3))
    images = keras.Input((16, 16, 3), name="images")
    pooled = keras.layers.GlobalAveragePooling1D()(encoder(images))
    model = keras.Model(images,
                        keras.layers.Dense(3, name="classifier")(pooled))
    split_model = FreezeOutModel.from_model(model)
    assert split_model.num_units >= 3  # the embedding, then each block
    # `position_ids`: non-trainable state of the embedding (which takes
    # `training`), never written by a step, so not refused, and unchanged.
    position_ids = encoder.get_layer("embedding").position_ids
    assert not position_ids.trainable
    before = position_ids.numpy().copy()
    split_model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    rng = np.random.default_rng(0)
    history = split_model.fit(
        rng.random((16, 16, 16, 3), dtype=np.float32),
        rng.integers(0, 3, 16), batch_size=8, epochs=3, verbose=0,
        callbacks=[FreezeOut(t_0=0.3)])
    assert split_model.train_step_traces == 1
    assert history.history["active_units"][-1] == 0
    assert np.all(np.isfinite(history.history["loss"]))
    np.testing.assert_array_equal(position_ids.numpy(), before)
