"""Which KerasHub families FreezeOut can split: build each from a tiny
config, try `FreezeOutModel.from_model`, and `fit` briefly with FreezeOut.

Every backbone and task class of the installed `keras_hub.models` is
enumerated generically (each `Backbone` subclass, and each `Task` subclass
with a `backbone_cls`: `CausalLM`, `TextClassifier`, `ImageClassifier`,
...). A tiny config is derived from the backbone's `__init__` signature:
each argument named in `TINY` (layer counts, widths, vocabulary, image
size) is set small, `DEFAULTS` fills required arguments that are not
sizes (rates, epsilons, flags), and `OVERRIDES` adds the few a family
needs beyond those; an argument that is itself a model (BLIP-2's vision
encoder, PARSeq's image encoder, a segmenter's or detector's image
encoder) is a `Nested` family, built from its own tiny config. The sizes
of composite families (segmenters, detectors, depth, Stable Diffusion 3,
encoder-decoders, speech-to-text) are those of KerasHub's own tests
(`keras_hub/src/models/<family>/*_test.py`), narrower where a nested
encoder allows. A task's own required arguments come from the same tables.
A family whose required arguments have no tiny value, or whose tiny config
fails to build and run on CPU, is reported as not built, with KerasHub's
error.

For each family that builds: the units `from_model` finds (or its refusal,
one line naming the layer), and, for tasks, a short `fit` with FreezeOut
that checks one trace of the train step, that every unit froze and that
the loss is finite. The loss is the task's own: its `compile()` defaults
and its `compute_loss` (a detector encodes boxes against its anchors), on
labels of the form that loss reads (`_targets`: token or class ids, one-hot
masks, boxes, depths).

Not imported by `freezeout_tf/__init__` (it imports `keras_hub`);
`scripts/hub_coverage.py` runs it and writes `benchmarks/coverage/hub_coverage.*`.
"""

import contextlib
import inspect
import re
import signal
import time

import keras
import numpy as np

from freezeout_tf.callbacks.freezeout import FreezeOut
from freezeout_tf.core.model import FreezeOutModel
from freezeout_tf.split import functional

__all__ = ["TINY", "DEFAULTS", "OVERRIDES", "TASK_BACKBONES",
           "INPUT_SHAPES", "COMPILED_LOSS_ONLY", "Nested", "STATUSES",
           "families", "tiny_kwargs", "try_family", "run", "summary",
           "task_share", "merge_rows", "to_markdown"]

TEXT_LENGTH, NUM_CLASSES, EXAMPLES, BATCH, EPOCHS = 8, 3, 8, 4, 3
AUDIO_LENGTH = 1600
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
# Values for required arguments that are not sizes, used only where an
# argument has no default (SmolLM3, Gemma3n and BLIP-2 require them).
DEFAULTS = {
    "dropout": 0.0, "dropout_rate": 0.0, "attention_dropout": 0.0,
    "attention_bias": False, "mlp_bias": False, "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02, "partial_rotary_factor": 1.0,
    "pad_token_id": 0, "hidden_activation": "gelu_approximate",
}


class Nested:
    """An argument that is itself a KerasHub model: `keras_hub.models.<name>`
    built from its own tiny config (`tiny_kwargs`), then `kwargs`.

    Example:

    >>> import keras_hub
    >>> encoder = Nested("ViTBackbone", num_layers=1).build()
    >>> isinstance(encoder, keras_hub.models.ViTBackbone)
    True
    """

    def __init__(self, name, /, **kwargs):  # kwargs may hold a `name`
        self.name, self.kwargs = name, kwargs

    def build(self):
        """The model. Raises `ValueError` if it lacks a tiny value."""
        cls = _hub_class(self.name)
        kwargs, missing = tiny_kwargs(cls)
        kwargs.update(self.kwargs)
        missing = [m for m in missing if m not in kwargs]
        if missing:
            raise ValueError(f"nested {self.name} needs {', '.join(missing)}"
                             f", which have no tiny value")
        return cls(**_built(kwargs))

    def __repr__(self):
        return f"Nested({self.name!r})"


def _hub_class(name):
    """`keras_hub.models.<name>`, else `keras_hub.layers.<name>` (SAM's
    prompt encoder), else a dotted path below `keras_hub` (a class KerasHub
    does not export, such as the VAE inside Stable Diffusion 3)."""
    import importlib

    import keras_hub
    if "." in name:
        module, _, attribute = name.rpartition(".")
        return getattr(importlib.import_module(module), attribute)
    for namespace in (keras_hub.models, keras_hub.layers):
        if hasattr(namespace, name):
            return getattr(namespace, name)
    raise ValueError(f"keras_hub has no model or layer named {name!r}")


def _built(kwargs):
    return {k: v.build() if isinstance(v, Nested) else v
            for k, v in kwargs.items()}


# Nested models and arguments that several families share.
_RESNET_3_STAGES = Nested(  # P2 to P4, for DeepLabV3 and RetinaNet
    "ResNetBackbone", input_conv_filters=[64],
    stackwise_num_filters=[64, 16, 16], stackwise_num_blocks=[1, 1, 1],
    stackwise_num_strides=[1, 2, 2])
_ANCHORS = Nested("AnchorGenerator")
_ENCODER_DECODER = {f"{part}_{name}": value for part in ("encoder", "decoder")
                    for name, value in dict(
                        hidden_dim=16, intermediate_dim=32, num_layers=2,
                        num_attention_heads=2, num_key_value_heads=1,
                        head_dim=8).items()}
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
    # Causal LMs: per-layer lists (TINY's two layers), nested models, and a
    # task's own sizes (Gemma 4's speculative-decoding assistant).
    "SmolLM3Backbone": dict(layer_types=["attention"] * 2,
                            rope_layer_enabled_list=[True] * 2),
    "Gemma3nBackbone": dict(
        text_vocab_size=64, text_hidden_size=16, intermediate_size=[32, 32],
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=4, vocab_size_per_layer_input=64,
        hidden_size_per_layer_input=4, altup_num_inputs=2, laurel_rank=2),
    "Gemma4AssistantCausalLM": dict(
        backbone_hidden_size=16, num_centroids=4,
        centroid_intermediate_top_k=2, use_ordered_embeddings=True),
    "BLIP2Backbone": dict(vision_encoder=Nested("BLIP2VisionEncoder"),
                          qformer=Nested("BLIP2QFormer"),
                          language_model=Nested("BLIP2CustomOPT")),
    "BLIP2VisionEncoder": dict(use_patch_bias=True, use_class_token=True,
                               use_mha_bias=True, use_mlp_bias=True),
    "BLIP2QFormer": dict(num_query_tokens=4, vision_dim=16,
                         cross_attention_frequency=1),
    "BLIP2CustomOPT": dict(num_query_tokens=4, qformer_hidden_dim=16),
    "PARSeqCausalLM": dict(preprocessor=Nested(  # compiles with its tokenizer
        "PARSeqCausalLMPreprocessor", tokenizer=Nested("PARSeqTokenizer"))),
    "PARSeqBackbone": dict(
        image_encoder=Nested("ViTBackbone"), max_label_length=TEXT_LENGTH,
        decoder_hidden_dim=16, num_decoder_layers=2, num_decoder_heads=2,
        decoder_mlp_dim=32),
    # Composite tasks, their sizes from KerasHub's own tests
    # (keras_hub/src/models/<family>/*_test.py), narrower where a nested
    # image encoder allows: each nested encoder is a tiny family itself.
    "DeepLabV3Backbone": dict(
        image_encoder=_RESNET_3_STAGES, low_level_feature_key="P2",
        spatial_pyramid_pooling_key="P4", dilation_rates=[6, 12, 18],
        upsampling_size=4, projection_filters=8),
    "SegFormerBackbone": dict(image_encoder=Nested("MiTBackbone"),
                              projection_filters=16),
    "BASNetBackbone": dict(
        image_encoder=Nested(
            "ResNetBackbone", input_conv_filters=[64],
            stackwise_num_filters=[64, 16, 16, 16],
            image_shape=(None, None, 3),  # BASNet refuses a fixed one
            stackwise_num_blocks=[1, 1, 1, 1],
            stackwise_num_strides=[1, 2, 2, 2]),
        num_classes=1),
    "ViTDetBackbone": dict(global_attention_layer_indices=[1],
                           num_output_channels=16, window_size=2),
    "SAMBackbone": dict(
        image_encoder=Nested(
            "ViTDetBackbone", image_shape=(128, 128, 3), patch_size=16,
            num_output_channels=32),
        prompt_encoder=Nested(
            "SAMPromptEncoder", hidden_size=32, image_embedding_size=(8, 8),
            input_image_size=(128, 128), mask_in_channels=16),
        mask_decoder=Nested(
            "SAMMaskDecoder", num_layers=2, hidden_size=32,
            intermediate_dim=32, num_heads=8, embedding_dim=32,
            num_multimask_outputs=3, iou_head_depth=3,
            iou_head_hidden_dim=8)),
    "RetinaNetBackbone": dict(image_encoder=_RESNET_3_STAGES, min_level=3,
                              max_level=4, use_p5=False),
    "RetinaNetObjectDetector": dict(
        anchor_generator=_ANCHORS,
        label_encoder=Nested(
            "keras_hub.src.models.retinanet.retinanet_label_encoder."
            "RetinaNetLabelEncoder", anchor_generator=_ANCHORS,
            bounding_box_format="yxyx"),
        pre_logits_num_conv_layers=1),
    "AnchorGenerator": dict(bounding_box_format="yxyx", min_level=3,
                            max_level=4, num_scales=3,
                            aspect_ratios=[0.5, 1.0, 2.0], anchor_size=4),
    "DFineBackbone": dict(
        backbone=Nested(
            "HGNetV2Backbone", use_learnable_affine_block=True,
            stackwise_stage_filters=[(8, 8, 16, 1, 1, 3),
                                     (16, 8, 32, 1, 1, 3)],
            use_lightweight_conv_block=[False, False],
            out_features=["stage1", "stage2"]),
        decoder_in_channels=[16, 16], encoder_hidden_dim=16,
        num_labels=NUM_CLASSES, num_denoising=10, learn_initial_query=False,
        num_queries=10, anchor_image_size=(32, 32), feat_strides=[4, 8],
        num_feature_levels=2, encoder_in_channels=[16, 32],
        encode_proj_layers=[1], encoder_ffn_dim=32, num_encoder_layers=1,
        hidden_expansion=0.5, depth_multiplier=0.5, eval_idx=-1,
        num_decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32,
        decoder_n_points=[2, 2], lqe_hidden_dim=16, num_lqe_layers=1,
        out_features=["stage1", "stage2"], seed=0),
    "DepthAnythingBackbone": dict(
        image_encoder=Nested(
            "DINOV2Backbone", patch_size=14, num_layers=4,
            intermediate_dim=64, image_shape=(126, 126, 3),
            apply_layernorm=True),
        reassemble_factors=[4, 2, 1, 0.5], neck_hidden_dims=[8, 8, 16, 16],
        fusion_hidden_dim=16, head_hidden_dim=8, head_in_index=-1,
        feature_keys=["stage1", "stage2", "stage3", "stage4"]),
    "DepthAnythingDepthEstimator": dict(depth_estimation_type="metric",
                                        max_depth=10.0),
    "StableDiffusion3Backbone": dict(
        mmdit_patch_size=2, mmdit_hidden_dim=32, mmdit_num_layers=2,
        mmdit_num_heads=2, mmdit_position_size=192, mmdit_qk_norm=None,
        mmdit_dual_attention_indices=None, image_shape=(64, 64, 3),
        vae=Nested("keras_hub.src.models.vae.vae_backbone.VAEBackbone",
                   encoder_num_filters=[32] * 4, encoder_num_blocks=[1] * 4,
                   decoder_num_filters=[32] * 4, decoder_num_blocks=[1] * 4,
                   sampler_method="mode"),
        clip_l=Nested("CLIPTextEncoder", embedding_dim=64, hidden_dim=64,
                      intermediate_dim=128, intermediate_output_index=-2,
                      max_sequence_length=77, name="clip_l"),
        clip_g=Nested("CLIPTextEncoder", embedding_dim=128, hidden_dim=128,
                      intermediate_dim=256, intermediate_activation="gelu",
                      intermediate_output_index=-2, max_sequence_length=77,
                      name="clip_g")),
    "FluxBackbone": dict(
        input_channels=64, hidden_size=256, mlp_ratio=2.0, num_heads=4,
        depth=2, depth_single_blocks=2, axes_dim=[8, 28, 28], theta=10_000,
        use_bias=True, guidance_embed=True, image_shape=(16, 64),
        text_shape=(16, 64), image_ids_shape=(16, 3), text_ids_shape=(16, 3),
        y_shape=(64,)),
    "VideoPrismBackbone": dict(num_frames=2, num_spatial_layers=1,
                               num_temporal_layers=1, num_auxiliary_layers=1,
                               vocabulary_size=0, num_text_layers=0),
    "CLIPBackbone": dict(vision_encoder=Nested("CLIPVisionEncoder"),
                         text_encoder=Nested("CLIPTextEncoder")),
    "MetaCLIP2Backbone": dict(vision_encoder=Nested("MetaCLIP2VisionEncoder"),
                              text_encoder=Nested("MetaCLIP2TextEncoder")),
    "SigLIPBackbone": dict(vision_encoder=Nested("SigLIPVisionEncoder"),
                           text_encoder=Nested("SigLIPTextEncoder")),
    # Its position embedding is added whole: inputs are this long.
    "SigLIPTextEncoder": dict(max_sequence_length=TEXT_LENGTH),
    # Encoder-decoders and speech-to-text.
    "T5GemmaBackbone": dict(_ENCODER_DECODER, sliding_window=4,
                            encoder_layer_types=["sliding_attention",
                                                 "full_attention"],
                            decoder_layer_types=["sliding_attention",
                                                 "full_attention"]),
    "T5Gemma2Backbone": dict(_ENCODER_DECODER, cross_attention_hidden_size=16,
                             encoder_layer_types=["full_attention"] * 2,
                             decoder_layer_types=["full_attention"] * 2),
    "EdRecBackbone": dict(num_layers_enc=2, num_layers_dec=2),
    "MoonshineBackbone": dict(filter_dim=16, encoder_num_layers=2,
                              decoder_num_layers=2, encoder_num_heads=2,
                              decoder_num_heads=2),
    "SAM3PromptableConceptBackbone": dict(
        vision_encoder=Nested(
            "SAM3VisionEncoder", image_shape=(28, 28, 3), patch_size=14,
            fpn_hidden_dim=16, fpn_scale_factors=[4.0, 2.0, 1.0, 0.5],
            pretrain_image_shape=(42, 42, 3), window_size=2,
            global_attn_indexes=[1, 2]),
        text_encoder=Nested("SAM3TextEncoder", vocabulary_size=32),
        geometry_encoder=Nested("SAM3GeometryEncoder", roi_size=7),
        detr_encoder=Nested("SAM3DetrEncoder"),
        detr_decoder=Nested("SAM3DetrDecoder", image_shape=(28, 28, 3),
                            patch_size=14, num_queries=8),
        mask_decoder=Nested("SAM3MaskDecoder", num_upsampling_stages=3)),
}
# A backbone's arguments where a task needs other ones than `OVERRIDES`
# gives (BLIP-2's sequence-to-sequence task reads a Flan-T5 language model).
TASK_BACKBONES = {
    "BLIP2Seq2SeqLM": dict(
        language_model=Nested("BLIP2FlanT5", key_value_dim=8,
                              num_query_tokens=4, qformer_hidden_dim=16)),
}
# Input shapes (without the batch) where a free dimension must take a
# particular size: SAM's one prompt of each kind, its mask prompt four times
# the image embedding (as KerasHub's test gives them); SAM 3 prompted by
# text alone (a box there starts with its example's index, which random
# inputs cannot give).
INPUT_SHAPES = {
    name: dict(points=(1, 2), labels=(1,), boxes=(1, 2, 2),
               masks=(1, 32, 32, 1))
    for name in ("SAMBackbone", "SAMImageSegmenter")
} | {name: dict(boxes=(0, 5), box_labels=(0,)) for name in (  # text only
    "SAM3PromptableConceptBackbone", "SAM3PromptableConceptImageSegmenter")}
# Tasks whose own `compute_loss` runs the backbone a second time instead
# of reading the outputs it is given: fit with their compiled loss on the
# outputs (the split model's forward is the one FreezeOut controls; the
# second one reads no unit's watched weights, so its gradients are lost).
COMPILED_LOSS_ONLY = {
    "BASNetImageSegmenter": "its compute_loss also scores the prediction "
    "heads' outputs by calling the backbone again",
    "PARSeqCausalLM": "its compute_loss runs the image encoder and the "
    "decoder again under permutation masks, not reading the outputs",
}
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


def tiny_kwargs(backbone_cls, skip=()):
    """Tiny constructor arguments for `backbone_cls` (or a task class):
    `TINY` for each argument of its `__init__` that it names, `DEFAULTS`
    for required ones, then `OVERRIDES` (values may be `Nested`).

    Args:
        backbone_cls: the class.
        skip: argument names the caller gives (a task's `backbone`).

    Returns:
        `(kwargs, missing)`: the arguments, and the names of required
        arguments that have no tiny value (the family cannot be built).
    """
    params = inspect.signature(backbone_cls.__init__).parameters
    kwargs, missing = {}, []
    for name, p in params.items():
        if name in ("self", "args", "kwargs", *skip) or p.kind in (
                p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in TINY:
            kwargs[name] = TINY[name]
        elif p.default is p.empty and name in DEFAULTS:
            kwargs[name] = DEFAULTS[name]
        elif p.default is p.empty:
            missing.append(name)
    extra = OVERRIDES.get(backbone_cls.__name__, {})
    kwargs.update({k: v for k, v in extra.items() if k in params})
    missing = [m for m in missing if m not in kwargs]
    return kwargs, missing


def _example_inputs(model, rng, shapes=None):
    """Random inputs for `model.inputs`: masks all ones, segment ids zero,
    other integer inputs small ids, floats uniform; a free length is
    `TEXT_LENGTH`, `AUDIO_LENGTH` for a waveform, or as `shapes` (by input
    name, without the batch) gives."""
    values = {}
    for t in model.inputs:
        # A free length of one float channel is a waveform (Moonshine's
        # convolutions downsample it 384 times).
        free = (AUDIO_LENGTH if len(t.shape) == 3 and t.shape[-1] == 1
                and "float" in str(t.dtype) else TEXT_LENGTH)
        shape = (EXAMPLES,) + tuple(
            (shapes or {}).get(t.name, [free if d is None else d
                                        for d in t.shape[1:]]))
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


def _blocks_together(original, model):
    """Why each part holding two or more blocks (layers that hold several
    layers with weights) keeps them together: the tensor that goes around
    one of its blocks, or a layer holding a list of blocks that stayed one
    call; "" if no part does."""
    parts, notes = model.freeze_units + [model.head], []
    for i, part in enumerate(parts):
        blocks = [layer for layer in part.layers[1:]
                  if functional._is_container(layer)]
        notes += [f"'{b.name}' holds a list of blocks but stays one call "
                  f"(its call is not a chain of blocks that could be looked "
                  f"into)" for b in blocks if functional._has_blocks(b)]
        found = (functional._why_not_cut(original, blocks[:-1])
                 if len(blocks) > 1 else None)
        if found:
            names = [b.name for b in blocks]
            where = "head" if i == len(parts) - 1 else f"unit {i}"
            notes.append(
                f"{where} keeps {len(names)} blocks together "
                f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                f": no cut after '{found[0].name}', {found[1]}")
    return _one_line("; ".join(notes), limit=600)


def _one_line(error, limit=300):
    """An exception (with its type) or a text, on one line of at most
    `limit` characters."""
    text = (error if isinstance(error, str)
            else f"{type(error).__name__}: {error}")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def try_family(name, kind, task_cls, backbone_cls, fit=True, timeout=120,
               seed=0):
    """Builds one family from a tiny config, splits it, and fits it.

    Args:
        name: the family's class name (an entry of `families()` gives
            this and the next three arguments).
        kind: the task kind, or `"backbone"`.
        task_cls: the task class (the backbone class for a backbone).
        backbone_cls: the backbone class.
        fit: whether to `fit` a task briefly with FreezeOut (backbones are
            only split: their outputs have no loss).
        timeout: seconds for the whole family (`SIGALRM`: main thread).
        seed: for the weights and the data.

    Returns:
        dict: `name`, `kind`, `status` ("split", "refused", "not built",
        "timeout" or "error"), `reason` (one line), `num_units`, `units`
        (layer names per unit), `together` (why a part keeps several blocks
        together, `_blocks_together`), `fit` (None, or `traces`, `frozen`,
        `num_units`, `ok`), `seconds`.

    Example:

    >>> import keras_hub
    >>> try_family("BertTextClassifier", "TextClassifier",
    ...            keras_hub.models.BertTextClassifier,
    ...            keras_hub.models.BertBackbone, fit=False)["status"]
    'split'
    """
    result = dict(name=name, kind=kind, status=None, reason="",
                  num_units=None, units="", together="", fit=None,
                  seconds=None)
    start = time.time()
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    try:
        with _time_limit(timeout):
            kwargs, missing = tiny_kwargs(backbone_cls)
            if task_cls is not None:
                kwargs.update(TASK_BACKBONES.get(name, {}))
                missing = [m for m in missing if m not in kwargs]
            if missing:
                result.update(status="not built", reason=(
                    f"{backbone_cls.__name__} needs {', '.join(missing)}, "
                    f"which have no tiny value (hub_coverage.TINY)"))
                return result
            try:
                original = backbone_cls(**_built(kwargs))
                if task_cls is not None:
                    extra, missing = tiny_kwargs(
                        task_cls, skip=("backbone", "preprocessor",
                                        "num_classes"))
                    extra.setdefault("preprocessor", None)
                    params = inspect.signature(task_cls.__init__).parameters
                    if "num_classes" in params:
                        extra["num_classes"] = NUM_CLASSES
                    if missing:
                        raise ValueError(
                            f"{task_cls.__name__} needs "
                            f"{', '.join(missing)}, which have no tiny "
                            f"value (hub_coverage.TINY)")
                    original = task_cls(backbone=original, **_built(extra))
                    # Inputs are token ids already: the task is called,
                    # never its predict or fit, so a preprocessor (from
                    # OVERRIDES) serves only its constructor and compile
                    # (PARSeq's loss ignores its tokenizer's pad id).
                x = _example_inputs(original, rng, INPUT_SHAPES.get(name))
                original(x, training=False)  # runs at all (eagerly)
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
                          units=_describe_units(model),
                          together=_blocks_together(original, model))
            if fit and task_cls is not None:
                try:
                    result["fit"] = _fit(model, original, kind, x, rng)
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


def _task_loss(task):
    """The loss `task` trains with: its own `compile()` defaults (and its
    own `compute_loss`, as a detector's, which encodes boxes into anchor
    targets). `(compute_loss, loss)`: a function of `x, y, y_pred,
    sample_weight, training`, and the compiled loss (or dict of losses by
    output) from which the targets' form is read. A task KerasHub compiles
    without a loss (a text embedder) gets a mean-squared error to random
    embeddings; a task whose `compute_loss` runs its backbone a second
    time to reach outputs the task does not return (BASNet's prediction
    heads) gets its compiled loss on the outputs it returns: those extra
    outputs would not be the split model's."""
    task.compile(optimizer=keras.optimizers.AdamW(1e-3))
    loss = task.loss
    if loss is None:
        loss = keras.losses.MeanSquaredError()
        task.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=loss)
    own = (super(type(task), task).compute_loss
           if type(task).__name__ in COMPILED_LOSS_ONLY else task.compute_loss)

    def compute_loss(x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        return own(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                   training=training)
    return compute_loss, loss


def _targets(kind, loss, expected, image_size, rng):
    """Labels for a task's outputs `expected`, in the form its `loss`
    reads: class ids (sparse cross-entropy: tokens, classes), one-hot
    masks (categorical: segmenters), binary masks, boxes in pixels with
    their classes (object detectors), else values in [0, 1) (depths,
    latents)."""
    if kind == "ObjectDetector":
        # Most of the image: the tiny configs' smallest anchors are 32
        # pixels, and a box that overlaps none gives no loss.
        size = rng.uniform(0.75, 1.0, size=(EXAMPLES, 2, 2)) * image_size
        corner = rng.uniform(0, 1, size=(EXAMPLES, 2, 2)) * (
            image_size - size)
        return {"boxes": np.concatenate([corner, corner + size],
                                        -1).astype("float32"),
                "labels": rng.integers(0, NUM_CLASSES, size=(EXAMPLES, 2))}
    if isinstance(expected, dict):
        keys = loss.keys() if isinstance(loss, dict) else expected.keys()
        return {k: _targets(kind, loss[k] if isinstance(loss, dict) else loss,
                            expected[k], image_size, rng) for k in keys}
    name = type(loss).__name__
    shape, classes = expected.shape, expected.shape[-1]
    if name.startswith("Sparse"):
        return rng.integers(0, classes, size=shape[:-1])
    if name.startswith("Categorical"):
        return np.eye(classes, dtype="float32")[
            rng.integers(0, classes, size=shape[:-1])]
    if name.startswith("Binary"):
        return rng.integers(0, 2, size=shape).astype("float32")
    return rng.random(shape).astype("float32")


def _fit(model, task, kind, x, rng):
    """A short `fit` with FreezeOut and the task's own loss (`_task_loss`)
    on labels of its outputs' form (`_targets`); every unit must freeze in
    one trace, and the last loss be finite."""
    compute_loss, loss = _task_loss(task)
    # The outputs the loss reads: the task's call, not its `predict`
    # (a detector's predict decodes boxes).
    expected = keras.tree.map_structure(
        keras.ops.convert_to_numpy, task(x, training=False))
    images = [v for v in keras.tree.flatten(x) if v.ndim == 4]
    y = _targets(kind, loss, expected,
                 images[0].shape[1] if images else 0, rng)
    # Once eagerly: a loss that makes variables (a multi-output loss's
    # trackers) or builds layers (a box encoder) on its first call would
    # otherwise make the train step trace twice.
    first = keras.tree.map_structure(lambda v: v[:BATCH], (x, y, expected))
    compute_loss(*first)
    model.compile(keras.optimizers.AdamW(1e-3))
    model.compute_loss = compute_loss
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


def task_share(results):
    """The task families (not backbones) that split and fit.

    Args:
        results: `try_family` results.

    Returns:
        `(fit_ok, tasks, refused)`: how many task families split and fit
        (one trace, every unit frozen, finite loss), how many task
        families there are, and `{name: reason}` for those refused.
    """
    tasks = [r for r in results if r["kind"] != "backbone"]
    fit_ok = sum(bool(r["fit"] and r["fit"].get("ok")) for r in tasks)
    refused = {r["name"]: r["reason"] for r in tasks
               if r["status"] == "refused"}
    return fit_ok, len(tasks), refused


def merge_rows(kept, rerun):
    """The rows of a kept run with some families re-run.

    Args:
        kept: `try_family` results of a whole run.
        rerun: results of a run of some of the same families
            (`run(selected)`).

    Returns:
        list: `kept` in its order, each family in `rerun` replaced by its
        new row.

    Raises:
        ValueError: a family of `rerun` is not in `kept`.

    Example:

    >>> merge_rows([{"name": "A", "fit": None}, {"name": "B", "fit": None}],
    ...            [{"name": "B", "fit": {"ok": True}}])[1]["fit"]
    {'ok': True}
    """
    new = {r["name"]: r for r in rerun}
    unknown = sorted(set(new) - {r["name"] for r in kept})
    if unknown:
        raise ValueError(
            f"Re-run families not in the kept report: {unknown}; merge only "
            f"rows of families it holds ({len(kept)} rows).")
    return [new.get(r["name"], r) for r in kept]


def _table_text(text):
    """`text` as one Markdown table cell: no terminal colour codes (Keras'
    error messages carry them), no column bar, and brackets escaped (the
    docs build reads `[Op:LogicalAnd]` as a cross-reference)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return (text.replace("|", "/").replace("[", "\\[")
            .replace("]", "\\]"))


def to_markdown(results, header=""):
    """The summary by kind, then one row per family."""
    statuses = list(STATUSES)
    fit_ok, tasks, refused = task_share(results)
    share = (f"Task families that split and fit (one trace, every unit "
             f"frozen, finite loss): {fit_ok} of {tasks} "
             f"({100 * fit_ok / max(tasks, 1):.0f} %); refused: "
             f"{', '.join(refused) or 'none'}.")
    lines = [header, "", share, "", "| kind | " + " | ".join(statuses)
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
            loss = (f"{fit['loss']:.3g}" if isinstance(fit["loss"], float)
                    else fit["loss"])
            fit_text = (f"{'ok' if fit['ok'] else 'FAILED'}: "
                        f"{fit['traces']} trace, {fit['frozen']}/"
                        f"{fit['num_units']} frozen, loss {loss}")
        else:
            fit_text = fit.get("note", "")
        result = r["status"] + (f" ({r['num_units']} units)"
                                if r["num_units"] else "")
        detail = _table_text(r["units"] or r["reason"])
        if r.get("together"):
            detail += " — " + _table_text(r["together"])
        lines.append(f"| {r['name']} | {r['kind']} | {result} | {detail} | "
                     f"{fit_text} | {r['seconds']} |")
    return "\n".join(lines) + "\n"

