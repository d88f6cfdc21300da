"""Which KerasHub families FreezeOut can split: build each from a tiny
config, try `FreezeOutModel.from_model`, and `fit` briefly with FreezeOut.

Every backbone and task class of the installed `keras_hub.models` is
enumerated generically (each `Backbone` subclass, and each `Task` subclass
with a `backbone_cls`: `CausalLM`, `TextClassifier`, `ImageClassifier`,
...). A tiny config is derived from the backbone's `__init__` signature:
each argument named in `TINY` (layer counts, widths, vocabulary, image
size) is set small, and `OVERRIDES` adds the few a family needs beyond
those. A family whose required arguments have no tiny value, or whose tiny
config fails to build on CPU, is reported as not built, with the reason.

For each family that builds: the units `from_model` finds (or its refusal,
one line naming the layer), and, for tasks, a short `fit` with FreezeOut
that checks one trace of the train step and that every unit froze.

Not imported by `freezeout_tf/__init__` (it imports `keras_hub`);
`scripts/hub_coverage.py` runs it and writes `benchmarks/hub_coverage.*`.
"""

import contextlib
import inspect
import signal
import time

import keras
import numpy as np

from freezeout_tf.callback import FreezeOut
from freezeout_tf.model import FreezeOutModel

__all__ = ["TINY", "OVERRIDES", "STATUSES", "families", "tiny_kwargs",
           "try_family", "run", "summary", "to_markdown"]

# Tiny values for backbone arguments, by name: one table for every family.
TINY = {
    "num_layers": 2, "hidden_dim": 16, "intermediate_dim": 32,
    "vocabulary_size": 64, "vocab_size": 64, "num_heads": 2,
    "num_query_heads": 2, "num_key_value_heads": 1,
    "num_attention_heads": 2, "head_dim": 8, "patch_size": 4,
    "max_sequence_length": 32, "max_position_embeddings": 32,
    "image_shape": (32, 32, 3), "embedding_dim": 16, "num_experts": 2,
    "top_k": 1, "moe_intermediate_dim": 16, "hidden_size": 16,
    "intermediate_size": 32, "mlp_dim": 32, "num_hidden_layers": 2,
    "projection_dim": 16, "rope_theta": 10000.0, "head_size": 8,
    "image_size": 32, "shared_expert_intermediate_dim": 16,
    "shared_expert_intermediate_size": 16, "vit_patch_size": 4,
    "vit_num_heads": 2, "vit_hidden_dim": 16, "vit_num_layers": 2,
}
# What a family needs beyond `TINY` (small CNN stacks).
OVERRIDES = {
    "ResNetBackbone": dict(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 64], stackwise_num_blocks=[2, 2],
        stackwise_num_strides=[1, 2], block_type="basic_block"),
    "VGGBackbone": dict(stackwise_num_repeats=[2, 2],
                        stackwise_num_filters=[8, 16]),
    "SwinTransformerBackbone": dict(embed_dim=16, depths=[2, 2],
                                    num_heads=[2, 2], window_size=4),
    "DenseNetBackbone": dict(stackwise_num_repeats=[2, 2],
                             compression_ratio=0.5, growth_rate=4),
    "CSPNetBackbone": dict(
        stem_filters=8, stem_kernel_size=3, stem_strides=1,
        stackwise_depth=[1, 2], stackwise_strides=[1, 2],
        stackwise_num_filters=[8, 16], block_type="bottleneck_block",
        stage_type="csp", bottle_ratio=[0.5], block_ratio=[1.0],
        expand_ratio=[2.0]),
    "EfficientNetBackbone": dict(
        stackwise_width_coefficients=[1.0, 1.0],
        stackwise_depth_coefficients=[1.0, 1.0],
        stackwise_kernel_sizes=[3, 3], stackwise_num_repeats=[1, 2],
        stackwise_input_filters=[8, 8], stackwise_output_filters=[8, 16],
        stackwise_expansion_ratios=[1, 4],
        stackwise_squeeze_and_excite_ratios=[0.0, 0.25],
        stackwise_strides=[1, 2], stackwise_block_types=["fused", "unfused"],
        num_features=32),
    "HGNetV2Backbone": dict(
        depths=[1, 1], embedding_size=8, hidden_sizes=[16, 32],
        stem_channels=[3, 8, 8], hidden_act="relu",
        use_learnable_affine_block=False,
        # (in, mid, out channels, blocks, layers per block, kernel size)
        stackwise_stage_filters=[(8, 8, 16, 1, 2, 3), (16, 8, 32, 2, 2, 3)],
        apply_downsample=[False, True],
        use_lightweight_conv_block=[False, True]),
    "MiTBackbone": dict(
        layerwise_depths=[1, 2], hidden_dims=[8, 16],
        layerwise_num_heads=[1, 2], layerwise_sr_ratios=[2, 1],
        max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3],
        layerwise_strides=[4, 2]),
    "MobileNetBackbone": dict(
        stackwise_expansion=[[16, 24], [32, 32]],
        stackwise_num_blocks=[2, 2],
        stackwise_num_filters=[[8, 8], [16, 16]],
        stackwise_kernel_size=[[3, 3], [5, 5]],
        stackwise_num_strides=[[2, 1], [2, 1]],
        stackwise_se_ratio=[[None, None], [0.25, 0.25]],
        stackwise_activation=[["relu", "relu"],
                              ["hard_swish", "hard_swish"]],
        stackwise_padding=[[1, 1], [2, 2]], output_num_filters=32,
        depthwise_filters=8, depthwise_stride=2, depthwise_residual=False,
        last_layer_filter=32, input_num_filters=8),
    "MobileNetV5Backbone": dict(
        stackwise_block_types=[["er"], ["uir", "uir"]],
        stackwise_num_blocks=[1, 2], stackwise_num_filters=[[8], [16, 16]],
        stackwise_strides=[[2], [2, 1]],
        stackwise_act_layers=[["relu"], ["relu", "relu"]],
        stackwise_exp_ratios=[[2.0], [2.0, 2.0]],
        stackwise_se_ratios=[[0.0], [0.0, 0.0]],
        stackwise_dw_kernel_sizes=[[0], [3, 3]],
        stackwise_dw_start_kernel_sizes=[[0], [0, 0]],
        stackwise_dw_end_kernel_sizes=[[0], [0, 0]],
        stackwise_exp_kernel_sizes=[[3], [0, 0]],
        stackwise_pw_kernel_sizes=[[1], [0, 0]],
        stackwise_num_heads=[[0], [0, 0]], stackwise_key_dims=[[0], [0, 0]],
        stackwise_value_dims=[[0], [0, 0]],
        stackwise_kv_strides=[[0], [0, 0]],
        stackwise_use_cpe=[[False], [False, False]],
        stem_size=8, num_features=32, use_msfa=False),
    "XceptionBackbone": dict(
        stackwise_conv_filters=[[8, 16], [32, 32], [32, 32], [64, 64]],
        stackwise_pooling=[False, True, False, False]),
}
TEXT_LENGTH, NUM_CLASSES, EXAMPLES, BATCH, EPOCHS = 8, 3, 8, 4, 3
# What `try_family` reports, the columns of the summary.
STATUSES = ("split", "refused", "not built", "timeout", "error")


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds):
    """Raises `_Timeout` in the main thread after `seconds` (SIGALRM)."""
    def handler(signum, frame):
        raise _Timeout(f"over {seconds} s")
    previous = signal.signal(signal.SIGALRM, handler)
    signal.alarm(int(seconds))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def families(hub_models=None):
    """`[(name, kind, task class or None, backbone class)]` for every
    backbone and task family of `keras_hub.models`, by class name; a class
    exported under two names (`BertClassifier`, `BertTextClassifier`) once,
    under its own name.

    Args:
        hub_models: the module to enumerate (default `keras_hub.models`).

    Returns:
        list of tuples; `kind` is "backbone" or the task base class's name
        (`CausalLM`, `TextClassifier`, ...).

    Example:

    >>> ("GPT2CausalLM", "CausalLM") in [f[:2] for f in families()]
    True
    """
    if hub_models is None:
        import keras_hub
        hub_models = keras_hub.models
    found, seen = [], set()
    for name in sorted(dir(hub_models)):
        cls = getattr(hub_models, name)
        if not inspect.isclass(cls) or cls in seen:
            continue
        # Base classes live in keras_hub/src/models/, families in their
        # own package below it (keras_hub/src/models/bert/...).
        if cls.__module__.count(".") < 4:
            continue
        if issubclass(cls, hub_models.Backbone):
            seen.add(cls)
            found.append((cls.__name__, "backbone", None, cls))
        elif (issubclass(cls, hub_models.Task)
              and getattr(cls, "backbone_cls", None) is not None):
            seen.add(cls)
            kind = next((c.__name__ for c in cls.__mro__[1:]
                         if c.__module__.startswith("keras_hub")
                         and getattr(c, "backbone_cls", None) is None
                         and c is not hub_models.Task), "Task")
            found.append((cls.__name__, kind, cls, cls.backbone_cls))
    return found


def tiny_kwargs(backbone_cls):
    """Tiny constructor arguments for `backbone_cls`: `TINY` for each
    argument of its `__init__` that it names, then `OVERRIDES`.

    Returns:
        `(kwargs, missing)`: the arguments, and the names of required
        arguments that have no tiny value (the family cannot be built).
    """
    params = inspect.signature(backbone_cls.__init__).parameters
    kwargs, missing = {}, []
    for name, p in params.items():
        if name in ("self", "args", "kwargs") or p.kind in (
                p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in TINY:
            kwargs[name] = TINY[name]
        elif p.default is p.empty:
            missing.append(name)
    extra = OVERRIDES.get(backbone_cls.__name__, {})
    kwargs.update({k: v for k, v in extra.items() if k in params})
    missing = [m for m in missing if m not in kwargs]
    return kwargs, missing


def _example_inputs(model, rng):
    """Random inputs for `model.inputs`: masks all ones, segment ids zero,
    other integer inputs small ids, floats uniform; a free length is
    `TEXT_LENGTH`."""
    values = {}
    for t in model.inputs:
        shape = (EXAMPLES,) + tuple(TEXT_LENGTH if d is None else d
                                    for d in t.shape[1:])
        name = t.name
        if "int" in str(t.dtype) or "bool" in str(t.dtype):
            if "mask" in name:
                values[name] = np.ones(shape, dtype=t.dtype)
            elif "segment" in name:
                values[name] = np.zeros(shape, dtype=t.dtype)
            else:
                values[name] = rng.integers(1, 32, size=shape).astype(t.dtype)
        else:
            values[name] = rng.random(shape).astype(t.dtype)
    if len(values) == 1:
        return next(iter(values.values()))
    return values


def _describe_units(model):
    """`unit 0: a, b | unit 1: c | head: d` by the units' layers (weighted
    layers only; `...` past three)."""
    def names(part):
        found = [layer.name for layer in part.layers[1:] if layer.weights]
        return ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
    return " | ".join([names(u) for u in model.freeze_units]
                      + ["head: " + names(model.head)])


def _one_line(error, limit=300):
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def try_family(name, kind, task_cls, backbone_cls, fit=True, timeout=120,
               seed=0):
    """Builds one family from a tiny config, splits it, and fits it.

    Args:
        name, kind, task_cls, backbone_cls: one entry of `families()`.
        fit: whether to `fit` a task briefly with FreezeOut (backbones are
            only split: their outputs have no loss).
        timeout: seconds for the whole family (`SIGALRM`: main thread).
        seed: for the weights and the data.

    Returns:
        dict: `name`, `kind`, `status` ("split", "refused", "not built",
        "timeout" or "error"), `reason` (one line), `num_units`, `units`
        (layer names per unit), `fit` (None, or `traces`, `frozen`,
        `num_units`, `ok`), `seconds`.

    Example:

    >>> import keras_hub
    >>> try_family("BertTextClassifier", "TextClassifier",
    ...            keras_hub.models.BertTextClassifier,
    ...            keras_hub.models.BertBackbone, fit=False)["status"]
    'split'
    """
    result = dict(name=name, kind=kind, status=None, reason="",
                  num_units=None, units="", fit=None, seconds=None)
    start = time.time()
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    try:
        with _time_limit(timeout):
            kwargs, missing = tiny_kwargs(backbone_cls)
            if missing:
                result.update(status="not built", reason=(
                    f"{backbone_cls.__name__} needs {', '.join(missing)}, "
                    f"which have no tiny value (hub_coverage.TINY)"))
                return result
            try:
                original = backbone_cls(**kwargs)
                if task_cls is not None:
                    params = inspect.signature(task_cls.__init__).parameters
                    extra = ({"num_classes": NUM_CLASSES}
                             if "num_classes" in params else {})
                    original = task_cls(backbone=original, preprocessor=None,
                                        **extra)
                x = _example_inputs(original, rng)
                expected = original.predict(x, verbose=0)
            except _Timeout:
                raise
            except Exception as error:  # noqa: BLE001 (reported)
                result.update(status="not built", reason=_one_line(error))
                return result
            try:
                model = FreezeOutModel.from_model(original)
            except ValueError as error:
                result.update(status="refused", reason=_one_line(error))
                return result
            result.update(status="split", num_units=model.num_units,
                          units=_describe_units(model))
            if fit and task_cls is not None:
                try:
                    result["fit"] = _fit(model, x, expected, rng)
                except _Timeout:
                    raise
                except Exception as error:  # noqa: BLE001 (reported)
                    result["fit"] = dict(ok=False, note=_one_line(error))
    except _Timeout as error:
        if result["status"] == "split":  # the fit ran out of time
            result["fit"] = dict(ok=False, note=f"timeout: {error}")
        else:
            result.update(status="timeout", reason=str(error))
    except Exception as error:  # noqa: BLE001 (reported, next family)
        result.update(status="error", reason=_one_line(error))
    finally:
        result["seconds"] = round(time.time() - start, 1)
    return result


def _fit(model, x, expected, rng):
    """A short `fit` with FreezeOut: token or class labels for the task's
    logits (sparse cross-entropy); every unit must freeze in one trace."""
    if not isinstance(expected, np.ndarray) or expected.ndim < 2:
        return dict(ok=False, note="output is not one logits tensor")
    y = rng.integers(0, expected.shape[-1], size=expected.shape[:-1])
    model.compile(keras.optimizers.AdamW(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0,
                        callbacks=[FreezeOut(t_0=0.5)])
    frozen = sum(not unit.trainable for unit in model.freeze_units)
    traces = int(model.train_step_traces)
    loss = history.history["loss"][-1]
    ok = traces == 1 and frozen == model.num_units and np.isfinite(loss)
    return dict(ok=bool(ok), traces=traces, frozen=frozen,
                num_units=model.num_units,
                loss=float(loss) if np.isfinite(loss) else str(loss))


def run(selected=None, fit=True, timeout=120, log=None):
    """`try_family` for every family (or the names in `selected`).

    Args:
        selected: family names to try, or None for all.
        fit: passed to `try_family`.
        timeout: seconds per family.
        log: called with each result as it is made (e.g. to print it).

    Returns:
        list of result dicts, in `families()` order.

    Raises:
        ValueError: a name in `selected` is not a family of the installed
            keras-hub.
    """
    every = families()
    if selected is not None:
        names = {f[0] for f in every}
        unknown = sorted(set(selected) - names)
        if unknown:
            raise ValueError(
                f"Not a KerasHub family here: {unknown}; the installed "
                f"keras-hub has {len(names)} (e.g. {sorted(names)[:3]}).")
        every = [f for f in every if f[0] in set(selected)]
    results = []
    for family in every:
        keras.backend.clear_session()  # free the previous family's graph
        result = try_family(*family, fit=fit, timeout=timeout)
        results.append(result)
        if log is not None:
            log(result)
    return results


def summary(results):
    """`{kind: {status: count}}` with the fits that passed, by kind
    ("backbone", "CausalLM", ...)."""
    table = {}
    for r in results:
        row = table.setdefault(r["kind"], {})
        row[r["status"]] = row.get(r["status"], 0) + 1
        if r["fit"] is not None and r["fit"].get("ok"):
            row["fit ok"] = row.get("fit ok", 0) + 1
    return table


def to_markdown(results, header=""):
    """The summary by kind, then one row per family."""
    statuses = list(STATUSES)
    lines = [header, "", "| kind | " + " | ".join(statuses)
             + " | fit ok (one trace, all frozen) |",
             "|---|" + "---|" * (len(statuses) + 1)]
    for kind, row in sorted(summary(results).items()):
        lines.append(f"| {kind} | " + " | ".join(
            str(row.get(s, 0)) for s in statuses + ["fit ok"]) + " |")
    lines += ["", "| family | kind | result | units (weighted layers) or "
              "reason | fit | s |", "|---|---|---|---|---|---|"]
    for r in results:
        fit = r["fit"]
        if fit is None:
            fit_text = "-"
        elif "traces" in fit:
            fit_text = (f"{'ok' if fit['ok'] else 'FAILED'}: "
                        f"{fit['traces']} trace, {fit['frozen']}/"
                        f"{fit['num_units']} frozen")
        else:
            fit_text = fit.get("note", "")
        result = r["status"] + (f" ({r['num_units']} units)"
                                if r["num_units"] else "")
        detail = (r["units"] or r["reason"]).replace("|", "/")
        lines.append(f"| {r['name']} | {r['kind']} | {result} | {detail} | "
                     f"{fit_text} | {r['seconds']} |")
    return "\n".join(lines) + "\n"

