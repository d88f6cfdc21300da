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
# # FreezeOut on your own Keras model
#
# FreezeOut needs the network as an ordered chain of *freeze units* plus a
# *head* that never freezes. This notebook turns a Keras network into a
# `FreezeOutModel` in two ways, trains it with FreezeOut, writes TensorBoard
# and metrics logs, saves it as `.keras`, reloads it and continues training.
# With `FREEZEOUT_QUICK=1` the model and data are tiny.

# %%
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quieter TensorFlow
# FREEZEOUT_QUICK=1 (set by the test suite) shrinks the work to a smoke test.
QUICK = os.environ.get("FREEZEOUT_QUICK") == "1"

import csv
import math
import pathlib
import tempfile

import keras
import matplotlib.pyplot as plt
import numpy as np

import freezeout_tf as fo
from freezeout_tf.callbacks.summaries import FreezeOutSummaries
from freezeout_tf.recipes.data import make_synthetic_arrays
from freezeout_tf.recipes.training_log import MetricsLog, MetricsLogger, read_log

keras.utils.set_random_seed(0)
if QUICK:
    NUM_TRAIN, NUM_CLASSES, WIDTH, EPOCHS, FIRST_EPOCHS = 512, 10, 8, 4, 2
else:
    NUM_TRAIN, NUM_CLASSES, WIDTH, EPOCHS, FIRST_EPOCHS = 5000, 100, 32, 8, 4
BATCH = 32
WORK = pathlib.Path(tempfile.mkdtemp(prefix="freezeout_byom_"))  # logs and saved model
print("writing to", WORK)

# %% [markdown]
# Data: CIFAR-shaped synthetic images from `make_synthetic_arrays` (each class
# has its own colour, plus a coarse pattern and noise), scaled to about zero
# mean and unit spread.

# %%
images, labels = make_synthetic_arrays(NUM_TRAIN + NUM_TRAIN // 4, NUM_CLASSES, seed=0)
images = (images.astype("float32") / 255.0 - 0.5) / 0.25
x_train, y_train = images[:NUM_TRAIN], labels[:NUM_TRAIN]
x_val, y_val = images[NUM_TRAIN:], labels[NUM_TRAIN:]
print(x_train.shape, x_val.shape)


# %% [markdown]
# ## Way 1: a `keras.Sequential` of blocks
#
# Write the network as a `Sequential` whose layers are blocks (nested
# `Sequential`s or any other layers). `FreezeOutModel.from_sequential` makes
# each block a freeze unit, except the last `num_head_layers`, which form the
# head.
#
# What makes a good unit: units run one after another, each taking the
# previous one's output, so any skip connection must stay inside a unit.
# Units freeze in order, first to last, so the first unit should be the
# input side of the network. A frozen unit runs its BatchNorm layers in
# inference mode, on their moving statistics, so those must have caught up
# by the time it freezes: the blocks here use `momentum=0.9` (PyTorch's
# default, as the built-in models do) instead of Keras' 0.99, which adapts
# slowly and in a short run can leave them far from the data.

# %%
def conv_block(filters, stride=1, name=None):
    return keras.Sequential(
        [
            keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False),
            keras.layers.BatchNormalization(momentum=0.9),
            keras.layers.ReLU(),
        ],
        name=name,
    )


net = keras.Sequential(
    [
        keras.Input((32, 32, 3)),
        conv_block(WIDTH, name="stem"),
        conv_block(WIDTH, name="block1"),
        conv_block(2 * WIDTH, stride=2, name="block2"),
        conv_block(2 * WIDTH, name="block3"),
        conv_block(4 * WIDTH, stride=2, name="block4"),
        keras.Sequential(
            [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(NUM_CLASSES)],
            name="head",
        ),
    ]
)
model = fo.FreezeOutModel.from_sequential(net, num_head_layers=1, name="my_cnn")
model.build((None, 32, 32, 3))
print("units:", [unit.name for unit in model.freeze_units], " head:", model.head.name)

# %% [markdown]
# ## Way 2: hand-picked blocks
#
# If the network is a flat list of layers (or you want coarser units), group
# the layers yourself and pass the units and the head to `FreezeOutModel`.
# The units reuse the same layer objects, and so the same weights. Each unit
# can be any Keras layer or model.

# %%
flat = keras.Sequential(
    [
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(WIDTH, 3, padding="same"), keras.layers.BatchNormalization(momentum=0.9), keras.layers.ReLU(),
        keras.layers.Conv2D(WIDTH, 3, padding="same"), keras.layers.BatchNormalization(momentum=0.9), keras.layers.ReLU(),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(2 * WIDTH, 3, padding="same"), keras.layers.BatchNormalization(momentum=0.9), keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(NUM_CLASSES),
    ]
)
layers = flat.layers
units = [
    keras.Sequential(layers[0:3], name="conv1"),
    keras.Sequential(layers[3:7], name="conv2_pool"),
    keras.Sequential(layers[7:10], name="conv3"),
]
head = keras.Sequential(layers[10:], name="head")
model2 = fo.FreezeOutModel(units, head, name="hand_picked")
print(model2.num_units, "units; output", model2(x_val[:2]).shape,
      "same as the flat model:", np.allclose(model2(x_val[:2]), flat(x_val[:2])))

# %% [markdown]
# ## Train, with TensorBoard and metrics logs
#
# The train step below runs the first `FIRST_EPOCHS` of an `EPOCHS`-epoch run;
# the rest comes after saving and reloading. So that both parts follow one
# schedule, `FreezeOut` gets the whole run's length as `total_steps`.
#
# Put `FreezeOut` first in the callback list: the callbacks after it
# (`CSVLogger`, `TensorBoard`, ...) then see its `active_units` and
# `first_active_lr` logs. Besides Keras' own `CSVLogger` and `TensorBoard`, this
# uses two helpers of the package that the training script uses too:
# `MetricsLogger` (a JSON-lines log) and `FreezeOutSummaries` (per-unit
# learning-rate multipliers for TensorBoard).

# %%
STEPS_PER_EPOCH = math.ceil(NUM_TRAIN / BATCH)
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
T_0, HOW_SCALE = 0.5, "linear"
LOG_DIR = WORK / "tensorboard"
CSV_PATH = WORK / "metrics.csv"
JSONL_PATH = WORK / "metrics.jsonl"


def callbacks(model):
    return [
        fo.FreezeOut(t_0=T_0, how_scale=HOW_SCALE, total_steps=TOTAL_STEPS),
        keras.callbacks.CSVLogger(str(CSV_PATH), append=True),
        MetricsLogger(MetricsLog(str(JSONL_PATH)), epochs=EPOCHS, num_units=model.num_units),
        keras.callbacks.TensorBoard(log_dir=str(LOG_DIR), write_graph=False),
        FreezeOutSummaries(str(LOG_DIR / "freezeout"), num_units=model.num_units,
                           total_steps=TOTAL_STEPS, t_0=T_0, how_scale=HOW_SCALE,
                           scale_lr=True),
    ]


model.compile(
    optimizer=fo.original_sgd(),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
model.fit(x_train, y_train, batch_size=BATCH, epochs=FIRST_EPOCHS,
          validation_data=(x_val, y_val), callbacks=callbacks(model), verbose=0)
print("trainable units:", [unit.trainable for unit in model.freeze_units])

# %% [markdown]
# (`MetricsLogger` printed one line per epoch; `verbose=0` turned Keras'
# progress bar off.)
#
# ## Save, reload, continue
#
# `model.save` writes the units, head, optimizer state (including its step
# counter) into one `.keras` file; `keras.models.load_model` needs no
# `custom_objects`, since `freezeout_tf` registers its classes. The schedule
# is a function of the optimizer's step, so continuing is
# `fit(..., epochs=EPOCHS, initial_epoch=FIRST_EPOCHS)` with the same
# `FreezeOut` settings.

# %%
path = WORK / "my_cnn.keras"
model.save(path)
reloaded = keras.models.load_model(path)
print(type(reloaded).__name__, "with", reloaded.num_units, "units; optimizer step",
      int(keras.ops.convert_to_numpy(reloaded.optimizer.iterations)))
print("same predictions:", np.allclose(model.predict(x_val, verbose=0),
                                       reloaded.predict(x_val, verbose=0), atol=1e-5))

reloaded.fit(x_train, y_train, batch_size=BATCH, epochs=EPOCHS, initial_epoch=FIRST_EPOCHS,
             validation_data=(x_val, y_val), callbacks=callbacks(reloaded), verbose=0)
print("trainable units:", [unit.trainable for unit in reloaded.freeze_units])

# %% [markdown]
# ## Read the metrics logs
#
# `CSVLogger` wrote one row per epoch with every log, `active_units`
# included; with `append=True` the continued run added its rows to the same
# file. The dotted line marks where the model was saved and reloaded.

# %%
with open(CSV_PATH, newline="") as f:
    rows = list(csv.DictReader(f))
epoch = np.array([int(r["epoch"]) + 1 for r in rows])
fig, ax = plt.subplots(figsize=(8, 4))
ax.plot(epoch, [float(r["loss"]) for r in rows], "o-", label="train loss")
ax.plot(epoch, [float(r["val_loss"]) for r in rows], "o-", label="val loss")
ax.axvline(FIRST_EPOCHS + 0.5, color="grey", ls=":", label="saved and reloaded")
ax.set(xlabel="epoch", ylabel="loss", title="From metrics.csv (CSVLogger)", xticks=epoch)
ax2 = ax.twinx()
ax2.plot(epoch, [float(r["active_units"]) for r in rows], "s--", color="tab:green",
         label="active units (right)")
ax2.set_ylabel("active units at the end of the epoch", color="tab:green")
ax2.set_ylim(0, model.num_units + 0.5)
ax2.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=4)
fig.tight_layout()
plt.show()

# %% [markdown]
# The JSON-lines log has the same format as the training script's
# (`scripts/train_cifar.py --output-dir ...`): per epoch one training record
# and one validation record, errors in percent. `read_log` reads it.

# %%
for record in read_log(str(JSONL_PATH)):
    print({k: v for k, v in record.items() if k != "time"})

# %% [markdown]
# ## Watch it in TensorBoard
#
# Open the logs with
#
#     tensorboard --logdir <LOG_DIR>
#
# and go to http://localhost:6006 (in Jupyter: `%load_ext tensorboard`, then
# `%tensorboard --logdir <LOG_DIR>`). `keras.callbacks.TensorBoard` wrote
# `train/` and `validation/`, with `epoch_active_units` among the training
# scalars; `FreezeOutSummaries` wrote `freezeout/`. Here we read the
# training tags back from the event files.

# %%
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

print(f"tensorboard --logdir {LOG_DIR}")
print("runs:", sorted(p.name for p in LOG_DIR.iterdir()))
train = EventAccumulator(str(LOG_DIR / "train"))
train.Reload()
print("train tags:", sorted(train.Tags()["tensors"]))
active = [(e.step, float(tf.make_ndarray(e.tensor_proto)))
          for e in train.Tensors("epoch_active_units")]
print("epoch_active_units (epoch, value):", active)
