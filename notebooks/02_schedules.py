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
# # FreezeOut schedules and their estimated speedup
#
# Which unit freezes when, how fast each unit learns, and how much training
# compute that saves, for the three scalings of the original (`linear`,
# `squared`, `cubic`), with and without learning-rate scaling. Nothing here
# trains a network. With `FREEZEOUT_QUICK=1` the curves are drawn on coarser grids.

# %%
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quieter TensorFlow
# FREEZEOUT_QUICK=1 (set by the test suite) shrinks the work to a smoke test.
QUICK = os.environ.get("FREEZEOUT_QUICK") == "1"

import matplotlib.pyplot as plt
import numpy as np

import freezeout_tf as fo
from freezeout_tf.models import densenet_bc, densenet_bc_num_units
from freezeout_tf.estimates.speedup import (
    calc_speedup, estimate_speedup, speedup_from_costs, t0_for_speedup, unit_flops,
)

SCALINGS = ("linear", "squared", "cubic")
COLORS = {"linear": "tab:blue", "squared": "tab:orange", "cubic": "tab:green"}
DEPTH, GROWTH = 76, 12  # DenseNet-BC L=76 k=12, the original's default
N = densenet_bc_num_units(DEPTH)  # freeze units; the head is unit N
T = 200 if QUICK else 1000  # notional training steps for the curves
T0_GRID = np.linspace(0.1, 1.0, 10 if QUICK else 46)
print(f"DenseNet-BC L={DEPTH}: {N} freeze units, head index {N}")

# %% [markdown]
# ## When each unit freezes: t_i
#
# Unit *i* of *n* trains for the fraction
#
# `t_i = scale(t_0 + (1 - t_0) * i / n)`
#
# of the run and is frozen after that. `t_0` is given before scaling, so with
# cubic scaling and `t_0 = 0.8` the first unit freezes at 0.8³ = 0.512. The
# head (`i = n`) always gets `t = 1`.

# %%
T_0 = 0.8
units = np.arange(N + 1)
fig, ax = plt.subplots(figsize=(7, 4))
for how in SCALINGS:
    t = fo.freeze_fractions(N, T_0, how)
    ax.plot(units, t, "o-", ms=3, color=COLORS[how], label=how)
    print(f"{how:8s} unit 0: t={t[0]:.3f}   unit {N - 1}: t={t[-2]:.3f}   head: t={t[-1]:.0f}")
ax.set(xlabel="unit index i (head = last)", ylabel="t_i (fraction of training)",
       title=f"Freeze point of each unit, t_0 = {T_0}", ylim=(0, 1.05))
ax.legend()
plt.show()

# %% [markdown]
# ## Per-unit learning rates
#
# While unit *i* trains, its learning rate at step *j* of *T* is
#
# `lr_i(j) = 0.5 * lr_i(0) * (1 + cos(pi * j / (t_i * T)))`
#
# with `lr_i(0) = alpha / t_i` when scaled (`scale_lr=True`, the default) and `alpha`
# when not. Scaling gives units that train for a shorter time a larger start.
# Below, the multiplier `lr_i / alpha` for every unit, `t_0 = 0.8`
# (purple: unit 0, yellow: last unit, black: head).

# %%
steps = np.arange(T)
colors = plt.cm.viridis(np.linspace(0, 0.9, N))
fig, axes = plt.subplots(2, 3, figsize=(12, 6), sharex=True, sharey=True)
for row, scale_lr in enumerate((True, False)):
    for col, how in enumerate(SCALINGS):
        ax = axes[row, col]
        fractions = fo.freeze_fractions(N, T_0, how)
        m = np.array([fo.lr_multipliers(j, T, fractions, scale_lr=scale_lr) for j in steps])
        for i in range(N):
            ax.plot(steps / T, m[:, i], color=colors[i], lw=0.8)
        ax.plot(steps / T, m[:, -1], color="black", lw=1.5)
        ax.set_title(f"{how}, {'scaled' if scale_lr else 'unscaled'}")
        if row == 1:
            ax.set_xlabel("fraction of training")
        if col == 0:
            ax.set_ylabel("lr multiplier")
fig.suptitle(f"Per-unit learning-rate multipliers, t_0 = {T_0}")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Estimated speedup
#
# Two estimates of the fraction of training compute saved:
#
# * `calc_speedup(k, m, t_0, how)` is the original's formula for DenseNet-BC,
#   kept exactly: each dense layer's cost from a closed form, backward taken to
#   cost the same as forward, transitions and head left out, and the linear
#   result multiplied by 1.3.
# * `estimate_speedup(model, t_0, how)` counts the conv and dense
#   multiply-accumulates of each unit of a real model (`unit_flops`) and takes
#   the backward pass to cost twice the forward.
#
# First the original's check value (k = 12, m = 12, t_0 = 0.8, cubic: 17.8 %):

# %%
m = (DEPTH - 4) // 6
print(f"calc_speedup(k={GROWTH}, m={m}, t_0=0.8, cubic) = {calc_speedup(GROWTH, m, 0.8, 'cubic'):.4f}")

model = densenet_bc(depth=DEPTH, growth_rate=GROWTH)
costs = unit_flops(model)  # forward MACs per image of each unit and the head
print(f"forward cost per image: {sum(costs) / 1e6:.0f} M multiply-accumulates")
# estimate_speedup == speedup_from_costs(unit_flops(model), freeze_fractions(...));
# reusing the costs avoids a forward pass per t_0.
assert np.isclose(estimate_speedup(model, 0.8, "cubic"),
                  speedup_from_costs(costs, fo.freeze_fractions(N, 0.8, "cubic")))

print("\n t_0  " + "  ".join(f"{how:>17s}" for how in SCALINGS))
print("      " + "  ".join(f"{'original   model':>17s}" for _ in SCALINGS))
for t_0 in (0.5, 0.6, 0.7, 0.8, 0.9):
    cells = [f"{calc_speedup(GROWTH, m, t_0, how):8.3f} "
             f"{speedup_from_costs(costs, fo.freeze_fractions(N, t_0, how)):8.3f}"
             for how in SCALINGS]
    print(f" {t_0:.1f}  " + "  ".join(cells))

# %%
fig, ax = plt.subplots(figsize=(8, 4.5))
for how in SCALINGS:
    original = [calc_speedup(GROWTH, m, t, how) for t in T0_GRID]
    model_based = [speedup_from_costs(costs, fo.freeze_fractions(N, t, how)) for t in T0_GRID]
    ax.plot(T0_GRID, original, "-", color=COLORS[how], label=f"{how}: calc_speedup (original)")
    ax.plot(T0_GRID, model_based, "--", color=COLORS[how], label=f"{how}: estimate_speedup")
ax.set(xlabel="t_0", ylabel="estimated fraction of compute saved",
       title=f"Estimated speedup, DenseNet-BC L={DEPTH} k={GROWTH}")
ax.set_ylim(bottom=0)
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# Both estimates fall to zero at `t_0 = 1` (nothing freezes early). For
# squared and cubic the model-based estimate is the larger one: it counts a
# skipped backward pass as twice the forward pass, the original as once.
# For linear the two nearly coincide, the original's factor of 1.3 making
# up for most of that difference. Either way these are compute estimates;
# the wall-clock saving also depends on the parts not counted and on the
# hardware.
#
# ## Picking t_0 for a wanted speedup
#
# `t0_for_speedup(model, target, how)` inverts `estimate_speedup`: the `t_0`
# at which the model-based estimate equals `target`. A target that no `t_0`
# reaches raises `ValueError` with the maximum.

# %%
print("target  " + "  ".join(f"{how:>8s}" for how in SCALINGS) + "   (t_0)")
for target in (0.10, 0.15, 0.20):
    row = []
    for how in SCALINGS:
        t_0 = t0_for_speedup(model, target, how)
        assert abs(estimate_speedup(model, t_0, how) - target) < 1e-6
        row.append(f"{t_0:8.3f}")
    print(f"{target:6.0%}  " + "  ".join(row))

try:
    t0_for_speedup(model, 0.8, "cubic")
except ValueError as err:
    print("\nasking for 80 % with cubic:", err)

# %% [markdown]
# Pass the chosen value to the callback, e.g.
# `FreezeOut(t_0=t0_for_speedup(model, 0.15, "cubic"), how_scale="cubic")`.
# How much accuracy a speedup costs is an empirical question: the
# original's README says speedups under 20 % should stay within a 3 %
# relative error envelope, and around 10 % seem to cost nothing for scaled
# cubic and unscaled linear.
