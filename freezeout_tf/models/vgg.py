"""VGG for 32x32 inputs, split into FreezeOut units (docs/algorithm.md §1, §7)."""

import keras

from freezeout_tf import validation
from freezeout_tf.core.model import FreezeOutModel
from freezeout_tf.models import initializers as init

__all__ = [
    "CONFIGS",
    "vgg",
    "vgg_num_units",
]

# Channels of each 3x3 conv; "M" is a 2x2 max pool. As in torchvision.
CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M",
          512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _check_config(config):
    validation.check_choice(
        "config", config, sorted(CONFIGS),
        " (the torchvision VGG configurations: 11, 13, 16 and 19 layers)")
    return CONFIGS[config]


def vgg_num_units(config="E"):
    """Number of freeze units of `vgg(config)` (its conv layers), without
    building it.

    Example:

    >>> vgg_num_units("E"), vgg_num_units("D")
    (16, 13)
    """
    return sum(1 for v in _check_config(config) if v != "M")


def vgg(config="E", num_classes=100, batch_norm=True,
        classifier_activation="softmax", name=None):
    """A VGG for 32x32 RGB inputs as a built `FreezeOutModel`.

    Freeze units: each 3x3 conv (no bias) + BN + ReLU, with the 2x2 max
    pool that follows it (if any) folded into the same unit. After five
    pools a 32x32 input is 1x1x512.

    The head is the original FreezeOut VGG classifier (not torchvision's
    4096-wide one): Flatten, Dense(512), BN, ReLU, Dropout(0.5), Dense(512),
    BN, ReLU, BN (sic: two BNs in a row, as in the original), Dropout(0.5),
    Dense(num_classes). Its Dense weights are N(0, 0.01^2), biases 0.

    Note: the original's `cfg['E']` was in fact torchvision's D (13 convs;
    its 16-conv E line was commented out), so its "VGG-E" runs correspond to
    `vgg("D")` here. `config` follows torchvision's naming.

    Args:
        config: `"A"`, `"B"`, `"D"` or `"E"` (VGG-11, 13, 16, 19).
        num_classes: outputs of the classifier.
        batch_norm: with `False`, each unit is conv (with a zero-initialised
            bias) + ReLU, as torchvision's VGG without BN; the classifier
            is unchanged. The original always used BN.
        classifier_activation: activation of the last Dense: `"softmax"`
            (default) or `None` for logits.
        name: model name; default `"vgg_{config}"`.

    Returns:
        A `FreezeOutModel` with one freeze unit per conv layer, built for
        inputs of shape `(batch, 32, 32, 3)`.

    Example:

    >>> model = vgg("E", num_classes=100)
    >>> model.num_units
    16
    """
    cfg = _check_config(config)
    validation.check_positive_int("num_classes", num_classes)
    validation.check_bool("batch_norm", batch_norm)

    units = []
    for v in cfg:
        if v == "M":
            units[-1].add(keras.layers.MaxPooling2D(2, name="pool"))
            continue
        layers = [init.conv2d(v, 3, use_bias=not batch_norm, name="conv")]
        if batch_norm:
            layers.append(init.batch_norm(name="bn"))
        layers.append(keras.layers.ReLU(name="relu"))
        units.append(keras.Sequential(layers, name=f"conv{len(units) + 1}"))

    def dense(units_, activation=None, name=None):
        kernel_init = init.vgg_dense_kernel_initializer()
        return init.dense(units_, activation=activation, name=name,
                          kernel_initializer=kernel_init)

    head = keras.Sequential(
        [
            keras.layers.Flatten(),
            dense(512, name="fc1"),
            init.batch_norm(name="bn1"),
            keras.layers.ReLU(),
            keras.layers.Dropout(0.5),
            dense(512, name="fc2"),
            init.batch_norm(name="bn2"),
            keras.layers.ReLU(),
            init.batch_norm(name="bn3"),
            keras.layers.Dropout(0.5),
            dense(num_classes, activation=classifier_activation, name="fc3"),
        ],
        name="head",
    )
    model = FreezeOutModel(units, head, name=name or f"vgg_{config}")
    model.build((None, 32, 32, 3))
    return model
