"""KerasHub causal LMs (tied and untied embeddings) and LoRA, frozen block
by block: variables owned by the part that reads them (issue 23)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hub_models import (assert_mirrored_matches_one_device,
                        assert_resume_equals_unbroken, gemma3_causal_lm,
                        gpt2_causal_lm, llama3_causal_lm, lm_data)
from freezeout_tf import FreezeOut, FreezeOutModel, schedule
from freezeout_tf.recipes import checkpoint
from test_transformers import unit_state

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
UNITS = 3


def lora_lm(seed=0):
    """Llama3CausalLM with `backbone.enable_lora(2)`: only the attention's
    query and value LoRA factors train."""
    lm = llama3_causal_lm(seed)
    lm.backbone.enable_lora(2)
    return lm


def adamw():
    return keras.optimizers.AdamW(1e-2, weight_decay=0.1)


def split(lm, tied_owner="first"):
    model = FreezeOutModel.from_model(lm, num_units=UNITS,
                                      tied_owner=tied_owner)
    model.compile(adamw(), LOSS)
    return model


def owner_of(model, variable):
    return model.variable_units([variable])[0]


def test_tied_and_untied_embeddings_split_by_variable():
    gpt2, llama = gpt2_causal_lm(), llama3_causal_lm()
    x, _, _ = lm_data(8)
    for lm in (gpt2, llama):
        model = split(lm)
        assert model.num_units == UNITS
        np.testing.assert_allclose(model.predict(x, verbose=0),
                                   lm.predict(x, verbose=0), atol=1e-5)
    tied = gpt2.backbone.token_embedding.embeddings
    assert owner_of(split(gpt2), tied) == 0
    assert owner_of(split(gpt2, "head"), tied) == UNITS
    untied = llama.backbone.token_embedding
    model = split(llama)
    assert owner_of(model, untied.embeddings) == 0
    assert owner_of(model, untied.reverse_embeddings) == UNITS
    assert not any(model._foreign_reads())  # disjoint reads, no sharing


def test_backbone_called_by_keyword_splits_into_its_blocks():
    # Gemma3CausalLM calls `backbone(inputs=inputs)`: looked into all the
    # same, one unit per decoder block (it stayed one unit before).
    lm = gemma3_causal_lm()
    model = FreezeOutModel.from_model(lm)
    names = [[layer.name for layer in unit.layers if layer.weights]
             for unit in model.freeze_units + [model.head]]
    assert names == [["token_embedding"], ["decoder_block_0"],
                     ["decoder_block_1"], ["final_normalization"],
                     ["token_embedding"]]
    x, _, _ = lm_data(8)
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               lm.predict(x, verbose=0), atol=1e-5)


def test_bad_tied_owner_is_refused_before_the_split():
    with pytest.raises(ValueError, match=r"tied_owner must be one of "
                                         r"'first', 'head' .*got 'last'"):
        FreezeOutModel.from_model(gpt2_causal_lm(), tied_owner="last")
    model = split(gpt2_causal_lm())
    with pytest.raises(ValueError, match="tied_owner must be one of"):
        FreezeOutModel(model.freeze_units, model.head, tied_owner=None)


@pytest.mark.parametrize("make,tied_owner,k", [
    (gpt2_causal_lm, "first", 0), (gpt2_causal_lm, "first", 2),
    (gpt2_causal_lm, "head", 0), (gpt2_causal_lm, "head", 2),
    (llama3_causal_lm, "first", 2), (lora_lm, "first", 2),
], ids=["gpt2-first-0", "gpt2-first-2", "gpt2-head-0", "gpt2-head-2",
        "llama-2", "lora-2"])
def test_gradients_equal_plain_tape_with_k_frozen(make, tied_owner, k):
    original = make()
    model = split(original, tied_owner)
    x, y, w = (tf.constant(a) if not isinstance(a, dict) else
               {n: tf.constant(v) for n, v in a.items()} for a in lm_data(8))
    fractions = np.array([0.05] * k + [0.9] * (UNITS - k) + [1.0])
    model.schedule_state.set(100, fractions)
    model.batches_taken.assign(10)
    _, _, grads = tf.function(model.compute_freezeout_gradients)(x, y, w)
    by_var = {id(v): g for v, g in zip(model.trainable_variables, grads)}

    @tf.function
    def plain(x, y, w):
        with tf.GradientTape() as tape:
            loss = LOSS(y, original(x, training=True), sample_weight=w)
        return tape.gradient(loss, original.trainable_variables)

    reference = [tf.convert_to_tensor(r).numpy() for r in plain(x, y, w)]
    assert len(reference) == len(by_var) > 0
    tol = 1e-5 * max(np.max(np.abs(r)) for r in reference)
    frozen = {id(v) for v in model.trainable_variables
              if owner_of(model, v) < k}
    assert (len(frozen) > 0) == (k > 0)
    for v, r in zip(original.trainable_variables, reference):
        g = by_var[id(v)].numpy()
        if id(v) in frozen:
            assert not np.any(g), v.path
        else:
            assert np.max(np.abs(g - r)) <= tol, v.path


class Snapshot(keras.callbacks.Callback):
    """A unit's state (`state(model, unit)`, by default `unit_state`) right
    after the last step before it freezes."""

    def __init__(self, unit, at_step, state=unit_state):
        super().__init__()
        self.unit, self.at_step, self.values = unit, at_step, None
        self.state = state

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.batches_taken) == self.at_step:
            self.values = self.state(self.model, self.unit)


def fit_with_snapshot(model, unit, epochs=4, state=unit_state):
    x, y, w = lm_data(16)
    fractions = schedule.freeze_fractions(UNITS, 0.3, "cubic")
    snap = Snapshot(unit, schedule.freeze_steps(2 * epochs, fractions)[unit],
                    state)
    model.optimizer.build(model.trainable_variables)
    history = model.fit(x, y, sample_weight=w, batch_size=8, epochs=epochs,
                        verbose=0, callbacks=[FreezeOut(t_0=0.3), snap])
    assert model.train_step_traces == 1
    assert history.history["active_units"][-1] == 0
    assert snap.values is not None
    return snap.values


@pytest.mark.parametrize("make,unit", [(gpt2_causal_lm, 0),
                                       (llama3_causal_lm, 0), (lora_lm, 1),
                                       (gemma3_causal_lm, 1)],
                         ids=["gpt2-tied", "llama-untied", "lora",
                              "gemma3-inputs-keyword"])
def test_one_trace_and_frozen_state_bit_identical(make, unit):
    lm = make()
    model = split(lm)
    fixed = [v for v in lm.weights if id(v) not in
             {id(t) for t in model.trainable_variables}]
    fixed_before = [v.numpy().copy() for v in fixed]
    before = fit_with_snapshot(model, unit)
    after = unit_state(model, unit)
    assert len(after) == len(before) > 2  # weights and AdamW slots
    for a, b in zip(before, after):
        assert np.array_equal(a, b)
    if make is lora_lm:  # only the LoRA factors are trained, and move
        assert model.trainable_variables
        assert all("lora_kernel" in v.path
                   for v in model.trainable_variables)
        for v, b in zip(fixed, fixed_before):
            assert np.array_equal(v.numpy(), b), v.path


def test_head_owned_tied_embedding_trains_after_unit_0_froze():
    lm = gpt2_causal_lm()
    model = split(lm, tied_owner="head")
    embeddings = lm.backbone.token_embedding.embeddings
    # The head owns it, so it is not part of unit 0's state ...
    assert not any(np.array_equal(v, embeddings.numpy())
                   for v in unit_state(model, 0))
    # ... and it moves after unit 0 froze.
    at_freeze = fit_with_snapshot(
        model, 0, state=lambda m, u: [embeddings.numpy().copy()])
    assert not np.array_equal(at_freeze[0], embeddings.numpy())


def test_original_lm_generates_with_trained_weights_and_saves(tmp_path):
    lm = gpt2_causal_lm()
    model = split(lm)
    x, y, w = lm_data(16)
    # 4-token prompts; the greedy next token before training.
    prompt = {"token_ids": x["token_ids"] * (np.arange(12) < 4),
              "padding_mask": np.broadcast_to(np.arange(12) < 4, (16, 12))}
    prompt = {k: np.asarray(v, "int32") for k, v in prompt.items()}

    def greedy(predict):
        return np.argmax(predict(prompt, verbose=0)[:, 3], axis=-1)

    untrained, first = lm.predict(x, verbose=0), greedy(lm.predict)
    model.fit(x, y, sample_weight=w, batch_size=8, epochs=2, verbose=0,
              callbacks=[FreezeOut(t_0=0.5)])
    logits = model.predict(x, verbose=0)
    assert np.max(np.abs(logits - untrained)) > 1e-2  # training moved it
    np.testing.assert_allclose(lm.predict(x, verbose=0), logits, atol=1e-5)
    # generate() continues each prompt with the trained weights: its first
    # new token is the split model's greedy choice, which for some prompts
    # is not the untrained one.
    want = greedy(model.predict)
    assert np.any(want != first)
    lm.compile(sampler="greedy")
    out = lm.generate(prompt, stop_token_ids=None)
    np.testing.assert_array_equal(np.asarray(out["token_ids"])[:, 4], want)
    # keras.saving round-trips the task model.
    lm.save(tmp_path / "lm.keras")
    loaded = keras.saving.load_model(tmp_path / "lm.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), logits,
                               atol=1e-5)


@pytest.mark.parametrize("make,tied_owner", [
    (gpt2_causal_lm, "first"),
    pytest.param(gpt2_causal_lm, "head", marks=pytest.mark.slow),
    (llama3_causal_lm, "first")], ids=["gpt2-first", "gpt2-head", "llama"])
def test_save_load_and_resume_exactly(make, tied_owner, tmp_path):
    # Llama's decoder has a get_config that does not round-trip in
    # keras-hub 0.32: the parts save with a repaired one (layer_configs).
    saved, loaded = assert_resume_equals_unbroken(
        lambda: split(make(), tied_owner), lm_data(16),
        str(tmp_path / "lm.keras"))
    assert loaded.tied_owner == tied_owner

    def reads(model):  # (owner, count) of each part's foreign reads
        return [[(o, len(vs)) for o, vs in r] for r in model._foreign_reads()]

    assert reads(loaded) == reads(saved)
    # Tied: one part reads the other's embedding; untied: none does.
    assert any(reads(saved)) == (make is gpt2_causal_lm)


def test_lora_resumes_exactly_from_a_checkpoint(tmp_path):
    # Keras saves a LoRA layer's kernel merged with its factors and not the
    # factors: save_atomic keeps them beside, load_checkpoint restores them.
    path = str(tmp_path / "lora.keras")
    saved, loaded = assert_resume_equals_unbroken(
        lambda: split(lora_lm()), lm_data(16), path,
        save=checkpoint.save_atomic, load=checkpoint.load_checkpoint)
    assert len(loaded.trainable_variables) == len(
        saved.trainable_variables) > 0
    assert all("lora_kernel" in v.path for v in loaded.trainable_variables)
    # keras.saving alone: it predicts as saved, and fit refuses it (its
    # factors are zero, which no gradient moves).
    x, y, w = lm_data(8)
    plain = keras.saving.load_model(path)
    np.testing.assert_allclose(plain.predict(x, verbose=0),
                               saved.predict(x, verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="loaded by keras.saving.*"
                                         "load_checkpoint"):
        plain.fit(x, y, sample_weight=w, epochs=1, verbose=0)
    saved.save(str(tmp_path / "merged.keras"))
    with pytest.raises(checkpoint.CheckpointError,
                       match="without its LoRA factors"):
        checkpoint.load_checkpoint(str(tmp_path / "merged.keras"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama", "lora"])
def test_mirrored_two_devices_matches_one_device(name, tmp_path):
    assert_mirrored_matches_one_device(tmp_path, name)


def test_hand_made_unit_owning_nothing_is_refused():
    shared = keras.layers.Dense(4, name="shared")
    units = [keras.Sequential([keras.Input((4,)), shared]) for _ in range(2)]
    head = keras.Sequential([keras.Input((4,)), shared,
                             keras.layers.Dense(2)])
    # The first unit owns it, so unit 1 would have nothing to freeze.
    with pytest.raises(ValueError, match=r"Unit 1 owns no variable: each "
                       r"one it reads \(.*shared/kernel, .*shared/bias\) "
                       r"belongs "
                       r"to unit 0, the first unit that reads it"):
        FreezeOutModel(units, head)
    # One unit and the head may share it: the unit owns it by default.
    model = FreezeOutModel(units[:1], head)
    assert model.variable_units([shared.kernel, shared.bias]) == [0, 0]
    assert FreezeOutModel(units[:1], head, tied_owner="head").variable_units(
        [shared.kernel]) == [1]
