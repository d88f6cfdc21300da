"""The pre-registered fine-tuning benchmarks (`scripts/benchmark_finetune.py`).

Two suites (`SUITES`). Issue 31's (`"finetune-2"`, benchmarks/finetune-2)
has three tasks no run had seen, sized so that every fit is at least 20x
its own first step (`size_task`, `fit_epochs`):

* `"vit-odd"`: the ViT below on 16x16 digits (64 tokens), pretrained on
  the even digits upright, fine-tuned on the odd digits turned a quarter
  turn (`_VitOddTask` says why);
* `"lm-idle"`: a byte Llama (6 blocks, hidden 128, windows of 128 bytes)
  pretrained on `LM2_PRETRAIN`, fine-tuned on `idlelib`;
* `"bert-pkg"`: a byte-level KerasHub BERT classifier (4 blocks, hidden
  128) pretrained to tell `BERT_PRETRAIN` apart, fine-tuned on
  `BERT_CLASSES` (split by files), scored by accuracy.

Its rule chooses on a load-independent speed-up (`estimated_speedup`, by
the units' multiply-accumulates), with `GRID_2` and `TARGETS_2`.

The first suite (`"finetune"`, issue 24; benchmarks/finetune), two
fine-tuning tasks on real data that ships with the environment:

* `"vit"`: a KerasHub `ViTBackbone` (6 blocks, hidden 128, 4 heads, MLP
  256, 2x2 patches of 8x8 digits: 16 tokens and a class token) pretrained
  30 epochs on scikit-learn's digits 0-4, fine-tuned 12 epochs on 5-9
  with a new head (AdamW 5e-4), scored by test accuracy (25 % of 5-9);
* `"lm"`: a byte-level Llama (`text.byte_llama`: 6 blocks, hidden 128,
  4 query / 2 key-value heads, windows of 64 bytes) pretrained 600 steps
  on 12 standard-library packages, fine-tuned 3 epochs on 64 kB of
  `asyncio` (a package held out of pretraining), scored by the token loss
  on 50 kB of held-out `asyncio` files (nats per byte).

Five arms (`ARMS`), each from the same pretrained weights and, per seed,
the same new head and data order:

* `"full"`: plain Keras fine-tuning of every weight (the model itself);
* `"static"`: the usual recipe, plain Keras with the first k freeze units'
  variables non-trainable from the start (k chosen on validation);
* `"schedule"`: the FreezeOut schedule (`FreezeOut(t_0=...)`, t_0 chosen
  on validation);
* `"adaptive"`: `FreezeOut(t_0=None, adaptive=AdaptiveFreeze(...))`, the
  adaptive default (or the setting the validation rule puts in its place);
* `"adaptive_cached"`: the same with `cache_frozen_prefix` (example ids,
  fixed inputs per example).

Pre-registration, in phases, each writing its file (`write_report`):

1. `validate_task`: every candidate setting (`GRID`) on a validation split
   held out of the fine-tuning training data (the test data is not read);
2. `choose_settings`: the rule below fixes every arm's setting from the
   validation files; written to `settings.json` before any test run;
3. `run_seed`: one seed's test runs, the arms in a seed-rotated order
   after an untimed warm-up, the settings read from `settings.json`
   unchanged (refused if missing);
4. `report`: means over seeds, ratios to full fine-tuning and the targets.

Measures per run: wall-clock of the whole `fit` (its trace included),
summed step time (every step but the first, which holds the trace), the
quality (accuracy or held-out loss), peak memory of TensorFlow's CPU
allocator during the fit (needs `TF_CPU_ALLOCATOR_USE_BFC=true` before
TensorFlow starts; `None` otherwise), and the load average.

Pretrained weights are computed once per task and size (seed
`PRETRAIN_SEED`) and kept under `cache_dir` (default
`/tmp/freezeout_finetune`), so the phases share them; the file's digest
goes into every result.
"""

import hashlib
import json
import os
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from freezeout_tf.adaptive.criteria import AdaptiveFreeze
from freezeout_tf.callbacks.freezeout import FreezeOut
from freezeout_tf.core.model import FreezeOutModel
from freezeout_tf.core.prefix_cache import with_example_ids
from freezeout_tf.estimates.speedup import speedup_from_costs, unit_flops
from freezeout_tf.recipes import text
from freezeout_tf.tools.benchmarking import StepTimer, trace_costs

__all__ = [
    "ARMS",
    "CACHE_BUDGET",
    "GRID",
    "GRID_2",
    "MAX_DROP_POINTS",
    "MAX_LOSS_RISE",
    "SIZES",
    "TARGETS",
    "TARGETS_2",
    "TASKS",
    "SUITES",
    "arm_settings",
    "check_settings",
    "choose_settings",
    "estimated_speedup",
    "first_step_costs",
    "fit_epochs",
    "load_task",
    "report",
    "run_arm",
    "run_seed",
    "size_task",
    "validate_task",
    "validation_table",
]

# The first benchmark (issue 24, benchmarks/finetune) and issue 31's
# (benchmarks/finetune-2): three new tasks, every fit at least
# `MIN_FIT_OVER_FIRST_STEP` times its own first step.
SUITES = {"finetune": ("vit", "lm"),
          "finetune-2": ("vit-odd", "lm-idle", "bert-pkg")}
TASKS = SUITES["finetune"] + SUITES["finetune-2"]
MIN_FIT_OVER_FIRST_STEP = 20
ARMS = ("full", "static", "schedule", "adaptive", "adaptive_cached")
PRETRAIN_SEED = 0
VALIDATION_SEED = 100
# Equal quality: within 0.5 points of full fine-tuning's accuracy, or 1 %
# of its held-out loss.
MAX_DROP_POINTS = 0.5
MAX_LOSS_RISE = 0.01
# Wall-clock speed-ups over full fine-tuning the defaults must reach.
TARGETS = {"adaptive": 1.5, "adaptive_cached": 2.2}
# Issue 31, item 4 (the new suite): and at least as fast as the best
# static recipe at equal quality.
TARGETS_2 = {"adaptive": 1.6, "adaptive_cached": 2.2}
# Candidates tried on validation. static: frozen share of the freeze units
# (rounded down to whole units); schedule: t_0; adaptive: AdaptiveFreeze
# settings, the first being the library's default.
GRID = {
    "static": [0.25, 0.5, 0.75],
    "schedule": [0.5, 0.8],
    "adaptive": [{}, {"intervals": 20}, {"percentile": 75.0}],
}
# The new suite: the settle criterion (issue 31: AutoFreeze's rate of
# change of each unit's gradient norm at intervals, an absolute test) and
# share (the same on each unit's share of the summed norms) next to the
# library default (first) and rank with more intervals.
GRID_2 = {
    "static": [0.25, 0.5, 0.75],
    "schedule": [0.5, 0.8],
    "adaptive": [{}, {"criterion": "settle"},
                 {"criterion": "settle", "tolerance": 0.2},
                 {"criterion": "settle", "patience": 1},
                 {"criterion": "share"},
                 {"criterion": "share", "tolerance": 0.2},
                 {"criterion": "rank", "intervals": 20}],
}

SIZES = {
    "full": {
        "vit": {"image": 8, "patch": 2, "layers": 6, "hidden": 128,
                "heads": 4, "mlp": 256, "batch": 32, "pretrain_epochs": 30,
                "epochs": 12},
        "lm": {"layers": 6, "hidden": 128, "heads": 4, "sequence": 64,
               "batch": 16, "pretrain_steps": 600,
               "pretrain_bytes": 2_000_000, "fine_tune_bytes": 64_000,
               "heldout_bytes": 50_000, "epochs": 3},
    },
    # The new suite's fine-tuning epochs are not here: `size_task`
    # measures them (sizing-<task>.json) and `load_task(epochs=)` sets them.
    "full-2": {
        "vit-odd": {"image": 16, "patch": 2, "layers": 6, "hidden": 128,
                    "heads": 4, "mlp": 256, "batch": 32,
                    "pretrain_epochs": 30, "epochs": None},
        "lm-idle": {"layers": 6, "hidden": 128, "heads": 4,
                    "sequence": 128, "batch": 16, "pretrain_steps": 1000,
                    "pretrain_bytes": 3_000_000,
                    # All of idlelib's training files (about 640 kB), so
                    # that a fit of 20x its first step is few epochs.
                    "fine_tune_bytes": None, "heldout_bytes": 64_000,
                    "epochs": None},
        "bert-pkg": {"layers": 4, "hidden": 128, "heads": 4,
                     "sequence": 128, "batch": 32, "pretrain_steps": 600,
                     "pretrain_bytes_per_class": 200_000,
                     "bytes_per_class": 120_000,
                     "heldout_bytes_per_class": 16_000, "epochs": None},
    },
    "quick": {
        "vit-odd": {"image": 8, "patch": 4, "layers": 2, "hidden": 16,
                    "heads": 2, "mlp": 32, "batch": 64,
                    "pretrain_epochs": 1, "epochs": 2},
        "lm-idle": {"layers": 2, "hidden": 16, "heads": 2, "sequence": 32,
                    "batch": 16, "pretrain_steps": 4,
                    "pretrain_bytes": 4_000, "fine_tune_bytes": 3_000,
                    "heldout_bytes": 2_000, "epochs": 2},
        "bert-pkg": {"layers": 2, "hidden": 16, "heads": 2, "sequence": 16,
                     "batch": 16, "pretrain_steps": 4,
                     "pretrain_bytes_per_class": 1_000,
                     "bytes_per_class": 600,
                     "heldout_bytes_per_class": 300, "epochs": 2},
        "vit": {"image": 8, "patch": 4, "layers": 2, "hidden": 16,
                "heads": 2, "mlp": 32, "batch": 64, "pretrain_epochs": 1,
                "epochs": 2},
        "lm": {"layers": 2, "hidden": 16, "heads": 2, "sequence": 32,
               "batch": 16, "pretrain_steps": 4, "pretrain_bytes": 4_000,
               "fine_tune_bytes": 3_000, "heldout_bytes": 2_000,
               "epochs": 2},
    },
}
LM_PRETRAIN = ["collections", "concurrent", "email", "http", "importlib",
               "json", "logging", "multiprocessing", "re", "unittest",
               "urllib", "xml"]
LM_FINE_TUNE = "asyncio"
# Issue 31's tasks: standard-library packages no text task here had read
# (the old LM: LM_PRETRAIN and asyncio; benchmarks/llm and the text
# recipe's examples: email, json, html). Pretraining: GUI, packaging, C
# interop and storage code; the new domain: the IDLE editor's sources.
LM2_PRETRAIN = ["tkinter", "lib2to3", "distutils", "ctypes", "curses",
                "sqlite3", "dbm", "venv", "ensurepip", "wsgiref", "xmlrpc",
                "zoneinfo", "tomllib"]
LM2_FINE_TUNE = "idlelib"
# The classifier: which package a window comes from. Pretrained on five
# packages, fine-tuned on five others (a new head); any package may serve
# here (a classifier of packages is a task no run has seen).
BERT_PRETRAIN = ["email", "http", "logging", "collections", "xml"]
BERT_CLASSES = ["asyncio", "multiprocessing", "importlib", "urllib",
                "unittest"]
CACHE_BUDGET = 2 ** 30
# Size entries only the fine-tuning reads (not in the pretrained weights'
# key).
_FINE_TUNE_ONLY = ("epochs", "fine_tune_bytes", "heldout_bytes",
                   "bytes_per_class", "heldout_bytes_per_class")


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# Tasks: data, pretrained weights, the fine-tuning model and its score.

class _Task:
    """One task at one size: `train`/`evaluation` arrays for the split, a
    `build()` of the fine-tuning model (plain Keras, pretrained weights
    loaded), `dataset(arrays, seed, ids)`, `score(model, arrays)`."""

    higher_is_better = True

    def __init__(self, name, size, validation, cache_dir):
        self.name, self.size, self.validation = name, size, validation
        self.cache_dir = cache_dir

    def weights_path(self):
        # Keyed by what the pretraining reads, not the fine-tuning's data.
        size = {k: v for k, v in self.size.items() if k not in _FINE_TUNE_ONLY}
        if self.name in SUITES["finetune"]:
            size = self.size  # the first suite's files, keyed as they were
        key = hashlib.sha256(json.dumps(
            [self.name, size, PRETRAIN_SEED, keras.__version__],
            sort_keys=True).encode()).hexdigest()[:12]
        return os.path.join(self.cache_dir,
                            f"{self.name}-{key}.weights.h5")

    def pretrained(self):
        """Path of the pretrained weights (pretrains once if missing)."""
        path = self.weights_path()
        if not os.path.exists(path):
            os.makedirs(self.cache_dir, exist_ok=True)
            keras.utils.set_random_seed(PRETRAIN_SEED)
            model = self._pretrain()
            tmp = path + f".{os.getpid()}.weights.h5"
            model.save_weights(tmp)
            os.replace(tmp, path)  # atomic: phases may run side by side
        return path

    def digest(self):
        with open(self.pretrained(), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]

    def num_examples(self):
        return len(self.train[1])

    def steps_per_epoch(self):
        return -(-self.num_examples() // self.size["batch"])

    def _batches(self, tensors, seed, ids):
        """`tensors` (`from_tensor_slices`' argument) as the fit's
        shuffled batches; with `ids`, example ids for the prefix cache."""
        ds = tf.data.Dataset.from_tensor_slices(tensors)
        count = int(ds.cardinality())  # the whole set in the buffer
        if ids:
            ds = with_example_ids(ds)
        return (ds.shuffle(count, seed=seed)
                .batch(self.size["batch"]).prefetch(2))


class _TextTask(_Task):
    """A KerasHub text task on dict arrays with `labels`, split into
    `layers` units."""

    def split(self, model):
        return FreezeOutModel.from_model(model, num_units=self.size["layers"])

    def num_examples(self):
        return len(self.train["labels"])


def _digits(classes, size, rotate=0):
    """scikit-learn's digits of `classes` (labels 0.. in that order),
    scaled to [0, 1], turned `rotate` quarter turns and repeated up to
    `size` pixels a side."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    keep = np.isin(y, classes)
    x = x[keep].reshape(-1, 8, 8, 1).astype("float32") / 16.0
    x = np.rot90(x, rotate, axes=(1, 2))
    x = np.repeat(np.repeat(x, size // 8, axis=1), size // 8, axis=2)
    return (np.ascontiguousarray(x),
            np.searchsorted(np.asarray(classes), y[keep]).astype("int32"))


class _VitTask(_Task):
    """Pretrain on digits `PRETRAIN_CLASSES`, fine-tune on `CLASSES`
    turned `ROTATE` quarter turns (a new head)."""

    metric = "accuracy"
    NAME, PRETRAIN_CLASSES, CLASSES, ROTATE = "vit", range(5), range(5, 10), 0

    def __init__(self, size, validation, cache_dir):
        from sklearn.model_selection import train_test_split

        super().__init__(self.NAME, size, validation, cache_dir)
        x, y = _digits(self.CLASSES, size["image"], self.ROTATE)
        # The test split is fixed (random_state 0) for every seed; the
        # validation split is carved out of its training part.
        x, tx, y, ty = train_test_split(x, y, test_size=0.25, stratify=y,
                                        random_state=0)
        if validation:
            x, tx, y, ty = train_test_split(x, y, test_size=0.25, stratify=y,
                                            random_state=VALIDATION_SEED)
        self.train, self.evaluation = (x, y), (tx, ty)

    def _backbone(self):
        import keras_hub

        s = self.size
        return keras_hub.models.ViTBackbone(
            image_shape=(s["image"], s["image"], 1), patch_size=s["patch"],
            num_layers=s["layers"], num_heads=s["heads"],
            hidden_dim=s["hidden"], mlp_dim=s["mlp"], name="vit")

    def _classifier(self, backbone, name):
        inputs = keras.Input(backbone.input_shape[1:])
        pooled = keras.layers.GlobalAveragePooling1D(name="pool")(
            backbone(inputs))
        return keras.Model(inputs, keras.layers.Dense(
            len(self.CLASSES), name=name)(pooled))

    def _pretrain(self):
        backbone = self._backbone()
        model = self._classifier(backbone, "head_a")
        model.compile(keras.optimizers.AdamW(1e-3), _loss())
        model.fit(*_digits(self.PRETRAIN_CLASSES, self.size["image"]),
                  batch_size=self.size["batch"],
                  epochs=self.size["pretrain_epochs"], verbose=0)
        return backbone

    def build(self):
        backbone = self._backbone()
        backbone.load_weights(self.pretrained())
        return self._classifier(backbone, "head_b")

    def split(self, model):
        split = FreezeOutModel.from_model(model)
        # Built now: `fit` with the cache reads example-id dicts, from which
        # a single-input model cannot infer its input shape.
        split.build(model.input_shape)
        return split

    def optimizer(self):
        return keras.optimizers.AdamW(5e-4)

    def dataset(self, arrays, seed, ids):
        return self._batches(arrays, seed, ids)

    def score(self, model, arrays):
        logits = model.predict(arrays[0], batch_size=256, verbose=0)
        return float(np.mean(np.argmax(logits, -1) == arrays[1]))

    def cost_input_shape(self):
        return None  # the built model's


class _VitOddTask(_VitTask):
    """Issue 31's image task: pretrain on the even digits, upright;
    fine-tune on the odd digits turned a quarter turn. Neither the classes
    (the old task: 0-4 -> 5-9) nor the orientation were seen, and the
    turn moves the inputs' statistics, so the first blocks may need to
    adapt: a criterion that freezes the front by fiat can lose here."""

    NAME = "vit-odd"
    PRETRAIN_CLASSES, CLASSES, ROTATE = (0, 2, 4, 6, 8), (1, 3, 5, 7, 9), 1


class _LmTask(_TextTask):
    """Pretrain on `PRETRAIN` packages, fine-tune on `FINE_TUNE`."""

    metric = "heldout_loss"
    higher_is_better = False
    NAME, PRETRAIN, FINE_TUNE = "lm", LM_PRETRAIN, LM_FINE_TUNE

    def __init__(self, size, validation, cache_dir):
        super().__init__(self.NAME, size, validation, cache_dir)
        seq = size["sequence"]
        train, heldout = text.split_files(
            text.package_files([self.FINE_TUNE]), 0.2)
        if validation:
            train, heldout = text.split_files(train, 0.2)
        self.train = text.windows(train, seq, size["fine_tune_bytes"])
        self.evaluation = text.windows(heldout, seq, size["heldout_bytes"])
        self.files = {"train": train, "evaluation": heldout}

    def _lm(self):
        s = self.size
        return text.byte_llama(s["layers"], s["hidden"], s["heads"],
                               num_key_value_heads=s["heads"] // 2)

    def _pretrain(self):
        s = self.size
        lm = self._lm()
        data = text.windows(text.package_files(self.PRETRAIN), s["sequence"],
                            s["pretrain_bytes"])
        lm.compile(keras.optimizers.AdamW(1e-3), _loss(),
                   weighted_metrics=None)
        lm.fit(text.lm_dataset(data, s["batch"], shuffle_seed=PRETRAIN_SEED,
                               repeat=True),
               epochs=1, steps_per_epoch=s["pretrain_steps"], verbose=0)
        return lm.backbone  # every weight, without the optimizer's

    def build(self):
        lm = self._lm()
        lm.backbone.load_weights(self.pretrained())
        return lm

    def optimizer(self):
        return keras.optimizers.AdamW(3e-4)

    def dataset(self, arrays, seed, ids):
        return self._batches((
            {"token_ids": arrays["token_ids"],
             "padding_mask": arrays["padding_mask"]},
            arrays["labels"], arrays["sample_weight"]), seed, ids)

    def score(self, model, arrays):
        return text.token_loss(model, text.lm_dataset(arrays, 64))

    def cost_input_shape(self):
        seq = (self.size["sequence"],)
        return {"token_ids": seq, "padding_mask": seq}


class _LmIdleTask(_LmTask):
    """Issue 31's LM task: packages the project's text tasks never read
    (`LM2_PRETRAIN`), then `idlelib`."""

    NAME, PRETRAIN, FINE_TUNE = "lm-idle", LM2_PRETRAIN, LM2_FINE_TUNE


def _package_windows(packages, sequence, max_bytes_each, files_of):
    """`(token_ids, padding_mask, labels)` of windows of each package's
    files (`files_of(package)`), labelled by the package's index."""
    ids, masks, labels = [], [], []
    for label, package in enumerate(packages):
        w = text.windows(files_of(package), sequence, max_bytes_each)
        ids.append(w["token_ids"])
        masks.append(w["padding_mask"])
        labels.append(np.full(len(w["token_ids"]), label, np.int32))
    return {"token_ids": np.concatenate(ids),
            "padding_mask": np.concatenate(masks),
            "segment_ids": np.zeros_like(np.concatenate(ids)),
            "labels": np.concatenate(labels)}


class _BertTask(_TextTask):
    """Issue 31's text classifier: a byte-level KerasHub BERT pretrained to
    tell which of `PRETRAIN` a source window comes from, fine-tuned (a new
    head) on `CLASSES`; split by files, scored by accuracy on held-out
    files' windows."""

    metric = "accuracy"
    NAME, PRETRAIN, CLASSES = "bert-pkg", BERT_PRETRAIN, BERT_CLASSES

    def __init__(self, size, validation, cache_dir):
        super().__init__(self.NAME, size, validation, cache_dir)
        split = {p: text.split_files(text.package_files([p]), 0.25)
                 for p in self.CLASSES}
        if validation:
            split = {p: text.split_files(train, 0.25)
                     for p, (train, _) in split.items()}
        self.files = split
        s = size
        self.train = _package_windows(self.CLASSES, s["sequence"],
                                      s["bytes_per_class"],
                                      lambda p: split[p][0])
        self.evaluation = _package_windows(self.CLASSES, s["sequence"],
                                           s["heldout_bytes_per_class"],
                                           lambda p: split[p][1])

    def _classifier(self, num_classes):
        import keras_hub

        s = self.size
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=text.VOCABULARY_SIZE, num_layers=s["layers"],
            num_heads=s["heads"], hidden_dim=s["hidden"],
            intermediate_dim=2 * s["hidden"],
            max_sequence_length=s["sequence"], dropout=0.0)
        return keras_hub.models.BertTextClassifier(
            backbone, num_classes, preprocessor=None, dropout=0.0)

    def _pretrain(self):
        s = self.size
        model = self._classifier(len(self.PRETRAIN))
        data = _package_windows(self.PRETRAIN, s["sequence"],
                                s["pretrain_bytes_per_class"],
                                lambda p: text.package_files([p]))
        model.compile(keras.optimizers.AdamW(1e-3), _loss())
        model.fit(tf.data.Dataset.from_tensor_slices(
                      (self._inputs(data), data["labels"]))
                  .shuffle(len(data["labels"]), seed=PRETRAIN_SEED)
                  .batch(s["batch"]).repeat(),
                  epochs=1, steps_per_epoch=s["pretrain_steps"], verbose=0)
        return model.backbone

    def build(self):
        model = self._classifier(len(self.CLASSES))
        model.backbone.load_weights(self.pretrained())
        return model

    def optimizer(self):
        return keras.optimizers.AdamW(1e-4)

    @staticmethod
    def _inputs(arrays):
        return {k: arrays[k] for k in ("token_ids", "padding_mask",
                                       "segment_ids")}

    def dataset(self, arrays, seed, ids):
        return self._batches((self._inputs(arrays), arrays["labels"]), seed,
                             ids)

    def score(self, model, arrays):
        logits = model.predict(self._inputs(arrays), batch_size=256,
                               verbose=0)
        return float(np.mean(np.argmax(logits, -1) == arrays["labels"]))

    def cost_input_shape(self):
        seq = (self.size["sequence"],)
        return {"token_ids": seq, "padding_mask": seq, "segment_ids": seq}


def load_task(name, quick=False, validation=False,
              cache_dir="/tmp/freezeout_finetune", epochs=None):
    """A task of the benchmark at its benchmark (or `quick`) size.

    Args:
        name: one of `TASKS`.
        quick: the tiny sizes of `SIZES["quick"]` (seconds).
        validation: train on the training part minus a validation split
            and evaluate on that split (the test data is not read).
        cache_dir: where the pretrained weights are kept.
        epochs: fine-tuning epochs (the new suite's, from `size_task`);
            default the size's.

    Returns:
        the task: `train`, `evaluation`, `build()`, `split(model)`,
        `dataset(arrays, seed, ids)`, `score(model, arrays)`, `metric`.

    Raises:
        ValueError: an unknown task.
    """
    if name not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {name!r}.")
    full = "full" if name in SUITES["finetune"] else "full-2"
    size = dict(SIZES["quick" if quick else full][name])
    if epochs is not None:
        size["epochs"] = int(epochs)
    # The pretrained weights' file is keyed by the size: not by the epochs.
    cls = {"vit": _VitTask, "lm": _LmTask, "vit-odd": _VitOddTask,
           "lm-idle": _LmIdleTask, "bert-pkg": _BertTask}[name]
    return cls(size, validation, cache_dir)


# Load-independent figures: a fit's length from its first step, and the
# step speed-up a freeze schedule buys by the units' multiply-accumulates.

def fit_epochs(first_step_s, step_s, steps_per_epoch,
               ratio=MIN_FIT_OVER_FIRST_STEP, margin=1.25, min_epochs=2):
    """Epochs for a fit at least `ratio` times its own first step.

    Args:
        first_step_s: the measured first step (trace included), seconds.
        step_s: a later step's measured time, seconds (the median).
        steps_per_epoch: steps of an epoch.
        ratio: the fit's minimum length over its first step.
        margin: a factor over that minimum (the measure's noise, and
            freezing arms that take shorter steps).
        min_epochs: at least this many.

    Returns:
        int: `max(min_epochs, ceil(margin * ratio * first / (step *
        steps_per_epoch)))`.

    Example: a 6 s first step, 50 ms steps, 20 steps an epoch: 20 x 6 s
    = 120 s = 2400 steps, x 1.25 = 3000 steps = 150 epochs.

    >>> fit_epochs(6.0, 0.05, 20)
    150
    """
    for name, value in (("first_step_s", first_step_s), ("step_s", step_s),
                        ("steps_per_epoch", steps_per_epoch)):
        if not value > 0:
            raise ValueError(f"fit_epochs({name}={value!r}): must be > 0.")
    steps = margin * ratio * first_step_s / step_s
    return max(int(min_epochs), int(np.ceil(steps / steps_per_epoch - 1e-9)))


def estimated_speedup(costs, freeze_steps, total_steps, cached=False):
    """The step speed-up of a freeze schedule over full fine-tuning,
    estimated from each unit's forward multiply-accumulates (load-
    independent: it does not time anything).

    A unit's forward costs `c_i` and its backward `2 c_i`; unit `i` trains
    (backward) for the fraction `t_i = freeze_step_i / total_steps` of the
    fit (`speedup_from_costs`); the head always. With `cached`, a frozen
    unit also stops running its forward from its freeze step (an upper
    bound: the epoch that fills the cache still runs it).

    Args:
        costs: forward costs of the units, then the head (`unit_flops`).
        freeze_steps: per unit, the step it froze from (0: from the start,
            as the static recipe; None: never).
        total_steps: steps of the fit.
        cached: frozen units' forwards skipped too.

    Returns:
        float: full fine-tuning's cost over the schedule's (>= 1).

    Example: two equal units and a free head, the first frozen half-way:
    (3 + 3) / (1 + 2 * 0.5 + 3) = 1.2; cached, (3 + 3) / (1.5 + 3) = 1.33.

    >>> estimated_speedup([1, 1, 0], [50, None], 100)
    1.2
    >>> round(estimated_speedup([1, 1, 0], [50, None], 100, cached=True), 2)
    1.33
    """
    costs = np.asarray(costs, np.float64)
    if len(freeze_steps) != len(costs) - 1 or not total_steps > 0:
        raise ValueError(
            f"estimated_speedup: {len(freeze_steps)} freeze steps for "
            f"{len(costs)} costs (units and the head), total_steps "
            f"{total_steps!r}; need one step per unit and total_steps > 0.")
    fractions = np.array([1.0 if s is None else min(s, total_steps)
                          / total_steps for s in freeze_steps] + [1.0])
    if not cached:
        return float(1.0 / (1.0 - speedup_from_costs(costs, fractions)))
    return float(3.0 * costs.sum() / (3.0 * (fractions * costs).sum()))


def _estimates(task, split, freeze_steps, total_steps):
    """`{"estimated_speedup", "estimated_speedup_cached"}` of a run's
    freeze steps; the task's unit costs counted once."""
    if getattr(task, "unit_macs_once", None) is None:
        task.unit_macs_once = unit_flops(split, task.cost_input_shape())
    return {"estimated_speedup": estimated_speedup(
                task.unit_macs_once, freeze_steps, total_steps),
            "estimated_speedup_cached": estimated_speedup(
                task.unit_macs_once, freeze_steps, total_steps, cached=True),
            "unit_macs": task.unit_macs_once}


# One run.

class _FitTimer(StepTimer):
    def on_train_begin(self, logs=None):
        self.times = []


def _static_freeze(model, split, k):
    """Makes the variables of freeze units 0..k-1 non-trainable (by owner,
    so a layer shared with the head keeps the head's variables
    trainable)."""
    variables = list(model.trainable_variables)
    owners = split.variable_units(variables)
    frozen = [v for v, u in zip(variables, owners) if u < k]
    for v in frozen:
        v.trainable = False
    return frozen


def _memory(reset):
    try:
        if reset:
            tf.config.experimental.reset_memory_stats("CPU:0")
        return tf.config.experimental.get_memory_info("CPU:0")
    except (ValueError, tf.errors.InvalidArgumentError):
        return None  # not the BFC allocator


def _arm(task, arm, setting, seed):
    """One arm's untrained set-up: `(model, split, callbacks, extra)`, the
    model compiled (`split`: the `FreezeOutModel` of the task's network,
    which is `model` itself for the FreezeOut arms)."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}; got {arm!r}.")
    keras.utils.set_random_seed(seed + 1)  # the same new head each arm
    net = task.build()
    split = task.split(net)
    callbacks, extra = [], {}
    if arm in ("full", "static"):
        model = net
        if arm == "static":
            k = int(setting * split.num_units)
            extra["frozen"] = _static_freeze(net, split, k)
            extra["frozen_units"] = k
    else:
        model = split
        if arm == "schedule":
            callbacks.append(FreezeOut(t_0=setting))
        else:
            callbacks.append(FreezeOut(t_0=None,
                                       adaptive=AdaptiveFreeze(**setting)))
        if arm == "adaptive_cached":
            model.cache_frozen_prefix(task.num_examples(), CACHE_BUDGET)
    model.compile(task.optimizer(), _loss())
    return model, split, callbacks, extra


def run_arm(task, arm, setting, seed, epochs=None):
    """Fine-tunes the task's pretrained model one way; returns its figures.

    Args:
        task: from `load_task`.
        arm: one of `ARMS`.
        setting: the arm's setting: static, the frozen share of the units;
            schedule, t_0; adaptive and adaptive_cached, `AdaptiveFreeze`
            keyword arguments; full, None.
        seed: seeds the new head and the data order (the same for every
            arm).
        epochs: fine-tuning epochs; default the task's (`SIZES`). Fewer
            serve to measure a fit's first step (`scripts/
            profile_cache_trace.py`), never the benchmark's runs.

    Returns:
        dict: `quality` (accuracy, or held-out loss), `wall_s` (the whole
        `fit`), `steps_s` (every step but the first), `first_step_s`,
        `peak_mib` (or None), `frozen_units` and `frozen_unchanged` (static:
        the frozen variables bit-identical after the fit), `freeze_steps`
        (FreezeOut arms; None: never), `total_steps`, `num_units`,
        `load_before`/`load_after` (1-minute load average).

    Raises:
        ValueError: an unknown arm.
    """
    epochs = task.size["epochs"] if epochs is None else epochs
    if epochs is None:  # before the model (and its pretraining)
        raise ValueError(
            f"task {task.name!r} has no fine-tuning epochs: size it first "
            "(size_task, the script's `size` phase) and pass "
            "load_task(..., epochs=).")
    model, split, callbacks, extra = _arm(task, arm, setting, seed)
    frozen = extra.pop("frozen", [])
    before_fit = [v.numpy() for v in frozen]
    data = task.dataset(task.train, seed, ids=arm == "adaptive_cached")
    timer = _FitTimer()
    load_before = os.getloadavg()[0]
    before = _memory(reset=True)
    start = time.perf_counter()
    model.fit(data, epochs=epochs, verbose=0, callbacks=callbacks + [timer])
    wall = time.perf_counter() - start
    after = _memory(reset=False)
    if arm == "static":
        # The recipe's premise, checked: the frozen prefix did not move.
        extra["frozen_unchanged"] = all(
            np.array_equal(a, v.numpy()) for a, v in zip(before_fit, frozen))
    result = {
        "quality": task.score(model, task.evaluation),
        "wall_s": wall,
        "steps_s": float(sum(timer.times[1:])),
        "first_step_s": timer.times[0],
        "peak_mib": (None if after is None
                     else (after["peak"] - before["current"]) / 2 ** 20),
        "total_steps": len(timer.times),
        "num_units": split.num_units,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        **extra,
    }
    if model is split:
        steps = split.schedule_state.host_freeze_steps()[:-1].tolist()
        result["freeze_steps"] = [int(s) if s < len(timer.times) else None
                                  for s in steps]
    elif arm == "static":
        result["freeze_steps"] = [0] * extra["frozen_units"] + [None] * (
            split.num_units - extra["frozen_units"])
    else:
        result["freeze_steps"] = [None] * split.num_units
    result.update(_estimates(task, split, result["freeze_steps"],
                             len(timer.times)))
    return result


def size_task(task, seed=VALIDATION_SEED, steps=30):
    """Measures full fine-tuning's first step and its later steps' median
    on the task's training data, and sizes the fit from them
    (`fit_epochs`).

    Args:
        task: from `load_task` (its `epochs` are not read).
        seed: the run's seed.
        steps: steps timed (the first included).

    Returns:
        dict: `first_step_s`, `step_s` (median of the others),
        `steps_per_epoch`, `epochs`, `fit_over_first_step` (the sized fit's
        estimated length over its first step), `ratio`, `load_before`.
    """
    model, _, _, _ = _arm(task, "full", None, seed)
    data = task.dataset(task.train, seed, ids=False).repeat()
    timer = _FitTimer()
    load = os.getloadavg()[0]
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0,
              callbacks=[timer])
    first, step = timer.times[0], float(np.median(timer.times[1:]))
    per_epoch = task.steps_per_epoch()
    epochs = fit_epochs(first, step, per_epoch)
    return {"task": task.name, "first_step_s": first, "step_s": step,
            "steps_per_epoch": per_epoch, "epochs": epochs,
            "fit_over_first_step": epochs * per_epoch * step / first,
            "ratio": MIN_FIT_OVER_FIRST_STEP, "load_before": load,
            "pretrained": task.digest()}


def first_step_costs(task, arm, setting, seed):
    """Where one arm's first training step goes: its train step traced,
    instantiated and run (`benchmarking.trace_costs`), readied as `fit`
    readies it (the callbacks' `on_train_begin`, which adds the adaptive
    criterion to the step; the optimizer built; the cache prepared).

    Args:
        task: as `run_arm`.
        arm: as `run_arm`.
        setting: as `run_arm`.
        seed: as `run_arm`.

    Returns:
        `trace_costs`' dict.
    """
    model, _, callbacks, _ = _arm(task, arm, setting, seed)
    data = task.dataset(task.train, seed, ids=arm == "adaptive_cached")
    batch = next(iter(data))
    keras.callbacks.CallbackList(
        callbacks, model=model, epochs=task.size["epochs"],
        steps=task.steps_per_epoch(), verbose=0).on_train_begin()
    if getattr(model, "prefix_cache", None) is not None:
        model.prefix_cache.prepare(model, batch)
    model.optimizer.build(model.trainable_variables)
    return trace_costs(model, batch)


def _rotated(names, seed):
    names = list(names)
    return names[seed % len(names):] + names[:seed % len(names)]


# Phase 1: validation.

def _grid(task_name):
    return GRID if task_name in SUITES["finetune"] else GRID_2


def validate_task(task, seed=VALIDATION_SEED, log=print, done=(),
                  on_run=None, arms=None):
    """Runs every candidate of the suite's grid (`GRID`, `GRID_2`) and full
    fine-tuning on the task's validation split (`load_task(...,
    validation=True)`), in a rotated order.

    Args:
        task: a validation task.
        seed: seed of the runs.
        log: called with a line per run.
        done: runs of an interrupted validation (its file's `runs`): their
            candidates are not run again.
        on_run: called with the result so far after every run (to write
            it, so that an interrupted validation resumes).
        arms: run only these arms' candidates (a probe; None: all).

    Returns:
        dict with `task`, `metric`, `pretrained` (the weights' digest),
        `runs`: a list of `{"arm", "setting", ...run_arm figures}`.

    Raises:
        ValueError: `task` is not a validation split.
    """
    if not task.validation:
        raise ValueError(
            "validate_task needs a validation split: load_task(..., "
            "validation=True); the test data is not for choosing settings.")
    grid = _grid(task.name)
    candidates = [("full", None)] + [
        (arm, s) for arm in ("static", "schedule", "adaptive")
        for s in grid[arm]]
    if grid is GRID:  # the new suite does not run it: same decisions
        candidates.append(("adaptive_cached", GRID["adaptive"][0]))
    if arms is not None:
        candidates = [c for c in candidates if c[0] in arms]
    runs = list(done)
    result = {"task": task.name, "metric": task.metric,
              "higher_is_better": task.higher_is_better,
              "pretrained": task.digest(), "seed": seed, "runs": runs,
              "epochs": task.size["epochs"]}
    seen = [(r["arm"], r["setting"]) for r in runs]
    for arm, setting in _rotated(candidates, seed):
        if (arm, setting) in seen:
            continue
        r = run_arm(task, arm, setting, seed)
        runs.append({"arm": arm, "setting": setting, **r})
        log(f"{task.name} validation {arm} {setting}: "
            f"{task.metric} {r['quality']:.4f}, {r['wall_s']:.1f} s, "
            f"estimated step speed-up {r['estimated_speedup']:.2f}x, "
            f"freeze steps {r['freeze_steps']} of {r['total_steps']}")
        if on_run is not None:
            on_run(result)
    return result


def validation_table(validation):
    """A validation (or probe) file's runs as a Markdown table: quality
    and its difference from full fine-tuning, equal quality or not, the
    freeze steps, and the estimated step speed-ups (uncached, cached),
    which do not depend on the machine's load.

    Args:
        validation: a `validate_task` result.

    Returns:
        list of Markdown lines.

    Example:

    >>> runs = [{"arm": "full", "setting": None, "quality": 0.9,
    ...          "freeze_steps": [None, None], "total_steps": 10,
    ...          "estimated_speedup": 1.0, "estimated_speedup_cached": 1.0},
    ...         {"arm": "adaptive", "setting": {}, "quality": 0.893,
    ...          "freeze_steps": [4, None], "total_steps": 10,
    ...          "estimated_speedup": 1.25, "estimated_speedup_cached": 1.5}]
    >>> table = validation_table({"runs": runs, "higher_is_better": True})
    >>> for line in table[2:]:
    ...     print(line)
    | full | None | 90.00 | +0.00 | yes | -, - of 10 | 1.00x | 1.00x |
    | adaptive | {} | 89.30 | -0.70 | no | 4, - of 10 | 1.25x | 1.50x |
    """
    hib = validation["higher_is_better"]
    runs = validation["runs"]
    full = [r for r in runs if r["arm"] == "full"]
    scale, fmt = (100, ".2f") if hib else (1, ".4f")
    unit = "accuracy %" if hib else "held-out loss"
    lines = [f"| arm | setting | {unit} | vs full | equal quality | freeze "
             "steps | est. step speed-up | cached |",
             "|---|---|---:|---:|---|---|---:|---:|"]
    for r in runs:
        diff = ("" if not full else
                f"{scale * (r['quality'] - full[0]['quality']):+{fmt}}")
        equal = ("" if not full else "yes" if _equal_quality(
            r["quality"], full[0]["quality"], hib) else "no")
        steps = ", ".join("-" if s is None else str(s)
                          for s in r["freeze_steps"])
        lines.append(
            f"| {r['arm']} | {r['setting']} | {scale * r['quality']:{fmt}} "
            f"| {diff} | {equal} | {steps} of {r['total_steps']} | "
            f"{r['estimated_speedup']:.2f}x | "
            f"{r['estimated_speedup_cached']:.2f}x |")
    return lines


def _equal_quality(quality, full, higher_is_better):
    # 1e-9: a drop of exactly the tolerance counts as within it.
    if higher_is_better:
        return 100 * (full - quality) <= MAX_DROP_POINTS + 1e-9
    return quality <= full * (1 + MAX_LOSS_RISE) + 1e-9


def _better(a, b, higher_is_better):
    return a > b if higher_is_better else a < b


def choose_settings(validations, suite="finetune"):
    """The pre-registered rule, on the validation results of every task.

    A candidate is *admissible* on a task when its quality is within
    `MAX_DROP_POINTS` points of full fine-tuning's accuracy (or
    `MAX_LOSS_RISE` of its held-out loss); its *speed-up* is full
    fine-tuning's fit wall-clock over its own (suite `"finetune"`), or,
    in suite `"finetune-2"`, its `estimated_speedup` (the step speed-up
    its freeze steps buy by multiply-accumulates: load-independent, so
    validation can run on a shared machine), with `GRID_2` and
    `TARGETS_2`. Static (k) and schedule
    (t_0) are fixed per task: the admissible candidate with the best
    speed-up; none admissible, the best quality. The adaptive setting is
    one for all tasks (a default): the library default (`GRID["adaptive"]
    [0]`) stays if it is admissible on every task with at least
    `TARGETS["adaptive"]` speed-up on every task; otherwise the candidate
    admissible on every task with the best smallest speed-up across tasks
    (none admissible: the library default). The cached arm uses the
    adaptive setting.

    Args:
        validations: dict task name -> `validate_task` result.
        suite: `"finetune"` or `"finetune-2"` (`SUITES`).

    Returns:
        dict with `static` and `schedule` (task -> setting), `adaptive`
        (settings dict), `default_changed` (bool), `scores` (per task and
        candidate: admissible, speed-up, quality).

    Example:

    >>> runs = [{"arm": "full", "setting": None, "quality": 0.9, "wall_s": 10},
    ...         {"arm": "static", "setting": 0.5, "quality": 0.9, "wall_s": 5},
    ...         {"arm": "static", "setting": 0.75, "quality": 0.8, "wall_s": 4},
    ...         {"arm": "schedule", "setting": 0.8, "quality": 0.9, "wall_s": 8},
    ...         {"arm": "adaptive", "setting": {}, "quality": 0.9, "wall_s": 6}]
    >>> chosen = choose_settings({"vit": {"runs": runs, "higher_is_better": True}})
    >>> chosen["static"], chosen["schedule"], chosen["adaptive"]
    ({'vit': 0.5}, {'vit': 0.8}, {})
    >>> chosen["default_changed"]
    False
    """
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {tuple(SUITES)}; got "
                         f"{suite!r}.")
    grid, targets = ((GRID, TARGETS) if suite == "finetune"
                     else (GRID_2, TARGETS_2))
    scores = {}
    chosen = {"static": {}, "schedule": {}}
    for name, v in validations.items():
        hib = v["higher_is_better"]
        full = [r for r in v["runs"] if r["arm"] == "full"][0]
        scores[name] = []
        for r in v["runs"]:
            if r["arm"] == "full":
                continue
            scores[name].append({
                "arm": r["arm"], "setting": r["setting"],
                "admissible": _equal_quality(r["quality"], full["quality"],
                                             hib),
                "speedup": (full["wall_s"] / r["wall_s"]
                            if suite == "finetune"
                            else r["estimated_speedup"]),
                "quality": r["quality"]})
        for arm in ("static", "schedule"):
            rows = [s for s in scores[name] if s["arm"] == arm]
            ok = [s for s in rows if s["admissible"]]
            if ok:
                best = max(ok, key=lambda s: s["speedup"])
            else:
                best = max(rows, key=lambda s: s["quality"] if hib
                           else -s["quality"])
            chosen[arm][name] = best["setting"]

    def adaptive_rows(setting):
        return [[s for s in scores[n] if s["arm"] == "adaptive"
                 and s["setting"] == setting][0] for n in scores]

    default = grid["adaptive"][0]
    rows = adaptive_rows(default)
    keep = all(r["admissible"] and r["speedup"] >= targets["adaptive"]
               for r in rows)
    setting = default
    if not keep:
        ok = [(min(r["speedup"] for r in adaptive_rows(s)), i, s)
              for i, s in enumerate(grid["adaptive"])
              if all(r["admissible"] for r in adaptive_rows(s))]
        if ok:
            setting = max(ok, key=lambda t: (t[0], -t[1]))[2]
    chosen["adaptive"] = setting
    chosen["default_changed"] = setting != default
    chosen["scores"] = scores
    return chosen


def check_settings(path):
    """Reads the pre-registered settings; a clear error if there are none.

    Args:
        path: the `settings.json` written by the settings phase.

    Returns:
        the settings dict (`choose_settings`' result, under `results` of
        the report), with `written_utc`.

    Raises:
        FileNotFoundError: no settings file: run the validation first.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no pre-registered settings at {path!r}: run the validate phase "
            "(and then the settings phase) before any test run.")
    with open(path, encoding="utf-8") as f:
        report_ = json.load(f)
    settings = dict(report_["results"]["chosen"])
    settings["written_utc"] = report_["provenance"]["utc"]
    return settings


def arm_settings(settings, task_name):
    """Each arm's setting for one task, from `check_settings`' dict."""
    return {"full": None,
            "static": settings["static"][task_name],
            "schedule": settings["schedule"][task_name],
            "adaptive": settings["adaptive"],
            "adaptive_cached": settings["adaptive"]}


# Phase 3: test runs.

def run_seed(task, settings, seed, log=print):
    """One seed's test runs of every arm with the pre-registered settings,
    in an order rotated by the seed.

    Args:
        task: a test task (`load_task(..., validation=False)`).
        settings: from `check_settings` (read before this is called).
        seed: the seed.
        log: called with a line per run.

    Returns:
        dict with `task`, `seed`, `metric`, `pretrained`, `settings` (the
        arms' settings used), `runs` (arm -> `run_arm` figures).

    Raises:
        ValueError: `task` is a validation split.
    """
    if task.validation:
        raise ValueError("run_seed needs the test split: load_task(..., "
                         "validation=False).")
    used = arm_settings(settings, task.name)
    warm_up_s = _warm_up(task)
    runs = {}
    for arm in _rotated(ARMS, seed):
        runs[arm] = run_arm(task, arm, used[arm], seed)
        log(f"{task.name} seed {seed} {arm}: {task.metric} "
            f"{runs[arm]['quality']:.4f}, {runs[arm]['wall_s']:.1f} s")
    return {"task": task.name, "seed": seed, "metric": task.metric,
            "higher_is_better": task.higher_is_better,
            "pretrained": task.digest(),
            "settings_written_utc": settings["written_utc"],
            "settings": used, "order": _rotated(ARMS, seed),
            "warm_up_s": warm_up_s, "runs": runs}


def _warm_up(task):
    """Two untimed steps of plain Keras and of a FreezeOut model, so that
    the process' one-time costs (kernel and allocator set-up) are not
    charged to whichever arm runs first. Returns its seconds."""
    start = time.perf_counter()
    data = task.dataset(task.train, 0, ids=False).take(2)
    for freeze in (False, True):
        keras.utils.set_random_seed(0)
        net = task.build()
        model = task.split(net) if freeze else net
        model.compile(task.optimizer(), _loss())
        model.fit(data, epochs=1, verbose=0,
                  callbacks=[FreezeOut(t_0=None, adaptive=AdaptiveFreeze(
                      interval=1))] if freeze else [])
    return time.perf_counter() - start


# Phase 4: the report.

def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else None


def report(tests):
    """Means over seeds, ratios to full fine-tuning and the targets.

    Args:
        tests: list of `run_seed` results (any tasks and seeds).

    Returns:
        `(summary, lines)`: per task and arm the means (`quality`,
        `wall_s`, `steps_s`, `peak_mib`), `speedup_wall` and
        `speedup_steps` over full fine-tuning and `equal_quality`; per task
        `targets` (name -> met, figure); and Markdown lines. The first
        step (it holds the trace) is reported apart from the others.
    """
    summary, lines = {}, []
    for name in sorted({t["task"] for t in tests}):
        runs = sorted((t for t in tests if t["task"] == name),
                      key=lambda t: t["seed"])
        hib = runs[0]["higher_is_better"]
        rows = {}
        for arm in ARMS:
            rs = [t["runs"][arm] for t in runs]
            rows[arm] = {k: _mean([r[k] for r in rs]) for k in
                         ("quality", "wall_s", "steps_s", "first_step_s",
                          "peak_mib")}
            rows[arm]["quality_range"] = [min(r["quality"] for r in rs),
                                          max(r["quality"] for r in rs)]
            rows[arm]["per_seed_speedup"] = [
                t["runs"]["full"]["wall_s"] / t["runs"][arm]["wall_s"]
                for t in runs]
        full = rows["full"]
        for arm, row in rows.items():
            row["speedup_wall"] = full["wall_s"] / row["wall_s"]
            row["speedup_steps"] = full["steps_s"] / row["steps_s"]
            row["equal_quality"] = _equal_quality(row["quality"],
                                                  full["quality"], hib)
        targets = {}
        goals = TARGETS if name in SUITES["finetune"] else TARGETS_2
        for arm, target in goals.items():
            row = rows[arm]
            targets[f"{arm} >= {target}x at equal quality"] = {
                "met": row["equal_quality"] and row["speedup_wall"] >= target,
                "speedup": row["speedup_wall"],
                "equal_quality": row["equal_quality"]}
        a, s = rows["adaptive"], rows["static"]
        targets["adaptive faster than static at equal quality"] = {
            "met": (a["equal_quality"] and a["wall_s"] < s["wall_s"]),
            "adaptive_wall_s": a["wall_s"], "static_wall_s": s["wall_s"],
            "static_equal_quality": s["equal_quality"]}
        summary[name] = {"seeds": [t["seed"] for t in runs], "arms": rows,
                         "targets": targets,
                         "settings": runs[0]["settings"],
                         "load": [[t["runs"][arm]["load_before"]
                                   for arm in t["order"]] for t in runs]}
        unit = "accuracy %" if hib else "held-out loss (nats/byte)"
        scale = 100 if hib else 1
        fmt = ".2f" if hib else ".4f"
        lines += [f"## {name} (seeds {summary[name]['seeds']})", "",
                  f"| arm | setting | {unit} (mean, min-max) | equal quality | "
                  "fit s | speed-up (wall) | per seed | first step s | "
                  "other steps s | speed-up (steps) | peak MiB |",
                  "|---|---|---|---|---:|---:|---|---:|---:|---:|---:|"]
        for arm, row in rows.items():
            lo, hi = row["quality_range"]
            peak = ("" if row["peak_mib"] is None
                    else f"{row['peak_mib']:.0f}")
            lines.append(
                f"| {arm} | {runs[0]['settings'][arm]} | "
                f"{scale * row['quality']:{fmt}} ({scale * lo:{fmt}}-"
                f"{scale * hi:{fmt}}) | {'yes' if row['equal_quality'] else 'no'} | "
                f"{row['wall_s']:.1f} | {row['speedup_wall']:.2f}x | "
                + ", ".join(f"{x:.2f}" for x in row["per_seed_speedup"])
                + f" | {row['first_step_s']:.1f} | {row['steps_s']:.1f} | {row['speedup_steps']:.2f}x | "
                f"{peak} |")
        lines += ["", "| target | met | figure |", "|---|---|---|"]
        for target, t in targets.items():
            figure = (f"{t['speedup']:.2f}x" if "speedup" in t else
                      f"{t['adaptive_wall_s']:.1f} s vs {t['static_wall_s']:.1f} s")
            lines.append(f"| {target} | {'yes' if t['met'] else 'no'} | "
                         f"{figure} |")
        lines.append("")
    return summary, lines
