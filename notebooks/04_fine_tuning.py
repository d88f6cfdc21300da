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
# # Fine-tuning a functional network with FreezeOut
#
# Most Keras networks are functional graphs with skip connections, not
# chains. `FreezeOutModel.from_model` cuts such a network into freeze
# units at its *cut points*, the tensors that every path from the input to
# the output passes through, and shares its layers and weights (nothing is
# copied).
#
# This notebook:
#
# 1. builds `keras.applications.MobileNetV2` (`weights=None`) and lists the
#    cut points it has;
# 2. "pretrains" it on task A, offline, on synthetic images made here, and
#    saves it as `.keras`;
# 3. loads it, replaces the classifier head for task B, splits it into
#    freeze units and fine-tunes with FreezeOut, keeping the first unit
#    frozen from the start (`frozen_from_start=1`);
# 4. plots the step time falling as units freeze.
#
# **Starting from ImageNet weights** (on a machine with internet, which this
# notebook does not need): build the backbone with `weights="imagenet"`
# instead of pretraining it, at an input size ImageNet weights exist for
# (96 to 224 for MobileNetV2), and feed it images scaled with
# `keras.applications.mobilenet_v2.preprocess_input`:
#
#     backbone = keras.applications.MobileNetV2(
#         weights="imagenet", include_top=False, pooling="avg",
#         input_shape=(96, 96, 3), alpha=0.35)
#
# then continue at step 3 with that backbone. With `FREEZEOUT_QUICK=1` the
# runs are tiny.

# %%
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quieter TensorFlow
# FREEZEOUT_QUICK=1 (set by the test suite) shrinks the work to a smoke test.
QUICK = os.environ.get("FREEZEOUT_QUICK") == "1"

import pathlib
import tempfile
import time

import keras
import matplotlib.pyplot as plt
import numpy as np

import freezeout_tf as fo
from freezeout_tf.recipes.data import make_synthetic_arrays

keras.utils.set_random_seed(0)
if QUICK:
    NUM_A, NUM_B, PRETRAIN_EPOCHS, EPOCHS, NUM_UNITS = 512, 256, 1, 2, 4
else:
    NUM_A, NUM_B, PRETRAIN_EPOCHS, EPOCHS, NUM_UNITS = 6000, 3000, 6, 8, 6
BATCH, SIZE, ALPHA = 32, 32, 0.35
CLASSES_A, CLASSES_B = 20, 4
WORK = pathlib.Path(tempfile.mkdtemp(prefix="freezeout_finetune_"))


# %% [markdown]
# ## The cut points of MobileNetV2
#
# `fo.cut_points(model)` lists the layers whose output is a cut point. An
# inverted-residual block with a residual connection ends in an `Add`, the
# only cut point of the block; a block without one is a plain chain, cut
# between every pair of its layers. `split_model` (what `from_model` uses)
# then makes *segments* between consecutive cut points; a segment without
# weights (a ReLU, a padding) joins the one before it.

# %%
def make_backbone():
    return keras.applications.MobileNetV2(
        weights=None, include_top=False, pooling="avg",
        input_shape=(SIZE, SIZE, 3), alpha=ALPHA)


backbone = make_backbone()
cuts = fo.cut_points(backbone)
segments, _ = fo.split_model(keras.Model(backbone.input,
                                         keras.layers.Dense(2)(backbone.output)))
print(f"{backbone.name}: {len(backbone.layers)} layers, {len(cuts)} cut points, "
      f"{len(segments)} segments")
print("cut points ending a residual block:", [c for c in cuts if c.endswith("_add")])


# %% [markdown]
# ## Task A: pretrain and save
#
# Synthetic CIFAR-shaped images of 20 classes (each class has its own
# colour, plus a coarse pattern and noise). The network here is an ordinary
# Keras model: the backbone, nested as one layer, and a classifier. Keras'
# applications use BatchNorm momentum 0.999, which averages over ~1000
# steps; a frozen unit runs its BatchNorm on those moving statistics, so for
# these short runs we lower it to 0.9 (not needed with ImageNet weights,
# whose statistics are already settled).

# %%
def scaled(images):
    return (images.astype("float32") / 255.0 - 0.5) / 0.25


for layer in backbone.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
        layer.momentum = 0.9

images, labels = make_synthetic_arrays(NUM_A, CLASSES_A, seed=0)
inputs = keras.Input((SIZE, SIZE, 3))
outputs = keras.layers.Dense(CLASSES_A, name="task_a")(backbone(inputs))
model_a = keras.Model(inputs, outputs, name="task_a_model")
model_a.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
model_a.fit(scaled(images), labels, batch_size=BATCH, epochs=PRETRAIN_EPOCHS, verbose=2)
PRETRAINED = WORK / "task_a.keras"
model_a.save(PRETRAINED)
print("saved", PRETRAINED)

# %% [markdown]
# ## Task B: new head, split, fine-tune
#
# The recipe:
#
# 1. load the trained model and take its backbone (here the nested model;
#    for a flat model, `keras.Model(loaded.input, loaded.get_layer(NAME).output)`);
# 2. put a new classifier for task B on it, as a functional model;
# 3. `FreezeOutModel.from_model(..., num_units=N)`: the cut points inside the
#    nested backbone are found, and consecutive segments are grouped into `N`
#    units of about equal forward cost; the new classifier is the head;
# 4. fit with `FreezeOut(..., frozen_from_start=k)`: units `0..k-1` keep
#    their pretrained weights from step 0 and run no backward pass; the
#    other units follow the FreezeOut schedule, unit `k` freezing first.
#
# Task B: 4 superclasses of the 20 task-A colours, on new images.

# %%
loaded = keras.models.load_model(PRETRAINED)
pretrained_backbone = loaded.get_layer(backbone.name)

inputs = keras.Input((SIZE, SIZE, 3))
outputs = keras.layers.Dense(CLASSES_B, name="task_b")(pretrained_backbone(inputs))
model_b = fo.FreezeOutModel.from_model(keras.Model(inputs, outputs, name="task_b_model"),
                                       num_units=NUM_UNITS)

costs = fo.unit_flops(model_b)
print(f"{'unit':>4}  {'layers':>6}  {'first layer':<24} {'last layer':<24} {'MMACs':>6}")
for i, unit in enumerate(model_b.freeze_units + [model_b.head]):
    names = [layer.name for layer in unit.layers[1:]]  # without the Input
    label = "head" if i == model_b.num_units else str(i)
    print(f"{label:>4}  {len(names):6d}  {names[0]:<24} {names[-1]:<24} {costs[i] / 1e6:6.2f}")
print(f"estimated compute saved at t_0=0.8 cubic: {fo.estimate_speedup(model_b, 0.8):.0%}")


# %%
class StepTimer(keras.callbacks.Callback):
    """Wall-clock seconds of every training step, by global step."""

    def on_train_begin(self, logs=None):
        self.steps, self.seconds = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self._step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.steps.append(self._step)


images_b, fine_labels = make_synthetic_arrays(NUM_B + NUM_B // 4, CLASSES_A, seed=1)
labels_b = fine_labels // (CLASSES_A // CLASSES_B)  # superclass
x_train, y_train = scaled(images_b[:NUM_B]), labels_b[:NUM_B]
x_val, y_val = scaled(images_b[NUM_B:]), labels_b[NUM_B:]

unit0_before = [w.numpy().copy() for w in model_b.freeze_units[0].weights]
model_b.compile(keras.optimizers.SGD(0.01, momentum=0.9),  # fine-tuning: a lower rate
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
timer = StepTimer()
T_0, HOW_SCALE, FROZEN = 0.5, "linear", 1
history = model_b.fit(
    x_train, y_train, batch_size=BATCH, epochs=EPOCHS, validation_data=(x_val, y_val),
    callbacks=[fo.FreezeOut(t_0=T_0, how_scale=HOW_SCALE, frozen_from_start=FROZEN),
               timer],
    verbose=2)
print("train step traced", model_b.train_step_traces, "time(s)")
print("unit 0 kept its pretrained weights:",
      all(np.array_equal(a, b.numpy())
          for a, b in zip(unit0_before, model_b.freeze_units[0].weights)))

# %% [markdown]
# ## Step time falls as units freeze
#
# Each dot is one training step (the first, which traces the graph, is left
# out); dotted lines mark the steps at which a unit freezes.

# %%
total_steps = EPOCHS * int(np.ceil(NUM_B / BATCH))
fractions = fo.freeze_fractions(model_b.num_units, T_0, HOW_SCALE, FROZEN)
freeze_at = fo.freeze_steps(total_steps, fractions, FROZEN)[FROZEN:-1]
steps, ms = np.array(timer.steps[1:]), 1000 * np.array(timer.seconds[1:])
window = 5
padded = np.pad(ms, window // 2, mode="edge")
median = np.array([np.median(padded[k:k + window]) for k in range(len(ms))])

fig, ax = plt.subplots(figsize=(9, 4))
ax.plot(steps, ms, ".", color="tab:blue", alpha=0.4, label="step time")
ax.plot(steps, median, color="tab:blue", label=f"running median ({window} steps)")
for s in freeze_at:
    ax.axvline(s, color="grey", ls=":", lw=0.8)
ax.set(xlabel="training step", ylabel="ms per step",
       ylim=(0, np.percentile(ms, 99) * 1.2),
       title="Fine-tuning MobileNetV2 with FreezeOut; dotted lines: a unit freezes")
ax.legend(loc="lower left")
fig.tight_layout()
plt.show()

first = ms[steps < freeze_at[0]]
last = ms[steps >= freeze_at[-1]]
print(f"median step while units {FROZEN}..{model_b.num_units - 1} train: {np.median(first):.1f} ms")
print(f"median step with every unit frozen: {np.median(last):.1f} ms"
      if len(last) else "no step ran with every unit frozen")
print("validation accuracy per epoch:", np.round(history.history["val_accuracy"], 3))

# %% [markdown]
# The split model shares its layers with `loaded`: fine-tuning changed the
# loaded model's weights too, and freezing set `trainable = False` on its
# layers. Split a fresh copy (`keras.models.clone_model`, then
# `set_weights`) if you need the original untouched. Pass
# `boundaries=[layer names]` instead of `num_units` to choose the cuts
# yourself; each must be a cut point.
