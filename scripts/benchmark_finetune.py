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
    parser.add_argument("phase",
                        choices=("validate", "settings", "test", "report"))
    parser.add_argument("--task", choices=fb.TASKS, default="vit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None,
                        help="output directory (default benchmarks/finetune, "
                        "or /tmp/freezeout_finetune_quick with --quick)")
    parser.add_argument("--cache-dir", default="/tmp/freezeout_finetune",
                        help="where the pretrained weights are kept")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0; got {args.seed}")
    out = args.out or ("/tmp/freezeout_finetune_quick" if args.quick
                       else "benchmarks/finetune")
    os.makedirs(out, exist_ok=True)
    settings_path = os.path.join(out, "settings.json")
    start_load = _uptime()

    if args.phase == "validate":
        task = fb.load_task(args.task, args.quick, validation=True,
                            cache_dir=args.cache_dir)
        result = fb.validate_task(task, log=_log)
        result.update(quick=args.quick, uptime_start=start_load,
                      uptime_end=_uptime())
        path = os.path.join(out, f"validation-{args.task}.json")
        write_report(path, result)
    elif args.phase == "settings":
        if os.path.exists(settings_path):
            parser.error(f"{settings_path} exists: settings are fixed once, "
                         "before any test run; delete it only to redo the "
                         "whole benchmark.")
        validations = {}
        for task in fb.TASKS:
            path = os.path.join(out, f"validation-{task}.json")
            if not os.path.exists(path):
                parser.error(f"{path} is missing: run `validate --task "
                             f"{task}` first.")
            with open(path, encoding="utf-8") as f:
                validations[task] = json.load(f)["results"]
        chosen = fb.choose_settings(validations)
        write_report(settings_path, {"chosen": chosen,
                                     "rule": fb.choose_settings.__doc__,
                                     "grid": fb.GRID})
        path = settings_path
        print(json.dumps({k: v for k, v in chosen.items() if k != "scores"},
                         indent=1))
    elif args.phase == "test":
        settings = fb.check_settings(settings_path)  # before any run
        task = fb.load_task(args.task, args.quick, cache_dir=args.cache_dir)
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
