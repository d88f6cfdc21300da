"""Private: the Keras and TensorFlow internals FreezeOut relies on, guarded.

`keras_internals` and `tf_internals` list every private Keras, TensorFlow
and tensorflow-datasets name the package uses (`PRIVATE_NAMES`, with the
modules using each and what breaks if it changes) and check, at `compile`,
that the installed versions still have them (`check()`). Not public API:
the underscore says so.

Layer: 1, above `schedule` only. It imports nothing else from the package
at import time; its behavioural probe imports `core.optimizer` and
`core.schedule_state` when it runs (the hooks it checks live there).
"""

from typing import TYPE_CHECKING

from freezeout_tf._lazy import lazy_exports

__all__ = ["keras_internals", "tf_internals"]

__getattr__, __dir__ = lazy_exports(__name__, {}, __all__)

if TYPE_CHECKING:  # what static tools (the API reference, IDEs) read
    from freezeout_tf._internals import keras_internals, tf_internals
