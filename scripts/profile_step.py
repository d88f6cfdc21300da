"""Profile the FreezeOut train step: which ops run, per unit, with k frozen.

Runs a few training steps of a DenseNet-BC under the TensorFlow profiler for
each requested number of frozen units k (and, with --stock, the same layers
in a plain `keras.Sequential` with Keras' own train step), reads the
profiler's XSpace (the trace-viewer data, `*.xplane.pb`) and prints:

* per op type, the time per step spent in it (the op-level table);
* per freeze unit, how many backward ops (ops of the gradient tape) and how
  many forward ops it executed per step. A frozen unit must show 0 backward
  ops: that is the evidence that its backward pass does not run at all.

This is how the frozen path was checked (docs/measurements.md). The
profiler records what the executor really ran, after Grappler's rewrites.

Usage:
    python scripts/profile_step.py --depth 22 --frozen 0 6 11 --stock \
        --out benchmarks/profile/profile.json
    python scripts/profile_step.py --frozen 0 --stock --threads 1 --top 30
"""

import argparse
import collections
import glob
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from freezeout_tf import models, original_sgd  # noqa: E402
from freezeout_tf.tools.benchmarking import write_report  # noqa: E402


def executed_ops(logdir):
    """(op name, op type, duration in ms) of every TF op in the CPU planes."""
    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"),
                     recursive=True)[0]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    ops = []
    for plane in space.planes:
        if "CPU" not in plane.name:
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name:
                    continue
                op_name, op_type = name.rsplit(":", 1)
                # Skip the executor's own spans (whole function, "Run").
                if op_type in ("Process", "Run") or "__inference" in name:
                    continue
                ops.append((op_name, op_type, event.duration_ps / 1e9))
    return ops


def profile(step_fn, data, steps, logdir):
    for _ in range(3):  # warm up outside the profile
        float(step_fn(data)["loss"])
    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        float(step_fn(data)["loss"])
    tf.profiler.experimental.stop()
    return executed_ops(logdir)


def per_type(ops, steps):
    """(ms per step, ops per step) by op type."""
    by_type = collections.Counter()
    count = collections.Counter()
    for _, op_type, ms in ops:
        by_type[op_type] += ms / steps
        count[op_type] += 1
    return by_type, {k: v // steps for k, v in count.items()}


def diff_table(ops, stock_ops, steps, top):
    """Op types whose time per step differs most between FreezeOut (nothing
    frozen) and plain Keras: what one step gets that the other does not."""
    mine, mine_n = per_type(ops, steps)
    theirs, theirs_n = per_type(stock_ops, steps)
    total = sum(mine.values()) - sum(theirs.values())
    print(f"FreezeOut (first --frozen setting) minus plain Keras, op time "
          f"per step: {total:+.1f} ms")
    print(f"    {'op type':34s} {'FreezeOut':>10s} {'plain':>10s} "
          f"{'delta':>8s}  count FO/plain")
    types = sorted(set(mine) | set(theirs),
                   key=lambda t: -abs(mine[t] - theirs[t]))
    for t in types[:top]:
        print(f"    {t:34s} {mine[t]:8.2f}ms {theirs[t]:8.2f}ms "
              f"{mine[t] - theirs[t]:+7.2f}  {mine_n.get(t, 0)}/"
              f"{theirs_n.get(t, 0)}")


def op_table(ops, steps, top):
    by_type, count = per_type(ops, steps)
    print(f"  ops: {len(ops) // steps} per step, {sum(by_type.values()):.1f} "
          f"ms op time per step")
    for op_type, ms in by_type.most_common(top):
        print(f"    {op_type:34s} {ms:8.2f} ms  x{count[op_type]}")


def unit_counts(model, ops, steps):
    """Per unit and the head, (backward ops, forward ops) per step."""
    rows = []
    for unit in model.freeze_units + [model.head]:
        # Keras names the ops of a layer call "<layer name>_1/...".
        tag = f"/{unit.name}_1/"
        mine = [o for o in ops if tag in "/" + o[0]]
        # Backward ops are named ".../gradient_tape/...", at the top level
        # (Keras' step) or inside a unit's backward branch (FreezeOut's).
        backward = sum(1 for o in mine if "gradient_tape/" in o[0])
        rows.append((backward // steps, (len(mine) - backward) // steps))
    return rows


def unit_table(model, ops, steps, frozen):
    print("  unit | frozen | backward ops/step | forward ops/step")
    for i, (backward, forward) in enumerate(unit_counts(model, ops, steps)):
        label = "head" if i == model.num_units else str(i)
        print(f"  {label:>4} | {'yes' if i < frozen else 'no':>6} | "
              f"{backward:17d} | {forward:16d}")


def raw(ops, steps):
    """JSON-ready op time (ms) and count per step, by op type."""
    by_type, count = per_type(ops, steps)
    return {t: {"ms_per_step": ms, "per_step": count[t]}
            for t, ms in by_type.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=22)
    p.add_argument("--growth-rate", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--frozen", type=int, nargs="+", default=[0, 6])
    p.add_argument("--stock", action="store_true",
                   help="also profile plain Keras on the same layers")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--threads", type=int, default=None,
                   help="intra- and inter-op threads (default: TF's)")
    p.add_argument("--out", help="file to write the op tables to (JSON, "
                                 "with commit, versions, machine, command)")
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads {args.threads}: must be >= 1")
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    keras.utils.set_random_seed(0)
    model = models.densenet_bc(args.depth, args.growth_rate)
    model.compile(original_sgd(), "sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    x = tf.random.normal((args.batch_size, 32, 32, 3))
    y = tf.random.uniform((args.batch_size,), 0, 100, tf.int32)
    step = tf.function(model.train_step, autograph=False)
    root = tempfile.mkdtemp(prefix="freezeout_profile_")
    first_ops = None
    report = {"settings": vars(args)}
    for k in args.frozen:
        if not 0 <= k <= model.num_units:
            p.error(f"--frozen {k}: must be in 0..{model.num_units}")
        model.schedule_state.freeze_prefix(k)
        ops = profile(step, (x, y), args.steps, os.path.join(root, f"k{k}"))
        first_ops = ops if first_ops is None else first_ops
        print(f"FreezeOut train step, {k} of {model.num_units} units frozen:")
        op_table(ops, args.steps, args.top)
        unit_table(model, ops, args.steps, k)
        report[f"frozen_{k}"] = {
            "op_types": raw(ops, args.steps),
            "units_backward_forward": unit_counts(model, ops, args.steps)}
    if args.stock:
        keras.utils.set_random_seed(0)
        plain = models.densenet_bc(args.depth, args.growth_rate)
        seq = keras.Sequential(plain.freeze_units + [plain.head])
        seq.compile(original_sgd(), "sparse_categorical_crossentropy")
        seq.optimizer.build(seq.trainable_variables)
        step = tf.function(seq.train_step, autograph=False)
        ops = profile(step, (x, y), args.steps, os.path.join(root, "stock"))
        print("Plain Keras train step on the same layers:")
        op_table(ops, args.steps, args.top)
        diff_table(first_ops, ops, args.steps, args.top)
        report["plain"] = {"op_types": raw(ops, args.steps)}
    if args.out:
        write_report(args.out, report)
        print("wrote", args.out)
    print(f"profiles (open with TensorBoard's profile plugin): {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
