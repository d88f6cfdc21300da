"""KerasHub coverage: every backbone and task family of the installed
keras-hub, built from a tiny config, split with `FreezeOutModel.from_model`
and (tasks) fit briefly with FreezeOut. The logic is in
`freezeout_tf.tools.hub_coverage`.

Results go to `<out>/hub_coverage.md` (a summary by kind, then one row per
family) and `<out>/hub_coverage.json` (every result, with its provenance:
commit, versions, machine, command, UTC time; `benchmarking.write_report`).

With `--merge-into DIR`, the rows of the families run replace theirs in
`DIR`'s kept report (`hub_coverage.merge_rows`), which is rewritten with the
summary recomputed; its `reruns` lists each such merge with its provenance,
`base_provenance` the whole run's. `--rows-from SCRATCH` takes the rows
from a run already written to `SCRATCH` (with its provenance) instead of
running: run `--families ... --out SCRATCH`, check it, then merge.

Usage:
    python scripts/hub_coverage.py [--families GPT2CausalLM ...]
        [--no-fit] [--timeout 120] [--out benchmarks/coverage]
        [--merge-into benchmarks/coverage [--rows-from SCRATCH]]
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
    parser.add_argument("--merge-into", default=None,
                        help="a folder holding a kept hub_coverage.json: "
                             "replace the rows of the families run there")
    parser.add_argument("--rows-from", default=None,
                        help="with --merge-into: merge the rows of the "
                             "report in this folder instead of running")
    args = parser.parse_args()
    if args.timeout <= 0:
        parser.error(f"--timeout must be positive; got {args.timeout}")
    if args.rows_from is not None and args.merge_into is None:
        parser.error("--rows-from needs --merge-into (where to merge the "
                     f"rows of {args.rows_from})")

    def log(r):
        print(f"{r['name']:36s} {r['status']:9s} {r['seconds']:6.1f}s "
              f"{r['num_units'] or ''} {r['reason'][:120]} "
              f"{r['fit'] or ''}", flush=True)

    if args.rows_from is not None:
        report = benchmarking.read_report(
            os.path.join(args.rows_from, "hub_coverage.json"))
        results, where = report.results["families"], report.provenance
    else:
        results = hub_coverage.run(args.families, fit=not args.no_fit,
                                   timeout=args.timeout, log=log)
        where = _write(args.out, {
            "families": results, "summary": hub_coverage.summary(results),
            "timeout_s": args.timeout, "fit": not args.no_fit})["provenance"]
    if args.merge_into is not None:
        kept = benchmarking.read_report(
            os.path.join(args.merge_into, "hub_coverage.json"))
        merged = dict(kept.results)
        merged["families"] = hub_coverage.merge_rows(
            kept.results["families"], results)
        merged["summary"] = hub_coverage.summary(merged["families"])
        merged.setdefault("base_provenance", kept.provenance)
        merged["reruns"] = merged.get("reruns", []) + [{
            "families": [r["name"] for r in results],
            "provenance": where}]
        _write(args.merge_into, merged)
    print(open(os.path.join(args.merge_into or args.out,
                            "hub_coverage.md")).read().split(
        "\n\n| family")[0])


def _line(where):
    hub = where["versions"].get("keras_hub")  # not imported by a merge
    return ((f"keras-hub {hub}, " if hub else "") + f"commit "
            f"{where['commit']}, {where['utc']}: `{where['command']}`")


def _write(out, results):
    """Writes `results` to `out`'s hub_coverage.json and .md."""
    report = benchmarking.write_report(
        os.path.join(out, "hub_coverage.json"), results)
    base = results.get("base_provenance", report["provenance"])
    header = f"# KerasHub coverage\n\n{_line(base)}"
    for rerun in results.get("reruns", []):
        header += (f"; re-run of {', '.join(rerun['families'])}: "
                   f"{_line(rerun['provenance'])}")
    header += (f"; written by {_line(report['provenance'])}"
               if results.get("reruns") else "")
    header += " (provenance: `hub_coverage.json`)"
    table = hub_coverage.to_markdown(results["families"], header)
    with open(os.path.join(out, "hub_coverage.md"), "w") as f:
        f.write(table)
    return report


if __name__ == "__main__":
    main()
