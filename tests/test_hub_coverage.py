"""The KerasHub coverage logic (`freezeout_tf.tools.hub_coverage`) on a few
families: what is recorded for a split, a refusal and a family that
cannot be built. The whole survey is `scripts/hub_coverage.py`."""

import json
import pathlib
import re

import keras_hub
import pytest

from freezeout_tf.tools import hub_coverage


def test_families_are_enumerated_generically_once_each():
    found = {name: (kind, task, backbone)
             for name, kind, task, backbone in hub_coverage.families()}
    assert found["GPT2CausalLM"][0] == "CausalLM"
    assert found["GPT2CausalLM"][2] is keras_hub.models.GPT2Backbone
    assert found["DeiTImageClassifier"][0] == "ImageClassifier"
    assert found["BertBackbone"][:2] == ("backbone", None)
    # Exported twice (BertClassifier is BertTextClassifier): listed once;
    # base classes (CausalLM, Backbone) are not families.
    names = [name for name in found if "Bert" in name and "Text" in name]
    assert "BertTextClassifier" in names and "BertClassifier" not in found
    assert not {"CausalLM", "Backbone", "Task"} & set(found)


def test_tiny_kwargs_from_the_signature_and_missing_ones():
    class Backbone:
        def __init__(self, num_layers, hidden_dim, fancy_arg, dropout=0.1,
                     **kwargs):
            pass

    kwargs, missing = hub_coverage.tiny_kwargs(Backbone)
    assert kwargs == {"num_layers": 2, "hidden_dim": 16}
    assert missing == ["fancy_arg"]

    # DEFAULTS fills a required argument that is not a size, never one
    # that has a default; `skip` leaves out what the caller gives.
    class Task:
        def __init__(self, backbone, layer_norm_epsilon, dropout=0.1):
            pass

    assert hub_coverage.tiny_kwargs(Task, skip=("backbone",)) == (
        {"layer_norm_epsilon": hub_coverage.DEFAULTS["layer_norm_epsilon"]},
        [])
    result = hub_coverage.try_family("FancyBackbone", "backbone", None,
                                     Backbone)
    assert result["status"] == "not built"
    assert "fancy_arg" in result["reason"]


def test_split_records_units_and_albert_shares_its_block_in_one_unit():
    split = hub_coverage.try_family(
        "BertTextClassifier", "TextClassifier",
        keras_hub.models.BertTextClassifier, keras_hub.models.BertBackbone,
        fit=False)
    # The embeddings' layers, one unit per block (TINY num_layers=2), the
    # pooler, then the head.
    parts = split["units"].split(" | ")
    assert split["status"] == "split" and split["num_units"] == 6
    assert parts[3:] == ["transformer_layer_0", "transformer_layer_1",
                         "pooled_dense", "head: logits"]
    # ALBERT shares one block between its layers: one unit holds all its
    # calls (the unit of its first call owns it).
    albert = hub_coverage.try_family(
        "AlbertTextClassifier", "TextClassifier",
        keras_hub.models.AlbertTextClassifier,
        keras_hub.models.AlbertBackbone, fit=False)
    assert albert["status"] == "split", albert["reason"]
    assert [p for p in albert["units"].split(" | ")
            if "group_0_inner_layer_0" in p] == ["group_0_inner_layer_0"]
    table = hub_coverage.to_markdown([split, albert])
    assert "| TextClassifier | 2 | 0 | 0 | 0 | 0 | 0 |" in table


def test_refusal_records_the_layer():
    # Gemma 3n's text model stays one call: refused, naming it. (Not in
    # keras-hub 0.22: .ci/run's oldest lane leaves this test out.)
    refused = hub_coverage.try_family(
        *next(f for f in hub_coverage.families()
              if f[0] == "Gemma3nCausalLM"), fit=False)
    assert refused["status"] == "refused"
    assert "'text_model'" in refused["reason"]
    assert "\n" not in refused["reason"]
    table = hub_coverage.to_markdown([refused])
    assert "| CausalLM | 0 | 1 | 0 | 0 | 0 | 0 |" in table


def test_a_reason_is_one_plain_table_cell():
    # KerasHub's errors carry terminal colour codes and TensorFlow's
    # "[Op:Name]", which the strict docs build took for a cross-reference.
    row = {"name": "X", "kind": "backbone", "status": "not built",
           "num_units": 0, "units": "", "fit": None, "seconds": 0.1,
           "reason": "InvalidArgumentError: \x1b[1mshapes [8,2] | [8,1] "
                     "[Op:LogicalAnd]\x1b[0m"}
    line = hub_coverage.to_markdown([row]).splitlines()[-1]
    assert line == ("| X | backbone | not built | InvalidArgumentError: "
                    "shapes \\[8,2\\] / \\[8,1\\] \\[Op:LogicalAnd\\] "
                    "| - | 0.1 |")


@pytest.mark.parametrize("name,first,second", [
    # Tiny configs (hub_coverage.OVERRIDES): stages or blocks apart.
    ("CSPNetImageClassifier", "stage_0_csp_conv_exp",
     "stage_1_csp_conv_exp"),
    ("EfficientNetImageClassifier", "block2a_", "block2b_"),
    ("HGNetV2ImageClassifier", "encoder_stage_0",
     "encoder_stage_1_downsample"),
    ("MiTImageClassifier", "hierarchical_encoder_1_0",
     "hierarchical_encoder_1_1"),
    ("MobileNetImageClassifier", "block_1_0", "block_1_1"),
    ("MobileNetV5ImageClassifier", "conv_stem", "conv_head"),
    ("XceptionImageClassifier", "block2_sepconv1", "block3_sepconv1"),
    # One input, its padding mask computed from it and read by each block.
    ("ESMProteinClassifier", "transformer_layer_0", "transformer_layer_1"),
    # Relative embeddings made once and read by each block (carried).
    ("DebertaV3TextClassifier", "disentangled_attention_encoder_layer_0",
     "disentangled_attention_encoder_layer_1"),
])
def test_classifier_families_split_block_by_block(name, first, second):
    family = next(f for f in hub_coverage.families() if f[0] == name)
    result = hub_coverage.try_family(*family, fit=False)
    assert result["status"] == "split", result["reason"]
    parts = [p.split(", ") for p in result["units"].split(" | ")]

    def unit_of(layer):
        return next(i for i, p in enumerate(parts) if layer in p)

    assert unit_of(first) < unit_of(second), result["units"]
    assert result["num_units"] >= 4, result["units"]  # not one lump


def attempt(name):
    task = getattr(keras_hub.models, name)
    return hub_coverage.try_family(name, "CausalLM", task, task.backbone_cls,
                                   fit=False)


def test_causal_lm_with_required_flags_splits_and_blocks_together_say_why():
    # SmolLM3 requires rates, flags and per-layer lists: one unit per block.
    smol = attempt("SmolLM3CausalLM")
    assert smol["status"] == "split", smol["reason"]
    assert smol["units"].split(" | ") == [
        "token_embedding", "transformer_layer_0", "transformer_layer_1",
        "sequence_output_layernorm", "head: token_embedding"]
    # RWKV-7's first block passes its value on to every later block.
    rwkv = attempt("RWKV7CausalLM")
    assert "no cut after 'rwkv_layer_0', it passes several tensors on" in (
        rwkv["together"])


def test_causal_lm_of_nested_models_is_built():
    # BLIP-2 is three nested models (`Nested`): its vision blocks split;
    # the Q-Former's blocks stay together, each cross-attending to the
    # vision output, and the table says so, naming the tensor.
    blip2 = attempt("BLIP2CausalLM")
    assert blip2["status"] == "split", blip2["reason"]
    assert "transformer_block_1 | transformer_block_2" in blip2["units"]
    assert re.search(r"unit \d+ keeps 2 blocks together \(transformer_layer_0"
                     r", transformer_layer_1\): no cut after "
                     r"'transformer_layer_0', 'ln' .*feeds "
                     r"'transformer_layer_1'", blip2["together"])


def test_only_hub_coverage_imports_keras_hub():
    # `import freezeout_tf` must work without keras-hub: no other module of
    # the package imports it when imported (an import inside a function,
    # as `text.byte_llama` does, runs only when called), and the package
    # does not import this one (checked on the source: a fresh interpreter
    # would cost ~30 s here).
    import ast

    def import_time_nodes(tree):
        stack = list(tree.body)
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                 ast.Lambda)):
                continue
            if (isinstance(node, ast.If)
                    and getattr(node.test, "id", "") == "TYPE_CHECKING"):
                continue  # read by static tools only
            yield node
            stack.extend(ast.iter_child_nodes(node))

    package = pathlib.Path(hub_coverage.__file__).parents[1]
    importers = set()
    for path in package.rglob("*.py"):
        for node in import_time_nodes(ast.parse(path.read_text())):
            names = ([a.name for a in node.names]
                     if isinstance(node, ast.Import) else
                     [node.module or ""] + [a.name for a in node.names]
                     if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "keras_hub" or n == "hub_coverage"
                   or n.endswith(".hub_coverage") for n in names):
                importers.add(path.name)
    assert importers <= {"hub_coverage.py"}, importers


def test_guide_summary_matches_benchmarks_hub_coverage_json():
    root = pathlib.Path(__file__).resolve().parents[1]
    report = json.loads(
        (root / "benchmarks" / "coverage" / "hub_coverage.json").read_text())
    assert set(report["provenance"]) == {"commit", "versions", "machine",
                                         "command", "utc"}
    results = report["results"]
    assert hub_coverage.summary(results["families"]) == results["summary"]
    guide = (root / "docs" / "guides" / "transformers.md").read_text()
    section = guide[guide.index("## KerasHub coverage"):]
    section = section[:section.index("\n\n", section.index("| kind |"))]
    for kind, row in results["summary"].items():
        line = re.search(rf"^\| {re.escape(kind)} \|(.*)\|$", section,
                         re.MULTILINE)
        assert line, kind
        assert [c.strip() for c in line.group(1).split("|")] == [
            str(row.get(s, 0))
            for s in hub_coverage.STATUSES + ("fit ok",)], kind


def test_targets_take_the_form_the_task_loss_reads():
    # Segmenters: one-hot masks for KerasHub's categorical loss; detectors:
    # boxes in pixels inside the image, with their classes; dict outputs
    # only where the loss is given (a depth estimator's "depths").
    import keras
    import numpy as np
    rng = np.random.default_rng(0)
    n = hub_coverage.EXAMPLES
    masks = hub_coverage._targets(
        "ImageSegmenter", keras.losses.CategoricalCrossentropy(),
        np.zeros((n, 4, 4, 3)), 4, rng)
    assert masks.shape == (n, 4, 4, 3)
    assert (masks.sum(-1) == 1).all() and set(np.unique(masks)) == {0, 1}
    boxes = hub_coverage._targets("ObjectDetector", None, None, 32, rng)
    assert boxes["boxes"].shape == (n, 2, 4)
    assert (boxes["boxes"] >= 0).all() and (boxes["boxes"] <= 32).all()
    assert (boxes["boxes"][..., 2:] > boxes["boxes"][..., :2]).all()
    assert set(np.unique(boxes["labels"])) <= set(
        range(hub_coverage.NUM_CLASSES))
    depths = hub_coverage._targets(
        "DepthEstimator", {"depths": keras.losses.MeanSquaredError()},
        {"depths": np.zeros((n, 4, 4, 1)), "other": np.zeros((n, 2))}, 4,
        rng)
    assert list(depths) == ["depths"] and depths["depths"].shape == (
        n, 4, 4, 1)
    tokens = hub_coverage._targets(
        "Seq2SeqLM", keras.losses.SparseCategoricalCrossentropy(),
        np.zeros((n, 5, 7)), 0, rng)
    assert tokens.shape == (n, 5) and tokens.max() < 7


def test_nested_finds_layers_and_unexported_classes():
    # SAM's prompt encoder is a layer; Stable Diffusion 3's VAE is not
    # exported: both are reachable, an unknown name is a clear error.
    assert hub_coverage._hub_class("SAMPromptEncoder") is (
        keras_hub.layers.SAMPromptEncoder)
    from keras_hub.src.models.vae.vae_backbone import VAEBackbone
    assert hub_coverage._hub_class(
        "keras_hub.src.models.vae.vae_backbone.VAEBackbone") is VAEBackbone
    with pytest.raises(ValueError, match="'NoSuchModel'"):
        hub_coverage._hub_class("NoSuchModel")


def test_segmenter_on_a_tiny_resnet_splits_and_fits_with_masks():
    # DeepLabV3 over a nested three-stage ResNet: the encoder's blocks are
    # units, and the fit with KerasHub's own loss (one-hot masks) runs in
    # one trace, freezes every unit and ends with a finite loss.
    family = next(f for f in hub_coverage.families()
                  if f[0] == "DeepLabV3ImageSegmenter")
    result = hub_coverage.try_family(*family)
    assert result["status"] == "split", result["reason"]
    # The encoder's stem and first two stages apart (the third stays with
    # the decoder: the low-level features go around it).
    parts = result["units"].split(" | ")
    assert parts[:2] == ["conv1_conv", "conv1_bn"], parts
    assert parts[2].startswith("stack0_block0") and parts[3].startswith(
        "stack1_block0"), parts
    fit = result["fit"]
    assert fit["ok"], fit
    assert fit["traces"] == 1 and fit["frozen"] == fit["num_units"]
    assert fit["loss"] > 0


def test_detector_fits_on_boxes_with_its_own_loss():
    # RetinaNet computes its loss itself: boxes encoded against its anchors
    # (KerasHub's compute_loss). Boxes that overlap no anchor give a zero
    # loss; a loss that builds on its first call would make two traces.
    family = next(f for f in hub_coverage.families()
                  if f[0] == "RetinaNetObjectDetector")
    result = hub_coverage.try_family(*family)
    assert result["status"] == "split", result["reason"]
    fit = result["fit"]
    assert fit["traces"] == 1 and fit["frozen"] == fit["num_units"], fit
    assert fit["ok"] and fit["loss"] > 0, fit


def test_readme_line_gives_the_share_and_names_each_refusal():
    root = pathlib.Path(__file__).resolve().parents[1]
    report = json.loads(
        (root / "benchmarks" / "coverage" / "hub_coverage.json").read_text())
    fit_ok, tasks, refused = hub_coverage.task_share(
        report["results"]["families"])
    readme = (root / "README.md").read_text()
    line = readme[readme.index("- **KerasHub coverage**"):]
    line = " ".join(line[:line.index("\n\n")].split())
    assert f"{fit_ok} of {tasks} task families" in line, line
    for name in refused:
        assert name in line, name


def test_merge_rows_replaces_re_run_families_in_place():
    kept = [{"name": n, "kind": "CausalLM", "status": "split",
             "fit": {"ok": False}} for n in ("A", "B", "C")]
    merged = hub_coverage.merge_rows(
        kept, [{"name": "B", "kind": "CausalLM", "status": "split",
                "fit": {"ok": True}}])
    assert [r["name"] for r in merged] == ["A", "B", "C"]
    assert [r["fit"]["ok"] for r in merged] == [False, True, False]
    assert hub_coverage.task_share(merged)[0] == 1
    with pytest.raises(ValueError, match=r"\['D'\]"):
        hub_coverage.merge_rows(kept, [{"name": "D"}])
