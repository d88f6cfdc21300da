"""The model builders: structure, parameter counts, init, saving, training."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from freezeout_tf.core.model import FreezeOutModel  # noqa: E402
from freezeout_tf.models import (  # noqa: E402
    DenseLayer,
    WideBasicBlock,
    densenet_bc,
    densenet_bc_num_units,
    vgg,
    vgg_num_units,
    wide_resnet,
    wide_resnet_num_units,
)


def trainable_params(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def tiny_batch(n=4, num_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 32, 32, 3)).astype("float32")
    y = np.arange(n) % num_classes
    return x, y


# Reference architecture facts (docs/algorithm.md §1, §7).


def test_densenet_bc_100_12_matches_original_parameter_count():
    model = densenet_bc(depth=100, growth_rate=12, num_classes=100)
    assert isinstance(model, FreezeOutModel)
    assert trainable_params(model) == 800_032
    assert model.num_units == densenet_bc_num_units(100) == 51


def test_densenet_bc_76_has_39_units_in_reference_order():
    model = densenet_bc(depth=76, growth_rate=12)
    assert model.num_units == densenet_bc_num_units(76) == 39
    names = [u.name for u in model.freeze_units]
    assert names[0] == "stem"
    assert names[1:13] == [f"dense1_{i}" for i in range(1, 13)]
    assert names[13] == "transition1"
    assert names[14:26] == [f"dense2_{i}" for i in range(1, 13)]
    assert names[26] == "transition2"
    assert names[27:] == [f"dense3_{i}" for i in range(1, 13)]
    assert all(isinstance(model.freeze_units[i], DenseLayer)
               for i in (1, 12, 14, 38))


def test_wrn_16_4_matches_original_parameter_count():
    model = wide_resnet(depth=16, widen_factor=4, num_classes=100)
    assert trainable_params(model) == 2_772_020
    assert model.num_units == wide_resnet_num_units(16) == 7
    assert all(isinstance(u, WideBasicBlock) for u in model.freeze_units[1:])


def test_wrn_unit_count_formula(tiny_wrn):
    # WRN-28-10 (36M parameters) is not built here: its count comes from
    # the same formula the builder uses, checked on a small depth.
    assert wide_resnet_num_units(28) == 13
    assert tiny_wrn.num_units == wide_resnet_num_units(10) == 4


def test_vgg_units_and_classifier():
    assert {c: vgg_num_units(c) for c in "ABDE"} == {
        "A": 8, "B": 10, "D": 13, "E": 16,
    }
    model = vgg("A", num_classes=10)
    assert model.num_units == 8
    # Five pools folded into the units: 32x32 -> 1x1x512 before the head.
    pooled = [u for u in model.freeze_units
              if isinstance(u.layers[-1], keras.layers.MaxPooling2D)]
    assert len(pooled) == 5
    dense = [la for la in model.head.layers
             if isinstance(la, keras.layers.Dense)]
    assert [d.units for d in dense] == [512, 512, 10]
    assert dense[0].kernel.shape == (512, 512)


def test_initialisation_follows_the_original(tiny_densenet):
    model = vgg("A", num_classes=10)
    conv = model.freeze_units[-1].layers[0]  # 3x3, 512 -> 512
    std = float(np.std(keras.ops.convert_to_numpy(conv.kernel)))
    assert std == pytest.approx(np.sqrt(2.0 / (3 * 3 * 512)), rel=0.02)
    assert not conv.use_bias
    for m in (model, tiny_densenet):
        for layer in m._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                np.testing.assert_array_equal(layer.gamma.numpy(), 1.0)
                np.testing.assert_array_equal(layer.beta.numpy(), 0.0)
            if isinstance(layer, keras.layers.Dense):
                np.testing.assert_array_equal(layer.bias.numpy(), 0.0)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: densenet_bc(depth=75), "depth.*75"),
        (lambda: densenet_bc(depth=76.0), "depth"),
        (lambda: densenet_bc(depth=8, bottleneck=False), "% 3.*8"),
        (lambda: densenet_bc(growth_rate=0), "growth_rate.*0"),
        (lambda: densenet_bc(reduction=0.0), r"reduction.*\(0, 1\]"),
        (lambda: densenet_bc(dropout=1.0), r"dropout.*\[0, 1\)"),
        (lambda: densenet_bc(num_classes=-1), "num_classes.*-1"),
        (lambda: wide_resnet(depth=27), "depth.*27"),
        (lambda: wide_resnet(widen_factor=0), "widen_factor.*0"),
        (lambda: vgg("C"), "one of.*'A', 'B', 'D', 'E'.*'C'"),
        (lambda: vgg("e"), "'e'"),
        (lambda: wide_resnet_num_units(27), "depth"),
    ],
)
def test_bad_arguments_raise_clear_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_densenet_without_bottleneck_builds():
    model = densenet_bc(depth=7, growth_rate=4, num_classes=10,
                        bottleneck=False, reduction=1.0)
    assert model.num_units == densenet_bc_num_units(7, bottleneck=False) == 6


@pytest.mark.parametrize("which", ["densenet", "wrn"])
def test_save_and_load_give_identical_predictions(which, tmp_path,
                                                  tiny_densenet, tiny_wrn):
    model = {"densenet": tiny_densenet, "wrn": tiny_wrn}[which]
    x, _ = tiny_batch()
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, FreezeOutModel)
    assert [type(u) for u in loaded.freeze_units] == [
        type(u) for u in model.freeze_units
    ]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)),
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda: densenet_bc(depth=10, growth_rate=4, num_classes=10,
                            dropout=0.1),
        lambda: wide_resnet(depth=10, widen_factor=1, num_classes=10,
                            dropout=0.1),
        lambda: vgg("A", num_classes=10),
    ],
    ids=["densenet", "wrn", "vgg"],
)
def test_a_few_training_steps_change_weights(build):
    keras.utils.set_random_seed(0)
    model = build()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    before = [v.numpy().copy() for v in model.trainable_weights]
    x, y = tiny_batch()
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    changed = [not np.array_equal(b, v.numpy())
               for b, v in zip(before, model.trainable_weights)]
    assert all(changed)


def test_loaded_model_continues_training_with_freezeout(tmp_path):
    from freezeout_tf.callbacks import freezeout as callback_module
    keras.utils.set_random_seed(0)
    model = densenet_bc(depth=10, growth_rate=4, num_classes=10,
                        classifier_activation=None)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = tiny_batch(n=8)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0,
              callbacks=[callback_module.FreezeOut(t_0=0.5)])
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert int(loaded.optimizer.iterations.numpy()) == 4
    before = [v.numpy().copy() for v in loaded.weights]
    history = loaded.fit(x, y, batch_size=4, epochs=4, initial_epoch=2,
                         verbose=0,
                         callbacks=[callback_module.FreezeOut(t_0=0.5)])
    assert np.all(np.isfinite(history.history["loss"]))
    assert int(loaded.optimizer.iterations.numpy()) == 8
    # By the end of the run (t_0 = 0.5, cubic) the early units are frozen,
    # and the head has kept training.
    assert history.history["active_units"][-1] < loaded.num_units
    head_before = before[-len(loaded.head.weights):]
    assert any(not np.array_equal(b, v.numpy())
               for b, v in zip(head_before, loaded.head.weights))
