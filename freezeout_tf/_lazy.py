"""Lazy re-exports for the package and its subpackages (PEP 562).

A package's `__init__` names what it re-exports and where each name lives;
the defining module is imported on first access only. So `import
freezeout_tf` (or `import freezeout_tf.core`) loads neither TensorFlow nor
Keras, and importing one module of a subpackage does not import its
siblings: a package's `__init__` never makes its modules import each other,
whatever their layers.

Pure Python; imports nothing from the package.
"""

import importlib

__all__ = ["lazy_exports"]


def lazy_exports(package, names, submodules=()):
    """The module-level `__getattr__` and `__dir__` of a lazy package.

    Args:
        package: the package's `__name__`.
        names: dict, exported name -> the module (full dotted path) that
            defines it.
        submodules: names of modules (or subpackages) the package exposes
            as attributes, each either a plain name (a module of the
            package) or `name: full dotted path` in a dict.

    Returns:
        `(__getattr__, __dir__)`, to assign at the package's top level.

    Raises:
        ValueError: a name is both exported and a submodule.

    Example:

    >>> getattr_, dir_ = lazy_exports(
    ...     "freezeout_tf.estimates",
    ...     {"calc_speedup": "freezeout_tf.estimates.speedup"},
    ...     submodules=["speedup"])
    >>> getattr_("calc_speedup").__name__
    'calc_speedup'
    """
    if not isinstance(submodules, dict):
        submodules = {name: f"{package}.{name}" for name in submodules}
    both = sorted(set(names) & set(submodules))
    if both:
        raise ValueError(
            f"{package}: {both} are both exported names and submodules.")

    def __getattr__(name):
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
        elif name in submodules:
            value = importlib.import_module(submodules[name])
        else:
            raise AttributeError(
                f"module {package!r} has no attribute {name!r}")
        # Cache it: the next access does not come back here.
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__():
        module = importlib.import_module(package)
        return sorted(set(vars(module)) | set(names) | set(submodules))

    return __getattr__, __dir__
