"""Benchmark: the FreezeOut train step under XLA against plain Keras.

For each network it measures, for FreezeOut and for a plain
`keras.Sequential` over the same layers:

* tracing, HLO lowering time (TensorFlow graph -> HLO through the tf2xla
  bridge, the same bridge on CPU and GPU) and HLO size;
* the first `fit` step with `jit_compile=True` and with `False` (trace,
  lower, compile and run one step);
* the steady step time under XLA, FreezeOut with 0, 50 and 100 % of its
  units frozen, all arms in one process, interleaved, per-step medians.

Every measurement of a first step runs in a fresh subprocess (nothing
cached), with a time limit; a crash or time-out is recorded as such.

Usage:
    python scripts/benchmark_xla.py [--configs densenet:10 densenet:22
        densenet:40 wrn:16:4] [--batch-size 50] [--repeats 3] [--rounds 5]
        [--steps 5] [--out benchmarks/xla]
    python scripts/benchmark_xla.py --configs densenet:100 --only first-xla
    python scripts/benchmark_xla.py --from-json benchmarks/xla/xla-main.json ...

With --out it writes `xla.json` (`benchmarking.write_report`: the raw
measurements and the table, with the commit, versions, machine, command and
UTC time) and `xla.md`; --from-json merges saved runs' tables.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ARMS = ("plain", "freezeout")
MEASURES = ("lower", "first-xla", "first-graph", "steady")


def parse_config(text):
    """`densenet:L[:k]` or `wrn:depth:widen` -> (kind, args)."""
    parts = text.split(":")
    try:
        if parts[0] == "densenet" and len(parts) in (2, 3):
            return "densenet", (int(parts[1]),
                                int(parts[2]) if len(parts) == 3 else 12)
        if parts[0] == "wrn" and len(parts) == 3:
            return "wrn", (int(parts[1]), int(parts[2]))
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(
        f"bad config {text!r}: use densenet:L[:k] or wrn:depth:widen")


# ---------------------------------------------------------------- worker


def _worker(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    import freezeout_tf as fo
    from freezeout_tf.tools import benchmarking as bm

    def build(arm, jit):
        keras.utils.set_random_seed(0)
        kind, cfg = parse_config(args.config)
        if kind == "densenet":
            model = fo.models.densenet_bc(*cfg, num_classes=100)
        else:
            model = fo.models.wide_resnet(*cfg, num_classes=100)
        net = model if arm == "freezeout" else bm.plain_keras_model(model)
        net.compile(fo.original_sgd(), keras.losses.SparseCategoricalCrossentropy(
            from_logits=True), jit_compile=jit)
        return model, net

    b = args.batch_size
    x = tf.random.normal((b, 32, 32, 3), seed=1)
    y = tf.random.uniform((b,), 0, 100, tf.int32, seed=2)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    out = {}
    if args.worker == "lower":
        _, net = build(args.arm, True)
        net.build((None, 32, 32, 3))
        net.optimizer.build(net.trainable_variables)
        out = bm.lower_train_step(net, (x, y))
    elif args.worker in ("first-xla", "first-graph"):
        _, net = build(args.arm, args.worker == "first-xla")
        start = time.perf_counter()
        net.fit(data, epochs=1, steps_per_epoch=1, verbose=0)
        out["first_step_s"] = time.perf_counter() - start
        out["next_step_ms"] = bm.median_ms(bm.timed_steps(net, data, 3))
    else:  # steady: every arm in this process, interleaved
        fo_model, fo_net = build("freezeout", True)
        _, plain = build("plain", True)
        n = fo_model.num_units
        settings = {"plain": (plain, None), "fo_0": (fo_net, 0),
                    "fo_50": (fo_net, n // 2), "fo_100": (fo_net, n)}
        if args.graph_arms:
            # The same two models without XLA: what the compile-time note
            # offers instead (separate models, as a model has one
            # jit_compile setting).
            graph_model, graph_net = build("freezeout", False)
            _, graph_plain = build("plain", False)
            settings["plain_graph"] = (graph_plain, None)
            settings["fo_graph_0"] = (graph_net, 0)
            graph_model.schedule_state.clear()
        for net, _ in settings.values():
            bm.timed_steps(net, data, 2)  # compile and warm up
        times = {name: [] for name in settings}
        for _ in range(args.rounds):
            for name, (net, frozen) in settings.items():
                if frozen is not None and net is fo_net:
                    fo_model.schedule_state.freeze_prefix(frozen)
                times[name] += bm.timed_steps(net, data, args.steps)
        out = {f"{k}_ms": bm.median_ms(v) for k, v in times.items()}
        out["units"] = n
        out["traces"] = fo_model.train_step_traces
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------- driver


def run_worker(args, worker, config, arm=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker,
           "--config", config, "--batch-size", str(args.batch_size),
           "--rounds", str(args.rounds), "--steps", str(args.steps)]
    if args.graph_arms:
        cmd.append("--graph-arms")
    if arm:
        cmd += ["--arm", arm]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {args.timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["process_s"] = time.perf_counter() - start
            return result
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:200]}"}


def median_of(results, key):
    values = [r[key] for r in results if key in r]
    return statistics.median(values) if values else None


def summarize(raw):
    """Per config and arm: medians over repeats."""
    table = {}
    for config, per in raw.items():
        row = {}
        for arm in ARMS:
            r = {}
            for measure in ("lower", "first-xla", "first-graph"):
                runs = per.get(measure, {}).get(arm, [])
                errors = [x["error"] for x in runs if "error" in x]
                for key in ("trace_s", "lower_s", "hlo_lines",
                            "hlo_conditionals", "first_step_s",
                            "next_step_ms"):
                    value = median_of(runs, key)
                    if value is not None:
                        r[f"{measure}:{key}"] = value
                if errors:
                    r[f"{measure}:error"] = errors[0]
            row[arm] = r
        steady = per.get("steady", [])
        if not steady:
            row["steady"] = None
            table[config] = row
            continue
        row["steady"] = {k: median_of(steady, k) for k in
                         ("plain_ms", "fo_0_ms", "fo_50_ms", "fo_100_ms",
                          "plain_graph_ms", "fo_graph_0_ms", "traces",
                          "units")}
        if steady and all("error" in s for s in steady):
            row["steady"]["error"] = steady[0]["error"]
        table[config] = row
    return table


def fmt(value, digits=1):
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}" if digits else f"{value:,.0f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def compile_s(r):
    """The first XLA step less one steady step: tracing, lowering and
    compiling (on CPU a FreezeOut step itself can take seconds, see
    docs/design.md)."""
    first, step = r.get("first-xla:first_step_s"), r.get(
        "first-xla:next_step_ms")
    return None if first is None or step is None else first - step / 1000


def markdown(table, command):
    lines = [f"    {command}", "",
             "| network | arm | trace s | lower s | HLO lines | conds | "
             "first step XLA s | of which compile s | first step no-XLA s "
             "| XLA step ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for config, row in table.items():
        for arm in ARMS:
            r = row[arm]
            cells = [
                fmt(r.get("lower:trace_s")), fmt(r.get("lower:lower_s"), 2),
                fmt(r.get("lower:hlo_lines"), 0),
                fmt(r.get("lower:hlo_conditionals"), 0),
                fmt(r.get("first-xla:first_step_s",
                          r.get("first-xla:error"))),
                fmt(compile_s(r)),
                fmt(r.get("first-graph:first_step_s",
                          r.get("first-graph:error"))),
                fmt(r.get("first-xla:next_step_ms"), 0),
            ]
            lines.append(f"| {config} | {arm} | " + " | ".join(cells) + " |")
        p, f = row["plain"], row["freezeout"]
        cells = [
            ratio(f.get("lower:trace_s"), p.get("lower:trace_s")),
            ratio(f.get("lower:lower_s"), p.get("lower:lower_s")),
            ratio(f.get("lower:hlo_lines"), p.get("lower:hlo_lines")),
            None,
            ratio(f.get("first-xla:first_step_s"),
                  p.get("first-xla:first_step_s")),
            ratio(compile_s(f), compile_s(p)),
            ratio(f.get("first-graph:first_step_s"),
                  p.get("first-graph:first_step_s")),
            None,
        ]
        lines.append(f"| {config} | **ratio** | "
                     + " | ".join(fmt(c, 2) for c in cells) + " |")
    lines += ["", "Steady step under XLA (ms, per-step medians, all arms "
              "interleaved in one process):", "",
              "| network | plain | FreezeOut 0 % | 50 % | 100 % frozen | "
              "0 % / plain | saving at 50 % | saving at 100 % | traces |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for config, row in table.items():
        s = row["steady"]
        if s is None:
            continue
        if s.get("error") or s.get("fo_0_ms") is None:
            lines.append(f"| {config} | {s.get('error', '-')} |"
                         + " - |" * 7)
            continue
        base = s["fo_0_ms"]
        lines.append(
            f"| {config} | {fmt(s['plain_ms'])} | {fmt(base)} | "
            f"{fmt(s['fo_50_ms'])} | {fmt(s['fo_100_ms'])} | "
            f"{fmt(ratio(base, s['plain_ms']), 2)} | "
            f"{fmt(100 * (1 - s['fo_50_ms'] / base))} % | "
            f"{fmt(100 * (1 - s['fo_100_ms'] / base))} % | "
            f"{fmt(s['traces'], 0)} |")
    graph = [(c, r["steady"]) for c, r in table.items() if r["steady"]
             and r["steady"].get("fo_graph_0_ms") is not None]
    if graph:
        lines += ["", "The same steps without XLA, interleaved with the "
                  "above (ms):", "",
                  "| network | plain | FreezeOut 0 % | XLA FreezeOut 0 % / "
                  "FreezeOut 0 % | XLA FreezeOut 0 % / plain | XLA plain / "
                  "plain |", "|---|---:|---:|---:|---:|---:|"]
        for config, s in graph:
            pg, fg = s["plain_graph_ms"], s["fo_graph_0_ms"]
            lines.append(
                f"| {config} | {fmt(pg)} | {fmt(fg)} | "
                f"{fmt(ratio(s['fo_0_ms'], fg), 2)} | "
                f"{fmt(ratio(s['fo_0_ms'], pg), 2)} | "
                f"{fmt(ratio(s['plain_ms'], pg), 2)} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", type=str,
                   default=["densenet:10", "densenet:22", "densenet:40",
                            "wrn:16:4"])
    p.add_argument("--only", nargs="+", choices=MEASURES, default=MEASURES)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3,
                   help="fresh processes per first-step measurement")
    p.add_argument("--rounds", type=int, default=5,
                   help="interleaved rounds of the steady measurement")
    p.add_argument("--steps", type=int, default=5,
                   help="timed steps per arm per round")
    p.add_argument("--graph-arms", action="store_true",
                   help="steady: also time both models without XLA")
    p.add_argument("--timeout", type=float, default=1200.0,
                   help="seconds allowed per subprocess")
    p.add_argument("--out", default=None,
                   help="directory for xla.json/.md (e.g. benchmarks/xla)")
    p.add_argument("--from-json", nargs="+", default=None, metavar="PATH",
                   help="print the tables of saved runs (xla.json), merged")
    p.add_argument("--worker", choices=MEASURES, help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.from_json:
        from freezeout_tf.tools.benchmarking import read_report

        raw, commands = {}, []
        for path in args.from_json:
            saved = read_report(path)
            commands.append(saved.provenance["command"])
            for config, per in saved.results["raw"].items():
                raw.setdefault(config, {}).update(per)
        print(markdown(summarize(raw), "\n    ".join(commands)))
        return None
    for config in args.configs:
        parse_config(config)  # fail before any run
    raw = {}
    for config in args.configs:
        per = raw.setdefault(config, {})
        for repeat in range(args.repeats):
            # Alternate which arm goes first: neither gets a warmer machine.
            arms = ARMS if repeat % 2 == 0 else ARMS[::-1]
            for measure in ("lower", "first-xla", "first-graph"):
                if measure not in args.only:
                    continue
                for arm in arms:
                    result = run_worker(args, measure, config, arm)
                    per.setdefault(measure, {}).setdefault(arm, []).append(
                        result)
                    print(f"{config} {measure} {arm}: {result}", flush=True)
        if "steady" in args.only:
            result = run_worker(args, "steady", config)
            per["steady"] = [result]
            print(f"{config} steady: {result}", flush=True)
    table = summarize(raw)
    command = "python scripts/benchmark_xla.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    text = markdown(table, command)
    print(text)
    if args.out:
        from freezeout_tf.tools.benchmarking import write_report

        write_report(os.path.join(args.out, "xla.json"),
                     {"raw": raw, "table": table}, command=command)
        with open(os.path.join(args.out, "xla.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
