"""KerasHub coverage: every backbone and task family of the installed
keras-hub, built from a tiny config, split with `FreezeOutModel.from_model`
and (tasks) fit briefly with FreezeOut. The logic is in
`freezeout_tf.tools.hub_coverage`.

Results go to `<out>/hub_coverage.md` (a summary by kind, then one row per
family) and `<out>/hub_coverage.json` (every result, with its provenance:
commit, versions, machine, command, UTC time; `benchmarking.write_report`).

Usage:
    python scripts/hub_coverage.py [--families GPT2CausalLM ...]
        [--no-fit] [--timeout 120] [--out benchmarks/coverage]
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from freezeout_tf.tools import benchmarking, hub_coverage  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=None,
                        help="family class names (default: all)")
    parser.add_argument("--no-fit", action="store_true",
                        help="split only, do not fit the tasks")
    parser.add_argument("--timeout", type=float, default=120,
                        help="seconds per family")
    parser.add_argument("--out", default="benchmarks/coverage")
    args = parser.parse_args()
    if args.timeout <= 0:
        parser.error(f"--timeout must be positive; got {args.timeout}")

    def log(r):
        print(f"{r['name']:36s} {r['status']:9s} {r['seconds']:6.1f}s "
              f"{r['num_units'] or ''} {r['reason'][:120]} "
              f"{r['fit'] or ''}", flush=True)

    results = hub_coverage.run(args.families, fit=not args.no_fit,
                               timeout=args.timeout, log=log)
    os.makedirs(args.out, exist_ok=True)
    report = benchmarking.write_report(
        os.path.join(args.out, "hub_coverage.json"),
        {"families": results, "summary": hub_coverage.summary(results),
         "timeout_s": args.timeout, "fit": not args.no_fit})
    where = report["provenance"]
    header = (f"# KerasHub coverage\n\nkeras-hub "
              f"{where['versions']['keras_hub']}, commit {where['commit']}, "
              f"{where['utc']}: `{where['command']}` (provenance: "
              f"`hub_coverage.json`)")
    table = hub_coverage.to_markdown(results, header)
    with open(os.path.join(args.out, "hub_coverage.md"), "w") as f:
        f.write(table)
    print(table.split("\n\n| family")[0])


if __name__ == "__main__":
    main()
