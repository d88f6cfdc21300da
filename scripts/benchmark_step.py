"""Benchmark: time per training step with 0-100 % of the units frozen.

A chain of conv units (conv3x3 + BN + ReLU, constant width) is trained with
the FreezeOut train step while the first k units are frozen, for k covering
0, 25, 50, 75 and 100 % of the units. All settings share ONE traced train
step (the frozen prefix is in-graph state), and are timed interleaved
(round-robin over settings, repeated) so machine noise hits them alike; the
table reports the median over every timed step (`time_interleaved`, which
`scripts/benchmark_applications.py` uses too).

The "FLOP-predicted" saving counts conv multiply-accumulates per unit
(`freezeout_tf.estimates.speedup.unit_flops`) with the backward at twice the forward:
freezing units with forward cost F_frozen out of F_total saves
2 F_frozen / (3 F_total) of the step.

Usage:
    python scripts/benchmark_step.py [--units 8] [--channels 64] [--size 32]
        [--batch-size 32] [--repeats 7] [--steps 5] [--out benchmarks/profile]

With --out it writes OUT/step.json: every step time and the FLOP-predicted
savings, with the commit, versions, machine, command and UTC time
(`freezeout_tf.tools.benchmarking.write_report`).
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from freezeout_tf import FreezeOutModel  # noqa: E402
from freezeout_tf.tools.benchmarking import (  # noqa: E402,F401
    frozen_saving,
    write_report,
)
from freezeout_tf.estimates.speedup import unit_flops  # noqa: E402


def conv_chain(num_units, channels, num_classes=10):
    def unit():
        return keras.Sequential([
            keras.layers.Conv2D(channels, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
        ])

    head = keras.Sequential([
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(num_classes),
    ])
    return FreezeOutModel([unit() for _ in range(num_units)], head)


def time_interleaved(run, settings, repeats, steps):
    """Seconds of every step of every setting, timed round-robin.

    Each setting runs once untimed first (tracing, warm-up); then `repeats`
    rounds run `steps` steps of each setting in turn, timing each step on
    its own (waiting for its loss), so that a noisy machine slows all
    settings alike.

    Args:
        run: `run(setting)` takes one training step and returns its logs.
        settings: the settings to compare.
        repeats: rounds over all settings.
        steps: timed steps per setting per round.

    Returns:
        dict setting -> list of `repeats * steps` step times in seconds.
    """
    for setting in settings:
        float(run(setting)["loss"])
    times = {s: [] for s in settings}
    for _ in range(repeats):
        for setting in settings:
            for _ in range(steps):
                start = time.perf_counter()
                float(run(setting)["loss"])  # wait for the step
                times[setting].append(time.perf_counter() - start)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--units", type=int, default=8)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--size", type=int, default=32, help="image side")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7,
                   help="rounds over all settings")
    p.add_argument("--steps", type=int, default=5,
                   help="timed steps per setting per round")
    p.add_argument("--out", help="directory for step.json (raw step times; "
                   "e.g. benchmarks/profile)")
    args = p.parse_args(argv)

    keras.utils.set_random_seed(0)
    model = conv_chain(args.units, args.channels)
    model.build((None, args.size, args.size, 3))
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.optimizer.build(model.trainable_variables)
    x = tf.random.normal((args.batch_size, args.size, args.size, 3))
    y = tf.random.uniform((args.batch_size,), 0, 10, tf.int32)
    # As in fit: no autograph (the step is plain Python over tensors).
    step = tf.function(model.train_step, autograph=False)
    # The same layers (shared weights) in a plain Sequential with Keras' own
    # train step: the cost of the FreezeOut machinery at 0 % frozen.
    plain = keras.Sequential(model.freeze_units + [model.head])
    plain.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plain.optimizer.build(plain.trainable_variables)
    plain_step = tf.function(plain.train_step, autograph=False)

    fractions = [0.0, 0.25, 0.5, 0.75, 1.0]
    ks = [round(f * args.units) for f in fractions]
    state = model.schedule_state
    settings = ks + ["plain"]

    def run(setting):
        if setting == "plain":
            return plain_step((x, y))
        state.freeze_prefix(setting)
        return step((x, y))

    times = time_interleaved(run, settings, args.repeats, args.steps)

    flops = unit_flops(model, (args.size, args.size, 3))
    base = statistics.median(times[0])
    print(f"{args.units} units of conv3x3({args.channels}) + BN + ReLU on "
          f"{args.size}x{args.size}, batch {args.batch_size}, "
          f"{os.cpu_count()} CPU cores; per-step medians of {args.repeats} "
          f"rounds x {args.steps} steps; train_step traces: "
          f"{model.train_step_traces}")
    print("| frozen | units | ms/step | saving vs 0 % | FLOP-predicted saving |")
    print("|---:|---:|---:|---:|---:|")
    for f, k in zip(fractions, ks):
        med = statistics.median(times[k])
        predicted = frozen_saving(flops, k)
        print(f"| {f:.0%} | {k} | {1000 * med:.1f} | {1 - med / base:.1%} "
              f"| {predicted:.1%} |")
    med = statistics.median(times["plain"])
    print(f"| plain Keras | - | {1000 * med:.1f} | {1 - med / base:.1%} | - |")
    if args.out:
        path = os.path.join(args.out, "step.json")
        write_report(path, {
            "settings": vars(args),
            "step_s": {str(k): v for k, v in times.items()},
            "flop_predicted_saving": {str(k): frozen_saving(flops, k)
                                      for k in ks},
            "train_step_traces": model.train_step_traces})
        print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
