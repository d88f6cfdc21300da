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
# # FreezeOut quickstart
#
# FreezeOut trains a network as a chain of *freeze units*. Each unit gets its
# own cosine-annealed learning rate and, once that rate reaches zero, the unit
# is frozen: it still runs its forward pass, but its backward pass is skipped,
# so later training steps get cheaper.
#
# This notebook trains a small DenseNet-BC with FreezeOut on an offline
# synthetic data set, then looks at what happened: how many units were still
# training after each epoch, the per-unit learning-rate curves, and the time
# of each training step as units freeze.
#
# Set `FREEZEOUT_QUICK=1` in the environment for a smoke-test size (the test
# suite does); without it the run is larger: a few minutes on two CPU cores.

# %%
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quieter TensorFlow
# FREEZEOUT_QUICK=1 (set by the test suite) shrinks the work to a smoke test.
QUICK = os.environ.get("FREEZEOUT_QUICK") == "1"

import time

import keras
import matplotlib.pyplot as plt
import numpy as np

import freezeout_tf as fo
from freezeout_tf.recipes.data import load_data
from freezeout_tf.models import densenet_bc
from freezeout_tf.estimates.speedup import estimate_speedup

keras.utils.set_random_seed(0)
if QUICK:
    DEPTH, GROWTH, EPOCHS, TRAIN_SIZE, BATCH = 16, 8, 4, 640, 32
else:
    DEPTH, GROWTH, EPOCHS, TRAIN_SIZE, BATCH = 28, 12, 8, 3000, 50
# The original's defaults are t_0=0.8 with cubic scaling (the first unit
# freezes after 51 % of training). A more aggressive schedule makes the
# freezing easy to see in a short run.
T_0, HOW_SCALE = 0.5, "linear"

# %% [markdown]
# ## Data
#
# `load_data("synthetic")` builds CIFAR-shaped images (32x32x3, 100 classes)
# in memory: each class has its own colour, plus a coarse pattern and pixel
# noise, so a network can learn it and nothing is downloaded. The same call
# with `"cifar10"` or `"cifar100"` reads a prepared TensorFlow Datasets copy.
# `data.train(0, EPOCHS)` is the training pipeline (random crop and flip on);
# pass `data.steps_per_epoch` to `fit` as well.

# %%
data = load_data(
    "synthetic",
    batch_size=BATCH,
    synthetic_train_size=TRAIN_SIZE,
    synthetic_validation_size=TRAIN_SIZE // 4,
)
print(f"{data.num_train} training images, {data.num_validation} validation "
      f"images, {data.num_classes} classes, {data.steps_per_epoch} steps per epoch")

# %% [markdown]
# ## Model
#
# `densenet_bc` returns a `FreezeOutModel`: the stem conv, every dense layer
# and every transition are freeze units, in forward order; the final
# BN + classifier is the head, which never freezes. `original_sgd()` is the
# original recipe: SGD with Nesterov momentum 0.9, L2 weight decay 1e-4 and a
# base learning rate of 0.1. Add no other learning-rate schedule: FreezeOut
# supplies it.

# %%
model = densenet_bc(depth=DEPTH, growth_rate=GROWTH, num_classes=data.num_classes)
model.compile(
    optimizer=fo.original_sgd(),
    loss="sparse_categorical_crossentropy",
    metrics=["accuracy"],
)
print(f"DenseNet-BC L={DEPTH} k={GROWTH}: {model.num_units} freeze units + head")
print("units:", ", ".join(unit.name for unit in model.freeze_units))


# %% [markdown]
# ## Train with the `FreezeOut` callback
#
# The callback works out the run's length (`epochs * steps_per_epoch`) and
# places the schedule; from then on the train step itself freezes units at
# the exact step, inside one traced graph. It adds two logs: `active_units`
# (units still training, head not counted) and `first_active_lr` (the
# learning rate of the first unit still training).
#
# `StepTimer` is a small callback of our own: the wall-clock time of every
# training step. It comes after `FreezeOut` in the list.

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


timer = StepTimer()
history = model.fit(
    data.train(0, EPOCHS),
    epochs=EPOCHS,
    steps_per_epoch=data.steps_per_epoch,
    validation_data=data.validation,
    callbacks=[fo.FreezeOut(t_0=T_0, how_scale=HOW_SCALE), timer],
    shuffle=False,  # the pipeline shuffles each epoch itself
    verbose=2,
)
print("train step traced", model.train_step_traces, "time(s)")

# %% [markdown]
# ## Active units per epoch
#
# `active_units` is logged at the end of each epoch. Earlier units freeze
# first, so the frozen units are always a prefix of the network.

# %%
h = history.history
epochs = np.arange(1, EPOCHS + 1)
print("epoch  active units  train loss  val loss  val acc")
for e, a, l, vl, va in zip(epochs, h["active_units"], h["loss"], h["val_loss"],
                           h["val_accuracy"]):
    print(f"{e:5d}  {int(a):6d}/{model.num_units:<5d}  {l:10.3f}  {vl:8.3f}  {va:7.3f}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
ax1.plot(epochs, h["loss"], "o-", label="train")
ax1.plot(epochs, h["val_loss"], "o-", label="validation")
ax1.set(xlabel="epoch", ylabel="loss", title="Loss", xticks=epochs)
ax1.legend()
ax2.bar(epochs, h["active_units"], color="tab:green")
ax2.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
ax2.set(xlabel="epoch", ylabel="units still training",
        title="Active units at the end of each epoch", ylim=(0, model.num_units),
        xticks=epochs)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The learning-rate curves
#
# `freezeout_tf.schedule` holds the schedule as plain NumPy functions, the
# same formulas the train step runs. Unit *i* freezes after the fraction
# `t_i = scale(t_0 + (1 - t_0) i / n)` of training; its rate starts at
# `0.1 / t_i` (with `scale_lr`, the default) and follows a half cosine down to
# zero at its freeze step. The head (black) follows the same curve over the
# whole run.
#
# The optimizer's base rate (0.1 here) stays constant; the train step
# multiplies it by these per-unit factors, and the logged `first_active_lr`
# is the rate of the first unit still training.

# %%
total_steps = EPOCHS * data.steps_per_epoch
fractions = fo.freeze_fractions(model.num_units, T_0, HOW_SCALE)
freeze_at = fo.freeze_steps(total_steps, fractions)[:-1]  # first frozen step of each unit
base_lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
steps = np.arange(total_steps)
lr = base_lr * np.array([fo.lr_multipliers(j, total_steps, fractions) for j in steps])

fig, ax = plt.subplots(figsize=(8, 4))
colors = plt.cm.viridis(np.linspace(0, 0.9, model.num_units))
for i in range(model.num_units):
    ax.plot(steps, lr[:, i], color=colors[i], lw=1)
ax.plot(steps, lr[:, -1], color="black", lw=2, label="head")
ax.set(xlabel="training step", ylabel="learning rate",
       title=f"Per-unit learning rates ({HOW_SCALE}, t_0={T_0}, scaled); "
             "purple = unit 0, yellow = last unit")
ax.legend()
plt.show()
print("unit 0 starts at", lr[0, 0], "and is frozen from step", freeze_at[0], "of", total_steps)

# %% [markdown]
# ## Step time falls as units freeze
#
# Each dot is one training step; the dotted lines mark the steps at which a
# unit freezes, and the green line (right axis) counts the units still
# training. The first step is left out: it includes tracing the graph. On a
# shared CPU single steps are noisy; the running median shows the trend.

# %%
step_ids = np.array(timer.steps)
ms = 1000 * np.array(timer.seconds)
print(f"step 0 (includes tracing): {ms[0] / 1000:.1f} s")
step_ids, ms = step_ids[1:], ms[1:]
window = 9
padded = np.pad(ms, window // 2, mode="edge")
median = np.array([np.median(padded[k:k + window]) for k in range(len(ms))])
active = [model.num_units - fo.num_frozen(j, total_steps, fractions) for j in step_ids]

fig, ax = plt.subplots(figsize=(9, 4))
ax.plot(step_ids, ms, ".", color="tab:blue", alpha=0.4, label="step time")
ax.plot(step_ids, median, color="tab:blue", label=f"running median ({window} steps)")
for s in freeze_at:
    ax.axvline(s, color="grey", ls=":", lw=0.8)
ax.set(xlabel="training step", ylabel="ms per step", ylim=(0, np.percentile(ms, 99) * 1.2),
       title="Time per training step; dotted lines: a unit freezes")
ax.legend(loc="lower left")
ax2 = ax.twinx()
ax2.step(step_ids, active, where="post", color="tab:green")
ax2.set_ylabel("active units", color="tab:green")
ax2.set_ylim(0, model.num_units + 1)
ax2.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
fig.tight_layout()
plt.show()

all_active = ms[step_ids < freeze_at[0]]
last = ms[step_ids >= freeze_at[-1]]
print(f"median step with all units training: {np.median(all_active):.1f} ms")
print(f"median step with every unit frozen:  {np.median(last):.1f} ms"
      if len(last) else "no step ran with every unit frozen")
measured = 1 - ms.sum() / (np.median(all_active) * len(ms))
print(f"time saved over the run (vs. every step at the all-training median): {measured:.0%}")
print(f"compute saved, estimated from the model's FLOPs: "
      f"{estimate_speedup(model, T_0, HOW_SCALE):.0%}")

# %% [markdown]
# The measured saving is wall-clock time on this machine, and the estimate
# counts only conv and dense multiply-accumulates, so the two need not agree.
# See `02_schedules.ipynb` for the schedules and the speedup estimates, and
# `03_bring_your_own_model.ipynb` to use FreezeOut on your own network.
