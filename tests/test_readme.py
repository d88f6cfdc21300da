"""Every code block of README.md, run as written.

Each ```python block runs in a fresh namespace, its text taken from the
README. A block that needs data says so in a comment, `# stand-in data:
NAMES (what they hold)`: the test provides those names as tiny random data
of that description (`STAND_INS`, keyed by the comment's text, so that a
changed description fails here until the stand-in follows it). A block may
use no other name it does not define. The bash blocks' install, main-job
and test commands run in CI (.ci/run); here the main job's options are
parsed and checked.
"""

import math
import os
import re
import shlex
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from freezeout_tf.callbacks.freezeout import BatchNormLagWarning
from freezeout_tf.cli import options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _readme():
    with open(README, encoding="utf-8") as f:
        return f.read()


def blocks(language):
    """The README's fenced blocks of `language`, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", _readme(),
                      flags=re.DOTALL | re.MULTILINE)


def stand_in_comment(code):
    """The text of a block's `# stand-in data:` comment (continued on the
    comment lines after it), or None."""
    lines = code.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# stand-in data:"):
            text = [line[len("# stand-in data:"):].strip()]
            for more in lines[i + 1:]:
                if not more.startswith("# "):
                    break
                text.append(more[2:].strip())
            return " ".join(text)
    return None


def stand_in_names(comment):
    """The names a stand-in comment lists: its words outside parentheses."""
    depth, outside = 0, []
    for char in comment:
        depth += char == "("
        if depth == 0:
            outside.append(char)
        depth -= char == ")"
    return [name.strip() for name in "".join(outside).split(",")]


def _images(n, size, classes, batch):
    rng = np.random.default_rng(0)
    x = rng.random((n, size, size, 3)).astype("float32")
    y = rng.integers(0, classes, size=n).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def _cifar100():
    # Two 32x32 images: the block's 100 epochs are 100 steps.
    return {"train_ds": _images(2, 32, 100, 2), "val_ds": _images(2, 32, 100, 2)}


def _images10():
    # 4 batches per epoch: the block's 30 epochs are 120 steps, as the run
    # of issue 34 that ended worse than chance with Keras' default momentum.
    return {"train_ds": _images(32, 16, 10, 8)}


def _text(n=16, seq=16, vocab=1000):
    rng = np.random.default_rng(0)
    mask = (np.arange(seq)[None] < rng.integers(4, seq + 1, (n, 1))).astype(
        "int32")
    return {"token_ids": rng.integers(1, vocab, (n, seq)).astype("int32") * mask,
            "segment_ids": np.zeros((n, seq), "int32"),
            "padding_mask": mask}


def _text_classes():
    x = _text()
    y = (x["token_ids"][:, 0] % 4).astype("int32")
    test_x = {k: v[:4] for k, v in x.items()}
    return {"train_ds": tf.data.Dataset.from_tensor_slices((x, y)).batch(8),
            "test_x": test_x}


def _causal_lm():
    x = _text(vocab=256)
    ids = np.concatenate([x["token_ids"], x["token_ids"][:, :1]], axis=1)
    inputs = {"token_ids": ids[:, :-1], "padding_mask": x["padding_mask"]}
    ds = tf.data.Dataset.from_tensor_slices(
        (inputs, ids[:, 1:], x["padding_mask"].astype("float32"))).batch(8)
    prompt = {"token_ids": inputs["token_ids"][:2],  # 4 tokens, then room
              "padding_mask": (np.arange(16)[None] < 4).repeat(2, 0)}
    return {"ds": ds, "prompt": prompt}


STAND_INS = {
    "train_ds, val_ds (batches of CIFAR-100 images and labels)": _cifar100,
    "train_ds (batches of images and labels 0-9)": _images10,
    "train_ds (token ids, segment ids, padding masks; labels 0-3), test_x":
        _text_classes,
    'ds ({"token_ids", "padding_mask"}, next ids, padding mask as '
    'sample_weight), prompt ({"token_ids", "padding_mask"})': _causal_lm,
}

PYTHON = blocks("python")
# The blocks by what they build; DenseNet-BC L=76 (100 steps of a 40-unit
# graph) is the one that takes minutes.
NAMES = ["densenet76", "cnn", "bert", "llama"]


def run_block(code):
    """Runs a block as written, with its stand-in data; its namespace."""
    comment = stand_in_comment(code)
    namespace = {"__name__": "readme"}
    if comment is not None:
        assert comment in STAND_INS, f"no stand-in for {comment!r}"
        data = STAND_INS[comment]()
        assert sorted(data) == sorted(stand_in_names(comment))
        namespace.update(data)
    keras.utils.set_random_seed(0)
    exec(compile(code, README, "exec"), namespace)
    return namespace


def test_the_readme_blocks_are_the_ones_tested():
    assert len(PYTHON) == len(NAMES)
    assert ["densenet_bc(depth=76" in PYTHON[0], "FreezeOutModel([block"
            in PYTHON[1], "BertTextClassifier" in PYTHON[2],
            "Llama3CausalLM" in PYTHON[3]] == [True] * 4
    for code in PYTHON:
        comment = stand_in_comment(code)
        assert comment in STAND_INS
        assert "import freezeout_tf as fo" in code  # self-contained


def test_stand_in_names_are_read_outside_parentheses():
    assert stand_in_names('ds ({"a", "b"}, ids), prompt ({"a"})') == [
        "ds", "prompt"]


@pytest.mark.slow
def test_intro_block_runs():
    namespace = run_block(PYTHON[0])
    assert namespace["model"].num_units > 30


def test_cnn_quickstart_ends_better_than_chance():
    # Issue 34: with Keras' default BatchNorm momentum this run ended at
    # 2.77 against ln 10 = 2.30, as units froze on statistics that had not
    # caught up.
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchNormLagWarning)
        namespace = run_block(PYTHON[1])
    model, data = namespace["model"], namespace["train_ds"]
    assert model.num_units == 4
    assert [u.trainable for u in model.freeze_units] == [False] * 4
    loss = model.evaluate(data, verbose=0)
    assert loss < 0.5 * math.log(10)


def test_cnn_quickstart_with_the_default_momentum_warns_with_the_fix():
    code = PYTHON[1].replace("BatchNormalization(momentum=0.9)",
                             "BatchNormalization()")
    assert code != PYTHON[1]
    with pytest.warns(BatchNormLagWarning) as every:
        run_block(code)
    caught = [w for w in every if w.category is BatchNormLagWarning]
    assert len(caught) == 1
    (message,) = str(caught[0].message).splitlines()  # one line
    assert message.startswith("FreezeOut: unit 0 freezes after 62 steps (4 "
                              "units in all), but its BatchNormalization")
    assert "momentum=0.99" in message and "needs about 459" in message
    assert "Fix: BatchNormalization(momentum=0.9)" in message
    # The warning names the line of the block's fit call.
    assert caught[0].filename == README


def test_bert_quickstart_runs():
    namespace = run_block(PYTHON[2])
    assert namespace["model"].num_units == 4
    assert namespace["model"].train_step_traces == 1


def test_causal_lm_quickstart_runs():
    namespace = run_block(PYTHON[3])
    assert namespace["model"].num_units == 4
    out = namespace["lm"].generate(namespace["prompt"], stop_token_ids=None)
    assert out["token_ids"].shape == (2, 16)


def test_the_main_job_command_parses():
    commands = [line for code in blocks("bash") for line in code.splitlines()
                if line.startswith("python scripts/train_cifar.py")]
    commands += re.findall(r"`(python scripts/train_cifar\.py[^`]*)`", _readme())
    assert len(commands) == 2
    for command in commands:
        argv = shlex.split(command)[2:]
        args = options.check_args(options.build_parser().parse_args(argv))
        assert args.output_dir.startswith("runs/")
