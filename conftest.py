"""Names the docstring examples of freezeout_tf use without importing them.

The examples are written as a user reads them (``np``, ``keras`` and the
public API at hand); pytest runs them with ``--doctest-modules`` (setup.cfg).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    import keras
    import numpy as np

    import freezeout_tf

    doctest_namespace.update(np=np, keras=keras, freezeout_tf=freezeout_tf)
    doctest_namespace.update(
        {name: getattr(freezeout_tf, name) for name in freezeout_tf.__all__}
    )


# The old module paths (freezeout_tf/_moved.py) alias their new modules:
# collecting their doctests would run the new modules' examples twice.
def _moved_paths():
    from freezeout_tf._moved import MOVED

    return [f"freezeout_tf/{old}.py" for old in MOVED]


collect_ignore = _moved_paths()
