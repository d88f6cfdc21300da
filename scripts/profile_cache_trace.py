"""Profile: where the first fit step of the cached arm goes (issue 24).

On the fine-tuning benchmark's models (`finetune_benchmark.load_task`,
the benchmark's sizes unless `--quick`), for each arm in `--arms`, each
measurement in a fresh process, the arms interleaved (their order
reversed every other round):

* `trace` phase (`finetune_benchmark.first_step_costs`): the train step
  readied as `fit` readies it, then traced (`get_concrete_function`:
  Python), called once (instantiation: Grappler, lowering, executors; and
  one step) and called again (a step alone); the graph's size: nodes, the
  function library (the branches of every `tf.cond` and of their
  gradients), the `If` ops. `--no-grappler` adds a diagnostic arm per arm
  with Grappler's meta-optimizer off.
* `fit` phase (`finetune_benchmark.run_arm` with `--epochs`): the real
  first step of `fit` and its other steps, and the fit's peak memory
  (TensorFlow's BFC allocator, which this script turns on).

Printed: per task, arm and figure the median over rounds (and min-max);
written with `write_report` to `--out`.

Usage:
    python scripts/profile_cache_trace.py --phases trace fit --rounds 3 \\
        --out benchmarks/cache/cache-first-step.json
    python scripts/profile_cache_trace.py --trees before=/tmp/old after=. \\
        --arms adaptive_cached --rounds 3
    python scripts/profile_cache_trace.py --quick --rounds 1 --out /tmp/p.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

ARMS = ("adaptive", "adaptive_cached")
FIGURES = {
    "trace": ("trace_s", "first_call_s", "second_call_s", "instantiate_s",
              "nodes", "function_nodes", "functions", "if_ops"),
    "fit": ("first_step_s", "median_step_s", "peak_mib"),
}


def child(args):
    """One measurement in this (fresh) process; prints it as JSON."""
    import tensorflow as tf

    try:
        from freezeout_tf.tools import finetune_benchmark as fb
    except ImportError:  # a --trees copy from before the package's layers
        from freezeout_tf import finetune_benchmark as fb

    if args.no_grappler:
        tf.config.optimizer.set_experimental_options(
            {"disable_meta_optimizer": True})
    task = fb.load_task(args.task, args.quick)
    setting = None if args.arm == "full" else {}
    if args.phase == "trace":
        result = fb.first_step_costs(task, args.arm, setting, seed=0)
    else:
        r = fb.run_arm(task, args.arm, setting, seed=0, epochs=args.epochs)
        steps = r["total_steps"] - 1
        result = {"first_step_s": r["first_step_s"],
                  "median_step_s": r["steps_s"] / max(steps, 1),
                  "peak_mib": r["peak_mib"]}
    print(json.dumps(result))


def _run(args, task, arm, phase, no_grappler, tree):
    env = dict(os.environ)
    script = os.path.abspath(__file__)
    if tree is not None:  # another checkout of the project
        env["PYTHONPATH"] = tree
        script = os.path.join(tree, "scripts", os.path.basename(script))
    cmd = [sys.executable, script, "--child",
           "--task", task, "--arm", arm, "--phase", phase,
           "--epochs", str(args.epochs)]
    if args.quick:
        cmd.append("--quick")
    if no_grappler:
        cmd.append("--no-grappler")
    out = subprocess.run(cmd, capture_output=True, text=True,
                         timeout=args.timeout, env=env)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _uptime():
    return subprocess.run(["uptime"], capture_output=True,
                          text=True).stdout.strip()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["vit", "lm"],
                   choices=("vit", "lm"))
    p.add_argument("--arms", nargs="+", default=list(ARMS),
                   choices=("full", "adaptive", "adaptive_cached"))
    p.add_argument("--phases", nargs="+", default=["trace"],
                   choices=tuple(FIGURES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1,
                   help="fit phase: epochs of each fit")
    p.add_argument("--no-grappler", action="store_true",
                   help="trace phase: also each arm with Grappler off")
    p.add_argument("--trees", nargs="+", default=None, metavar="NAME=PATH",
                   help="interleave checkouts of the project (e.g. "
                   "before=/tmp/old after=.): adaptive_cached from each, "
                   "the uncached arms from the last one only")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default=None, help="JSON report to write")
    # One measurement (run by this script in a fresh process).
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--task", help=argparse.SUPPRESS)
    p.add_argument("--arm", help=argparse.SUPPRESS)
    p.add_argument("--phase", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.rounds < 1 or args.epochs < 1:
        p.error("--rounds and --epochs must be >= 1")

    trees = [(None, None)]
    if args.trees:
        trees = [tuple(t.split("=", 1)) for t in args.trees]
        if any(len(t) != 2 for t in trees):
            p.error(f"--trees takes NAME=PATH items; got {args.trees}")
        trees = [(n, os.path.abspath(t)) for n, t in trees]
    variants = [(a, off, t) for off in (False, True)[:1 + args.no_grappler]
                for t in trees for a in args.arms
                if a == "adaptive_cached" or t == trees[-1]]
    results = {"uptime_start": _uptime(), "rounds": []}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for task in args.tasks:
            for phase in args.phases:
                for arm, off, (tree, path) in order:
                    if off and phase != "trace":
                        continue
                    name = ((f"{tree}: " if tree else "") + arm
                            + (" (no grappler)" if off else ""))
                    figures = _run(args, task, arm, phase, off, path)
                    results["rounds"].append({"round": r, "task": task,
                                              "phase": phase, "arm": name,
                                              **figures})
                    print(f"round {r} {task} {phase} {name}: "
                          + ", ".join(f"{k} {v:.4g}" if isinstance(
                              v, float) else f"{k} {v}"
                              for k, v in figures.items()
                              if k in FIGURES[phase]), flush=True)
    results["uptime_end"] = _uptime()
    summary = {}
    for row in results["rounds"]:
        key = f"{row['task']} {row['phase']} {row['arm']}"
        for fig in FIGURES[row["phase"]]:
            if row.get(fig) is not None:
                summary.setdefault(key, {}).setdefault(fig, []).append(
                    row[fig])
    print(f"load: {results['uptime_start']} .. {results['uptime_end']}")
    for key, figs in summary.items():
        print(key)
        for fig, xs in figs.items():
            print(f"  {fig:>15}: median {statistics.median(xs):.4g} "
                  f"(min {min(xs):.4g}, max {max(xs):.4g}, n={len(xs)})")
        summary[key] = {fig: {"median": statistics.median(xs),
                              "min": min(xs), "max": max(xs), "n": len(xs)}
                        for fig, xs in figs.items()}
    results["summary"] = summary
    results["quick"] = args.quick
    if args.out:
        from freezeout_tf.tools.benchmarking import write_report

        write_report(args.out, results)


if __name__ == "__main__":
    main()
