"""Saving a split model whose layers' own get_config does not round-trip
(`freezeout_tf.split.layer_configs`); KerasHub's cases are in test_causal_lm
(Llama) and test_transformers (DeiT)."""

import keras
import numpy as np
import pytest

from freezeout_tf import FreezeOutModel
from freezeout_tf.split import layer_configs


@keras.saving.register_keras_serializable(package="test_layer_configs")
class Raising(keras.layers.Layer):
    """get_config reads an attribute never set (as keras-hub 0.32's
    LlamaTransformerDecoder)."""

    def __init__(self, units, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.units, self.scale = units, scale

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], self.units))

    def call(self, x):
        return self.scale * keras.ops.matmul(x, self.w)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "scale_factor": self.scale_factor}


@keras.saving.register_keras_serializable(package="test_layer_configs")
class ExtraKeys(Raising):
    """get_config returns a key the constructor refuses (as DeiTEmbeddings)."""

    def get_config(self):
        return {**keras.layers.Layer.get_config(self), "units": self.units,
                "scale": self.scale, "num_weights": 1}


class Unsaveable(Raising):
    """Its constructor argument `width` is kept under another name."""

    def __init__(self, width, **kwargs):
        super().__init__(width, **kwargs)


def split(layer):
    unit = keras.Sequential([keras.Input((3,)), layer])
    head = keras.Sequential([keras.Input((layer.units,)),
                             keras.layers.Dense(2)])
    return FreezeOutModel([unit], head)


@pytest.mark.parametrize("cls", [Raising, ExtraKeys])
def test_a_layer_whose_config_does_not_round_trip_saves(cls, tmp_path):
    layer = cls(4, scale=2.0)
    model = split(layer)
    x = np.random.default_rng(0).random((5, 3)).astype("float32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    assert "get_config" not in vars(layer)  # the repair is undone
    loaded = keras.saving.load_model(path)
    restored = loaded.freeze_units[0].layers[-1]
    assert type(restored) is cls and restored.scale == 2.0
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-6)


def test_fine_configs_are_left_alone_and_unknown_arguments_refused():
    assert layer_configs.repaired_config(keras.layers.Dense(2)) is None
    with pytest.raises(ValueError, match="'broken' .*Unsaveable.*argument "
                                         "'width' is not an attribute"):
        split(Unsaveable(4, name="broken")).get_config()
