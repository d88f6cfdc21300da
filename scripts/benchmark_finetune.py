"""The pre-registered fine-tuning benchmark: full fine-tuning, the static
recipe, the FreezeOut schedule, the adaptive default and the adaptive
default with the frozen prefix cached, on a KerasHub ViT (digits 0-4 ->
5-9) and a byte-level Llama (standard-library packages -> asyncio).

The logic is `freezeout_tf.tools.finetune_benchmark` (its docstring holds the
tasks, arms, measures and the rule). Phases, each writing a file under
`--out` (default benchmarks/finetune/) with its provenance:

    python scripts/benchmark_finetune.py validate --task vit   # validation-vit.json
    python scripts/benchmark_finetune.py validate --task lm    # validation-lm.json
    python scripts/benchmark_finetune.py settings              # settings.json (the rule)
    python scripts/benchmark_finetune.py test --task vit --seed 0   # test-vit-s0.json
    python scripts/benchmark_finetune.py test --task lm --seed 0    # ... seeds 1, 2
    python scripts/benchmark_finetune.py report                # report.json, report.md

Issue 31's suite (`--suite finetune-2`, default --out
benchmarks/finetune-2/), three new tasks; each phase resumable from its
file:

    python scripts/benchmark_finetune.py size --suite finetune-2 --task vit-odd      # sizing-vit-odd.json
    python scripts/benchmark_finetune.py validate --suite finetune-2 --task vit-odd  # validation-vit-odd.json
    ... the same for lm-idle and bert-pkg, then:
    python scripts/benchmark_finetune.py settings --suite finetune-2   # settings.json
    python scripts/benchmark_finetune.py test --suite finetune-2 --task vit-odd --seed 0
    python scripts/benchmark_finetune.py report --suite finetune-2

`validate` reads the sizing file (the fit's epochs) and, if its own file
exists, skips the candidates already run there. `validate --epochs N
--arms full,adaptive` is a probe (a shorter fit, some arms) written to
probe-<task>-e<N>.json, which the settings phase never reads.
`test` refuses to run without settings.json. `--quick` shrinks every task
to a seconds-long smoke run and writes under /tmp unless `--out` is given.
Peak memory needs TensorFlow's BFC allocator on the CPU, which this script
turns on (TF_CPU_ALLOCATOR_USE_BFC=true) before TensorFlow starts.
"""

import argparse
import glob
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

from freezeout_tf.tools import finetune_benchmark as fb  # noqa: E402
from freezeout_tf.tools.benchmarking import write_report  # noqa: E402


def _uptime():
    return subprocess.run(["uptime"], capture_output=True,
                          text=True).stdout.strip()


def _log(line):
    print(line, file=sys.stderr, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("phase", choices=("size", "validate", "table",
                                          "settings", "test", "report"))
    parser.add_argument("--suite", choices=tuple(fb.SUITES),
                        default="finetune")
    parser.add_argument("--task", choices=fb.TASKS, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None,
                        help="output directory (default benchmarks/finetune, "
                        "or /tmp/freezeout_finetune_quick with --quick)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="validate: a probe at this many epochs "
                        "instead of the sized fit, written to "
                        "probe-<task>-e<epochs>.json (never read by the "
                        "settings phase)")
    parser.add_argument("--arms", default=None,
                        help="validate: only these arms, comma-separated "
                        "(a probe; the settings phase needs them all)")
    parser.add_argument("--cache-dir", default="/tmp/freezeout_finetune",
                        help="where the pretrained weights are kept")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0; got {args.seed}")
    tasks = fb.SUITES[args.suite]
    if args.task is None:
        args.task = tasks[0]
    if args.task not in tasks:
        parser.error(f"--task {args.task} is not in suite {args.suite} "
                     f"(its tasks: {', '.join(tasks)})")
    out = args.out or ("/tmp/freezeout_finetune_quick" if args.quick
                       else os.path.join("benchmarks", args.suite))
    os.makedirs(out, exist_ok=True)
    settings_path = os.path.join(out, "settings.json")
    start_load = _uptime()

    def sized_epochs(task_name):
        """The new suite's fine-tuning epochs, from its sizing file."""
        if args.suite == "finetune" or args.quick:
            return None
        path = os.path.join(out, f"sizing-{task_name}.json")
        if not os.path.exists(path):
            parser.error(f"{path} is missing: run `size --suite "
                         f"{args.suite} --task {task_name}` first.")
        with open(path, encoding="utf-8") as f:
            return json.load(f)["results"]["epochs"]

    if args.phase == "size":
        task = fb.load_task(args.task, args.quick, validation=True,
                            cache_dir=args.cache_dir)
        result = fb.size_task(task)
        result.update(quick=args.quick, uptime_start=start_load,
                      uptime_end=_uptime())
        path = os.path.join(out, f"sizing-{args.task}.json")
        write_report(path, result)
        print(json.dumps(result, indent=1))
    elif args.phase == "validate":
        probe = args.epochs is not None or args.arms is not None
        epochs = (args.epochs if args.epochs is not None
                  else sized_epochs(args.task))
        task = fb.load_task(args.task, args.quick, validation=True,
                            cache_dir=args.cache_dir, epochs=epochs)
        path = os.path.join(out, f"validation-{args.task}.json")
        if probe:
            path = os.path.join(out, f"probe-{args.task}-e{epochs}.json")
        done = []
        if os.path.exists(path) and args.suite != "finetune":
            with open(path, encoding="utf-8") as f:
                done = json.load(f)["results"]["runs"]

        def save(result):
            result.update(quick=args.quick, uptime_start=start_load,
                          uptime_end=_uptime())
            write_report(path, result)

        result = fb.validate_task(
            task, log=_log, done=done, on_run=save,
            arms=None if args.arms is None else args.arms.split(","))
        save(result)
        print("\n".join(fb.validation_table(result)))
    elif args.phase == "table":  # a validation or probe file, as a table
        lines = []
        for path in sorted(glob.glob(os.path.join(out, "validation-*.json"))
                           + glob.glob(os.path.join(out, "probe-*.json"))):
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            lines += [f"## {os.path.basename(path)}", "",
                      f"`{data['provenance']['command']}` at "
                      f"{data['provenance']['commit'][:12]}, "
                      f"{data['provenance']['utc']}; epochs "
                      f"{data['results'].get('epochs')}", ""]
            lines += fb.validation_table(data["results"]) + [""]
        path = os.path.join(out, "validation.md")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))
    elif args.phase == "settings":
        if os.path.exists(settings_path):
            parser.error(f"{settings_path} exists: settings are fixed once, "
                         "before any test run; delete it only to redo the "
                         "whole benchmark.")
        validations = {}
        for task in tasks:
            path = os.path.join(out, f"validation-{task}.json")
            if not os.path.exists(path):
                parser.error(f"{path} is missing: run `validate --task "
                             f"{task}` first.")
            with open(path, encoding="utf-8") as f:
                validations[task] = json.load(f)["results"]
        chosen = fb.choose_settings(validations, args.suite)
        registration = {"chosen": chosen,
                        "rule": fb.choose_settings.__doc__,
                        "grid": fb.GRID}
        if args.suite != "finetune":
            registration.update(
                grid=fb.GRID_2, targets=fb.TARGETS_2,
                equal_quality={"max_drop_points": fb.MAX_DROP_POINTS,
                               "max_loss_rise": fb.MAX_LOSS_RISE},
                epochs={t: sized_epochs(t) for t in tasks},
                sizes={t: fb.SIZES["full-2"][t] for t in tasks},
                packages={"lm-idle": {"pretrain": fb.LM2_PRETRAIN,
                                      "fine_tune": fb.LM2_FINE_TUNE},
                          "bert-pkg": {"pretrain": fb.BERT_PRETRAIN,
                                       "classes": fb.BERT_CLASSES}},
                seeds=[0, 1, 2])
        write_report(settings_path, registration)
        path = settings_path
        print(json.dumps({k: v for k, v in chosen.items() if k != "scores"},
                         indent=1))
    elif args.phase == "test":
        settings = fb.check_settings(settings_path)  # before any run
        task = fb.load_task(args.task, args.quick, cache_dir=args.cache_dir,
                            epochs=sized_epochs(args.task))
        result = fb.run_seed(task, settings, args.seed, log=_log)
        result.update(quick=args.quick, uptime_start=start_load,
                      uptime_end=_uptime())
        path = os.path.join(out, f"test-{args.task}-s{args.seed}.json")
        write_report(path, result)
    else:
        tests, header = [], []
        for path in sorted(glob.glob(os.path.join(out, "test-*-s*.json"))):
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            tests.append(data["results"])
            p, r = data["provenance"], data["results"]
            header.append(f"- `{p['command']}` at {p['commit'][:12]}, "
                          f"{p['utc']}; settings of {r['settings_written_utc']}"
                          f"; `uptime` at start: {r['uptime_start']}")
        if not tests:
            parser.error(f"no test files under {out}: run the test phase.")
        summary, lines = fb.report(tests)
        lines = (["# Fine-tuning benchmark (pre-registered)", "",
                  "Settings fixed on validation before the test runs "
                  "(settings.json); means over seeds; speed-ups are full "
                  "fine-tuning's time over the arm's. Test runs:", ""]
                 + header + [""] + lines)
        path = os.path.join(out, "report.json")
        write_report(path, summary)
        with open(os.path.join(out, "report.md"), "w",
                  encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
