"""Model builders: the original FreezeOut networks as `FreezeOutModel`s.

* `densenet_bc`: DenseNet-BC (stem, each dense layer, each transition).
* `wide_resnet`: pre-activation Wide ResNet (stem, each basic block).
* `vgg`: VGG A/B/D/E with BN (each conv layer).

Each builder returns a model built for 32x32x3 inputs, initialised as the
original. The `*_num_units` functions give the unit count without building.

Layer: 5. Imports `core` (`FreezeOutModel`) and `schedule`.
"""

from freezeout_tf.models.densenet import (
    DenseLayer,
    densenet_bc,
    densenet_bc_num_units,
)
from freezeout_tf.models.vgg import CONFIGS as VGG_CONFIGS
from freezeout_tf.models.vgg import vgg, vgg_num_units
from freezeout_tf.models.wide_resnet import (
    WideBasicBlock,
    wide_resnet,
    wide_resnet_num_units,
)

__all__ = [
    "DenseLayer",
    "VGG_CONFIGS",
    "WideBasicBlock",
    "densenet_bc",
    "densenet_bc_num_units",
    "vgg",
    "vgg_num_units",
    "wide_resnet",
    "wide_resnet_num_units",
]
