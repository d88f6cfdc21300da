"""Configs that round-trip for layers whose own `get_config` does not.

A split model is saved as its parts (functional models), so every layer in
them is serialized by its own `get_config`, which the original task model
never needed (a KerasHub backbone saves its constructor arguments instead).
Some layers' `get_config` does not round-trip; in keras-hub 0.32:

* `LlamaTransformerDecoder` (Llama, Llama 3) reads an attribute it never
  sets (`rope_scaling_factor`), so it raises;
* `DeiTEmbeddings` returns keys its constructor refuses (`num_patches`,
  `num_positions`).

`repaired_configs` gives such a layer, while a `FreezeOutModel` is
serialized, a config its constructor takes: the keys of its own config
that the constructor accepts, and every other constructor argument read
from the attribute of the same name (the convention every Keras layer
follows). One generic rule, no per-class code; a layer whose config is
fine is left alone.

A layer the splitter lets return non-tensors beside its tensors (DeiT's
blocks return `(hidden, None)`: `functional._record_tensors_only`) must be
so again when a loaded part is rebuilt, or Keras refuses the `None`:
`mark_tensors_only` flags its entry in the saved config, and
`tensors_only_objects` gives the `custom_objects` that reapply it on load.
"""

import contextlib
import importlib
import inspect
import types

import keras

from freezeout_tf.split import functional

__all__ = ["mark_tensors_only", "repaired_config", "repaired_configs",
           "tensors_only_objects"]

TENSORS_ONLY = "freezeout_tensors_only"  # the flag in a layer's entry

# Keyword arguments `keras.layers.Layer.__init__` takes through `**kwargs`.
_LAYER_KWARGS = {"input_shape", "input_dim", "batch_size", "batch_input_shape"}


def _accepted_keys(cls):
    """Arguments `cls(**config)` takes: the named parameters of each
    `__init__` along the MRO, for as long as they pass `**kwargs` on."""
    keys = set(_LAYER_KWARGS)
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters
        keys |= {n for n, p in params.items()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    keys.discard("self")
    return keys


def _attribute_value(value):
    # A plain function (an activation such as `ops.silu`) by its
    # activation name, which the constructor's `activations.get` takes.
    if isinstance(value, types.FunctionType):
        try:
            return keras.activations.serialize(value)
        except (ValueError, TypeError):
            return value
    return value


def repaired_config(layer):
    """A config that `type(layer).from_config` takes, or None if the
    layer's own `get_config` already gives one.

    Args:
        layer: a `keras.layers.Layer`.

    Returns:
        None when `layer.get_config()` works and its keys are all taken by
        the constructor; otherwise a dict: those of its keys the
        constructor takes (or the base `Layer` config if it raised), and
        each missing constructor argument from the attribute of its name.

    Raises:
        ValueError: the config is broken and a constructor argument
            without a default is neither in it nor an attribute.

    Example:

    >>> import keras
    >>> repaired_config(keras.layers.Dense(2)) is None
    True
    """
    cls = type(layer)
    accepted = _accepted_keys(cls)
    try:
        config = layer.get_config()
    except Exception:  # a broken get_config raises anything
        config = None
    if config is not None and set(config) <= accepted:
        return None
    if config is None:
        config = keras.layers.Layer.get_config(layer)
    config = {k: v for k, v in config.items() if k in accepted}
    params = inspect.signature(cls.__init__).parameters
    for name, param in params.items():
        if name == "self" or name in config or param.kind not in (
                param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            continue
        if hasattr(layer, name):
            config[name] = _attribute_value(getattr(layer, name))
        elif param.default is param.empty:
            raise ValueError(
                f"Layer {layer.name!r} ({cls.__name__}) cannot be saved: its "
                f"get_config does not round-trip and its constructor "
                f"argument {name!r} is not an attribute of the layer.")
    return config


def _layers(models):
    """Every layer of `models`, recursing into nested models (a part that
    is a plain layer is its own only layer)."""
    seen = set()
    stack = [m for m in models if isinstance(m, keras.Model)]
    for layer in models:
        if not isinstance(layer, keras.Model) and id(layer) not in seen:
            seen.add(id(layer))
            yield layer
    while stack:
        model = stack.pop()
        for layer in getattr(model, "layers", []):
            if id(layer) not in seen:
                seen.add(id(layer))
                yield layer
                if isinstance(layer, keras.Model):
                    stack.append(layer)


@contextlib.contextmanager
def repaired_configs(models):
    """Within the block, each layer of `models` whose config does not
    round-trip serializes with `repaired_config` (an instance-level
    `get_config`, removed on exit, so the layers are left as they were).

    Args:
        models: the functional models (a `FreezeOutModel`'s parts) about
            to be serialized.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> with repaired_configs([model]):
    ...     config = keras.saving.serialize_keras_object(model)
    """
    patched = []
    try:
        for layer in _layers(models):
            config = repaired_config(layer)
            if config is not None:
                layer.get_config = lambda config=config: dict(config)
                patched.append(layer)
        yield
    finally:
        for layer in patched:
            del layer.get_config


def mark_tensors_only(parts, configs):
    """Flags, in each part's serialized config, the entries of the layers
    that record their tensor outputs only.

    Args:
        parts: functional models.
        configs: their `keras.saving.serialize_keras_object` dicts, changed
            in place.
    """
    for part, config in zip(parts, configs):
        if not isinstance(part, keras.Model):
            continue  # a plain layer: no layer entries
        by_name = {layer.name: layer for layer in part.layers}
        for entry in config["config"].get("layers", []):
            # (A Sequential's entries hold the name in their config only.)
            name = entry.get("name") or entry.get("config", {}).get("name")
            layer = by_name.get(name)
            if layer is not None and functional.records_tensors_only(layer):
                entry[TENSORS_ONLY] = True


class _TensorsOnly:
    """Stands for a layer class in `custom_objects`: builds the layer,
    then lets it record its tensor outputs only."""

    def __init__(self, cls):
        self.cls = cls

    def from_config(self, config):
        layer = self.cls.from_config(config)
        functional._record_tensors_only(layer)
        return layer


def tensors_only_objects(configs):
    """`custom_objects` for deserializing `configs` (flagged by
    `mark_tensors_only`): each flagged layer's class, by the name Keras
    looks it up with, builds layers that record their tensor outputs only
    (so does every layer of that class in the parts: harmless, as a layer
    whose outputs are all tensors records as before).

    Args:
        configs: serialized parts.

    Returns:
        A dict for `keras.saving.deserialize_keras_object`'s
        `custom_objects`.
    """
    objects = {}
    for config in configs:
        for entry in config.get("config", {}).get("layers", []):
            if entry.get(TENSORS_ONLY):
                module = importlib.import_module(entry["module"])
                cls = getattr(module, entry["class_name"])
                key = entry.get("registered_name") or entry["class_name"]
                objects[key] = _TensorsOnly(cls)
    return objects
