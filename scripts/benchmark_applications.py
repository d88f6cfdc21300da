"""Benchmark: keras.applications networks split with `FreezeOutModel.from_model`.

For each network (built with `weights=None`, so offline, at a small input
size) this checks and measures:

* the cut points `split_model` finds, and the segments (units by default);
* equal outputs: `predict` of the split model against the original's;
* one trace: `fit` with the `FreezeOut` callback, every unit freezing
  within the run, traces the train step once;
* frozen means frozen: unit 0's weights, BatchNorm statistics and
  optimizer slots are bit-identical from its freeze step to the end;
* step time with 0, 50 and 100 % of the units frozen (a fixed frozen
  prefix in one traced train step, timed interleaved, per-step medians,
  see `benchmark_step.time_interleaved`), next to the FLOP-predicted
  saving (`unit_flops`, backward = 2x forward) and the frozen units' share
  of the trainable parameters (the optimizer update, which the FLOP count
  leaves out, scales with it).

Results go to `<out>/applications.md` and `<out>/applications.json`
(`benchmarking.write_report`: with the commit, versions, machine, command
and UTC time).

Usage:
    python scripts/benchmark_applications.py [--models ResNet50 MobileNetV2
        EfficientNetB0 DenseNet121] [--size 32] [--num-units 8]
        [--batch-size 32] [--repeats 25] [--steps 1]
        [--out benchmarks/applications]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_step import frozen_saving, time_interleaved  # noqa: E402

from freezeout_tf import (  # noqa: E402
    FreezeOut,
    FreezeOutModel,
    cut_points,
    estimate_speedup,
    schedule,
    split_model,
    unit_flops,
)
from freezeout_tf.tools.benchmarking import provenance, write_report  # noqa: E402

MODELS = ("ResNet50", "MobileNetV2", "EfficientNetB0", "DenseNet121")
NUM_CLASSES = 10


def unit_state(model, i):
    """Copies of unit `i`'s weights (BatchNorm statistics included) and of
    the optimizer slots of its trainable variables."""
    unit = model.freeze_units[i]
    opt = model.optimizer
    values = [v.numpy().copy() for v in unit.weights]
    for v in unit.trainable_weights:
        values.append(opt.momentums[opt._get_variable_index(v)].numpy().copy())
    return values


class SnapshotAt(keras.callbacks.Callback):
    """Unit 0's state right after the last step before it freezes."""

    def __init__(self, step):
        super().__init__()
        self.step = step
        self.values = None

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == self.step:
            self.values = unit_state(self.model, 0)


def check_fit(model, x, y, batch_size):
    """fit with FreezeOut, every unit freezing within 2 epochs; returns
    (train_step traces, unit 0 bit-identical since its freeze step, number
    of arrays compared, its freeze step, total steps)."""
    t_0, how = 0.25, "linear"
    total = 2 * (len(x) // batch_size)
    fractions = schedule.freeze_fractions(model.num_units, t_0, how)
    first = int(schedule.freeze_steps(total, fractions)[0])
    snap = SnapshotAt(first)
    model.fit(x, y, batch_size=batch_size, epochs=2, verbose=0,
              callbacks=[FreezeOut(t_0=t_0, how_scale=how), snap])
    end = unit_state(model, 0)
    identical = snap.values is not None and all(
        np.array_equal(a, b) for a, b in zip(snap.values, end))
    return model.train_step_traces, identical, len(end), first, total


def bench(name, args):
    print(f"== {name}", flush=True)
    keras.utils.set_random_seed(0)
    shape = (args.size, args.size, 3)
    net = getattr(keras.applications, name)(
        weights=None, input_shape=shape, classes=NUM_CLASSES)
    started = time.perf_counter()
    cuts = cut_points(net)
    segments, _ = split_model(net)
    model = FreezeOutModel.from_model(net, num_units=args.num_units)
    split_s = time.perf_counter() - started

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * args.batch_size,) + shape).astype("float32")
    y = rng.integers(0, NUM_CLASSES, len(x))
    max_diff = float(np.max(np.abs(
        model.predict(x, verbose=0) - net.predict(x, verbose=0))))

    model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy())
    traces, identical, compared, first, total = check_fit(
        model, x, y, args.batch_size)
    print(f"  {len(cuts)} cut points, {len(segments)} segments; max |diff| "
          f"{max_diff:.2e}; fit traces {traces}; unit 0 bit-identical from "
          f"step {first} of {total}: {identical}", flush=True)

    # Step time with a fixed frozen prefix, one trace for every setting.
    step = tf.function(model.train_step, autograph=False)
    batch = (tf.constant(x[:args.batch_size]), tf.constant(y[:args.batch_size]))
    ks = [0, args.num_units // 2, args.num_units]

    def run(k):
        model.schedule_state.freeze_prefix(k)
        return step(batch)

    times = time_interleaved(run, ks, args.repeats, args.steps)
    flops = unit_flops(model, shape)
    # The optimizer's work scales with parameters, not MACs: a unit's share
    # of them says how much of the update a freeze saves.
    # (`trainable_variables` of a FreezeOutModel keeps frozen units'.)
    variables = model.trainable_variables
    params = [0] * (model.num_units + 1)
    for v, unit in zip(variables, model.variable_units(variables)):
        params[unit] += int(np.prod(v.shape))
    base = statistics.median(times[0])
    rows = []
    for k in ks:
        med = statistics.median(times[k])
        rows.append({
            "frozen_units": k,
            "frozen_share": k / args.num_units,
            "ms_per_step": 1000 * med,
            "ms_quartiles": [1000 * float(q) for q in
                             np.percentile(times[k], [25, 75])],
            "measured_saving": 1 - med / base,
            "flop_predicted_saving": frozen_saving(flops, k),
            "frozen_parameter_share": sum(params[:k]) / sum(params),
            "step_times_s": times[k],
        })
        print(f"  {k}/{args.num_units} frozen: {1000 * med:.0f} ms/step, "
              f"saving {1 - med / base:.1%} (FLOPs: "
              f"{frozen_saving(flops, k):.1%})", flush=True)
    return {
        "model": name,
        "layers": len(net.layers),
        "cut_points": len(cuts),
        "segments": len(segments),
        "num_units": args.num_units,
        "split_seconds": split_s,
        "unit_macs": flops,
        "unit_parameters": params,
        "max_abs_output_diff": max_diff,
        "fit_train_step_traces": traces,
        "unit0_bit_identical": identical,
        "unit0_arrays_compared": compared,
        "unit0_freeze_step": first,
        "fit_total_steps": total,
        "estimate_speedup_t0_0.8_cubic": estimate_speedup(model, 0.8, "cubic",
                                                           shape),
        "step_time": rows,
    }


def markdown(report, where):
    """The tables of `report` (`args` and `models`) measured `where` (a
    `benchmarking.provenance`)."""
    a = report["args"]
    models = report["models"]
    machine, versions = where.get("machine", {}), where.get("versions", {})
    lines = [
        f"keras.applications (`weights=None`), {a['size']}x{a['size']} input, "
        f"{NUM_CLASSES} classes, `from_model(num_units={a['num_units']})`, "
        f"batch {a['batch_size']}, SGD momentum 0.9; {machine.get('cpus')} "
        f"CPU cores, TensorFlow {versions.get('tensorflow')}, Keras "
        f"{versions.get('keras')}. Step times: per-step medians of {a['repeats']} "
        f"interleaved rounds x {a['steps']} steps per setting.",
        "",
        "| model | layers | cut points | segments | max \\|out diff\\| | fit "
        "traces | unit 0 bit-identical | `estimate_speedup` (0.8, cubic) |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in models:
        lines.append(
            f"| {r['model']} | {r['layers']} | {r['cut_points']} | "
            f"{r['segments']} | {r['max_abs_output_diff']:.1e} | "
            f"{r['fit_train_step_traces']} | "
            f"{'yes' if r['unit0_bit_identical'] else 'NO'} (from step "
            f"{r['unit0_freeze_step']} of {r['fit_total_steps']}, "
            f"{r['unit0_arrays_compared']} arrays) | "
            f"{r['estimate_speedup_t0_0.8_cubic']:.1%} |")
    lines += [
        "",
        "| model | frozen | ms/step (quartiles) | measured saving | "
        "FLOP-predicted saving | frozen share of parameters |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in models:
        for row in r["step_time"]:
            lines.append(
                f"| {r['model']} | {row['frozen_units']}/{r['num_units']} "
                f"({row['frozen_share']:.0%}) | {row['ms_per_step']:.0f} "
                f"({row['ms_quartiles'][0]:.0f}-{row['ms_quartiles'][1]:.0f}) | "
                f"{row['measured_saving']:.1%} | "
                f"{row['flop_predicted_saving']:.1%} | "
                f"{row['frozen_parameter_share']:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS),
                   choices=MODELS)
    p.add_argument("--size", type=int, default=32, help="image side")
    p.add_argument("--num-units", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=25,
                   help="rounds over the frozen settings")
    p.add_argument("--steps", type=int, default=1,
                   help="timed steps per setting per round (1: alternate "
                        "settings step by step, the most robust to load "
                        "bursts on a shared machine)")
    p.add_argument("--out", default=None,
                   help="directory for applications.md and .json")
    args = p.parse_args(argv)

    report = {"args": vars(args),
              "models": [bench(name, args) for name in args.models]}
    where = (write_report(os.path.join(args.out, "applications.json"),
                          report)["provenance"]
             if args.out else provenance())
    table = markdown(report, where)
    print(table)
    if args.out:
        with open(os.path.join(args.out, "applications.md"), "w") as f:
            f.write(table)
    ok = all(r["fit_train_step_traces"] == 1 and r["unit0_bit_identical"]
             and r["max_abs_output_diff"] <= 1e-5 for r in report["models"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
