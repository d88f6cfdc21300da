"""Tools for measuring FreezeOut, not used in training.

`benchmarking` (step timers, interleaved timing, sweeps, the report
writer), `finetune_benchmark` (the pre-registered fine-tuning benchmark)
and `hub_coverage` (which KerasHub families split block by block). The
scripts in `scripts/` run them.

Layer: 7, the top. Imports anything below; nothing imports it.
"""

from typing import TYPE_CHECKING

from freezeout_tf._lazy import lazy_exports

__all__ = ["benchmarking", "finetune_benchmark", "hub_coverage"]

__getattr__, __dir__ = lazy_exports(__name__, {}, __all__)

if TYPE_CHECKING:  # what static tools (the API reference, IDEs) read
    from freezeout_tf.tools import benchmarking, finetune_benchmark, hub_coverage
