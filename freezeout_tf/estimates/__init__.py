"""Cost estimates: how much training compute FreezeOut saves on a model.

`speedup`: the original's formula for DenseNet-BC (`calc_speedup`), the
estimate for any built model from its units' counted forward costs
(`unit_flops`, `estimate_speedup`), its inverse (`t0_for_speedup`) and the
all-reduced gradient bytes saved (`gradient_bytes_saving`).

Layer: 3. Imports `schedule` and `core`'s in-graph state (`side_inputs`,
`macs`, which the splitter counts with too); not `split`.
"""

from typing import TYPE_CHECKING

from freezeout_tf._lazy import lazy_exports

__all__ = [
    "calc_speedup",
    "densenet_costs",
    "estimate_speedup",
    "gradient_bytes_saving",
    "speedup",
    "speedup_from_costs",
    "t0_for_speedup",
    "unit_flops",
]

_NAMES = {name: "freezeout_tf.estimates.speedup" for name in __all__
          if name != "speedup"}

__getattr__, __dir__ = lazy_exports(__name__, _NAMES, ["speedup"])

if TYPE_CHECKING:  # what static tools (the API reference, IDEs) read
    from freezeout_tf.estimates import speedup
    from freezeout_tf.estimates.speedup import (calc_speedup, densenet_costs,
                                                estimate_speedup,
                                                gradient_bytes_saving,
                                                speedup_from_costs,
                                                t0_for_speedup, unit_flops)
