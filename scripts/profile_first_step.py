"""Profile the first train step of a task model: FreezeOut against Keras.

Issue 24, item 2: where the first step's time goes. For one task model of
`benchmark_fixed_costs.py` (the conv net by default), each measurement runs
in a fresh process (arms alternated, the order reversed every other
round). In it, both arms first trace and run one step of a model of their
own, untimed (the process's one-off costs), then the measured arm's fresh
model, its optimizer built (so plain Keras traces once too), has its
`tf.function(train_step)` split by `benchmarking.first_call_costs`:

* `trace`: `get_concrete_function` (`py`: the Python time inside
  `train_step` itself; the rest is TensorFlow's function building);
* `prepare`: the first call less a steady one (the runtime's graph
  passes, Grappler, the executor);
* `grappler` (with `--grappler`): Grappler's own time in the first call,
  from TensorFlow's log (`benchmarking.grappler_times`), and per pass
  (the log did not measurably slow the conv net's first call at load
  1.5);
* the graph: nodes, `If` ops and their inputs, branch function sizes.

Medians over rounds per arm, and FreezeOut's over plain's, paired by
round. `--cprofile N` instead prints the N Python functions with the
most own time, and cumulative time, in FreezeOut's trace.

Usage:
    python scripts/profile_first_step.py [--task conv] [--rounds 4]
        [--threads 2] [--grappler] [--cprofile 25]
        [--out benchmarks/first-step.json]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ARMS = ("plain", "fo")
MARK = "=== profile_first_step: measured ==="


def child(args):
    """One process: warm both arms up, then measure `args.child`'s."""
    import cProfile
    import pstats
    import time

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import benchmark_fixed_costs as bfc

    from freezeout_tf.tools import benchmarking as bm

    x, y = (tf.constant(a) for a in bfc._data(args.task, args.batch_size, 3))

    def step_of(arm):
        net = bfc._fresh(args.task, arm)
        net.build((None, *bfc.SHAPES[args.task]))
        net.optimizer.build(net.trainable_variables)
        py = []

        def train_step(data):
            start = time.perf_counter()
            out = net.train_step(data)
            py.append(time.perf_counter() - start)
            return out

        return tf.function(train_step, autograph=False), py

    for arm in ARMS:  # untimed: the process's one-off costs
        step, _ = step_of(arm)
        float(step((x, y))["loss"])
    step, py = step_of(args.child)
    print(MARK, file=sys.stderr, flush=True)
    if args.cprofile:
        profile = cProfile.Profile()
        profile.enable()
        step.get_concrete_function((x, y))
        profile.disable()
        stats = pstats.Stats(profile, stream=sys.stdout)
        for order in ("tottime", "cumulative"):
            stats.sort_stats(order).print_stats(args.cprofile)
        return 0
    costs = bm.first_call_costs(step, ((x, y),))
    costs["trace_py_s"] = sum(py)
    print(json.dumps(costs))
    return 0


def measure(arm, args):
    """Runs one child process; its costs, with Grappler's from its log."""
    env = dict(os.environ)
    if args.grappler:
        env.update(TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="meta_optimizer=1")
    command = [sys.executable, os.path.abspath(__file__), "--child", arm,
               "--task", args.task, "--threads", str(args.threads),
               "--batch-size", str(args.batch_size)]
    if args.cprofile:
        command += ["--cprofile", str(args.cprofile)]
    done = subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=1800)
    if done.returncode:
        raise RuntimeError(f"{arm} child failed:\n{done.stderr[-3000:]}")
    if args.cprofile:
        print(done.stdout)
        return None
    from freezeout_tf.tools import benchmarking as bm

    costs = json.loads(done.stdout.strip().splitlines()[-1])
    log = done.stderr.split(MARK, 1)[-1]
    items = bm.grappler_times(log)
    passes = {}
    for item in items:
        for name, ms in item["passes"].items():
            passes[name] = passes.get(name, 0.0) + ms
    if not args.grappler:
        return costs
    costs["grappler"] = {"s": sum(i["ms"] for i in items) / 1000,
                         "items": len(items), "passes_ms": passes}
    return costs


FIGURES = {  # name -> how to read it from one measurement
    "trace s": lambda c: c["trace_s"],
    "  in train_step s": lambda c: c["trace_py_s"],
    "prepare s": lambda c: c["prepare_s"],
    "first call s": lambda c: c["first_call_s"],
    "trace + first call s": lambda c: c["trace_s"] + c["first_call_s"],
    "steady step s": lambda c: c["steady_s"],
    "graph nodes": lambda c: c["graph"]["nodes"],
    "If ops": lambda c: c["graph"]["conds"],
    "If inputs": lambda c: c["graph"]["cond_inputs"],
    "library functions": lambda c: c["graph"]["functions"],
    "library nodes": lambda c: c["graph"]["function_nodes"],
}
GRAPPLER = {"  Grappler s": lambda c: c["grappler"]["s"],
            "Grappler items": lambda c: c["grappler"]["items"]}


def summary(runs, grappler):
    """Per figure: each arm's median over rounds, and FreezeOut's over
    plain's paired by round (median, min, max)."""
    rows = {}
    for name, read in {**FIGURES, **(GRAPPLER if grappler else {})}.items():
        values = {arm: [read(c) for c in runs[arm]] for arm in ARMS}
        rows[name] = {"plain": statistics.median(values["plain"]),
                      "fo": statistics.median(values["fo"])}
        if all(values["plain"]):
            ratios = [f / p for f, p in zip(values["fo"], values["plain"])]
            rows[name].update(ratio=statistics.median(ratios),
                              min=min(ratios), max=max(ratios))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="conv",
                   choices=("conv", "vit", "densenet"))
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--grappler", action="store_true",
                   help="also read Grappler's times from TensorFlow's log")
    p.add_argument("--cprofile", type=int, default=0, metavar="N",
                   help="only print the N functions with the most own (and "
                   "cumulative) time in FreezeOut's trace (cProfile)")
    p.add_argument("--out", default=None, help="JSON report to write")
    p.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.rounds, args.threads, args.batch_size) < 1 or (
            args.cprofile < 0):
        p.error("every count must be >= 1 (--cprofile >= 0)")
    if args.child:
        return child(args)
    if args.cprofile:
        measure("fo", args)
        return 0
    load = os.getloadavg()
    runs = {arm: [] for arm in ARMS}
    for r in range(args.rounds):
        for arm in (ARMS if r % 2 == 0 else ARMS[::-1]):
            c = measure(arm, args)
            runs[arm].append(c)
            print(f"  round {r} {arm:5s}: trace {c['trace_s']:.2f} s "
                  f"(train_step {c['trace_py_s']:.2f}), prepare "
                  f"{c['prepare_s']:.2f} s, steady {c['steady_s']:.3f} s",
                  flush=True)
    rows = summary(runs, args.grappler)
    load_end = os.getloadavg()
    print(f"{'':24s} {'plain':>9s} {'FreezeOut':>9s}  ratio (range)")
    for name, row in rows.items():
        ratio = (f"{row['ratio']:.2f} ({row['min']:.2f}-{row['max']:.2f})"
                 if "ratio" in row else "-")
        print(f"{name:24s} {row['plain']:9.3f} {row['fo']:9.3f}  {ratio}")
    passes = {}
    for arm in ARMS if args.grappler else ():
        names = sorted({n for c in runs[arm]
                        for n in c["grappler"]["passes_ms"]})
        per_pass = {n: statistics.median(
            c["grappler"]["passes_ms"].get(n, 0.0) for c in runs[arm])
            for n in names}
        passes[arm] = per_pass
        top = sorted(per_pass.items(), key=lambda kv: -kv[1])[:8]
        print(f"Grappler passes, {arm} (median ms): " + ", ".join(
            f"{n} {ms:.0f}" for n, ms in top))
    note = (f"load average (1 min) {load[0]:.1f} at the start, "
            f"{load_end[0]:.1f} at the end; {args.threads} threads")
    print(note)
    if args.out:
        from freezeout_tf import benchmarking as bm

        bm.write_report(args.out, {"args": vars(args), "load_start": load,
                                   "load_end": load_end, "summary": rows,
                                   "grappler_passes_ms": passes,
                                   "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
