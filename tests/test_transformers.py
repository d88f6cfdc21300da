"""KerasHub transformers block by block: side inputs (BERT's padding mask
and segment ids) and containers of blocks (ViT's encoder)."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from hub_models import (assert_mirrored_matches_one_device,
                        assert_resume_equals_unbroken, bert_classifier,
                        deberta_classifier, deberta_data, deit_classifier,
                        esm_classifier, image_data,
                        step_and_plain_gradients, text_data,
                        vit_classifier, CLASSES, SEQ)
from freezeout_tf import (FreezeOut, FreezeOutModel, schedule, split_model,
                          unit_flops)
from freezeout_tf.core.side_inputs import HIDDEN
from test_train_step import optimizer_slots

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def adamw():
    return keras.optimizers.AdamW(1e-2, weight_decay=0.1)


def unit_state(model, i):
    """Unit i's weights and the AdamW slots of its trainable ones, as
    arrays (a frozen unit's `trainable_weights` is empty, so the variables
    come from the model's grouping)."""
    variables = model.trainable_variables
    owners = dict(zip(map(id, variables), model.variable_units(variables)))
    # A layer's weights, less those another part owns (an untied reversible
    # embedding's output projection belongs to the head).
    values = [v.numpy().copy() for v in model.freeze_units[i].weights
              if owners.get(id(v), i) == i]
    for v, unit in zip(variables, model.variable_units(variables)):
        if unit == i:
            values += [s.numpy().copy()
                       for s in optimizer_slots(model.optimizer, v)]
    return values


def test_bert_splits_into_blocks_with_side_inputs():
    original = bert_classifier()
    model = FreezeOutModel.from_model(original)
    assert model.input_names == ["padding_mask", "segment_ids", "token_ids"]
    inputs = [[t.name for t in u.inputs] for u in model.freeze_units]
    # Embeddings first, reading ids only; every encoder block reads the
    # hidden state and the padding mask; nothing else reads the mask.
    assert inputs[0] == ["token_ids"]
    blocks = [i for i, names in enumerate(inputs) if "padding_mask" in names]
    assert len(blocks) == 3
    assert all(names == [HIDDEN, "padding_mask"]
               for names in (inputs[i] for i in blocks))
    assert [t.name for t in model.head.inputs] == [HIDDEN]
    # Predict equals the original's, from a dict and from a list.
    x, _ = text_data(16)
    want = original.predict(x, verbose=0)
    # (Equal up to float rounding: the graph fuses ops differently.)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, atol=1e-6)
    as_list = [x[name] for name in model.input_names]
    np.testing.assert_allclose(model.predict(as_list, verbose=0), want,
                               atol=1e-6)


def _bert_block_macs(t, hidden=16, heads=2, intermediate=32):
    """Hand count of one tiny BERT encoder block on `t` tokens: Q, K, V and
    output projections, QK^T and AV (key and value dims hidden / heads),
    and the two feed-forward layers."""
    head_dim = hidden // heads
    return (4 * t * hidden * hidden + heads * t * t * 2 * head_dim
            + 2 * t * hidden * intermediate)


def test_bert_num_units_groups_blocks_with_side_inputs():
    """The README's BERT example: `from_model(num_units=N)` on a model with
    side inputs, and `unit_flops` with a dict `input_shape`."""
    original = bert_classifier()
    model = FreezeOutModel.from_model(original, num_units=2)
    assert model.num_units == 2
    assert [[t.name for t in u.inputs] for u in model.freeze_units] == [
        ["padding_mask", "segment_ids", "token_ids"],
        [HIDDEN, "padding_mask"]]
    x, y = text_data(16)
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               original.predict(x, verbose=0), atol=1e-6)
    # Costs by hand: embeddings count 0; two blocks, then one block and
    # the pooler (16 x 16); the head's Dense 16 x 3. The sequence length
    # comes from the dict (4, then 8), not the default.
    for t in (4, 8):
        shape = {name: (t,) for name in model.input_names}
        assert unit_flops(model, input_shape=shape) == [
            2 * _bert_block_macs(t), _bert_block_macs(t) + 16 * 16,
            16 * CLASSES]
    # It trains from a dict, in one trace.
    model.compile(adamw(), LOSS)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[FreezeOut(t_0=0.5)])
    assert model.train_step_traces == 1
    with pytest.raises(ValueError, match="num_units must be at most 7 "
                                         ".*got 8"):
        FreezeOutModel.from_model(original, num_units=8)


def test_padding_mask_really_masks():
    model = FreezeOutModel.from_model(bert_classifier())
    x, _ = text_data(16)
    changed = dict(x, token_ids=np.where(x["padding_mask"] == 1,
                                         x["token_ids"],
                                         (x["token_ids"] + 7) % 50))
    assert np.any(changed["token_ids"] != x["token_ids"])
    np.testing.assert_allclose(model.predict(changed, verbose=0),
                               model.predict(x, verbose=0), atol=1e-5)
    # Without the mask the same change does move the outputs (by far more
    # than float rounding, which is below 1e-6 here).
    unmasked = dict(changed, padding_mask=np.ones_like(x["padding_mask"]))
    diff = np.abs(model.predict(unmasked, verbose=0)
                  - model.predict(x, verbose=0))
    assert np.max(diff) > 1e-5


def test_vit_encoder_is_split_into_its_blocks():
    original = vit_classifier(num_layers=4)
    model = FreezeOutModel.from_model(original)
    names = [[layer.name for layer in u.layers[1:]]
             for u in model.freeze_units]
    # The patch embedding, then one unit per block of the ViTEncoder.
    assert names[0][0] == "vit_patching_and_embedding"
    # keras-hub 0.20 (CI's oldest lane) spells them "tranformer_block_i".
    blocks = [[name.replace("tranformer", "transformer") for name in unit]
              for unit in names[1:5]]
    assert blocks == [[f"transformer_block_{i}"] for i in (1, 2, 3, 4)]
    # The encoder's final LayerNorm holds weights: it closes the chain.
    assert names[5][0] == "ln" and len(names) == 6
    assert model.input_names is None  # one image input: no side inputs
    x, _ = image_data(8)
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               original.predict(x, verbose=0), atol=1e-6)
    # num_units groups the blocks; too many names the limit.
    assert split_model(original, num_units=3)[0][2].name.endswith("unit_2")
    with pytest.raises(ValueError, match="num_units must be at most 6"):
        split_model(original, num_units=7)


def test_deit_encoder_with_unread_outputs_is_split_into_its_blocks():
    # DeiTEncoder returns (hidden, empty all_hidden_states, empty scores)
    # and each block (hidden, None): the unread outputs are left out of the
    # recording instead of keeping the encoder whole.
    original = deit_classifier(num_layers=3)
    model = FreezeOutModel.from_model(original)
    names = [[layer.name for layer in u.layers[1:]]
             for u in model.freeze_units]
    assert names == [["deit_patching_and_embedding"],
                     ["transformer_block_1"], ["transformer_block_2"],
                     ["transformer_block_3"],
                     ["ln", "pool"]]
    x, _ = image_data(8)
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               original.predict(x, verbose=0), atol=1e-6)


def test_deberta_relative_embeddings_are_carried_to_every_block():
    # DeBERTa-v3 makes its relative embeddings once, from the embeddings'
    # output, and every block reads them beside the hidden state: they are
    # carried across the units' boundaries, so each block is a unit.
    original = deberta_classifier(num_layers=3)
    model = FreezeOutModel.from_model(original)
    names = [[layer.name for layer in u.layers if layer.weights]
             for u in model.freeze_units]
    assert names == [["token_embedding"], ["embeddings_layer_norm"],
                     ["rel_embedding",
                      "disentangled_attention_encoder_layer_0"],
                     ["disentangled_attention_encoder_layer_1"],
                     ["disentangled_attention_encoder_layer_2"]]
    inputs = [[t.name for t in u.inputs] for u in model.freeze_units]
    carried = HIDDEN + "_0"
    assert carried not in inputs[2] and carried in model.freeze_units[2].output
    assert inputs[3] == inputs[4] == [HIDDEN, carried, "padding_mask"]
    assert [t.name for t in model.head.inputs] == [HIDDEN]  # last read: 4
    # Its variables belong to the unit that computes them; later units
    # read the tensor, not the variables.
    # (The backbone is found by type: Keras 3.8 names it with a suffix.)
    backbone = next(layer for layer in original.layers
                    if isinstance(layer, keras_hub.models.DebertaV3Backbone))
    rel = backbone.get_layer("rel_embedding")
    assert model.variable_units(rel.trainable_weights) == [2] * len(
        rel.trainable_weights)
    x, _ = deberta_data(8)
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               original.predict(x, verbose=0), atol=1e-6)


def test_one_input_with_a_mask_computed_from_it_splits_into_blocks():
    # ESM has one input; the padding mask it computes from the token ids
    # is read beside the hidden state by every block: the input is named,
    # so the mask is a side tensor each block recomputes.
    original = esm_classifier()
    model = FreezeOutModel.from_model(original)
    assert model.input_names == ["token_ids"]
    names = [[layer.name for layer in u.layers if layer.weights]
             for u in model.freeze_units]
    assert names[:3] == [["token_embedding"], ["transformer_layer_0"],
                         ["transformer_layer_1"]]
    inputs = [[t.name for t in u.inputs] for u in model.freeze_units]
    assert inputs[1] == inputs[2] == [HIDDEN, "token_ids"]
    x, y = text_data(16)
    ids = x["token_ids"] * x["padding_mask"]  # 0 pads
    want = original.predict(ids, verbose=0)
    # One input: a plain array, or a dict by its name.
    np.testing.assert_allclose(model.predict(ids, verbose=0), want,
                               atol=1e-6)
    np.testing.assert_allclose(
        model.predict({"token_ids": ids}, verbose=0), want, atol=1e-6)
    model.compile(adamw(), LOSS)
    model.fit(ids, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[FreezeOut(t_0=0.5)])
    assert model.train_step_traces == 1
    assert not any(u.trainable for u in model.freeze_units)


class Snapshot(keras.callbacks.Callback):
    """A unit's state right after the last step before it freezes."""

    def __init__(self, at_step, unit=0):
        super().__init__()
        self.at_step, self.unit, self.values = at_step, unit, None

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.batches_taken) == self.at_step:
            self.values = unit_state(self.model, self.unit)


@pytest.mark.parametrize("make,data,unit", [
    (lambda: bert_classifier(dropout=0.1, head="sequence"), text_data, 0),
    (lambda: vit_classifier(dropout=0.1), image_data, 0),
    (lambda: deit_classifier(dropout=0.1), image_data, 0),
    # The unit that computes DeBERTa's carried relative embeddings.
    (lambda: deberta_classifier(dropout=0.1), deberta_data, 2),
], ids=["bert", "vit", "deit", "deberta"])
def test_one_trace_and_frozen_units_bit_identical(make, data, unit):
    x, y = data(32)
    model = FreezeOutModel.from_model(make())
    model.compile(adamw(), LOSS)
    steps_per_epoch, epochs, t_0 = 4, 4, 0.3
    fractions = schedule.freeze_fractions(model.num_units, t_0, "cubic")
    snap = Snapshot(at_step=schedule.freeze_steps(
        steps_per_epoch * epochs, fractions)[unit], unit=unit)
    model.optimizer.build(model.trainable_variables)
    variables = model.trainable_variables
    trained = sum(u == unit for u in model.variable_units(variables))
    last_before = unit_state(model, model.num_units - 1)
    history = model.fit(x, y, batch_size=8, epochs=epochs, verbose=0,
                        callbacks=[FreezeOut(t_0=t_0, how_scale="cubic"),
                                   snap])
    assert model.train_step_traces == 1
    assert history.history["active_units"][-1] == 0  # every unit froze
    assert snap.values is not None
    after = unit_state(model, unit)
    # Its weights, then AdamW's two moments of each trainable one.
    assert trained > 0
    assert len(after) == len(snap.values) == (
        len(model.freeze_units[unit].weights) + 2 * trained)
    for before, end in zip(snap.values, after):
        assert np.array_equal(before, end)
    moved = unit_state(model, model.num_units - 1)
    assert any(not np.array_equal(a, b) for a, b in zip(last_before, moved))


@pytest.mark.parametrize("make,data,k", [
    (bert_classifier, text_data, 0), (bert_classifier, text_data, 3),
    # DeBERTa: the carried relative embeddings' unit (2) first active, so
    # their gradient from the later block comes through the carried
    # tensor; then frozen, under an active block that reads them.
    (deberta_classifier, deberta_data, 0),
    (deberta_classifier, deberta_data, 2),
    (deberta_classifier, deberta_data, 3),
    (deit_classifier, image_data, 0), (deit_classifier, image_data, 2),
], ids=["bert-0", "bert-3", "deberta-0", "deberta-2", "deberta-3", "deit-0",
        "deit-2"])
def test_gradients_equal_plain_tape_with_k_frozen(make, data, k):
    original = make()
    model = FreezeOutModel.from_model(original)
    x, y = data(8)
    x = tf.nest.map_structure(tf.constant, x)
    y = tf.constant(y)
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    by_var, reference, tol = step_and_plain_gradients(model, original, x, y,
                                                      k, LOSS)
    frozen = {id(v) for u in model.freeze_units[:k]
              for v in u.trainable_weights}
    assert (len(frozen) > 0) == (k > 0) and len(reference) > 0
    for v, r in zip(original.trainable_variables, reference):
        g = by_var[id(v)].numpy()
        if id(v) in frozen:
            assert not np.any(g), v.path
        else:
            assert np.max(np.abs(g - r)) <= tol, v.path
            # The carried relative embeddings' gradients are ~1e-5 of the
            # largest: held to their own scale (a unit that dropped the
            # later block's share through the carried tensor is ~40 % off).
            if v.path.startswith("rel_embedding/"):
                assert np.max(np.abs(g - r)) <= 1e-4 * np.max(np.abs(r)), (
                    v.path)


@pytest.mark.parametrize("make,data", [
    # In the slow set (15-20 s each), so that the README's command stays
    # under 10 minutes on 2 cores; CI runs the slow set too, and
    # test_train_step's and test_causal_lm's resume tests stay in it.
    pytest.param(bert_classifier, text_data, marks=pytest.mark.slow),
    pytest.param(deit_classifier, image_data, marks=pytest.mark.slow)],
    ids=["bert", "deit"])
def test_save_load_and_resume_exactly(make, data, tmp_path):
    # DeiT's blocks return (hidden, None): they record their tensors only
    # again when the loaded parts are rebuilt (layer_configs).
    def split():
        model = FreezeOutModel.from_model(make())
        model.compile(adamw(), LOSS)
        return model

    saved, loaded = assert_resume_equals_unbroken(
        split, data(32), str(tmp_path / "model.keras"))
    assert loaded.input_names == saved.input_names


def test_original_classifier_predicts_with_trained_weights_and_saves(
        tmp_path):
    original = bert_classifier()
    x, y = text_data(16)
    untrained = original.predict(x, verbose=0)
    model = FreezeOutModel.from_model(original)
    model.compile(adamw(), LOSS)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[FreezeOut(t_0=0.5)])
    trained = model.predict(x, verbose=0)
    assert np.max(np.abs(trained - untrained)) > 1e-2  # training moved it
    # The original model object reads the trained variables, and
    # keras.saving round-trips it.
    np.testing.assert_allclose(original.predict(x, verbose=0), trained,
                               atol=1e-5)
    original.save(tmp_path / "classifier.keras")
    loaded = keras.saving.load_model(tmp_path / "classifier.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), trained,
                               atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "deit"])
def test_mirrored_two_devices_matches_one_device(name, tmp_path):
    assert_mirrored_matches_one_device(tmp_path, name)


def test_bad_inputs_and_shared_blocks_get_clear_errors():
    model = FreezeOutModel.from_model(bert_classifier())
    x, _ = text_data(4)
    with pytest.raises(ValueError, match=r"no \['segment_ids'\]"):
        model.predict({k: v for k, v in x.items() if k != "segment_ids"},
                      verbose=0)
    # One block called at every layer (ALBERT shares its layers so).
    inputs = {n: keras.Input((SEQ,), dtype="int32", name=n)
              for n in ("token_ids", "padding_mask")}
    import keras_hub
    h = keras.layers.Embedding(50, 16, name="embed")(inputs["token_ids"])
    block = keras_hub.layers.TransformerEncoder(32, 2, name="shared_block")
    for _ in range(3):
        h = block(h, padding_mask=inputs["padding_mask"])
    logits = keras.layers.Dense(CLASSES, name="out")(h[:, 0, :])
    albert_like = keras.Model(inputs, logits, name="albert_like")
    # Its first unit owns it; its later calls hold no weight of their own,
    # so they join that unit (a unit of them alone would own nothing).
    units, _ = split_model(albert_like)
    assert [[layer.name for layer in u.layers if layer.weights]
            for u in units] == [["embed"], ["shared_block"]]
    with pytest.raises(ValueError, match="num_units must be at most 2"):
        split_model(albert_like, num_units=3)
    # Hand-made units must follow the convention.
    units = FreezeOutModel.from_model(bert_classifier()).freeze_units
    head = keras.layers.Dense(CLASSES)
    with pytest.raises(ValueError, match="the head must be a functional "
                                         "keras.Model with named inputs"):
        FreezeOutModel(units, head, input_names=["padding_mask",
                                                 "segment_ids", "token_ids"])
    with pytest.raises(ValueError, match="unit 1 .*must take an input named "
                                         "'freezeout_hidden'"):
        FreezeOutModel([units[0], units[0]], units[-1],
                       input_names=["token_ids"])
