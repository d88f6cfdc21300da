"""Benchmark: the fixed costs of a short fit, FreezeOut against plain Keras.

Issue 24, item 2. For each task model (the conv net and the small ViT of
`benchmark_adaptive.py`, DenseNet-BC L=22 k=12), in one process with
`--threads` intra- and inter-op threads:

* `fit` phase: `--fit-rounds` rounds; in each, a fresh model per arm (same
  seed, same weights) runs one short `fit` of `--epochs` epochs on random
  data, the arms in turn (the order reversed every other round):
  `plain` (a `keras.Sequential` over the same layers, Keras' own step) and
  `fo` (the `FreezeOutModel` with `FreezeOut()`). From each fit
  (`benchmarking.fit_costs`; one untimed fit of each arm first): the
  setup and first step (trace, graph optimisation, one step; Keras
  without a strategy builds the optimizer in the first step,
  `FreezeOutModel` before it, so only the sum compares), and the work
  outside the steps per epoch (the rest of the fit's wall clock, over the
  epochs). Per arm the median over rounds, and
  FreezeOut's over plain's, paired by round (median and range).
* `step` phase: the train step alone (`tf.function(train_step)` on one
  fixed batch), plain against FreezeOut with nothing frozen, alternated
  step by step in `--step-rounds` rounds of `--steps` steps
  (`benchmarking.alternate_steps`); the ratio is the median of the paired
  ratios with a 95 % bootstrap interval (`benchmarking.ratio_spread`).

Usage:
    python scripts/benchmark_fixed_costs.py [--tasks conv vit densenet]
        [--threads 2] [--fit-rounds 3] [--epochs 3] [--examples 256]
        [--step-rounds 30] [--steps 3] [--run 1]
        [--out benchmarks/fixed-costs/fixed-costs]
    python scripts/benchmark_fixed_costs.py --from-json \\
        benchmarks/fixed-costs/fixed-costs-1.json \\
        benchmarks/fixed-costs/fixed-costs-2.json \\
        --out benchmarks/fixed-costs/fixed-costs
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TASKS = ("conv", "vit", "densenet")
SHAPES = {"conv": (16, 16, 1), "vit": (8, 8, 1), "densenet": (32, 32, 3)}
CLASSES = {"conv": 5, "vit": 5, "densenet": 100}


def _build(task):
    """(FreezeOutModel, optimizer factory) of `task`, built."""
    import benchmark_adaptive as ba  # the tasks' models live there

    import freezeout_tf as fo

    if task == "densenet":
        model = fo.models.densenet_bc(22, 12, num_classes=100,
                                      classifier_activation=None)
        model.build((None, *SHAPES[task]))
        return model, fo.original_sgd
    if task == "conv":
        return ba.conv_net(CLASSES[task]), lambda: ba._optimizer("finetune")
    return ba.small_vit(CLASSES[task]), lambda: ba._optimizer("vit")


def _fresh(task, arm):
    """A fresh, compiled model of `task` for `arm` (same seed each time)."""
    import keras

    from freezeout_tf.tools import benchmarking as bm

    keras.utils.set_random_seed(0)
    model, optimizer = _build(task)
    net = model if arm == "fo" else bm.plain_keras_model(model)
    net.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    return net


def _data(task, n, seed):
    import tensorflow as tf

    x = tf.random.normal((n, *SHAPES[task]), seed=seed)
    y = tf.random.uniform((n,), 0, CLASSES[task], tf.int64, seed=seed + 1)
    return x.numpy(), y.numpy()


def _paired(fo_values, plain_values):
    ratios = [a / b for a, b in zip(fo_values, plain_values)]
    return {"median": statistics.median(ratios), "min": min(ratios),
            "max": max(ratios)}


def fit_phase(task, args):
    from freezeout_tf import FreezeOut
    from freezeout_tf.tools import benchmarking as bm

    x, y = _data(task, args.examples, 1)
    for arm in ("plain", "fo"):  # the process's one-off costs, untimed
        net = _fresh(task, arm)
        net.fit(x[:args.batch_size], y[:args.batch_size], epochs=1,
                verbose=0, callbacks=[FreezeOut()] if arm == "fo" else [])
    runs = {"plain": [], "fo": []}
    for r in range(args.fit_rounds):
        for arm in (("plain", "fo") if r % 2 == 0 else ("fo", "plain")):
            net = _fresh(task, arm)
            callbacks = [FreezeOut()] if arm == "fo" else []
            runs[arm].append(bm.fit_costs(net, x, y, args.epochs,
                                          args.batch_size, callbacks))
            c = runs[arm][-1]
            print(f"  {task} round {r} {arm:5s}: setup and first step "
                  f"{c['start_s']:.2f} s (setup {c['setup_s']:.2f} s), "
                  f"outside the steps {c['outside_per_epoch_s']:.3f} "
                  f"s/epoch, median step {c['median_step_ms']:.1f} ms",
                  flush=True)
    return {"epochs": args.epochs, "runs": runs,
            "rows": fit_rows(runs, args.epochs)}


def _derived(c, epochs):
    """`start_s` and `outside_per_epoch_s` of one fit's raw times (as
    `benchmarking.fit_costs` gives them)."""
    start = c["setup_s"] + c["first_step_s"]
    return {"start_s": start, "setup_s": c["setup_s"],
            "first_step_s": c["first_step_s"],
            "outside_per_epoch_s": (c["wall_s"] - start - c["steps_s"])
            / epochs,
            "median_step_ms": c["median_step_ms"]}


def fit_rows(runs, epochs):
    """Per measure, each arm's median over rounds and FreezeOut's over
    plain's, paired by round."""
    derived = {arm: [_derived(c, epochs) for c in cs]
               for arm, cs in runs.items()}
    rows = {}
    for key in derived["plain"][0]:
        values = {arm: [d[key] for d in ds] for arm, ds in derived.items()}
        rows[key] = {"plain": statistics.median(values["plain"]),
                     "fo": statistics.median(values["fo"]),
                     "ratio": _paired(values["fo"], values["plain"])}
    return rows


def step_phase(task, args):
    import tensorflow as tf

    from freezeout_tf.tools import benchmarking as bm

    nets = {arm: _fresh(task, arm) for arm in ("plain", "fo")}
    x, y = (tf.constant(a) for a in _data(task, args.batch_size, 3))
    steps = {}
    for arm, net in nets.items():
        net.build((None, *SHAPES[task]))
        net.optimizer.build(net.trainable_variables)
        steps[arm] = tf.function(net.train_step, autograph=False)
    nets["fo"].schedule_state.clear()  # nothing frozen

    def timed(step):
        def run():
            start = time.perf_counter()
            float(step((x, y))["loss"])
            return time.perf_counter() - start
        return run

    times = bm.alternate_steps({a: timed(s) for a, s in steps.items()},
                               args.step_rounds, args.steps)
    rows = {arm: bm.median_ms([t for r in ts for t in r])
            for arm, ts in times.items()}
    return {"median_ms": rows,
            "ratio": bm.ratio_spread(times["fo"], times["plain"]),
            "times": times}


def table(runs):
    """Markdown table of `[(run label, results)]`."""
    lines = [
        "| run | task | setup + first step s, plain / FreezeOut | ratio "
        "(range) | outside the steps s/epoch, plain / FreezeOut | ratio "
        "(range) | step ms, plain / FreezeOut, nothing frozen | ratio, "
        "paired (95 % CI) |",
        "|---|---|---|---|---|---|---|---|"]
    for label, results in runs:
        for task, r in results.items():
            cells = [str(label), task]
            for key in ("start_s", "outside_per_epoch_s"):
                if "fit" not in r:
                    cells += ["-", "-"]
                    continue
                row = fit_rows(r["fit"]["runs"], r["fit"]["epochs"])[key]
                q = row["ratio"]
                cells += [f"{row['plain']:.2f} / {row['fo']:.2f}",
                          f"**{q['median']:.2f}** ({q['min']:.2f}-"
                          f"{q['max']:.2f})"]
            if "step" in r:
                s = r["step"]
                q = s["ratio"]
                cells += [f"{s['median_ms']['plain']:.1f} / "
                          f"{s['median_ms']['fo']:.1f}",
                          f"**{q['paired']:.3f}** ({q['ci_low']:.3f}-"
                          f"{q['ci_high']:.3f})"]
            else:
                cells += ["-", "-"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def merge(paths, out):
    """Re-summarises the JSON reports of several runs into one table."""
    from freezeout_tf.tools.benchmarking import read_report

    runs, notes = [], []
    for path in paths:
        report = read_report(path).results
        label = report["args"]["run"]
        for r in report["tasks"].values():
            if "fit" in r:
                r["fit"].setdefault("epochs", report["args"]["epochs"])
        runs.append((label, report["tasks"]))
        notes.append(f"Run {label}: load average (1 min) "
                     f"{report['load_start'][0]:.1f} at the start, "
                     f"{report['load_end'][0]:.1f} at the end; "
                     f"{report['args']['threads']} threads.")
    md = table(runs) + "\n\n" + "\n".join(notes) + "\n"
    print(md)
    if out:
        with open(out + ".md", "w", encoding="utf-8") as f:
            f.write(md)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--phases", nargs="+", choices=("fit", "step"),
                   default=["fit", "step"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fit-rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--step-rounds", type=int, default=30)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--run", default="1")
    p.add_argument("--out", default=None,
                   help="path prefix: writes <out>-<run>.json and .md "
                   "(with --from-json: <out>.md; e.g. "
                   "benchmarks/fixed-costs/fixed-costs)")
    p.add_argument("--from-json", nargs="+", default=None, metavar="PATH",
                   help="only re-summarise these runs' reports")
    args = p.parse_args(argv)
    if args.from_json:
        return merge(args.from_json, args.out)
    if min(args.threads, args.fit_rounds, args.epochs, args.examples,
           args.batch_size, args.step_rounds, args.steps) < 1:
        p.error("every count must be >= 1")

    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from freezeout_tf.tools import benchmarking as bm

    load = os.getloadavg()
    results = {}
    for task in args.tasks:
        results[task] = {}
        if "fit" in args.phases:
            results[task]["fit"] = fit_phase(task, args)
        if "step" in args.phases:
            results[task]["step"] = step_phase(task, args)
            s = results[task]["step"]
            print(f"  {task} step: plain {s['median_ms']['plain']:.1f} ms, "
                  f"FreezeOut {s['median_ms']['fo']:.1f} ms, paired "
                  f"{s['ratio']['paired']:.3f} ({s['ratio']['ci_low']:.3f}-"
                  f"{s['ratio']['ci_high']:.3f})", flush=True)
    md = table([(args.run, results)])
    load_end = os.getloadavg()
    note = (f"Run {args.run}: load average (1 min) {load[0]:.1f} at the "
            f"start, {load_end[0]:.1f} at the end; {args.threads} threads.")
    print(md)
    print(note)
    if args.out:
        bm.write_report(f"{args.out}-{args.run}.json",
                        {"args": vars(args), "load_start": load,
                         "load_end": load_end, "tasks": results})
        with open(f"{args.out}-{args.run}.md", "w", encoding="utf-8") as f:
            f.write(md + "\n\n" + note + "\n")


if __name__ == "__main__":
    sys.exit(main())
