"""LoRA adapters through saving and loading a `FreezeOutModel`.

Keras' `Dense` and `EinsumDense` save a LoRA layer's kernel merged with its
factors (`kernel + alpha / rank * a @ b`) and do not save the factors; a
KerasHub backbone does not record `enable_lora` in its config either. So a
split LoRA model loaded by `keras.saving` predicts as the saved one but is
no longer the model that was training: its LoRA structure is gone (the
optimizer's slots then meet another variable list) and, even rebuilt, its
factors would be zero, which no gradient moves (each factor's gradient is a
product with the other).

Here, a `FreezeOutModel`'s config names its LoRA layers (path, rank,
alpha) and `from_config` enables LoRA on them again before the model's
trained variables are fixed, so the loaded model trains the same variables
with the same optimizer slots. The unmerged kernels and the factors go
into the checkpoint archive beside the Keras weights
(`checkpoint.save_atomic`; `checkpoint.load_checkpoint` restores them).
A LoRA model loaded otherwise predicts correctly, and `fit` refuses it
before training (`check_trainable`).
"""

import inspect
import io

import keras
import numpy as np

__all__ = ["LORA_MEMBER", "check_trainable", "config", "enable", "layers",
           "restore", "values"]

# The archive member (an .npz) of `checkpoint.save_atomic`.
LORA_MEMBER = "freezeout_lora.npz"
# The variables of a LoRA layer that `values` saves, by name.
_VARIABLES = ("kernel", "lora_kernel_a", "lora_kernel_b")


def layers(parts):
    """The LoRA-enabled layers of `parts`, each once, in order.

    Example:

    >>> import keras
    >>> dense = keras.layers.Dense(2)
    >>> part = keras.Sequential([keras.Input((3,)), dense])
    >>> dense.enable_lora(1)
    >>> [layer.name for layer in layers([part])] == [dense.name]
    True
    """
    seen, found = set(), []
    for part in parts:
        # `_flatten_layers`: listed in keras_internals.
        for layer in part._flatten_layers(include_self=True):
            if getattr(layer, "lora_enabled", False) and id(layer) not in seen:
                seen.add(id(layer))
                found.append(layer)
    return found


def config(parts):
    """`[{"path", "rank", "alpha"}]` of the LoRA layers of `parts`, for a
    `FreezeOutModel`'s config.

    Example:

    >>> import keras
    >>> part = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> part.layers[0].enable_lora(1)
    >>> [(c["rank"], c["alpha"]) for c in config([part])]
    [(1, 1)]
    """
    return [{"path": layer.path, "rank": int(layer.lora_rank),
             "alpha": _alpha(layer)} for layer in layers(parts)]


def _alpha(layer):
    # Keras before 3.9 has no `lora_alpha`: its LoRA update is unscaled,
    # which is `lora_alpha == lora_rank` in later releases.
    return getattr(layer, "lora_alpha", int(layer.lora_rank))


def enable(parts, lora_config):
    """Enables LoRA again on the layers of `parts` that `lora_config` (from
    `config`) names, as `enable_lora` did before saving.

    Raises:
        ValueError: a layer named in `lora_config` is not in `parts`.

    Example:

    >>> import keras
    >>> part = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> entry = {"path": part.layers[0].path, "rank": 1, "alpha": 1}
    >>> enable([part], [entry])
    >>> part.layers[0].lora_enabled
    True
    """
    if not lora_config:
        return
    by_path = {}
    for part in parts:
        for layer in part._flatten_layers(include_self=True):
            by_path.setdefault(layer.path, layer)
    for entry in lora_config:
        layer = by_path.get(entry["path"])
        if layer is None:
            raise ValueError(
                f"The saved model has LoRA on layer {entry['path']!r}, which "
                "the loaded parts do not have.")
        if not layer.lora_enabled:
            if "lora_alpha" in inspect.signature(layer.enable_lora).parameters:
                layer.enable_lora(entry["rank"], lora_alpha=entry["alpha"])
            elif entry["alpha"] != entry["rank"]:
                raise ValueError(
                    f"Layer {entry['path']!r} was saved with LoRA alpha "
                    f"{entry['alpha']} and rank {entry['rank']}; this Keras "
                    f"{keras.__version__} has no `lora_alpha` (its LoRA "
                    "scale is 1, alpha == rank): load it with Keras 3.9 or "
                    "newer.")
            else:
                layer.enable_lora(entry["rank"])


def _variables(layer):
    by_name = {v.name: v for v in layer.weights}
    return [by_name[name] for name in _VARIABLES]


def values(parts):
    """The unmerged kernels and the LoRA factors of `parts`, as `.npz`
    bytes (None without LoRA)."""
    arrays = {}
    for layer in layers(parts):
        for v in _variables(layer):
            arrays[f"{layer.path}/{v.name}"] = np.asarray(v.numpy())
    if not arrays:
        return None
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def restore(parts, data):
    """Assigns the kernels and factors that `values` saved.

    Raises:
        ValueError: a LoRA layer of `parts` has no saved values.

    Example:

    >>> import keras
    >>> part = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> part.layers[0].enable_lora(1)
    >>> saved = values([part])
    >>> _ = part.layers[0].lora_kernel_b.assign([[1.0, 1.0]])
    >>> restore([part], saved)
    >>> float(keras.ops.sum(part.layers[0].lora_kernel_b))
    0.0
    """
    with np.load(io.BytesIO(data)) as arrays:
        for layer in layers(parts):
            for v in _variables(layer):
                key = f"{layer.path}/{v.name}"
                if key not in arrays:
                    raise ValueError(
                        f"The checkpoint has no saved value of LoRA variable "
                        f"{key!r}.")
                v.assign(arrays[key])


def check_trainable(model):
    """Refuses to train a LoRA `FreezeOutModel` whose factors were lost.

    Raises:
        ValueError: the model was loaded with its LoRA factors lost (by
            `keras.saving.load_model` rather than
            `freezeout_tf.recipes.checkpoint.load_checkpoint`).
    """
    if model._lora_factors_lost:
        raise ValueError(
            "This LoRA model was loaded by keras.saving, which keeps only "
            "the merged kernels (its LoRA factors are zero and would not "
            "train): resume from a checkpoint written by "
            "freezeout_tf.recipes.checkpoint.save_atomic (or EpochCheckpoint), "
            "loaded with freezeout_tf.recipes.checkpoint.load_checkpoint.")
