"""Functional models split into freeze units: cut points, shared weights,
equal outputs, one trace, frozen means frozen, saving, fine-tuning."""

import keras
import numpy as np
import pytest

from conftest import LOSS, tiny_data
from freezeout_tf import (
    FreezeOut,
    FreezeOutModel,
    cut_points,
    estimate_speedup,
    schedule,
    split_model,
    t0_for_speedup,
    unit_flops,
)
from test_train_step import Snapshot, unit_state

L = keras.layers


def residual_block(x, name):
    y = L.Conv2D(4, 3, padding="same", name=f"{name}_conv1")(x)
    y = L.BatchNormalization(momentum=0.9, name=f"{name}_bn")(y)
    y = L.ReLU(name=f"{name}_relu")(y)
    y = L.Conv2D(4, 3, padding="same", name=f"{name}_conv2")(y)
    return L.Add(name=f"{name}_add")([x, y])


def skip_model(num_classes=5, seed=0, name="skip"):
    """Stem, two residual blocks, pooled classifier, on 8x8 images."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(4, 3, padding="same", name="stem")(inputs)
    x = L.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    x = residual_block(x, "b0")
    x = residual_block(x, "b1")
    x = L.GlobalAveragePooling2D(name="pool")(x)
    outputs = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


SKIP_CUTS = ["stem", "stem_bn", "stem_relu", "b0_add", "b1_add", "pool"]
# Conv multiply-accumulates per 8x8 image: stem, one residual block, head.
STEM, BLOCK, HEAD = 64 * 4 * 27, 2 * 64 * 4 * 36, 4 * 5


def layer_names(unit):
    return [layer.name for layer in unit.layers[1:]]  # without the Input


def test_cut_points_of_a_model_with_skip_connections():
    assert cut_points(skip_model()) == SKIP_CUTS


def test_segments_share_layers_and_predict_equals_the_original():
    model = skip_model()
    x, _ = tiny_data(16)
    before = model.predict(x, verbose=0)
    fo_model = FreezeOutModel.from_model(model)
    # Weightless segments (stem_relu, pool) join the one before them.
    assert [layer_names(u) for u in fo_model.freeze_units] == [
        ["stem"],
        ["stem_bn", "stem_relu"],
        ["b0_conv1", "b0_bn", "b0_relu", "b0_conv2", "b0_add"],
        ["b1_conv1", "b1_bn", "b1_relu", "b1_conv2", "b1_add", "pool"],
    ]
    assert layer_names(fo_model.head) == ["logits"]
    originals = {layer.name: layer for layer in model.layers}
    for part in fo_model.freeze_units + [fo_model.head]:
        for layer in part.layers[1:]:
            assert layer is originals[layer.name]  # shared, not copied
    np.testing.assert_allclose(fo_model.predict(x, verbose=0), before,
                               atol=1e-5)
    # Changing a weight through the split model changes the original.
    fo_model.head.layers[-1].bias.assign(np.ones(5, "float32"))
    np.testing.assert_allclose(model.predict(x, verbose=0), before + 1,
                               atol=1e-5)


def test_num_units_balances_cost_and_feeds_the_speedup_estimates():
    model = FreezeOutModel.from_model(skip_model(), num_units=2)
    # [stem, stem_bn, b0] + [b1] beats [stem, stem_bn] + [b0, b1].
    assert unit_flops(model) == [STEM + BLOCK, BLOCK, HEAD]
    saving = estimate_speedup(model, t_0=0.5, how_scale="linear")
    assert 0 < saving < 0.5
    t_0 = t0_for_speedup(model, saving, how_scale="linear")
    assert t_0 == pytest.approx(0.5, abs=1e-6)


def test_boundaries_cut_after_the_named_layers():
    model = FreezeOutModel.from_model(skip_model(),
                                      boundaries=["b0_add", "stem_relu"])
    assert [layer_names(u)[-1] for u in model.freeze_units] == [
        "stem_relu", "b0_add", "pool"]
    assert layer_names(model.head) == ["logits"]


def _bad_models():
    inputs = keras.Input((8, 8, 3))
    y = L.Conv2D(3, 3, padding="same", name="conv")(inputs)
    no_cut = keras.Model(inputs, L.Add(name="skip_add")([inputs, y]),
                         name="no_cut")

    # Two inputs; after the stem, two hidden streams that cross each other
    # at every layer, so no cut point lies between stem and output.
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    stem = L.Dense(4, name="stem")(a)
    u = L.Dense(4, name="u1")(stem)
    v = L.Dense(4, name="v1")(L.Concatenate(name="join_sb")([stem, b]))
    u, v = (L.Dense(4, name="u2")(L.Concatenate(name="join_uv")([u, v])),
            L.Dense(4, name="v2")(L.Concatenate(name="join_vu")([v, u])))
    two_inputs = keras.Model(
        [a, b], L.Dense(2, name="out")(L.Concatenate(name="join")([u, v])),
        name="two_inputs")

    # A nested block whose conv is called again outside it.
    block_in = keras.Input((8, 8, 4))
    shared = L.Conv2D(4, 3, padding="same", name="shared_conv")
    block = keras.Model(block_in, L.ReLU()(shared(block_in)), name="block")
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 1, name="stem")(inputs)
    x = block(x)
    x = L.BatchNormalization(name="bn")(x)
    x = shared(x)
    x = L.GlobalAveragePooling2D()(x)
    shared_nested = keras.Model(inputs, L.Dense(2, name="out")(x),
                                name="shared_nested")
    return no_cut, two_inputs, shared_nested


def test_each_bad_case_gets_a_clear_error():
    no_cut, two_inputs, shared_nested = _bad_models()
    with pytest.raises(ValueError, match="'no_cut' has no cut point.*'skip_add'"):
        split_model(no_cut)
    with pytest.raises(ValueError, match="boundary 'u2' is not a cut point: "
                                         "'.*' feeds '.*' around it. Cut "
                                         "points of 'two_inputs': stem, join"):
        split_model(two_inputs, boundaries=["u2"])
    with pytest.raises(ValueError, match="num_units must be at most 2"):
        split_model(two_inputs, num_units=3)
    # A conv called again outside its nested block belongs to the block's
    # unit; the segment of its second call holds no weight of its own, so
    # it joins the one before it (issue 32).
    units, _ = split_model(shared_nested)
    assert [sorted(layer.name for layer in u.layers if layer.weights)
            for u in units] == [["stem"], ["shared_conv"],
                                ["bn", "shared_conv"]]
    with pytest.raises(ValueError, match="boundary 'b0_conv1' is not a cut "
                                         "point: 'stem_relu' feeds 'b0_add'"):
        split_model(skip_model(), boundaries=["b0_conv1"])
    with pytest.raises(ValueError, match="boundary 'logits' lies in the head"):
        split_model(skip_model(), boundaries=["logits"])
    with pytest.raises(ValueError, match="boundary 'nope': model 'skip' has "
                                         "no layer of that name"):
        split_model(skip_model(), boundaries=["nope"])
    with pytest.raises(ValueError, match="num_units must be at most 4.*got 5"):
        split_model(skip_model(), num_units=5)
    with pytest.raises(ValueError, match="num_units or boundaries, not both"):
        split_model(skip_model(), num_units=2, boundaries=["b0_add"])
    with pytest.raises(ValueError, match="needs a functional keras.Model"):
        split_model(L.Dense(3))


def test_fit_traces_once_and_frozen_unit_is_bit_identical(tmp_path):
    x, y = tiny_data(64)
    original = skip_model()
    model = FreezeOutModel.from_model(original)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), LOSS)
    steps_per_epoch, epochs, t_0 = 4, 4, 0.3
    # By hand: unit 0's t = 0.3 ** 3 = 0.027; 0.027 * 16 = 0.43 -> step 1.
    snap = Snapshot(at_step=1)
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0,
              callbacks=[FreezeOut(t_0=t_0), snap])
    assert model.train_step_traces == 1
    assert snap.values is not None
    end = unit_state(model, 0)
    assert len(end) == len(snap.values) == 4  # kernel, bias, 2 momentums
    for before, after in zip(snap.values, end):
        assert np.array_equal(before, after)

    # Saves and loads as .keras; the original model object keeps working.
    path = str(tmp_path / "split.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.num_units == model.num_units
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-5)
    np.testing.assert_allclose(original.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-5)


def test_keras_application_mobilenet_v2():
    keras.utils.set_random_seed(0)
    net = keras.applications.MobileNetV2(
        weights=None, alpha=0.35, input_shape=(32, 32, 3), classes=10)
    cuts = cut_points(net)
    # 10 residual blocks end in an Add; the 7 blocks without a residual are
    # chains, cut between their layers; the last is the pooled features.
    assert len(cuts) == 74
    assert sum(name.endswith("_add") for name in cuts) == 10
    assert cuts[-1].startswith("global_average_pooling2d")  # auto-named
    model = FreezeOutModel.from_model(net, num_units=3)
    assert layer_names(model.head) == ["predictions"]
    costs = unit_flops(model)
    assert max(costs[:3]) < 1.5 * min(costs[:3])  # balanced
    x = np.random.default_rng(0).normal(size=(32, 32, 32, 3)).astype("float32")
    y = np.arange(32) % 10
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               net.predict(x, verbose=0), atol=1e-5)

    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy())
    # By hand: unit 0's t = 0.25 of 4 steps: floor(1.0) + 1 = 2.
    snap = Snapshot(at_step=2)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0,
              callbacks=[FreezeOut(t_0=0.25, how_scale="linear"), snap])
    assert model.train_step_traces == 1
    assert snap.values is not None
    for before, after in zip(snap.values, unit_state(model, 0)):
        assert np.array_equal(before, after)


def test_nested_model_called_with_inputs_keyword_is_looked_into():
    # KerasHub tasks call `backbone(inputs=inputs)` (Gemma 3, Gemma 4,
    # PaliGemma): the keyword form is the same call as the positional one.
    inner = skip_model(name="inner")
    for call in (lambda x: inner(x), lambda x: inner(inputs=x)):
        inputs = keras.Input((8, 8, 3))
        assert cut_points(keras.Model(inputs, call(inputs))) == SKIP_CUTS


def test_fine_tune_a_saved_model_with_a_new_head(tmp_path):
    """Train on task A, save; load, put a new classifier on the features of
    the loaded network (nested as a backbone), fine-tune on task B with the
    first unit frozen from the start."""
    x, y = tiny_data(64, num_classes=5)
    pretrained = skip_model(num_classes=5)
    pretrained.compile(keras.optimizers.SGD(0.1), LOSS)
    pretrained.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "task_a.keras")
    pretrained.save(path)

    loaded = keras.saving.load_model(path)
    backbone = keras.Model(loaded.input, loaded.get_layer("pool").output,
                           name="backbone")
    inputs = keras.Input((8, 8, 3))
    features = backbone(inputs)  # nested: split_model looks inside
    outputs = L.Dense(3, name="task_b")(features)
    fine = FreezeOutModel.from_model(keras.Model(inputs, outputs), num_units=2)
    assert layer_names(fine.head) == ["task_b"]
    assert layer_names(fine.freeze_units[0])[0] == "stem"
    start = [v.numpy().copy() for v in fine.freeze_units[0].weights]
    head_start = fine.head.weights[0].numpy().copy()

    x_b, y_b = tiny_data(64, num_classes=3, seed=1)
    fine.compile(keras.optimizers.SGD(0.1, momentum=0.9), LOSS)
    history = fine.fit(x_b, y_b, batch_size=16, epochs=2, verbose=0,
                       callbacks=[FreezeOut(t_0=0.5, how_scale="linear",
                                                 frozen_from_start=1)])
    assert fine.train_step_traces == 1
    assert history.history["active_units"] == [1, 0]
    for before, after in zip(start, fine.freeze_units[0].weights):
        assert np.array_equal(before, after.numpy())  # never trained
    assert not np.array_equal(head_start, fine.head.weights[0].numpy())
    # Unit 1 trained, then froze at its own step.
    assert not np.array_equal(
        loaded.get_layer("b1_conv2").kernel.numpy(),
        pretrained.get_layer("b1_conv2").kernel.numpy())


def test_frozen_from_start_schedule_and_checks():
    fractions = schedule.freeze_fractions(4, 0.5, "linear", frozen_from_start=2)
    np.testing.assert_allclose(fractions, [0.5, 0.5, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(
        schedule.freeze_steps(100, fractions, frozen_from_start=2),
        [0, 0, 51, 76, 101])
    assert schedule.num_frozen(0, 100, fractions, frozen_from_start=2) == 2
    assert schedule.lr_multipliers(0, 100, fractions,
                                   frozen_from_start=2)[1] == 0
    callback = FreezeOut(frozen_from_start=3)
    assert FreezeOut(**callback.get_config()).frozen_from_start == 3
    with pytest.raises(ValueError, match="frozen_from_start must be an "
                                         "integer >= 0 .*got -1"):
        FreezeOut(frozen_from_start=-1)
    with pytest.raises(ValueError, match="at most 4.*got 5"):
        schedule.freeze_fractions(4, frozen_from_start=5)


def test_sequential_with_an_input_is_split_by_layer():
    seq = keras.Sequential([keras.Input((4,)), L.Dense(3, name="d1"),
                            L.ReLU(name="act"), L.Dense(2, name="d2")],
                           name="seq")
    assert cut_points(seq) == ["d1", "act"]
    units, head = split_model(seq)
    assert [u.name for u in units] == ["seq_unit_0"]
    assert layer_names(units[0]) == ["d1", "act"]
    assert layer_names(head) == ["d2"]


class _Block(keras.layers.Layer):
    """Two Dense layers; returns `(hidden, None)`, as KerasHub blocks
    return `(hidden, attention scores)` when no scores are asked for."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = L.Dense(6, activation="relu")
        self.outer = L.Dense(6)

    def call(self, x):
        return self.outer(self.inner(x)) + x, None


class _Encoder(keras.layers.Layer):
    """A list of blocks whose call also returns a tensor that does not
    depend on its input (as DeiT's encoder returns an empty
    `all_hidden_states`)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [_Block(name=f"block_{i}") for i in range(3)]

    def call(self, x):
        for block in self.blocks:
            x, _ = block(x)
        return x, keras.ops.zeros((0, 6))


def test_container_outputs_left_out_unless_read():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), name="x")
    hidden, empty = _Encoder(name="encoder")(L.Dense(6, name="stem")(inputs))
    logits = L.Dense(2, name="logits")(hidden)
    unread = keras.Model(inputs, logits)
    # The constant output is read by nothing: the encoder is looked into
    # and each block is a unit.
    units, head = split_model(unread)
    assert [layer_names(u) for u in units] == [
        ["stem"], ["block_0"], ["block_1"], ["block_2"]]
    x = np.random.default_rng(0).random((4, 6)).astype("float32")
    model = FreezeOutModel(units, head)
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               unread.predict(x, verbose=0), atol=1e-6)
    # Read by the head, it cannot come from the recorded blocks: the
    # encoder stays one call (two of its outputs cross into the head, so
    # it sits there), and the model still predicts.
    read = keras.Model(inputs, logits + keras.ops.sum(empty))
    units, head = split_model(read)
    assert [layer_names(u) for u in units] == [["stem"]]
    assert "encoder" in layer_names(head)
    model = FreezeOutModel(units, head)
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               read.predict(x, verbose=0), atol=1e-6)


class _StageWithIdentity(keras.layers.Layer):
    """A list of blocks after a `keras.layers.Identity` that its `call`
    passes `training` to (KerasHub's HGNetV2 stage so calls its downsample
    layer when it has none); Identity's `call` takes no `training`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.entry = L.Identity(name="entry")
        self.blocks = [_Block(name=f"block_{i}") for i in range(2)]

    def call(self, x, training=None):
        x = self.entry(x, training=training)
        for block in self.blocks:
            x, _ = block(x)
        return x


def test_container_training_argument_its_layer_does_not_take():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), name="x")
    hidden = _StageWithIdentity(name="stage")(L.Dense(6, name="stem")(inputs))
    original = keras.Model(inputs, L.Dense(2, name="logits")(hidden))
    model = FreezeOutModel.from_model(original)
    assert [layer_names(u) for u in model.freeze_units] == [
        ["stem", "entry"], ["block_0"], ["block_1"]]
    rng = np.random.default_rng(0)
    x = rng.random((8, 6)).astype("float32")
    y = rng.integers(0, 2, size=8)
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               original.predict(x, verbose=0), atol=1e-6)
    # Building the step runs each unit's compute_output_spec: the recorded
    # `training` must not reach Identity's.
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert model.train_step_traces == 1


def test_layers_of_one_name_in_two_nested_models_get_unique_names():
    # Stable Diffusion 3's VAE: its encoder and its decoder each hold a
    # layer named "input_projection". Nested models keep their own names
    # apart, but a unit re-calls the layers in one model, where Keras
    # refuses a name used twice; the split renames the later layer.
    def nested(name):
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(4, name="input_projection")(inputs)
        return keras.Model(inputs, keras.layers.Dense(4)(hidden), name=name)

    inputs = keras.Input((4,))
    encoder, decoder = nested("encoder"), nested("decoder")
    outputs = keras.layers.Dense(2)(decoder(encoder(inputs)))
    model = keras.Model(inputs, outputs)
    first = decoder.get_layer("input_projection")
    units, head = split_model(model, num_units=1)
    names = [layer.name for layer in units[0].layers]
    assert names.count("input_projection") == 1
    assert "decoder_input_projection" in names
    assert first.name == "decoder_input_projection"
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(head(units[0](x)), model(x), rtol=1e-6)


def test_nested_model_called_one_rank_off_is_adjusted_as_keras_does():
    # Stable Diffusion 3 calls its MMDiT, whose timestep input is (None, 1),
    # on a (None,) timestep: a functional model adds (or squeezes) the last
    # dimension of size 1. Inlined, the unit must do the same. (Keras's
    # symbolic call adding a dimension gets its output shape wrong, and its
    # symbolic shapes after the nested model are the unadjusted ones, so
    # this squeezes one and checks the first unit.)
    inner_inputs = keras.Input((3,))
    inner = keras.Model(inner_inputs, keras.layers.Dense(4)(inner_inputs))
    inputs = keras.Input((3, 1))
    model = keras.Model(inputs, keras.layers.Dense(2)(
        keras.layers.Dense(4)(inner(inputs))))
    units, _ = split_model(model, num_units=2)
    x = np.arange(6, dtype="float32").reshape((2, 3, 1))
    np.testing.assert_allclose(units[0](x), inner(x), rtol=1e-6)


class _WrongRankTable(keras.layers.Layer):
    """A table of shape (length, 4), not batched, whose recorded symbolic
    shape has the wrong rank (as Moonshine's rotary table: `(None,)`)."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(4,), initializer="ones")

    def call(self, x):
        return keras.ops.ones((keras.ops.shape(x)[1], 4)) * self.scale

    def compute_output_shape(self, input_shape):
        return (None,)


class _TableBlock(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(4)

    def call(self, x, table):
        return self.dense(x) + keras.ops.sum(table, axis=0)


def test_carried_tensor_recorded_with_a_wrong_rank_gets_its_real_rank():
    # Moonshine: the encoder's rotary table, read by every encoder block,
    # is carried from unit to unit; the next unit declared its input with
    # the recorded rank and refused the tensor.
    inputs = keras.Input((5, 4))
    hidden = keras.layers.Dense(4)(inputs)
    table = _WrongRankTable()(hidden)
    hidden = _TableBlock()(_TableBlock()(hidden, table), table)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    freezeout = FreezeOutModel.from_model(model)
    assert freezeout.num_units == 3
    x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype("float32")
    np.testing.assert_allclose(freezeout(x), model(x), rtol=1e-5)


class _BakedEncoder(_Encoder):
    """A list of blocks whose call reads a static length, `None` when
    called symbolically: the recording bakes a length of 0 in (as
    T5Gemma's decoder layer bakes in a mask of length 0)."""

    def call(self, x):
        for block in self.blocks:
            x, _ = block(x)
        return x[:, :(x.shape[1] or 0)]


def test_container_whose_recording_differs_from_its_call_stays_whole():
    inputs = keras.Input((None, 6))
    hidden = _BakedEncoder(name="encoder")(L.Dense(6, name="stem")(inputs))
    model = keras.Model(inputs, L.Dense(2, name="logits")(hidden))
    units, head = split_model(model)
    assert [layer_names(u) for u in units] == [["stem"], ["encoder"]]
    x = np.random.default_rng(0).random((2, 5, 6)).astype("float32")
    np.testing.assert_allclose(head(units[1](units[0](x))), model(x),
                               rtol=1e-6)
