"""Adaptive freezing: freeze units by a criterion on their gradients.

`criteria` holds `AdaptiveFreeze` (the criterion's settings: rank, pace or
threshold), the criteria's in-graph steps and `AdaptiveState` (their state,
saved with the model). The train step decides with them
(`FreezeOut(adaptive=...)`).

Layer: 3. Imports `schedule` and `core.schedule_state` only.
"""

from typing import TYPE_CHECKING

from freezeout_tf._lazy import lazy_exports

__all__ = [
    "AdaptiveFreeze",
    "AdaptiveState",
    "CRITERIA",
    "CriterionStep",
    "DEFAULT_CRITERION",
    "HostValues",
    "IntervalState",
    "NOT_YET",
    "Observation",
    "ThresholdState",
    "active_percentile",
    "criteria",
    "criterion_step",
    "merge_freeze_steps",
    "pace_step",
    "rank_step",
    "settle_step",
    "settled_prefix",
    "share_change",
    "unit_norms",
]

_NAMES = {name: "freezeout_tf.adaptive.criteria" for name in __all__
          if name != "criteria"}

__getattr__, __dir__ = lazy_exports(__name__, _NAMES, ["criteria"])

if TYPE_CHECKING:  # what static tools (the API reference, IDEs) read
    from freezeout_tf.adaptive import criteria
    from freezeout_tf.adaptive.criteria import (CRITERIA, DEFAULT_CRITERION,
                                                NOT_YET, AdaptiveFreeze,
                                                AdaptiveState, CriterionStep,
                                                HostValues, IntervalState,
                                                Observation, ThresholdState,
                                                active_percentile,
                                                criterion_step,
                                                merge_freeze_steps, pace_step,
                                                rank_step, settle_step,
                                                settled_prefix, share_change,
                                                unit_norms)
