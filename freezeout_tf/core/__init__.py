"""The step's core: the model's one-graph train step and what it runs on.

Two layers in one folder:

* the in-graph state (layer 2, importing only `schedule` and `_internals`):
  `schedule_state` (the clock and the per-unit frozen flags), `unit_mode`
  (each unit's BatchNorm and Dropout follow its flag), `side_inputs` (the
  inputs a transformer's units pass along), `macs` (counting
  multiply-accumulates, for the splitter and the estimates);
* the step (layer 4, also importing `split` and `adaptive`): `model`
  (`FreezeOutModel`), `optimizer` (the per-unit optimizer hooks) and
  `prefix_cache` (the frozen prefix's outputs cached per example).
"""

from typing import TYPE_CHECKING

from freezeout_tf._lazy import lazy_exports

__all__ = [
    "FreezeOutModel",
    "SGDWithL2",
    "ScheduleState",
    "attach_schedule",
    "count_macs",
    "macs",
    "model",
    "optimizer",
    "original_sgd",
    "prefix_cache",
    "schedule_state",
    "side_inputs",
    "unit_mode",
    "with_example_ids",
]

_NAMES = {
    "FreezeOutModel": "freezeout_tf.core.model",
    "SGDWithL2": "freezeout_tf.core.optimizer",
    "ScheduleState": "freezeout_tf.core.schedule_state",
    "attach_schedule": "freezeout_tf.core.optimizer",
    "count_macs": "freezeout_tf.core.macs",
    "original_sgd": "freezeout_tf.core.optimizer",
    "with_example_ids": "freezeout_tf.core.prefix_cache",
}
_SUBMODULES = ["macs", "model", "optimizer", "prefix_cache",
               "schedule_state", "side_inputs", "unit_mode"]

__getattr__, __dir__ = lazy_exports(__name__, _NAMES, _SUBMODULES)

if TYPE_CHECKING:  # what static tools (the API reference, IDEs) read
    from freezeout_tf.core import (macs, model, optimizer, prefix_cache,
                                   schedule_state, side_inputs, unit_mode)
    from freezeout_tf.core.macs import count_macs
    from freezeout_tf.core.model import FreezeOutModel
    from freezeout_tf.core.optimizer import (SGDWithL2, attach_schedule,
                                             original_sgd)
    from freezeout_tf.core.prefix_cache import with_example_ids
    from freezeout_tf.core.schedule_state import ScheduleState
