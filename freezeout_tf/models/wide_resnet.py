"""Wide ResNet (pre-activation) for 32x32 inputs, split into FreezeOut units.

The architecture follows xternalz/WideResNet-pytorch, which the original
FreezeOut WRN was adapted from (docs/algorithm.md §1, §7).
"""

import keras

from freezeout_tf import validation
from freezeout_tf.core.model import FreezeOutModel
from freezeout_tf.models import initializers as init

__all__ = [
    "WideBasicBlock",
    "wide_resnet",
    "wide_resnet_num_units",
]


@keras.saving.register_keras_serializable(package="freezeout_tf")
class WideBasicBlock(keras.layers.Layer):
    """A pre-activation wide residual block.

    `a = ReLU(BN(x))`, `out = Conv3x3(ReLU(BN(Conv3x3_s(a))))` (dropout
    between the two convs if `dropout > 0`), plus the shortcut: `x` itself
    when input and output shapes agree, else `Conv1x1_s(a)` (the projection
    sees the pre-activated input, as in the original). Convs have no bias.
    A strided 3x3 conv pads one pixel on each side, as PyTorch's
    `padding=1`.

    Args:
        filters: output channels.
        strides: stride of the first conv and the shortcut (1 or 2).
        dropout: dropout rate between the convs, in [0, 1).
        **kwargs: passed to `keras.layers.Layer` (e.g. `name`).

    Example:

    >>> block = WideBasicBlock(64, strides=2)
    >>> tuple(block(keras.ops.zeros((1, 32, 32, 16))).shape)
    (1, 16, 16, 64)
    """

    def __init__(self, filters, strides=1, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        validation.check_positive_int("filters", filters)
        validation.check_positive_int("strides", strides)
        validation.check_rate("dropout", dropout)
        self.filters = int(filters)
        self.strides = int(strides)
        self.dropout = float(dropout)
        self.bn1 = init.batch_norm(name="bn1")
        if self.strides == 1:
            self.pad1 = None
            self.conv1 = init.conv2d(self.filters, 3, name="conv1")
        else:
            self.pad1 = keras.layers.ZeroPadding2D(1, name="pad1")
            self.conv1 = init.conv2d(self.filters, 3, strides=self.strides,
                                     padding="valid", name="conv1")
        self.bn2 = init.batch_norm(name="bn2")
        self.conv2 = init.conv2d(self.filters, 3, name="conv2")
        self.drop = (keras.layers.Dropout(self.dropout, name="drop")
                     if self.dropout > 0 else None)
        self.shortcut = None

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.bn1.build(input_shape)
        if self.pad1 is not None:
            padded = self.pad1.compute_output_shape(input_shape)
            self.conv1.build(padded)
            mid_shape = self.conv1.compute_output_shape(padded)
        else:
            self.conv1.build(input_shape)
            mid_shape = self.conv1.compute_output_shape(input_shape)
        self.bn2.build(mid_shape)
        self.conv2.build(mid_shape)
        if input_shape[-1] != self.filters or self.strides != 1:
            self.shortcut = init.conv2d(self.filters, 1, strides=self.strides,
                                        padding="valid", name="shortcut")
            self.shortcut.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        act = keras.ops.relu(self.bn1(inputs, training=training))
        out = self.pad1(act) if self.pad1 is not None else act
        out = self.conv1(out)
        out = keras.ops.relu(self.bn2(out, training=training))
        if self.drop is not None:
            out = self.drop(out, training=training)
        out = self.conv2(out)
        residual = inputs if self.shortcut is None else self.shortcut(act)
        return residual + out

    def compute_output_shape(self, input_shape):
        spatial = [
            None if d is None else (d - 1) // self.strides + 1
            for d in input_shape[1:-1]
        ]
        return (input_shape[0], *spatial, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, strides=self.strides, dropout=self.dropout
        )
        return config


def _check_depth(depth):
    if (
        not validation.is_int(depth)
        or depth < 10
        or (depth - 4) % 6
    ):
        raise ValueError(
            "depth must be an integer 10 or more with (depth - 4) % 6 == 0 "
            f"for a Wide ResNet (e.g. 16, 22, 28, 40); got {depth!r}."
        )
    return (int(depth) - 4) // 6


def wide_resnet_num_units(depth=28):
    """Number of freeze units of `wide_resnet(depth, ...)`, without building
    it: `1 + 3 * (depth - 4) / 6` (stem plus every block). The head's index
    equals this number.

    Example:

    >>> wide_resnet_num_units(28)
    13
    """
    return 1 + 3 * _check_depth(depth)


def wide_resnet(depth=28, widen_factor=10, num_classes=100, dropout=0.0,
                classifier_activation="softmax", name=None):
    """A pre-activation Wide ResNet WRN-depth-widen_factor for 32x32 RGB
    inputs as a built `FreezeOutModel`.

    Freeze units, in forward order (docs/algorithm.md §1): the stem conv (3x3, 16
    channels), then each `WideBasicBlock` of the three groups
    (`16w`, `32w`, `64w` channels at 32x32, 16x16, 8x8; `n = (depth-4)/6`
    blocks each). The head is BN-ReLU-global average pool-Dense.

    Initialisation as in the original: conv kernels N(0, 2/(kh*kw*out)),
    no conv biases, BN gamma 1 / beta 0 (PyTorch's epsilon and momentum),
    Dense weights PyTorch-default uniform and bias 0.

    Args:
        depth: network depth `d`, with `(d - 4) % 6 == 0`.
        widen_factor: `w`, channel multiplier of the groups.
        num_classes: outputs of the classifier.
        dropout: dropout rate inside each block, in [0, 1).
        classifier_activation: activation of the last Dense: `"softmax"`
            (default) or `None` for logits.
        name: model name; default `"wide_resnet_{depth}_{widen_factor}"`.

    Returns:
        A `FreezeOutModel` with `1 + 3 * (d - 4) / 6` freeze units, built
        for inputs of shape `(batch, 32, 32, 3)`.

    Example:

    >>> model = wide_resnet(depth=16, widen_factor=4, num_classes=100)
    >>> model.num_units
    7
    >>> sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    2772020
    """
    n = _check_depth(depth)
    validation.check_positive_int("widen_factor", widen_factor)
    validation.check_positive_int("num_classes", num_classes)
    validation.check_rate("dropout", dropout)
    w = int(widen_factor)

    units = [keras.Sequential([init.conv2d(16, 3, name="conv")], name="stem")]
    for group, (filters, strides) in enumerate(
        [(16 * w, 1), (32 * w, 2), (64 * w, 2)], start=1
    ):
        for i in range(n):
            units.append(
                WideBasicBlock(filters, strides=strides if i == 0 else 1,
                               dropout=dropout, name=f"block{group}_{i + 1}")
            )
    head = init.pooled_classifier(num_classes, classifier_activation)
    model = FreezeOutModel(
        units, head, name=name or f"wide_resnet_{depth}_{widen_factor}"
    )
    model.build((None, 32, 32, 3))
    return model
