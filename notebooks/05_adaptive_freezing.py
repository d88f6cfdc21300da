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
# # Adaptive freezing: each unit freezes when its gradient has settled
#
# FreezeOut's schedule freezes unit i at a fixed fraction t_i of the run.
# `AdaptiveFreeze` instead watches each unit's gradient norm inside the
# train step and freezes the unit once that norm stops changing:
#
# * its signal is an exponential moving average (span `window` steps) of
#   the unit's gradient norm, all-reduced over replicas;
# * every `interval` steps it compares the average with its value at the
#   previous check; a unit whose relative change is below `threshold`
#   freezes from the next step, if every unit before it is frozen (frozen
#   units stay a prefix);
# * the decision is written into the same in-graph freeze steps the
#   schedule uses, so the frozen unit's backward pass and updates stop at
#   once, with no retrace and no host round trip.
#
# `FreezeOut(t_0=None, adaptive=AdaptiveFreeze(...))` freezes by the
# criterion alone (learning rates follow the optimizer);
# `FreezeOut(t_0=0.8, adaptive=...)` keeps the schedule and freezes each
# unit at the earlier of t_i and its trigger.
#
# This notebook trains a small conv net on scikit-learn's handwritten
# digits, records each unit's signal at every step, and plots it with the
# freeze steps the criterion chose. With `FREEZEOUT_QUICK=1` the run is
# tiny.

# %%
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quieter TensorFlow
# FREEZEOUT_QUICK=1 (set by the test suite) shrinks the work to a smoke test.
QUICK = os.environ.get("FREEZEOUT_QUICK") == "1"

import keras
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

import freezeout_tf as fo

keras.utils.set_random_seed(0)
EPOCHS, CHANNELS = (3, 8) if QUICK else (20, 32)
BATCH, NUM_UNITS = 32, 5

x, y = load_digits(return_X_y=True)
x = (x.reshape(-1, 8, 8, 1) / 16.0).astype("float32")
if QUICK:
    x, y = x[:320], y[:320]
STEPS_PER_EPOCH = -(-len(x) // BATCH)
print(f"{len(x)} digits, {STEPS_PER_EPOCH} steps per epoch")


# %% [markdown]
# ## The model and the criterion
#
# Five conv-BN-ReLU units and a head. The criterion checks once an epoch
# (`interval` = steps per epoch), smooths over an epoch (`window`), and
# uses the default threshold of 5 %.

# %%
def unit():
    return keras.Sequential([
        keras.layers.Conv2D(CHANNELS, 3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
    ])


model = fo.FreezeOutModel(
    [unit() for _ in range(NUM_UNITS)],
    keras.Sequential([keras.layers.GlobalAveragePooling2D(),
                      keras.layers.Dense(10)]),
)
model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
criterion = fo.AdaptiveFreeze(window=STEPS_PER_EPOCH, threshold=0.05,
                              interval=STEPS_PER_EPOCH)
freezeout = fo.FreezeOut(t_0=None, adaptive=criterion)
freezeout


# %% [markdown]
# ## Recording the signal
#
# The criterion's state is the model's `adaptive_state` (non-trainable
# weights, saved with the model). A small callback copies its moving
# averages and last relative changes after every step; the train step
# itself never waits for the host.

# %%
class SignalRecorder(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.ema, self.change = [], []

    def on_train_batch_end(self, batch, logs=None):
        state = self.model.adaptive_state
        self.ema.append(keras.ops.convert_to_numpy(state.ema))
        self.change.append(keras.ops.convert_to_numpy(state.change))


recorder = SignalRecorder()
history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=2,
                    callbacks=[freezeout, recorder])
print("train step traced", model.train_step_traces, "time(s)")

# %% [markdown]
# ## The freeze steps it chose
#
# `FreezeOut` logs each unit's freeze step (`-1`: not frozen) and its last
# criterion value per epoch; the in-graph freeze steps say the same.

# %%
total = EPOCHS * STEPS_PER_EPOCH
freeze = model.schedule_state.host_freeze_steps()[:-1]
for i, at in enumerate(freeze):
    when = f"step {at} of {total}" if at < total else "never"
    print(f"unit {i}: frozen from {when}; last change "
          f"{history.history[f'unit{i}_change'][-1]:.3f}")
print("active units per epoch:", history.history["active_units"])

# %% [markdown]
# ## The signal per unit
#
# Left: each unit's smoothed gradient norm, with a dotted line where the
# unit froze (it keeps its last value from then on). Right: the relative
# change at each check against the threshold; a unit under the line
# freezes once every unit before it has.

# %%
ema, change = np.array(recorder.ema), np.array(recorder.change)
steps = np.arange(1, len(ema) + 1)
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
for i in range(NUM_UNITS):
    line, = left.plot(steps, ema[:, i], label=f"unit {i}")
    if freeze[i] < total:
        left.axvline(freeze[i], color=line.get_color(), linestyle=":")
    checks = np.arange(criterion.interval, len(change) + 1, criterion.interval)
    values = change[checks - 1, i]
    ok = values >= 0
    right.plot(checks[ok], values[ok], "o-", color=line.get_color())
right.axhline(criterion.threshold, color="k", linestyle="--", label="threshold")
left.set(xlabel="step", ylabel="smoothed gradient norm", yscale="log")
right.set(xlabel="step", ylabel="relative change at check", yscale="log")
left.legend(); right.legend()
fig.tight_layout()

# %% [markdown]
# On the digits benchmark (`scripts/benchmark_adaptive.py`, README
# "Adaptive freezing") the same criterion is compared with no freezing and
# with the FreezeOut schedule, for fine-tuning and from scratch.
