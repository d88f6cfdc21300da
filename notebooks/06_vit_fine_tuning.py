# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fine-tuning a KerasHub ViT with FreezeOut
#
# Progressive freezing is mostly used today to fine-tune pretrained
# transformers faster. This notebook does that offline, end to end:
#
# 1. pretrain a small KerasHub `ViTBackbone` on scikit-learn's digits 0-4;
# 2. put a new head on it for digits 5-9;
# 3. fine-tune with FreezeOut (the first blocks frozen from the start, the
#    rest on the schedule) and, for comparison, without freezing: accuracy
#    and wall-clock time over 3 seeds.
#
# `FreezeOutModel.from_model` splits the ViT block by block although its
# blocks sit inside one `ViTEncoder` layer: it looks into layers that hold a
# list of blocks (see the README's "Transformers and KerasHub").
# With `FREEZEOUT_QUICK=1` (set by the test suite) everything is shrunk to a
# smoke test.

# %%
import os
import pathlib
import tempfile
import time

import keras
import keras_hub
import numpy as np
from sklearn.datasets import load_digits

import freezeout_tf as fo

QUICK = os.environ.get("FREEZEOUT_QUICK") == "1"
PRETRAIN_EPOCHS, FINE_TUNE_EPOCHS, SEEDS = (2, 2, [0]) if QUICK else (40, 12, [0, 1, 2])
LAYERS = 2 if QUICK else 6  # encoder blocks
BATCH = 32
WORK = pathlib.Path(tempfile.mkdtemp(prefix="freezeout_vit_"))

# %% [markdown]
# ## Data: digits 0-4 to pretrain, 5-9 to fine-tune
#
# 8x8 grey images scaled to [0, 1]. Task B (5-9) is split into a training
# and a test part; its labels are shifted to 0-4.

# %%
digits = load_digits()
images = (digits.images / 16.0).astype("float32")[..., None]
labels = digits.target
rng = np.random.default_rng(0)
order = rng.permutation(len(labels))
images, labels = images[order], labels[order]
task_a = labels < 5
x_a, y_a = images[task_a], labels[task_a]
x_b, y_b = images[~task_a], labels[~task_a] - 5
split = int(0.7 * len(y_b))
x_b_train, y_b_train, x_b_test, y_b_test = x_b[:split], y_b[:split], x_b[split:], y_b[split:]
print("task A", x_a.shape, "task B train", x_b_train.shape, "test", x_b_test.shape)

# %% [markdown]
# ## Pretraining on task A
#
# A ViT with 2x2 patches (16 tokens and a class token), 6 encoder blocks of
# width 64. Randomly initialised from a config: nothing is downloaded.

# %%
keras.utils.set_random_seed(0)
backbone = keras_hub.models.ViTBackbone(
    image_shape=(8, 8, 1), patch_size=2, num_layers=LAYERS, num_heads=4,
    hidden_dim=64, mlp_dim=128, name="vit",
)
inputs = keras.Input((8, 8, 1))
features = keras.layers.GlobalAveragePooling1D(name="pool")(backbone(inputs))
pretrain = keras.Model(inputs, keras.layers.Dense(5, name="head_a")(features))
pretrain.compile(keras.optimizers.AdamW(1e-3),
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=["accuracy"])
pretrain.fit(x_a, y_a, batch_size=BATCH, epochs=PRETRAIN_EPOCHS, verbose=0)
print("task A accuracy (train):", pretrain.evaluate(x_a, y_a, verbose=0)[1])
backbone.save(WORK / "vit_task_a.keras")

# %% [markdown]
# ## A new head, split into freeze units
#
# Each fine-tuning run loads the pretrained backbone afresh and puts a new
# classifier on it. `from_model` finds the cut points: the patch embedding,
# then one unit per encoder block, and the encoder's final LayerNorm.

# %%
def fine_tune_model(seed):
    keras.utils.set_random_seed(seed)
    loaded = keras.saving.load_model(WORK / "vit_task_a.keras")
    inputs = keras.Input((8, 8, 1))
    features = keras.layers.GlobalAveragePooling1D(name="pool")(loaded(inputs))
    return keras.Model(inputs, keras.layers.Dense(5, name="head_b")(features))


print(fo.cut_points(fine_tune_model(0)))
model = fo.FreezeOutModel.from_model(fine_tune_model(0))
print(model.num_units, "freeze units:",
      [[layer.name for layer in unit.layers[1:]] for unit in model.freeze_units])
print(f"the schedule's estimated saving (t_0=0.5, cubic; units frozen from the "
      f"start save more): {fo.estimate_speedup(model, 0.5, 'cubic'):.1%}")

# %% [markdown]
# ## Fine-tuning: FreezeOut against no freezing
#
# Same optimizer (AdamW, constant rate), data order and epochs. FreezeOut:
# the patch embedding and the first block frozen from the start
# (`frozen_from_start=2`), the other blocks annealed and frozen on the cubic
# schedule with `t_0=0.5`. The two methods alternate per seed, so a noisy
# machine slows both alike.

# %%
def run(seed, freeze):
    net = fine_tune_model(seed)
    model = fo.FreezeOutModel.from_model(net) if freeze else net
    model.compile(keras.optimizers.AdamW(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    callbacks = [fo.FreezeOut(t_0=0.5, frozen_from_start=2)] if freeze else []
    start = time.perf_counter()
    model.fit(x_b_train, y_b_train, batch_size=BATCH, epochs=FINE_TUNE_EPOCHS,
              shuffle=False, verbose=0, callbacks=callbacks)
    seconds = time.perf_counter() - start
    accuracy = model.evaluate(x_b_test, y_b_test, verbose=0)[1]
    return accuracy, seconds


results = {"no freezing": [], "FreezeOut": []}
for seed in SEEDS:
    for name, freeze in (("no freezing", False), ("FreezeOut", True)):
        results[name].append(run(seed, freeze))
        print(seed, name, "accuracy %.4f, %.1f s" % results[name][-1])

# %%
base = np.mean([s for _, s in results["no freezing"]])
print("| method | test accuracy % (mean, min-max) | fit s (mean) | speed-up |")
print("|---|---|---:|---:|")
for name, rows in results.items():
    acc = 100 * np.array([a for a, _ in rows])
    secs = np.array([s for _, s in rows])
    print(f"| {name} | {acc.mean():.2f} ({acc.min():.2f}-{acc.max():.2f}) | "
          f"{secs.mean():.1f} | {base / secs.mean():.2f}x |")

# To keep these figures with their commit, versions, machine and time (the
# README's table comes from such a file), set FREEZEOUT_REPORT to a path.
if os.environ.get("FREEZEOUT_REPORT"):
    from freezeout_tf.benchmarking import write_report

    write_report(os.environ["FREEZEOUT_REPORT"],
                 {name: [{"accuracy": a, "fit_s": s} for a, s in rows]
                  for name, rows in results.items()},
                 command="python notebooks/06_vit_fine_tuning.py")

# %% [markdown]
# The fit times include the one trace of the train step. FreezeOut's step
# gets cheaper as blocks freeze: frozen blocks run their forward pass only,
# with no backward pass, no optimizer update and no weight decay.
