"""DenseNet(-BC) for 32x32 inputs, split into FreezeOut units.

The architecture follows bamos/densenet.pytorch, which the original
FreezeOut DenseNet was adapted from (docs/algorithm.md §1, §7).
"""

import math

import keras

from freezeout_tf import validation
from freezeout_tf.core.model import FreezeOutModel
from freezeout_tf.models import initializers as init

__all__ = [
    "DenseLayer",
    "densenet_bc",
    "densenet_bc_num_units",
]


@keras.saving.register_keras_serializable(package="freezeout_tf")
class DenseLayer(keras.layers.Layer):
    """One layer of a dense block; its output is `concat([x, new])`.

    With `bottleneck=True` (DenseNet-BC):
    `new = Conv3x3(k)(ReLU(BN(Conv1x1(4k)(ReLU(BN(x))))))`; otherwise
    `new = Conv3x3(k)(ReLU(BN(x)))`. Convs have no bias. With `dropout > 0`,
    a `Dropout` follows each conv (as in Huang et al.'s DenseNet; the
    original FreezeOut code had no dropout).

    Args:
        growth_rate: `k`, the channels this layer adds.
        bottleneck: whether to use the 1x1 bottleneck conv.
        dropout: dropout rate after each conv, in [0, 1).
        **kwargs: passed to `keras.layers.Layer` (e.g. `name`).

    Example:

    >>> layer = DenseLayer(12)
    >>> tuple(layer(keras.ops.zeros((1, 32, 32, 24))).shape)
    (1, 32, 32, 36)
    """

    def __init__(self, growth_rate, bottleneck=True, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        validation.check_positive_int("growth_rate", growth_rate)
        validation.check_rate("dropout", dropout)
        self.growth_rate = int(growth_rate)
        self.bottleneck = bool(bottleneck)
        self.dropout = float(dropout)
        self.bn1 = init.batch_norm(name="bn1")
        if self.bottleneck:
            self.conv1 = init.conv2d(4 * self.growth_rate, 1, name="conv1")
            self.bn2 = init.batch_norm(name="bn2")
            self.conv2 = init.conv2d(self.growth_rate, 3, name="conv2")
        else:
            self.conv1 = init.conv2d(self.growth_rate, 3, name="conv1")
        if self.dropout > 0:
            self.drop1 = keras.layers.Dropout(self.dropout, name="drop1")
            if self.bottleneck:
                self.drop2 = keras.layers.Dropout(self.dropout, name="drop2")

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.bn1.build(input_shape)
        self.conv1.build(input_shape)
        if self.bottleneck:
            mid_shape = self.conv1.compute_output_shape(input_shape)
            self.bn2.build(mid_shape)
            self.conv2.build(mid_shape)
        self.built = True

    def call(self, inputs, training=None):
        out = keras.ops.relu(self.bn1(inputs, training=training))
        out = self.conv1(out)
        if self.dropout > 0:
            out = self.drop1(out, training=training)
        if self.bottleneck:
            out = keras.ops.relu(self.bn2(out, training=training))
            out = self.conv2(out)
            if self.dropout > 0:
                out = self.drop2(out, training=training)
        return keras.ops.concatenate([inputs, out], axis=-1)

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        if channels is not None:
            channels += self.growth_rate
        return tuple(input_shape[:-1]) + (channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            growth_rate=self.growth_rate,
            bottleneck=self.bottleneck,
            dropout=self.dropout,
        )
        return config


def _check_depth(depth, bottleneck):
    per_layer = 6 if bottleneck else 3
    kind = "with" if bottleneck else "without"
    if (
        not validation.is_int(depth)
        or depth < 4 + per_layer
        or (depth - 4) % per_layer
    ):
        raise ValueError(
            f"depth must be an integer {4 + per_layer} or more with "
            f"(depth - 4) % {per_layer} == 0 for a DenseNet {kind} "
            f"bottleneck (e.g. 40, 76, 100, 190 with bottleneck); "
            f"got {depth!r}."
        )
    return (int(depth) - 4) // per_layer


def densenet_bc_num_units(depth=76, bottleneck=True):
    """Number of freeze units of `densenet_bc(depth, bottleneck=...)`,
    without building it: `3 * m + 3` with `m` layers per dense block
    (`m = (depth - 4) // 6` with bottleneck, `(depth - 4) // 3` without).
    The head's index equals this number.

    Example:

    >>> densenet_bc_num_units(76)
    39
    """
    return 3 * _check_depth(depth, bottleneck) + 3


def densenet_bc(depth=76, growth_rate=12, num_classes=100, dropout=0.0,
                reduction=0.5, bottleneck=True,
                classifier_activation="softmax", name=None):
    """A DenseNet-BC for 32x32 RGB inputs as a built `FreezeOutModel`.

    Freeze units, in forward order (docs/algorithm.md §1): the stem conv (3x3, `2k`
    channels); each layer of dense block 1 (`DenseLayer`); transition 1;
    each layer of block 2; transition 2; each layer of block 3. A
    transition is BN-ReLU-Conv1x1(`floor(c * reduction)`)-AvgPool(2). The
    head is the final BN-ReLU-global average pool-Dense, and never freezes.
    Dense blocks run at 32x32, 16x16 and 8x8.

    Initialisation as in the original: conv kernels N(0, 2/(kh*kw*out)),
    no conv biases, BN gamma 1 / beta 0 (PyTorch's epsilon and momentum),
    Dense weights PyTorch-default uniform and bias 0.

    The original FreezeOut `densenet.py` applied ReLU *before* BN in its
    transitions (`conv(bn(relu(x)))`); this builder follows bamos's
    BN-ReLU-conv order, as do the DenseNet papers. Parameter counts are
    the same either way.

    Args:
        depth: network depth `L`; with `bottleneck`, `(L - 4) % 6 == 0` and
            each block has `m = (L - 4) // 6` layers (without, `% 3` and
            `// 3`).
        growth_rate: `k`, channels added by each dense layer.
        num_classes: outputs of the classifier.
        dropout: dropout rate after each conv of the dense layers and
            transitions, in [0, 1); 0 (none) as in the original.
        reduction: compression of the transitions, in (0, 1].
        bottleneck: use the 1x1 bottleneck ("B") in each dense layer.
        classifier_activation: activation of the last Dense: `"softmax"`
            (default, for `"sparse_categorical_crossentropy"`) or `None` for
            logits.
        name: model name; default `"densenet_bc_{depth}_{growth_rate}"`.

    Returns:
        A `FreezeOutModel` with `3 * m + 3` freeze units, built for inputs
        of shape `(batch, 32, 32, 3)`.

    Example:

    >>> model = densenet_bc(depth=100, growth_rate=12, num_classes=100)
    >>> model.num_units
    51
    >>> sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    800032
    """
    m = _check_depth(depth, bottleneck)
    validation.check_positive_int("growth_rate", growth_rate)
    validation.check_positive_int("num_classes", num_classes)
    validation.check_rate("dropout", dropout)
    validation.check_number("reduction", reduction, 0, 1, low_open=True)
    k = int(growth_rate)

    channels = 2 * k
    units = [keras.Sequential([init.conv2d(channels, 3, name="conv")],
                              name="stem")]
    for block in range(1, 4):
        for i in range(1, m + 1):
            units.append(DenseLayer(k, bottleneck=bottleneck, dropout=dropout,
                                    name=f"dense{block}_{i}"))
        channels += m * k
        if block < 3:
            channels = int(math.floor(channels * reduction))
            layers = [init.batch_norm(name="bn"), keras.layers.ReLU(),
                      init.conv2d(channels, 1, name="conv")]
            if dropout > 0:
                layers.append(keras.layers.Dropout(dropout))
            layers.append(keras.layers.AveragePooling2D(2))
            units.append(keras.Sequential(layers, name=f"transition{block}"))
    head = init.pooled_classifier(num_classes, classifier_activation)
    model = FreezeOutModel(
        units, head, name=name or f"densenet_bc_{depth}_{growth_rate}"
    )
    model.build((None, 32, 32, 3))
    return model
