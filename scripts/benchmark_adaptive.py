"""Adaptive freezing vs the FreezeOut schedule vs no freezing, on real data,
pre-registered.

scikit-learn's handwritten digits (1797 8x8 images, shipped with the
package; the `benchmark` extra installs it). Three tasks:

* `finetune`: a small conv net (6 conv-BN-ReLU units, 16x16 inputs)
  pretrained on digits 0-4, fine-tuned on digits 5-9 with a new head;
* `vit`: a small ViT built from keras_hub layers (a patch-embedding unit,
  then one unit per `keras_hub.layers.TransformerEncoder` block; head
  LayerNorm + mean pool + Dense) pretrained on digits 0-4 (Adam),
  fine-tuned on 5-9 with a new head;
* `scratch`: a DenseNet-BC (L=22, k=8, 32x32x3 inputs) trained from scratch
  on all ten digits.

Methods: "none" (a plain Keras model over the same layers), "schedule"
(`FreezeOut()`, t_0=0.8 cubic), and each adaptive candidate
(`FreezeOut(t_0=None, adaptive=AdaptiveFreeze(criterion, ...))`).

Pre-registration, in two phases:

1. `--phase tune`: on a validation split (20 % of the fine-tuning tasks'
   training sets, seed 100; test data not evaluated), each candidate's
   settings from a fixed grid are run next to "none", and the rule in
   `choose_settings` fixes one setting per candidate and the default
   criterion. Writes `--settings` (JSON).
2. `--phase test --task T --seeds ...`: reads `--settings`, writes them
   into its output file before any run, then runs every method per seed,
   interleaved, on the task's full training set and reports test
   accuracy, wall-clock, summed step time and each unit's freeze step.
3. `--phase merge`: merges the per-call test files into `--out`.json/.md/.png.

`--phase cost` measures the criterion's in-graph cost with nothing frozen
(the train step with and without it, alternated step by step; per-step
medians and paired ratios, `cost`'s docstring), writing
`--out`-cost-`--run`.json.

Every file is written by `benchmarking.write_report` (its commit, versions,
machine, command and UTC time beside the results) and read by
`benchmarking.read_report`, which also reads the files kept in
benchmarks/adaptive/ from before (their command among the results).

Each call stays under 10 minutes on 2 cores (split `scratch` by seed):

    python scripts/benchmark_adaptive.py --phase tune
    python scripts/benchmark_adaptive.py --phase test --task finetune
    python scripts/benchmark_adaptive.py --phase test --task vit
    python scripts/benchmark_adaptive.py --phase test --task scratch --seeds 0
    ...
    python scripts/benchmark_adaptive.py --phase merge

`--quick` is a seconds-long smoke run (1 seed, 2 epochs, no files unless
`--out` is given).
"""

import argparse
import glob
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
from freezeout_tf.tools.benchmarking import (  # noqa: E402
    StepTimer, plain_keras_model, read_report, write_report)

BATCH = 32
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
TASKS = ("finetune", "vit", "scratch")
TUNE_TASKS = ("finetune", "vit")
TUNE_SEED = 100
# The grid each candidate is tuned over (fixed before any run).
GRID = {
    "rank": [{"intervals": 10}, {"intervals": 20}],
    "pace": [{"t_0": 0.3}, {"t_0": 0.5}],
}
# Targets the selection rule applies on the validation split.
MAX_DROP, MIN_SPEEDUP = 1.0, 1.3
EPOCHS = {"finetune": (10, 20), "vit": (12, 15), "scratch": (0, 15)}


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


class AddPosition(keras.layers.Layer):
    """Adds a learned position embedding (keras_hub's) to a token sequence."""

    def __init__(self, length, **kwargs):
        super().__init__(**kwargs)
        import keras_hub

        self.position = keras_hub.layers.PositionEmbedding(length)

    def call(self, x):
        return x + self.position(x)


def small_vit(num_classes, dim=32, depth=4, heads=2, patch=2, size=8):
    """Patch embedding (conv patch x patch, + positions) as unit 0, one
    `keras_hub.layers.TransformerEncoder` (pre-norm) per unit after it; head
    LayerNorm, mean pool, Dense."""
    import keras_hub

    tokens = (size // patch) ** 2
    units = [keras.Sequential([
        keras.layers.Conv2D(dim, patch, strides=patch),
        keras.layers.Reshape((tokens, dim)),
        AddPosition(tokens),
    ])]
    for _ in range(depth):
        units.append(keras_hub.layers.TransformerEncoder(
            2 * dim, heads, normalize_first=True))
    head = keras.Sequential([keras.layers.LayerNormalization(),
                             keras.layers.GlobalAveragePooling1D(),
                             keras.layers.Dense(num_classes)])
    model = FreezeOutModel(units, head)
    model.build((None, size, size, 1))
    return model


def run(method, model, train, test, epochs, optimizer):
    """Trains `model` (a FreezeOutModel) the `method` way ("none",
    "schedule" or an `AdaptiveFreeze`); returns metrics."""
    x, y = train
    steps_per_epoch = -(-len(x) // BATCH)
    callbacks = []
    fit_model = model
    if method == "none":
        fit_model = plain_keras_model(model)
    elif method == "schedule":
        callbacks.append(FreezeOut())
    else:
        callbacks.append(FreezeOut(t_0=None, adaptive=method))
    timer = PhaseTimer()
    fit_model.compile(optimizer, LOSS, metrics=["accuracy"])
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


def _split(task, seed, validation):
    """(pretraining train set or None, train, evaluation) of `task`; with
    `validation` the evaluation set is 20 % of the training set and the
    test set is not used."""
    from sklearn.model_selection import train_test_split

    size, channels = {"finetune": (16, 1), "vit": (8, 1),
                      "scratch": (32, 3)}[task]
    classes = range(10) if task == "scratch" else range(5, 10)
    x, tx, y, ty = digits(classes, size, channels, seed)
    if validation:
        x, tx, y, ty = train_test_split(x, y, test_size=0.2, stratify=y,
                                        random_state=seed)
    pre = None
    if task != "scratch":
        px, _, py, _ = digits(range(5), size, channels, seed)
        pre = (px, py)
    return pre, (x, y), (tx, ty)


def _builder(task):
    return {"finetune": lambda: conv_net(5), "vit": lambda: small_vit(5),
            "scratch": lambda: densenet_bc(
                depth=22, growth_rate=8, num_classes=10,
                classifier_activation=None)}[task]


def _optimizer(task, pretraining=False):
    if task == "vit":
        return keras.optimizers.Adam(1e-3 if pretraining else 5e-4)
    lr = 0.05 if pretraining or task == "scratch" else 0.02
    return keras.optimizers.SGD(lr, momentum=0.9)


def task_seed(task, seed, methods, epochs, pre_epochs, validation=False):
    """Runs every `(name, method)` of `methods` on `task` for one seed, in
    an order rotated by the seed, from the same initial weights."""
    build = _builder(task)
    pre, train, evaluation = _split(task, seed, validation)
    pretrained = None
    if pre is not None:
        keras.utils.set_random_seed(seed)
        base = build()
        base.compile(_optimizer(task, True), LOSS)
        base.fit(*pre, batch_size=BATCH, epochs=pre_epochs, verbose=0)
        pretrained = [u.get_weights() for u in base.freeze_units]
    order = methods[seed % len(methods):] + methods[:seed % len(methods)]
    results = {}
    for name, method in order:
        keras.utils.set_random_seed(seed + 1)  # the same new head each way
        model = build()
        if pretrained is not None:
            for unit, weights in zip(model.freeze_units, pretrained):
                unit.set_weights(weights)
        results[name] = run(method, model, train, evaluation, epochs,
                            _optimizer(task))
        print(f"  {task} seed {seed} {name}: "
              f"{100 * results[name]['accuracy']:.2f} % "
              f"{results[name]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    return results


def _candidate(name, setting):
    return AdaptiveFreeze(name, **setting)


def choose_settings(tuning):
    """The pre-registered rule. For each candidate, over its grid: a setting
    is admissible when on every tuning task its validation accuracy is at
    most `MAX_DROP` points below "none"'s; its score is its smallest
    wall-clock speed-up over "none" across the tasks. The admissible setting
    with the best score is chosen (none admissible: the most accurate, by
    mean validation accuracy). The default is the candidate whose chosen
    setting scores best among admissible ones (rank on a tie)."""
    chosen, scores = {}, {}
    for name, grid in GRID.items():
        best = None
        for i, setting in enumerate(grid):
            key = f"{name}{i}"
            drops = [100 * (r["none"]["accuracy"] - r[key]["accuracy"])
                     for r in tuning.values()]
            speed = min(r["none"]["wall_s"] / r[key]["wall_s"]
                        for r in tuning.values())
            acc = statistics.mean(100 * r[key]["accuracy"]
                                  for r in tuning.values())
            admissible = max(drops) <= MAX_DROP
            rank_key = (admissible, speed if admissible else acc)
            if best is None or rank_key > best[0]:
                best = (rank_key, setting)
        chosen[name] = best[1]
        scores[name] = best[0]
    default = max(GRID, key=lambda n: (scores[n], n == "rank"))
    return chosen, default, {n: list(s) for n, s in scores.items()}


def tune(args):
    """Phase 1: fix every candidate's setting on the validation split."""
    methods = [("none", "none")] + [
        (f"{name}{i}", _candidate(name, setting))
        for name, grid in GRID.items() for i, setting in enumerate(grid)]
    tuning = {}
    for task in TUNE_TASKS:
        pre_epochs, epochs = _epochs(task, args)
        tuning[task] = task_seed(task, TUNE_SEED, methods, epochs,
                                 pre_epochs, validation=True)
    chosen, default, scores = choose_settings(tuning)
    out = {
        "grid": GRID, "rule": choose_settings.__doc__,
        "validation": tuning, "chosen": chosen, "default": default,
        "scores": scores,
    }
    write_report(args.settings, out)
    print(json.dumps({"chosen": chosen, "default": default,
                      "scores": scores}, indent=1))


def _epochs(task, args):
    pre, epochs = EPOCHS[task]
    return (1, 2) if args.quick else (pre, epochs)


def test(args):
    """Phase 2: one task's test runs with the pre-registered settings."""
    registered, where = read_report(args.settings)
    chosen = registered["chosen"]
    methods = [("none", "none"), ("schedule", "schedule")] + [
        (name, _candidate(name, chosen[name])) for name in GRID]
    seeds = args.seeds
    path = f"{args.out}-{args.task}-s{'-'.join(map(str, seeds))}.json"
    out = {"task": args.task, "seeds": seeds,
           "registered": {"settings_file": args.settings,
                          "written_utc": where.get("utc"),
                          "chosen": chosen,
                          "default": registered["default"],
                          "methods": {n: repr(m) for n, m in methods}},
           "per_seed": "pending: settings written before any run"}
    write_report(path, out)  # the settings, on disk before any test run
    pre_epochs, epochs = _epochs(args.task, args)
    out["epochs"] = [pre_epochs, epochs]
    out["per_seed"] = [task_seed(args.task, seed, methods, epochs,
                                 pre_epochs) for seed in seeds]
    write_report(path, out)
    print(f"wrote {path}")


def summarise(per_seed, names):
    """Mean and spread per method, speed relative to "none"."""
    out = {}
    for method in names:
        rs = [r[method] for r in per_seed]
        acc = [100 * r["accuracy"] for r in rs]
        out[method] = {
            "accuracy_mean": statistics.mean(acc),
            "accuracy_min": min(acc), "accuracy_max": max(acc),
            "wall_s_mean": statistics.mean(r["wall_s"] for r in rs),
            "steps_s_mean": statistics.mean(r["steps_s"] for r in rs),
        }
    for method in names:
        out[method]["speedup_wall"] = (out["none"]["wall_s_mean"]
                                       / out[method]["wall_s_mean"])
        out[method]["speedup_steps"] = (out["none"]["steps_s_mean"]
                                        / out[method]["steps_s_mean"])
    return out


def table(summary, names):
    lines = [
        "| method | accuracy % (mean, min-max) | fit wall-clock s | speed-up "
        "(wall) | summed step time s | speed-up (steps) |",
        "|---|---|---|---|---|---|",
    ]
    for method in names:
        s = summary[method]
        lines.append(
            f"| {method} | {s['accuracy_mean']:.2f} ({s['accuracy_min']:.2f}"
            f"-{s['accuracy_max']:.2f}) | {s['wall_s_mean']:.1f} | "
            f"{s['speedup_wall']:.2f}x | {s['steps_s_mean']:.1f} | "
            f"{s['speedup_steps']:.2f}x |")
    return "\n".join(lines)


def phase_lines(per_seed, names):
    lines = []
    for i, r in enumerate(per_seed):
        for method in names:
            phases = ", ".join(f"{a}: {ms:.1f}"
                               for a, ms in r[method]["phase_ms"].items())
            freeze = r[method]["freeze_steps"]
            lines.append(f"| {i} | {method} | {phases} | "
                         f"{freeze if freeze else '-'} |")
    return ["| seed | method | median step ms by units training | freeze "
            "steps (None: never) |", "|---|---|---|---|"] + lines


def plot(results, names, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4),
                             squeeze=False)
    for ax, (task, data) in zip(axes[0], results.items()):
        summary = data["summary"]
        for j, method in enumerate(names):
            marker, color = "os^vD"[j % 5], f"C{j}"
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
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def merge(args):
    """Phase 3: the per-call files into one report."""
    registered, where = read_report(args.settings)
    results = {}
    for task in TASKS:
        files = sorted(glob.glob(f"{args.out}-{task}-s*.json"))
        per_seed, commands, epochs = [], [], None
        for path in files:
            data, written = read_report(path)
            per_seed += data["per_seed"]
            commands.append(written["command"])
            epochs = data["epochs"]
        if per_seed:
            results[task] = {"per_seed": per_seed, "commands": commands,
                             "epochs": epochs}
    names = ["none", "schedule", *GRID]
    for data in results.values():
        data["summary"] = summarise(data["per_seed"], names)
    write_report(args.out + ".json",
                 {"registered": {"provenance": where, "results": registered},
                  "tasks": results})
    titles = {"finetune": "Fine-tune (conv net, 0-4 -> 5-9)",
              "vit": "Fine-tune (small ViT from keras_hub blocks, 0-4 -> 5-9)",
              "scratch": "From scratch (DenseNet-BC L=22 k=8)"}
    md = ["# Adaptive freezing on scikit-learn digits (pre-registered)\n",
          f"Settings fixed on the validation split before any test run "
          f"(`{where.get('command')}`, written {where.get('utc')} "
          f"UTC): {json.dumps(registered['chosen'])}; default criterion: "
          f"`{registered['default']}`. Rule: {registered['rule'].strip()}\n",
          "Validation (seed 100, 20 % of the training set):\n",
          "| task | method | val accuracy % | wall-clock s |", "|---|---|---|---|"]
    for task, runs in registered["validation"].items():
        for name, r in runs.items():
            md.append(f"| {task} | {name} | {100 * r['accuracy']:.2f} | "
                      f"{r['wall_s']:.1f} |")
    md.append("")
    for task, data in results.items():
        pre, epochs = data["epochs"]
        md += [f"## {titles[task]}, {epochs} epochs"
               + (f" (pretraining {pre})" if pre else "") + "\n",
               "\n".join(f"`{c}`" for c in data["commands"]) + "\n",
               table(data["summary"], names), "",
               *phase_lines(data["per_seed"], names), ""]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(md))
    plot(results, names, args.out + ".png")
    print("\n".join(md))


def cost(args):
    """The criterion's in-graph cost with nothing frozen. Per task one model,
    whose train step is traced twice-over on one fixed batch
    (`tf.function(model.train_step)`): without a criterion ("plain step")
    and with each criterion's observer (`AdaptiveFreeze()`, the default
    rank, and pace; their interval set beyond the run, so that nothing
    freezes and every step does a step's full criterion work). The arms run
    alternated step by step in `--rounds` rounds of `--steps` steps
    (`benchmarking.alternate_steps`); `benchmarking.ratio_spread` gives each
    criterion's step over the plain step's: the median of the paired ratios
    with a 95 % bootstrap interval over rounds, and the ratio of the pooled
    per-step medians with the per-round quartiles. Host work outside the
    step (callbacks, `adaptive_batch_logs`) is not in it."""
    import tensorflow as tf

    from freezeout_tf.tools import benchmarking as bm

    shapes = {"finetune": (16, 16, 1), "vit": (8, 8, 1),
              "scratch": (32, 32, 3)}
    beyond = 10 ** 9
    criteria = {"rank": AdaptiveFreeze(interval=beyond),
                "pace": AdaptiveFreeze("pace", t_0=1.0, interval=beyond)}
    out = {"rounds": args.rounds, "steps": args.steps,
           "method": cost.__doc__, "tasks": {}}
    for task in args.cost_tasks:
        keras.utils.set_random_seed(0)
        model = _builder(task)()
        model.compile(_optimizer(task), LOSS)
        model.optimizer.build(model.trainable_variables)
        model.schedule_state.clear()  # nothing frozen
        batch = (tf.random.normal((BATCH, *shapes[task]), seed=1),
                 tf.random.uniform((BATCH,), 0, 5, tf.int64, seed=2))
        steps = {}
        for name, config in [("plain step", None), *criteria.items()]:
            model.gradient_observers.clear()
            if config is not None:
                model.adaptive_state.start(config, beyond)
                model.gradient_observers.append(model.adaptive_state.observer(
                    config, model.schedule_state))
            steps[name] = tf.function(model.train_step, autograph=False)
            steps[name](batch)  # traced now, with these observers
        model.gradient_observers.clear()

        def timed(step):
            def run():
                start = time.perf_counter()
                float(step(batch)["loss"])  # wait for the step
                return time.perf_counter() - start
            return run

        times = bm.alternate_steps({n: timed(s) for n, s in steps.items()},
                                   args.rounds, args.steps)
        rows = {name: {"median_ms": bm.median_ms(
            [t for r in ts for t in r])} for name, ts in times.items()}
        for name in criteria:
            rows[name].update(bm.ratio_spread(times[name],
                                              times["plain step"]))
        out["tasks"][task] = {"rows": rows, "times": times}
        print(f"{task}: plain step {rows['plain step']['median_ms']:.2f} ms; "
              + "; ".join(
                  f"{n} {rows[n]['median_ms']:.2f} ms, paired "
                  f"{100 * (rows[n]['paired'] - 1):+.2f} % (95 % CI "
                  f"{100 * (rows[n]['ci_low'] - 1):+.2f} to "
                  f"{100 * (rows[n]['ci_high'] - 1):+.2f}), pooled medians "
                  f"{100 * (rows[n]['ratio'] - 1):+.2f} % (rounds IQR "
                  f"{100 * (rows[n]['round_q1'] - 1):+.2f} to "
                  f"{100 * (rows[n]['round_q3'] - 1):+.2f})"
                  for n in criteria), flush=True)
    if args.out:
        write_report(f"{args.out}-cost-{args.run}.json", out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase", choices=("tune", "test", "merge", "cost"),
                        default="test")
    parser.add_argument("--task", choices=TASKS, default="finetune")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/adaptive/adaptive",
                        help="path prefix of the outputs")
    parser.add_argument("--settings",
                        default="benchmarks/adaptive/adaptive_settings.json",
                        help="the pre-registered settings (tune writes it)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cost-tasks", nargs="+", choices=TASKS,
                        default=list(TASKS), help="cost phase: models")
    parser.add_argument("--rounds", type=int, default=60,
                        help="cost phase: interleaved rounds")
    parser.add_argument("--steps", type=int, default=5,
                        help="cost phase: steps per arm and round")
    parser.add_argument("--run", default="1",
                        help="cost phase: a label of this run, in the file name")
    args = parser.parse_args(argv)
    if any(s < 0 for s in args.seeds):
        parser.error(f"--seeds must be >= 0; got {args.seeds}")
    if args.quick:
        args.seeds = args.seeds[:1]
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be >= 1")
    {"tune": tune, "test": test, "merge": merge, "cost": cost}[args.phase](args)


if __name__ == "__main__":
    main()
