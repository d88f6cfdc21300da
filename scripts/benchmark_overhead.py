"""Benchmark: the FreezeOut step with nothing frozen against plain Keras.

The overhead figure of the FreezeOut train step: its step time with no unit
frozen as a multiple of a plain `keras.Sequential` over the same layers
(shared weights, Keras' own train step), on DenseNet-BC (L=22, k=12 by
default). Each configuration (intra- and inter-op threads, oneDNN on or
off via `TF_ENABLE_ONEDNN_OPTS`) runs in a fresh subprocess, since neither
can be changed once TensorFlow has started. In each process the arms run
alternated step by step in many short rounds
(`freezeout_tf.tools.benchmarking.alternate_steps`):

* `step` mode: `tf.function(train_step)` of each model on fixed tensors,
  arms `plain`, `fo` (nothing frozen) and `fo_all` (every unit frozen);
* `fit` mode: one `fit` step per call, timed by `StepTimer` (Keras' train
  function, with its distribution wrapper), arms `plain` and `fo`.

The table gives per-step medians (ms) and, as the overhead figure, the
median of the paired ratios (FreezeOut's step over plain's step right
beside it) with a 95 % bootstrap interval over rounds; also the ratio of
the pooled per-step medians with the quartiles of the per-round ratios
(`freezeout_tf.tools.benchmarking.ratio_spread`).

Usage:
    python scripts/benchmark_overhead.py [--threads 1 2] [--onednn 1 0]
        [--modes step fit] [--rounds 40] [--steps 3] [--batch-size 32]
        [--label 1] [--out benchmarks/overhead/overhead]
    python scripts/benchmark_overhead.py --from-json run1.json run2.json \\
        --out benchmarks/overhead/overhead

`<out>.json` holds the runs (`benchmarking.write_report`: with the commit,
versions, machine, command and UTC time), `<out>.md` the table.
"""

import argparse
import json
import os
import subprocess
import sys
import time

MODES = ("step", "fit")
ARMS = {"step": ("plain", "fo", "fo_all"), "fit": ("plain", "fo")}


# ---------------------------------------------------------------- worker


def _worker(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    threads = args.threads[0]  # the driver passes one
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    import freezeout_tf as fo
    from freezeout_tf.tools import benchmarking as bm

    keras.utils.set_random_seed(0)
    model = fo.models.densenet_bc(args.depth, args.growth_rate,
                                  num_classes=100)
    plain = bm.plain_keras_model(model)
    for net in (model, plain):
        # The built-in models end in a softmax.
        net.compile(fo.original_sgd(), "sparse_categorical_crossentropy")
        net.build((None, 32, 32, 3))
        net.optimizer.build(net.trainable_variables)
    x = tf.random.normal((args.batch_size, 32, 32, 3), seed=1)
    y = tf.random.uniform((args.batch_size,), 0, 100, tf.int32, seed=2)
    state = model.schedule_state
    out = {"threads": threads,
           "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
           "units": model.num_units, "tf": tf.__version__,
           "keras": keras.__version__}
    if args.mode == "step":
        fo_step = tf.function(model.train_step, autograph=False)
        plain_step = tf.function(plain.train_step, autograph=False)

        def timed(step, frozen=None):
            def run():
                if frozen is not None:
                    state.freeze_prefix(frozen)  # a variable write, untimed
                start = time.perf_counter()
                float(step((x, y))["loss"])  # wait for the step
                return time.perf_counter() - start
            return run

        arms = {"plain": timed(plain_step), "fo": timed(fo_step, 0),
                "fo_all": timed(fo_step, model.num_units)}
    else:
        data = tf.data.Dataset.from_tensors((x, y)).repeat()
        state.clear()
        arms = {"plain": lambda: bm.timed_steps(plain, data, 1)[0],
                "fo": lambda: bm.timed_steps(model, data, 1)[0]}
    times = bm.alternate_steps(arms, args.rounds, args.steps)
    out["traces"] = model.train_step_traces
    out["times"] = times
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------- driver


def run_config(args, mode, threads, onednn):
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=str(onednn))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker",
           "--mode", mode, "--threads", str(threads),
           "--depth", str(args.depth), "--growth-rate", str(args.growth_rate),
           "--batch-size", str(args.batch_size), "--rounds", str(args.rounds),
           "--steps", str(args.steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=args.timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:300]}"}


def summarize(result, mode):
    from freezeout_tf.tools import benchmarking as bm

    times = result["times"]
    row = {f"{arm}_ms": bm.median_ms([t for r in times[arm] for t in r])
           for arm in ARMS[mode]}
    row["fo/plain"] = bm.ratio_spread(times["fo"], times["plain"])
    if "fo_all" in times:
        row["fo_all/plain"] = bm.ratio_spread(times["fo_all"],
                                              times["plain"])
    row["rounds"] = len(times["plain"])
    row["steps"] = len(times["plain"][0])
    return row


def spread_cell(r):
    return (f"**{r['paired']:.3f}** ({r['ci_low']:.3f}-{r['ci_high']:.3f}) "
            f"| {r['ratio']:.3f} ({r['round_q1']:.3f}-{r['round_q3']:.3f})")


def markdown(runs):
    lines = []
    for run in runs:
        lines.append(f"    {run['command']}")
    lines += ["", "| run | mode | threads | oneDNN | plain ms | FreezeOut ms "
              "| FreezeOut / plain, paired (95 % CI) | pooled medians "
              "(per-round IQR) | all frozen ms | all frozen / plain, paired "
              "| rounds x steps |",
              "|---:|---|---:|---|---:|---:|---|---|---:|---:|---|"]
    for n, run in enumerate(runs, 1):
        n = run.get("label", n)
        for row in run["rows"]:
            if "error" in row:
                lines.append(f"| {n} | {row['mode']} | {row['threads']} | "
                             f"{row['onednn']} | {row['error']} |"
                             + " - |" * 7)
                continue
            all_cells = ("- | - |" if "fo_all/plain" not in row else
                         f"{row['fo_all_ms']:.1f} | "
                         f"{row['fo_all/plain']['paired']:.3f} |")
            lines.append(
                f"| {n} | {row['mode']} | {row['threads']} | "
                f"{'on' if row['onednn'] == '1' else 'off'} | "
                f"{row['plain_ms']:.1f} | {row['fo_ms']:.1f} | "
                f"{spread_cell(row['fo/plain'])} | {all_cells} "
                f"{row['rounds']} x {row['steps']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--onednn", type=int, nargs="+", choices=(0, 1),
                   default=[1, 0])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--depth", type=int, default=22)
    p.add_argument("--growth-rate", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--steps", type=int, default=3,
                   help="timed steps per arm per round")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds allowed per subprocess")
    p.add_argument("--out", default=None,
                   help="path prefix for <out>.json and <out>.md (e.g. "
                        "benchmarks/overhead/overhead)")
    p.add_argument("--label", default="1",
                   help="name of this run in the table (e.g. a repeat)")
    p.add_argument("--from-json", nargs="+", default=None, metavar="PATH",
                   help="tabulate saved runs (their .json) together")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.from_json:
        from freezeout_tf.tools.benchmarking import read_report

        runs = []
        for path in args.from_json:
            runs.extend(read_report(path).results["runs"])
        for run in runs:  # recompute the figures from the saved steps
            for row in run["rows"]:
                if "times" in row:
                    row.update(summarize(row, row["mode"]))
    else:
        if min(args.threads) < 1 or args.rounds < 1 or args.steps < 1:
            p.error("--threads, --rounds and --steps must be >= 1")
        command = "python scripts/benchmark_overhead.py " + " ".join(
            sys.argv[1:] if argv is None else argv)
        rows = []
        for onednn in args.onednn:
            for threads in args.threads:
                for mode in args.modes:
                    result = run_config(args, mode, threads, onednn)
                    row = {"mode": mode, "threads": threads,
                           "onednn": str(onednn)}
                    if "error" in result:
                        row["error"] = result["error"]
                    else:
                        row.update(summarize(result, mode))
                        row["times"] = result["times"]
                    print(json.dumps({k: v for k, v in row.items()
                                      if k != "times"}), flush=True)
                    rows.append(row)
        runs = [{"command": command, "label": args.label, "rows": rows}]
    text = markdown(runs)
    print(text)
    if args.out:
        from freezeout_tf.tools.benchmarking import write_report

        write_report(args.out + ".json", {"runs": runs})
        with open(args.out + ".md", "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
