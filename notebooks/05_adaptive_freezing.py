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
# # Adaptive freezing: the front units freeze once their gradients settle
#
# FreezeOut's schedule freezes unit i at a fixed fraction t_i of the run.
# `AdaptiveFreeze()` (the default criterion, `"rank"`, AutoFreeze's rule)
# instead watches each unit's gradient norm inside the train step:
#
# * the run is cut into 10 evaluation intervals (`intervals=10`);
# * at the end of each, every unit still training gets the relative change
#   of its mean gradient norm over the interval against the previous
#   interval's;
# * the front units whose change is below the median (`percentile=50`) of
#   the training units' changes freeze from the next step; a unit freezes
#   only once every unit before it has (frozen units stay a prefix). The
#   comparison is among units, so there is no threshold to set;
# * the decision is written into the same in-graph freeze steps the
#   schedule uses, so a frozen unit's backward pass and updates stop at
#   once, with no retrace and no host round trip.
#
# `FreezeOut(t_0=None, adaptive=AdaptiveFreeze())` freezes by the criterion
# alone (learning rates follow the optimizer).
#
# This notebook trains a small conv net on scikit-learn's handwritten
# digits with the default criterion and, from the same initial weights,
# without freezing. It reports the freeze steps the criterion chose, the
# share of unit backward passes they skipped and the test accuracy of both
# runs, and plots the criterion's signal. It does not time anything: the
# speed measurements are the benchmark's (docs/guides/adaptive.md).
# With `FREEZEOUT_QUICK=1` the run is tiny.

# %%
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quieter TensorFlow
# FREEZEOUT_QUICK=1 (set by the test suite) shrinks the work to a smoke test.
QUICK = os.environ.get("FREEZEOUT_QUICK") == "1"

import keras
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import freezeout_tf as fo

EPOCHS, CHANNELS = (3, 8) if QUICK else (20, 32)
BATCH, NUM_UNITS = 32, 5

x, y = load_digits(return_X_y=True)
x = (x.reshape(-1, 8, 8, 1) / 16.0).astype("float32")
if QUICK:
    x, y = x[:320], y[:320]
x, test_x, y, test_y = train_test_split(x, y, test_size=0.25, stratify=y,
                                        random_state=0)
STEPS_PER_EPOCH = -(-len(x) // BATCH)
TOTAL = EPOCHS * STEPS_PER_EPOCH
print(f"{len(x)} training digits, {len(test_x)} test digits, "
      f"{STEPS_PER_EPOCH} steps per epoch, {TOTAL} steps")


# %% [markdown]
# ## The model and the criterion
#
# Five conv-BN-ReLU units and a head. `AdaptiveFreeze()` places its 10
# intervals over the run's `epochs * steps_per_epoch` steps.

# %%
def unit():
    return keras.Sequential([
        keras.layers.Conv2D(CHANNELS, 3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
    ])


def build():
    """The same initial weights at every call."""
    keras.utils.set_random_seed(0)
    return fo.FreezeOutModel(
        [unit() for _ in range(NUM_UNITS)],
        keras.Sequential([keras.layers.GlobalAveragePooling2D(),
                          keras.layers.Dense(10)]),
    )


def compile_(model):
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


model = build()
compile_(model)
criterion = fo.AdaptiveFreeze()
INTERVAL = criterion.check_interval(TOTAL)
freezeout = fo.FreezeOut(t_0=None, adaptive=criterion)
print(freezeout, f"- an interval is {INTERVAL} steps")


# %% [markdown]
# ## Recording the signal
#
# The criterion's state is the model's `adaptive_state` (non-trainable
# weights, saved with the model). For the plots, a small callback copies
# each unit's last interval mean (`reference`) and last relative change
# (`change`) at the end of every interval. That host read is the
# notebook's; the criterion itself never waits for the host.

# %%
class SignalRecorder(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.step, self.checks, self.mean, self.change = 0, [], [], []

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % INTERVAL == 0:
            state = self.model.adaptive_state
            self.checks.append(self.step)
            self.mean.append(keras.ops.convert_to_numpy(state.reference))
            self.change.append(keras.ops.convert_to_numpy(state.change))


recorder = SignalRecorder()
history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=2,
                    callbacks=[freezeout, recorder])
print("train step traced", model.train_step_traces, "time(s)")

# %% [markdown]
# ## The freeze steps it chose, and what they skipped
#
# `FreezeOut` keeps each unit's freeze step (`-1`: not frozen) and its last
# relative change per epoch in its `unit_history` (out of the progress bar); the in-graph freeze steps say the same. A unit
# frozen from step s skips its backward pass (and its updates) for the
# remaining `TOTAL - s` steps.

# %%
freeze = model.schedule_state.host_freeze_steps()[:-1]
for i, at in enumerate(freeze):
    when = f"step {at} of {TOTAL}" if at < TOTAL else "never"
    print(f"unit {i}: frozen from {when}; last change "
          f"{freezeout.unit_history[f'unit{i}_change'][-1]:.3f}")
print("active units per epoch:", history.history["active_units"])
skipped = np.clip(TOTAL - freeze, 0, None).sum() / (NUM_UNITS * TOTAL)
print(f"unit backward passes skipped: {100 * skipped:.0f} %")

# %% [markdown]
# ## Against no freezing, from the same initial weights
#
# The same units and head as a plain `keras.Sequential`, trained as long.

# %%
plain = build()
plain = keras.Sequential(list(plain.freeze_units) + [plain.head])
compile_(plain)
plain.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0)
for name, net in [("no freezing", plain), ("AdaptiveFreeze()", model)]:
    _, accuracy = net.evaluate(test_x, test_y, verbose=0)
    print(f"{name}: test accuracy {100 * accuracy:.2f} %")

# %% [markdown]
# ## The signal per unit
#
# Left: each unit's mean gradient norm over each interval, with a dotted
# line where the unit froze (it keeps its last value from then on). Right:
# the relative change at each check of the units still training, and the
# median of those changes (dashed): the front units below it freeze.

# %%
checks = np.array(recorder.checks)
mean, change = np.array(recorder.mean), np.array(recorder.change)
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
medians = []
for j, step in enumerate(checks):
    training = (freeze >= step) & (change[j] >= 0)  # checked at this step
    medians.append(np.median(change[j][training]) if training.any()
                   else np.nan)
for i in range(NUM_UNITS):
    line, = left.plot(checks, mean[:, i], "o-", label=f"unit {i}")
    if freeze[i] < TOTAL:
        left.axvline(freeze[i], color=line.get_color(), linestyle=":")
    training = (freeze[i] >= checks) & (change[:, i] >= 0)
    right.plot(checks[training], change[training, i], "o-",
               color=line.get_color(), label=f"unit {i}")
right.plot(checks, medians, "k--", label="median (training units)")
left.set(xlabel="step", ylabel="mean gradient norm over the interval",
         yscale="log")
right.set(xlabel="step", ylabel="relative change at the check")
left.legend(); right.legend()
fig.tight_layout()

# %% [markdown]
# On the pre-registered digits benchmark (`scripts/benchmark_adaptive.py`,
# docs/guides/adaptive.md, `benchmarks/adaptive/adaptive.md`) the default is
# compared with no freezing and with the FreezeOut schedule, 3 seeds, on
# two fine-tuning tasks (a conv net and a small ViT) and DenseNet-BC from
# scratch; that guide gives its accuracy, wall-clock speed-up and freeze
# steps, and which targets it met.
