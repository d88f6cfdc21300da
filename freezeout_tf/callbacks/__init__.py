"""Keras callbacks: the FreezeOut schedule, divergence, summaries.

`freezeout` (`FreezeOut`: installs the schedule on a `FreezeOutModel` and
tracks the freezes; `BatchNormLagWarning`, its warning of a unit freezing
before its BatchNorm statistics settle), `divergence` (`StopOnDivergence`:
stops a run at its first non-finite loss) and `summaries`
(`FreezeOutSummaries`: the schedule in TensorBoard).

Layer: 5. Imports `schedule`, `core` and `adaptive`.
"""

from typing import TYPE_CHECKING

from freezeout_tf._lazy import lazy_exports

__all__ = [
    "BatchNormLagWarning",
    "FreezeOut",
    "FreezeOutSummaries",
    "StopOnDivergence",
    "divergence",
    "freezeout",
    "summaries",
]

_NAMES = {
    "BatchNormLagWarning": "freezeout_tf.callbacks.freezeout",
    "FreezeOut": "freezeout_tf.callbacks.freezeout",
    "FreezeOutSummaries": "freezeout_tf.callbacks.summaries",
    "StopOnDivergence": "freezeout_tf.callbacks.divergence",
}
_SUBMODULES = ["divergence", "freezeout", "summaries"]

__getattr__, __dir__ = lazy_exports(__name__, _NAMES, _SUBMODULES)

if TYPE_CHECKING:  # what static tools (the API reference, IDEs) read
    from freezeout_tf.callbacks import divergence, freezeout, summaries
    from freezeout_tf.callbacks.divergence import StopOnDivergence
    from freezeout_tf.callbacks.freezeout import BatchNormLagWarning, FreezeOut
    from freezeout_tf.callbacks.summaries import FreezeOutSummaries
