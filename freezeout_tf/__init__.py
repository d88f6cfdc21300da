"""FreezeOut for Keras 3 on TensorFlow: progressively freeze layers, in one graph."""

from freezeout_tf.callback import FreezeOut
from freezeout_tf.model import FreezeOutModel
from freezeout_tf.optimizer import SGDWithL2, attach_schedule, original_sgd
from freezeout_tf.schedule import (
    freeze_fractions,
    freeze_steps,
    lr_multipliers,
    num_frozen,
)

__version__ = "0.1.0"

__all__ = [
    "FreezeOut",
    "FreezeOutModel",
    "SGDWithL2",
    "attach_schedule",
    "freeze_fractions",
    "freeze_steps",
    "lr_multipliers",
    "num_frozen",
    "original_sgd",
]
