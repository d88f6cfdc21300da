"""Adaptive freezing vs the FreezeOut schedule vs no freezing, on real data.

scikit-learn's handwritten digits (1797 8x8 images, shipped with the
package; the `benchmark` extra installs it), nearest-upsampled:

* **fine-tune**: a small conv net (6 conv-BN-ReLU units, 16x16 inputs) is
  pretrained on digits 0-4, then fine-tuned on digits 5-9 with a new head;
* **scratch**: a DenseNet-BC (L=22, k=8, 32x32x3 inputs) trained from scratch
  on all ten digits.

Each task runs, per seed and interleaved, three ways with the same optimizer,
data order and initial weights: "none" (a plain Keras model over the same
layers), "schedule" (`FreezeOut()`, t_0=0.8 cubic) and "adaptive"
(`FreezeOut(t_0=None, adaptive=AdaptiveFreeze(window=S, threshold=0.05,
interval=S))` with S the steps per epoch: checked once an epoch, the
library's default threshold; chosen before any run and not tuned). It
reports test accuracy (mean and min-max over seeds), fit wall-clock time
(trace included), the summed step time, the median step time per phase
(number of units still training) and each unit's freeze step.

    python scripts/benchmark_adaptive.py --out benchmarks/adaptive

writes `adaptive.json`, `adaptive.md` and `adaptive.png`. `--quick` is a
seconds-long smoke run (1 seed, 2 epochs).
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from freezeout_tf import (  # noqa: E402
    AdaptiveFreeze, FreezeOut, FreezeOutModel, densenet_bc,
)
from freezeout_tf.benchmarking import StepTimer, plain_keras_model  # noqa: E402

METHODS = ("none", "schedule", "adaptive")
BATCH = 32
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def digits(classes, size, channels, seed):
    """Train/test split (75/25, stratified) of the digits in `classes`,
    labels renumbered from 0, images upsampled to `size` and scaled to
    [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    keep = np.isin(y, classes)
    x = x[keep].reshape(-1, 8, 8, 1).astype("float32") / 16.0
    y = np.searchsorted(np.asarray(classes), y[keep])
    x = np.repeat(np.repeat(x, size // 8, axis=1), size // 8, axis=2)
    x = np.repeat(x, channels, axis=3)
    return train_test_split(x, y, test_size=0.25, stratify=y,
                            random_state=seed)


def conv_net(num_classes):
    """6 units conv3x3-BN-ReLU (32, 32, 64s2, 64, 128s2, 128), head
    GAP-Dense."""
    units = []
    for channels, stride in [(32, 1), (32, 1), (64, 2), (64, 1), (128, 2),
                             (128, 1)]:
        units.append(keras.Sequential([
            keras.layers.Conv2D(channels, 3, strides=stride, padding="same",
                                use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
        ]))
    head = keras.Sequential([keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(num_classes)])
    model = FreezeOutModel(units, head)
    model.build((None, 16, 16, 1))
    return model


class PhaseTimer(StepTimer):
    """Step times plus the number of units training at each step."""

    def on_train_begin(self, logs=None):
        self.active = []

    def on_train_batch_begin(self, batch, logs=None):
        model = self.model
        if isinstance(model, FreezeOutModel):
            step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
            steps = model.schedule_state.host_freeze_steps()[:-1]
            self.active.append(int(np.sum(step < steps)))
        else:
            self.active.append(None)
        super().on_train_batch_begin(batch, logs)


def run(method, model, train, test, epochs, lr):
    """Trains `model` (a FreezeOutModel) the `method` way; returns metrics."""
    x, y = train
    steps_per_epoch = -(-len(x) // BATCH)
    callbacks = []
    fit_model = model
    if method == "none":
        fit_model = plain_keras_model(model)
    elif method == "schedule":
        callbacks.append(FreezeOut())
    else:
        callbacks.append(FreezeOut(t_0=None, adaptive=AdaptiveFreeze(
            window=steps_per_epoch, threshold=0.05,
            interval=steps_per_epoch)))
    timer = PhaseTimer()
    fit_model.compile(keras.optimizers.SGD(lr, momentum=0.9), LOSS,
                      metrics=["accuracy"])
    start = time.perf_counter()
    fit_model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0,
                  callbacks=callbacks + [timer])
    wall = time.perf_counter() - start
    _, accuracy = fit_model.evaluate(*test, batch_size=256, verbose=0)
    num_units = model.num_units
    active = [num_units if a is None else a for a in timer.active]
    phases = {}
    for a, t in zip(active[1:], timer.times[1:]):  # step 0 holds the trace
        phases.setdefault(a, []).append(t)
    freeze = (model.schedule_state.host_freeze_steps()[:-1].tolist()
              if method != "none" else [])
    total = epochs * steps_per_epoch
    return {
        "accuracy": float(accuracy),
        "wall_s": wall,
        "steps_s": float(sum(timer.times[1:])),
        "phase_ms": {str(a): 1e3 * statistics.median(ts)
                     for a, ts in sorted(phases.items(), reverse=True)},
        "freeze_steps": [s if s < total else None for s in freeze],
        "total_steps": total,
    }


def finetune_seed(seed, epochs, pre_epochs):
    keras.utils.set_random_seed(seed)
    pre_train, pre_test_x, pre_y, pre_test_y = digits(range(5), 16, 1, seed)
    x, tx, y, ty = digits(range(5, 10), 16, 1, seed)
    base = conv_net(5)
    base.compile(keras.optimizers.SGD(0.05, momentum=0.9), LOSS,
                 metrics=["accuracy"])
    base.fit(pre_train, pre_y, batch_size=BATCH, epochs=pre_epochs, verbose=0)
    pretrained = [u.get_weights() for u in base.freeze_units]
    results = {}
    for method in METHODS:
        keras.utils.set_random_seed(seed + 1)  # same new head for each way
        model = conv_net(5)
        for unit, weights in zip(model.freeze_units, pretrained):
            unit.set_weights(weights)
        results[method] = run(method, model, (x, y), (tx, ty), epochs, 0.02)
    return results


def scratch_seed(seed, epochs):
    x, tx, y, ty = digits(range(10), 32, 3, seed)
    results = {}
    for method in METHODS:
        keras.utils.set_random_seed(seed)
        model = densenet_bc(depth=22, growth_rate=8, num_classes=10,
                            classifier_activation=None)
        results[method] = run(method, model, (x, y), (tx, ty), epochs, 0.05)
    return results


def summarise(per_seed):
    """Mean and spread per method, speed relative to "none"."""
    out = {}
    for method in METHODS:
        rs = [r[method] for r in per_seed]
        acc = [100 * r["accuracy"] for r in rs]
        out[method] = {
            "accuracy_mean": statistics.mean(acc),
            "accuracy_min": min(acc), "accuracy_max": max(acc),
            "wall_s_mean": statistics.mean(r["wall_s"] for r in rs),
            "steps_s_mean": statistics.mean(r["steps_s"] for r in rs),
        }
    for method in METHODS:
        out[method]["speedup_wall"] = (out["none"]["wall_s_mean"]
                                       / out[method]["wall_s_mean"])
        out[method]["speedup_steps"] = (out["none"]["steps_s_mean"]
                                        / out[method]["steps_s_mean"])
    return out


def table(summary):
    lines = [
        "| method | accuracy % (mean, min-max) | fit wall-clock s | speed-up "
        "(wall) | summed step time s | speed-up (steps) |",
        "|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        s = summary[method]
        lines.append(
            f"| {method} | {s['accuracy_mean']:.2f} ({s['accuracy_min']:.2f}"
            f"-{s['accuracy_max']:.2f}) | {s['wall_s_mean']:.1f} | "
            f"{s['speedup_wall']:.2f}x | {s['steps_s_mean']:.1f} | "
            f"{s['speedup_steps']:.2f}x |")
    return "\n".join(lines)


def phase_lines(per_seed):
    lines = []
    for i, r in enumerate(per_seed):
        for method in METHODS:
            phases = ", ".join(f"{a}: {ms:.1f}"
                               for a, ms in r[method]["phase_ms"].items())
            freeze = r[method]["freeze_steps"]
            lines.append(f"| {i} | {method} | {phases} | "
                         f"{freeze if freeze else '-'} |")
    return ["| seed | method | median step ms by units training | freeze "
            "steps (None: never) |", "|---|---|---|---|"] + lines


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (task, data) in zip(axes, results.items()):
        summary = data["summary"]
        for method, marker, color in zip(METHODS, "os^", ("C0", "C2", "C3")):
            accs = [100 * r[method]["accuracy"] for r in data["per_seed"]]
            walls = [r[method]["wall_s"] for r in data["per_seed"]]
            ax.scatter(walls, accs, marker=marker, color=color, alpha=0.4,
                       label=f"{method} (seeds; large: mean)")
            ax.scatter(summary[method]["wall_s_mean"],
                       summary[method]["accuracy_mean"], marker=marker,
                       color=color, s=140, edgecolor="k")
        ax.set_title(task)
        ax.set_xlabel("fit wall-clock (s)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/adaptive",
                        help="path prefix of the .json/.md/.png outputs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20,
                        help="fine-tuning epochs (pretraining: half)")
    parser.add_argument("--scratch-epochs", type=int, default=15)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs < 2 or args.scratch_epochs < 2:
        parser.error("--seeds must be >= 1 and --epochs, --scratch-epochs "
                     ">= 2")
    if args.quick:
        args.seeds, args.epochs, args.scratch_epochs = 1, 2, 2
    results = {"finetune": {"per_seed": []}, "scratch": {"per_seed": []}}
    for seed in range(args.seeds):
        results["finetune"]["per_seed"].append(
            finetune_seed(seed, args.epochs, max(2, args.epochs // 2)))
        print(f"seed {seed} fine-tune done", file=sys.stderr, flush=True)
        results["scratch"]["per_seed"].append(
            scratch_seed(seed, args.scratch_epochs))
        print(f"seed {seed} scratch done", file=sys.stderr, flush=True)
    for data in results.values():
        data["summary"] = summarise(data["per_seed"])
    command = "python scripts/benchmark_adaptive.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    results["command"] = command
    results["config"] = vars(args)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(results, f, indent=1)
    md = [f"# Adaptive freezing on scikit-learn digits\n\n`{command}`\n"]
    for task, title in [("finetune", "Fine-tune (conv net, 0-4 -> 5-9, "
                         f"{args.epochs} epochs)"),
                        ("scratch", "From scratch (DenseNet-BC L=22 k=8, "
                         f"{args.scratch_epochs} epochs)")]:
        md += [f"## {title}\n", table(results[task]["summary"]), "",
               *phase_lines(results[task]["per_seed"]), ""]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(md))
    plot({k: results[k] for k in ("finetune", "scratch")}, args.out + ".png")
    print("\n".join(md))


if __name__ == "__main__":
    main()
