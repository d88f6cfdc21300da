"""The documentation's figures (README.md and docs/) agree with the files in
benchmarks/ they cite."""

import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*path):
    with open(os.path.join(ROOT, *path), encoding="utf-8") as f:
        return f.read()


def _page(name):
    """A page of the documentation site: the README or a docs/ page."""
    if name == "README.md":
        return _read(name)
    return _read("docs", *name.split("/"))


def test_estimates_table_matches_benchmarks_estimates_json():
    report = json.loads(_read("benchmarks", "estimates", "estimates.json"))
    assert set(report["provenance"]) == {"commit", "versions", "machine",
                                         "command", "utc"}
    speedup = _page("guides/speedup.md")
    table = speedup[speedup.index("([benchmarks/estimates/estimates.json]"):]
    for name, row in report["results"]["networks"].items():
        line = re.search(rf"^\| {re.escape(name)}( \(benchmarks\))? "
                         rf"\|(.*)\|$", table,
                         re.MULTILINE)
        assert line, name
        cells = [c.strip() for c in line.group(2).split("|")]
        calc = row["calc_speedup"]
        assert cells == [
            str(row["units"]), f"{row['trainable_parameters']:,}",
            f"{100 * row['estimate_speedup']:.1f} %",
            "-" if calc is None else f"{100 * calc:.1f} %"], name
    # The all-reduced bytes in "Scaling out", the MACs in "Expected cost".
    nets = report["results"]["networks"]
    macs = [round(nets[f"DenseNet-BC L={d} k=12"]["forward_macs_per_image"]
                  / 1e6) for d in (76, 22)]
    assert f"({macs[0]} M against {macs[1]} M;" in _page("guides/cli.md")
    saving = {n: round(100 * nets[n]["gradient_bytes_saving"])
              for n in ("DenseNet-BC L=100 k=12", "WRN-28-10")}
    assert saving == {"DenseNet-BC L=100 k=12": 22, "WRN-28-10": 15}
    assert ("removes about 22 % of\nthe all-reduced gradient bytes over a "
            "run for DenseNet-BC L=100 k=12 and about\n15 % for WRN-28-10"
            in _page("guides/scaling-out.md"))


def test_finetune_paragraph_matches_benchmarks_finetune_report():
    """The adaptive-freezing guide's fine-tuning result quotes
    benchmarks/finetune/report.json (`scripts/benchmark_finetune.py report`)."""
    report = json.loads(_read("benchmarks", "finetune", "report.json"))
    readme = _page("guides/adaptive.md")
    start = readme.index("**Fine-tuning, measured")
    paragraph = readme[start:readme.index("\n\n", start)]
    for task, summary in report["results"].items():
        arms = summary["arms"]
        seeds = ", ".join(map(str, summary["seeds"]))
        figures = ", ".join(
            f"{label} {arms[arm]['speedup_wall']:.2f}x (steps "
            f"{arms[arm]['speedup_steps']:.2f}x)"
            for label, arm in (("adaptive", "adaptive"),
                               ("cached", "adaptive_cached"),
                               ("static", "static")))
        line = f"{task} (seeds {seeds}): {figures}"
        assert line in " ".join(paragraph.split()), line
