"""Writes the walkthrough notebooks (without outputs) from the cells below.

Edit the cells here, then run ``python notebooks/_build.py`` and commit the
``.ipynb`` files. ``tests/test_notebooks.py`` executes every notebook with
``FREEZEOUT_QUICK=1`` and checks that the committed files carry no outputs.
"""

import pathlib
import textwrap

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent

SETUP = """\
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quieter TensorFlow
# FREEZEOUT_QUICK=1 (set by the test suite) shrinks the work to a smoke test.
QUICK = os.environ.get("FREEZEOUT_QUICK") == "1"
"""


def md(text):
    return new_markdown_cell(textwrap.dedent(text).strip())


def code(text, setup=False):
    text = textwrap.dedent(text).strip()
    return new_code_cell(SETUP + "\n" + text if setup else text)


# A callback of the notebooks' own (01, 04): the time of every training step.
STEP_TIMER = """
class StepTimer(keras.callbacks.Callback):
    \"\"\"Wall-clock seconds of every training step, by global step.\"\"\"

    def on_train_begin(self, logs=None):
        self.steps, self.seconds = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self._step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.steps.append(self._step)

"""


# ---------------------------------------------------------------------------
# 01: quickstart

QUICKSTART = [
    md("""
    # FreezeOut quickstart

    FreezeOut trains a network as a chain of *freeze units*. Each unit gets its
    own cosine-annealed learning rate and, once that rate reaches zero, the unit
    is frozen: it still runs its forward pass, but its backward pass is skipped,
    so later training steps get cheaper.

    This notebook trains a small DenseNet-BC with FreezeOut on an offline
    synthetic data set, then looks at what happened: how many units were still
    training after each epoch, the per-unit learning-rate curves, and the time
    of each training step as units freeze.

    Set `FREEZEOUT_QUICK=1` in the environment for a smoke-test size (the test
    suite does); without it the run is larger: a few minutes on two CPU cores.
    """),
    code(setup=True, text="""
    import time

    import keras
    import matplotlib.pyplot as plt
    import numpy as np

    import freezeout_tf as fo
    from freezeout_tf.data import load_data
    from freezeout_tf.models import densenet_bc
    from freezeout_tf.speedup import estimate_speedup

    keras.utils.set_random_seed(0)
    if QUICK:
        DEPTH, GROWTH, EPOCHS, TRAIN_SIZE, BATCH = 16, 8, 4, 640, 32
    else:
        DEPTH, GROWTH, EPOCHS, TRAIN_SIZE, BATCH = 28, 12, 8, 3000, 50
    # The original's defaults are t_0=0.8 with cubic scaling (the first unit
    # freezes after 51 % of training). A more aggressive schedule makes the
    # freezing easy to see in a short run.
    T_0, HOW_SCALE = 0.5, "linear"
    """),
    md("""
    ## Data

    `load_data("synthetic")` builds CIFAR-shaped images (32x32x3, 100 classes)
    in memory: each class has its own colour, plus a coarse pattern and pixel
    noise, so a network can learn it and nothing is downloaded. The same call
    with `"cifar10"` or `"cifar100"` reads a prepared TensorFlow Datasets copy.
    `data.train(0, EPOCHS)` is the training pipeline (random crop and flip on);
    pass `data.steps_per_epoch` to `fit` as well.
    """),
    code("""
    data = load_data(
        "synthetic",
        batch_size=BATCH,
        synthetic_train_size=TRAIN_SIZE,
        synthetic_validation_size=TRAIN_SIZE // 4,
    )
    print(f"{data.num_train} training images, {data.num_validation} validation "
          f"images, {data.num_classes} classes, {data.steps_per_epoch} steps per epoch")
    """),
    md("""
    ## Model

    `densenet_bc` returns a `FreezeOutModel`: the stem conv, every dense layer
    and every transition are freeze units, in forward order; the final
    BN + classifier is the head, which never freezes. `original_sgd()` is the
    original recipe: SGD with Nesterov momentum 0.9, L2 weight decay 1e-4 and a
    base learning rate of 0.1. Add no other learning-rate schedule: FreezeOut
    supplies it.
    """),
    code("""
    model = densenet_bc(depth=DEPTH, growth_rate=GROWTH, num_classes=data.num_classes)
    model.compile(
        optimizer=fo.original_sgd(),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    print(f"DenseNet-BC L={DEPTH} k={GROWTH}: {model.num_units} freeze units + head")
    print("units:", ", ".join(unit.name for unit in model.freeze_units))
    """),
    md("""
    ## Train with the `FreezeOut` callback

    The callback works out the run's length (`epochs * steps_per_epoch`) and
    places the schedule; from then on the train step itself freezes units at
    the exact step, inside one traced graph. It adds two logs: `active_units`
    (units still training, head not counted) and `learning_rate` (the base
    rate).

    `StepTimer` is a small callback of our own: the wall-clock time of every
    training step. It comes after `FreezeOut` in the list.
    """),
    code(STEP_TIMER + textwrap.dedent("""
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
    """)),
    md("""
    ## Active units per epoch

    `active_units` is logged at the end of each epoch. Earlier units freeze
    first, so the frozen units are always a prefix of the network.
    """),
    code("""
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
    """),
    md("""
    ## The learning-rate curves

    `freezeout_tf.schedule` holds the schedule as plain NumPy functions, the
    same formulas the train step runs. Unit *i* freezes after the fraction
    `t_i = scale(t_0 + (1 - t_0) i / n)` of training; its rate starts at
    `0.1 / t_i` (with `scale_lr`, the default) and follows a half cosine down to
    zero at its freeze step. The head (black) follows the same curve over the
    whole run.

    The logged `learning_rate` is only the optimizer's base rate (0.1 here, constant);
    the train step multiplies it by these per-unit factors.
    """),
    code("""
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
    """),
    md("""
    ## Step time falls as units freeze

    Each dot is one training step; the dotted lines mark the steps at which a
    unit freezes, and the green line (right axis) counts the units still
    training. The first step is left out: it includes tracing the graph. On a
    shared CPU single steps are noisy; the running median shows the trend.
    """),
    code("""
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
    """),
    md("""
    The measured saving is wall-clock time on this machine, and the estimate
    counts only conv and dense multiply-accumulates, so the two need not agree.
    See `02_schedules.ipynb` for the schedules and the speedup estimates, and
    `03_bring_your_own_model.ipynb` to use FreezeOut on your own network.
    """),
]


# ---------------------------------------------------------------------------
# 02: schedules

SCHEDULES = [
    md("""
    # FreezeOut schedules and their estimated speedup

    Which unit freezes when, how fast each unit learns, and how much training
    compute that saves, for the three scalings of the original (`linear`,
    `squared`, `cubic`), with and without learning-rate scaling. Nothing here
    trains a network. With `FREEZEOUT_QUICK=1` the curves are drawn on coarser grids.
    """),
    code(setup=True, text="""
    import matplotlib.pyplot as plt
    import numpy as np

    import freezeout_tf as fo
    from freezeout_tf.models import densenet_bc, densenet_bc_num_units
    from freezeout_tf.speedup import (
        calc_speedup, estimate_speedup, speedup_from_costs, t0_for_speedup, unit_flops,
    )

    SCALINGS = ("linear", "squared", "cubic")
    COLORS = {"linear": "tab:blue", "squared": "tab:orange", "cubic": "tab:green"}
    DEPTH, GROWTH = 76, 12  # DenseNet-BC L=76 k=12, the original's default
    N = densenet_bc_num_units(DEPTH)  # freeze units; the head is unit N
    T = 200 if QUICK else 1000  # notional training steps for the curves
    T0_GRID = np.linspace(0.1, 1.0, 10 if QUICK else 46)
    print(f"DenseNet-BC L={DEPTH}: {N} freeze units, head index {N}")
    """),
    md("""
    ## When each unit freezes: t_i

    Unit *i* of *n* trains for the fraction

    `t_i = scale(t_0 + (1 - t_0) * i / n)`

    of the run and is frozen after that. `t_0` is given before scaling, so with
    cubic scaling and `t_0 = 0.8` the first unit freezes at 0.8³ = 0.512. The
    head (`i = n`) always gets `t = 1`.
    """),
    code("""
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
    """),
    md("""
    ## Per-unit learning rates

    While unit *i* trains, its learning rate at step *j* of *T* is

    `lr_i(j) = 0.5 * lr_i(0) * (1 + cos(pi * j / (t_i * T)))`

    with `lr_i(0) = alpha / t_i` when scaled (`scale_lr=True`, the default) and `alpha`
    when not. Scaling gives units that train for a shorter time a larger start.
    Below, the multiplier `lr_i / alpha` for every unit, `t_0 = 0.8`
    (purple: unit 0, yellow: last unit, black: head).
    """),
    code("""
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
    """),
    md("""
    ## Estimated speedup

    Two estimates of the fraction of training compute saved:

    * `calc_speedup(k, m, t_0, how)` is the original's formula for DenseNet-BC,
      kept exactly: each dense layer's cost from a closed form, backward taken to
      cost the same as forward, transitions and head left out, and the linear
      result multiplied by 1.3.
    * `estimate_speedup(model, t_0, how)` counts the conv and dense
      multiply-accumulates of each unit of a real model (`unit_flops`) and takes
      the backward pass to cost twice the forward.

    First the original's check value (k = 12, m = 12, t_0 = 0.8, cubic: 17.8 %):
    """),
    code("""
    m = (DEPTH - 4) // 6
    print(f"calc_speedup(k={GROWTH}, m={m}, t_0=0.8, cubic) = {calc_speedup(GROWTH, m, 0.8, 'cubic'):.4f}")

    model = densenet_bc(depth=DEPTH, growth_rate=GROWTH)
    costs = unit_flops(model)  # forward MACs per image of each unit and the head
    print(f"forward cost per image: {sum(costs) / 1e6:.0f} M multiply-accumulates")
    # estimate_speedup == speedup_from_costs(unit_flops(model), freeze_fractions(...));
    # reusing the costs avoids a forward pass per t_0.
    assert np.isclose(estimate_speedup(model, 0.8, "cubic"),
                      speedup_from_costs(costs, fo.freeze_fractions(N, 0.8, "cubic")))

    print("\\n t_0  " + "  ".join(f"{how:>17s}" for how in SCALINGS))
    print("      " + "  ".join(f"{'original   model':>17s}" for _ in SCALINGS))
    for t_0 in (0.5, 0.6, 0.7, 0.8, 0.9):
        cells = [f"{calc_speedup(GROWTH, m, t_0, how):8.3f} "
                 f"{speedup_from_costs(costs, fo.freeze_fractions(N, t_0, how)):8.3f}"
                 for how in SCALINGS]
        print(f" {t_0:.1f}  " + "  ".join(cells))
    """),
    code("""
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
    """),
    md("""
    Both estimates fall to zero at `t_0 = 1` (nothing freezes early). For
    squared and cubic the model-based estimate is the larger one: it counts a
    skipped backward pass as twice the forward pass, the original as once.
    For linear the two nearly coincide, the original's factor of 1.3 making
    up for most of that difference. Either way these are compute estimates;
    the wall-clock saving also depends on the parts not counted and on the
    hardware.

    ## Picking t_0 for a wanted speedup

    `t0_for_speedup(model, target, how)` inverts `estimate_speedup`: the `t_0`
    at which the model-based estimate equals `target`. A target that no `t_0`
    reaches raises `ValueError` with the maximum.
    """),
    code("""
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
        print("\\nasking for 80 % with cubic:", err)
    """),
    md("""
    Pass the chosen value to the callback, e.g.
    `FreezeOut(t_0=t0_for_speedup(model, 0.15, "cubic"), how_scale="cubic")`.
    How much accuracy a speedup costs is an empirical question: the
    original's README says speedups under 20 % should stay within a 3 %
    relative error envelope, and around 10 % seem to cost nothing for scaled
    cubic and unscaled linear.
    """),
]


# ---------------------------------------------------------------------------
# 03: bring your own model

BYOM = [
    md("""
    # FreezeOut on your own Keras model

    FreezeOut needs the network as an ordered chain of *freeze units* plus a
    *head* that never freezes. This notebook turns a Keras network into a
    `FreezeOutModel` in two ways, trains it with FreezeOut, writes TensorBoard
    and metrics logs, saves it as `.keras`, reloads it and continues training.
    With `FREEZEOUT_QUICK=1` the model and data are tiny.
    """),
    code(setup=True, text="""
    import csv
    import math
    import pathlib
    import tempfile

    import keras
    import matplotlib.pyplot as plt
    import numpy as np

    import freezeout_tf as fo
    from freezeout_tf.data import make_synthetic_arrays
    from freezeout_tf.summaries import FreezeOutSummaries
    from freezeout_tf.training_log import MetricsLog, MetricsLogger, read_log

    keras.utils.set_random_seed(0)
    if QUICK:
        NUM_TRAIN, NUM_CLASSES, WIDTH, EPOCHS, FIRST_EPOCHS = 512, 10, 8, 4, 2
    else:
        NUM_TRAIN, NUM_CLASSES, WIDTH, EPOCHS, FIRST_EPOCHS = 5000, 100, 32, 8, 4
    BATCH = 32
    WORK = pathlib.Path(tempfile.mkdtemp(prefix="freezeout_byom_"))  # logs and saved model
    print("writing to", WORK)
    """),
    md("""
    Data: CIFAR-shaped synthetic images from `make_synthetic_arrays` (each class
    has its own colour, plus a coarse pattern and noise), scaled to about zero
    mean and unit spread.
    """),
    code("""
    images, labels = make_synthetic_arrays(NUM_TRAIN + NUM_TRAIN // 4, NUM_CLASSES, seed=0)
    images = (images.astype("float32") / 255.0 - 0.5) / 0.25
    x_train, y_train = images[:NUM_TRAIN], labels[:NUM_TRAIN]
    x_val, y_val = images[NUM_TRAIN:], labels[NUM_TRAIN:]
    print(x_train.shape, x_val.shape)
    """),
    md("""
    ## Way 1: a `keras.Sequential` of blocks

    Write the network as a `Sequential` whose layers are blocks (nested
    `Sequential`s or any other layers). `FreezeOutModel.from_sequential` makes
    each block a freeze unit, except the last `num_head_layers`, which form the
    head.

    What makes a good unit: units run one after another, each taking the
    previous one's output, so any skip connection must stay inside a unit.
    Units freeze in order, first to last, so the first unit should be the
    input side of the network. A frozen unit runs its BatchNorm layers in
    inference mode, on their moving statistics, so those must have caught up
    by the time it freezes: the blocks here use `momentum=0.9` (PyTorch's
    default, as the built-in models do) instead of Keras' 0.99, which adapts
    slowly and in a short run can leave them far from the data.
    """),
    code("""
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
    """),
    md("""
    ## Way 2: hand-picked blocks

    If the network is a flat list of layers (or you want coarser units), group
    the layers yourself and pass the units and the head to `FreezeOutModel`.
    The units reuse the same layer objects, and so the same weights. Each unit
    can be any Keras layer or model.
    """),
    code("""
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
    """),
    md("""
    ## Train, with TensorBoard and metrics logs

    The train step below runs the first `FIRST_EPOCHS` of an `EPOCHS`-epoch run;
    the rest comes after saving and reloading. So that both parts follow one
    schedule, `FreezeOut` gets the whole run's length as `total_steps`.

    Put `FreezeOut` first in the callback list: the callbacks after it
    (`CSVLogger`, `TensorBoard`, ...) then see its `active_units` and
    `learning_rate` logs. Besides Keras' own `CSVLogger` and `TensorBoard`, this
    uses two helpers of the package that the training script uses too:
    `MetricsLogger` (a JSON-lines log) and `FreezeOutSummaries` (per-unit
    learning-rate multipliers for TensorBoard).
    """),
    code("""
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
    """),
    md("""
    (`MetricsLogger` printed one line per epoch; `verbose=0` turned Keras'
    progress bar off.)

    ## Save, reload, continue

    `model.save` writes the units, head, optimizer state (including its step
    counter) into one `.keras` file; `keras.models.load_model` needs no
    `custom_objects`, since `freezeout_tf` registers its classes. The schedule
    is a function of the optimizer's step, so continuing is
    `fit(..., epochs=EPOCHS, initial_epoch=FIRST_EPOCHS)` with the same
    `FreezeOut` settings.
    """),
    code("""
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
    """),
    md("""
    ## Read the metrics logs

    `CSVLogger` wrote one row per epoch with every log, `active_units`
    included; with `append=True` the continued run added its rows to the same
    file. The dotted line marks where the model was saved and reloaded.
    """),
    code("""
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
    """),
    md("""
    The JSON-lines log has the same format as the training script's
    (`scripts/train_cifar.py --output-dir ...`): per epoch one training record
    and one validation record, errors in percent. `read_log` reads it.
    """),
    code("""
    for record in read_log(str(JSONL_PATH)):
        print({k: v for k, v in record.items() if k != "time"})
    """),
    md("""
    ## Watch it in TensorBoard

    Open the logs with

        tensorboard --logdir <LOG_DIR>

    and go to http://localhost:6006 (in Jupyter: `%load_ext tensorboard`, then
    `%tensorboard --logdir <LOG_DIR>`). `keras.callbacks.TensorBoard` wrote
    `train/` and `validation/`, with `epoch_active_units` among the training
    scalars; `FreezeOutSummaries` wrote `freezeout/`. Here we read the
    training tags back from the event files.
    """),
    code("""
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
    """),
]


# ---------------------------------------------------------------------------
# 04: fine-tuning a functional network

FINE_TUNING = [
    md("""
    # Fine-tuning a functional network with FreezeOut

    Most Keras networks are functional graphs with skip connections, not
    chains. `FreezeOutModel.from_model` cuts such a network into freeze
    units at its *cut points*, the tensors that every path from the input to
    the output passes through, and shares its layers and weights (nothing is
    copied).

    This notebook:

    1. builds `keras.applications.MobileNetV2` (`weights=None`) and lists the
       cut points it has;
    2. "pretrains" it on task A, offline, on synthetic images made here, and
       saves it as `.keras`;
    3. loads it, replaces the classifier head for task B, splits it into
       freeze units and fine-tunes with FreezeOut, keeping the first unit
       frozen from the start (`frozen_from_start=1`);
    4. plots the step time falling as units freeze.

    **Starting from ImageNet weights** (on a machine with internet, which this
    notebook does not need): build the backbone with `weights="imagenet"`
    instead of pretraining it, at an input size ImageNet weights exist for
    (96 to 224 for MobileNetV2), and feed it images scaled with
    `keras.applications.mobilenet_v2.preprocess_input`:

        backbone = keras.applications.MobileNetV2(
            weights="imagenet", include_top=False, pooling="avg",
            input_shape=(96, 96, 3), alpha=0.35)

    then continue at step 3 with that backbone. With `FREEZEOUT_QUICK=1` the
    runs are tiny.
    """),
    code(setup=True, text="""
    import pathlib
    import tempfile
    import time

    import keras
    import matplotlib.pyplot as plt
    import numpy as np

    import freezeout_tf as fo
    from freezeout_tf.data import make_synthetic_arrays

    keras.utils.set_random_seed(0)
    if QUICK:
        NUM_A, NUM_B, PRETRAIN_EPOCHS, EPOCHS, NUM_UNITS = 512, 256, 1, 2, 4
    else:
        NUM_A, NUM_B, PRETRAIN_EPOCHS, EPOCHS, NUM_UNITS = 6000, 3000, 6, 8, 6
    BATCH, SIZE, ALPHA = 32, 32, 0.35
    CLASSES_A, CLASSES_B = 20, 4
    WORK = pathlib.Path(tempfile.mkdtemp(prefix="freezeout_finetune_"))
    """),
    md("""
    ## The cut points of MobileNetV2

    `fo.cut_points(model)` lists the layers whose output is a cut point. An
    inverted-residual block with a residual connection ends in an `Add`, the
    only cut point of the block; a block without one is a plain chain, cut
    between every pair of its layers. `split_model` (what `from_model` uses)
    then makes *segments* between consecutive cut points; a segment without
    weights (a ReLU, a padding) joins the one before it.
    """),
    code("""
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
    """),
    md("""
    ## Task A: pretrain and save

    Synthetic CIFAR-shaped images of 20 classes (each class has its own
    colour, plus a coarse pattern and noise). The network here is an ordinary
    Keras model: the backbone, nested as one layer, and a classifier. Keras'
    applications use BatchNorm momentum 0.999, which averages over ~1000
    steps; a frozen unit runs its BatchNorm on those moving statistics, so for
    these short runs we lower it to 0.9 (not needed with ImageNet weights,
    whose statistics are already settled).
    """),
    code("""
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
    """),
    md("""
    ## Task B: new head, split, fine-tune

    The recipe:

    1. load the trained model and take its backbone (here the nested model;
       for a flat model, `keras.Model(loaded.input, loaded.get_layer(NAME).output)`);
    2. put a new classifier for task B on it, as a functional model;
    3. `FreezeOutModel.from_model(..., num_units=N)`: the cut points inside the
       nested backbone are found, and consecutive segments are grouped into `N`
       units of about equal forward cost; the new classifier is the head;
    4. fit with `FreezeOut(..., frozen_from_start=k)`: units `0..k-1` keep
       their pretrained weights from step 0 and run no backward pass; the
       other units follow the FreezeOut schedule, unit `k` freezing first.

    Task B: 4 superclasses of the 20 task-A colours, on new images.
    """),
    code("""
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
    """),
    code(STEP_TIMER + textwrap.dedent("""
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
    """)),
    md("""
    ## Step time falls as units freeze

    Each dot is one training step (the first, which traces the graph, is left
    out); dotted lines mark the steps at which a unit freezes.
    """),
    code("""
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
    """),
    md("""
    The split model shares its layers with `loaded`: fine-tuning changed the
    loaded model's weights too, and freezing set `trainable = False` on its
    layers. Split a fresh copy (`keras.models.clone_model`, then
    `set_weights`) if you need the original untouched. Pass
    `boundaries=[layer names]` instead of `num_units` to choose the cuts
    yourself; each must be a cut point.
    """),
]


# ---------------------------------------------------------------------------
# 05: adaptive freezing

ADAPTIVE = [
    md("""
    # Adaptive freezing: each unit freezes when its gradient has settled

    FreezeOut's schedule freezes unit i at a fixed fraction t_i of the run.
    `AdaptiveFreeze` instead watches each unit's gradient norm inside the
    train step and freezes the unit once that norm stops changing:

    * its signal is an exponential moving average (span `window` steps) of
      the unit's gradient norm, all-reduced over replicas;
    * every `interval` steps it compares the average with its value at the
      previous check; a unit whose relative change is below `threshold`
      freezes from the next step, if every unit before it is frozen (frozen
      units stay a prefix);
    * the decision is written into the same in-graph freeze steps the
      schedule uses, so the frozen unit's backward pass and updates stop at
      once, with no retrace and no host round trip.

    `FreezeOut(t_0=None, adaptive=AdaptiveFreeze(...))` freezes by the
    criterion alone (learning rates follow the optimizer);
    `FreezeOut(t_0=0.8, adaptive=...)` keeps the schedule and freezes each
    unit at the earlier of t_i and its trigger.

    This notebook trains a small conv net on scikit-learn's handwritten
    digits, records each unit's signal at every step, and plots it with the
    freeze steps the criterion chose. With `FREEZEOUT_QUICK=1` the run is
    tiny.
    """),
    code(setup=True, text="""
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
    """),
    md("""
    ## The model and the criterion

    Five conv-BN-ReLU units and a head. The criterion checks once an epoch
    (`interval` = steps per epoch), smooths over an epoch (`window`), and
    uses the default threshold of 5 %.
    """),
    code("""
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
    """),
    md("""
    ## Recording the signal

    The criterion's state is the model's `adaptive_state` (non-trainable
    weights, saved with the model). A small callback copies its moving
    averages and last relative changes after every step; the train step
    itself never waits for the host.
    """),
    code("""
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
    """),
    md("""
    ## The freeze steps it chose

    `FreezeOut` logs each unit's freeze step (`-1`: not frozen) and its last
    criterion value per epoch; the in-graph freeze steps say the same.
    """),
    code("""
    total = EPOCHS * STEPS_PER_EPOCH
    freeze = model.schedule_state.host_freeze_steps()[:-1]
    for i, at in enumerate(freeze):
        when = f"step {at} of {total}" if at < total else "never"
        print(f"unit {i}: frozen from {when}; last change "
              f"{history.history[f'unit{i}_change'][-1]:.3f}")
    print("active units per epoch:", history.history["active_units"])
    """),
    md("""
    ## The signal per unit

    Left: each unit's smoothed gradient norm, with a dotted line where the
    unit froze (it keeps its last value from then on). Right: the relative
    change at each check against the threshold; a unit under the line
    freezes once every unit before it has.
    """),
    code("""
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
    """),
    md("""
    On the digits benchmark (`scripts/benchmark_adaptive.py`, README
    "Adaptive freezing") the same criterion is compared with no freezing and
    with the FreezeOut schedule, for fine-tuning and from scratch.
    """),
]


def write(name, cells):
    nb = new_notebook(cells=cells)
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: rebuilding changes only what changed
    nb.metadata["kernelspec"] = {
        "name": "python3", "display_name": "Python 3", "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    write("01_quickstart.ipynb", QUICKSTART)
    write("02_schedules.ipynb", SCHEDULES)
    write("03_bring_your_own_model.ipynb", BYOM)
    write("04_fine_tuning.ipynb", FINE_TUNING)
    write("05_adaptive_freezing.ipynb", ADAPTIVE)
