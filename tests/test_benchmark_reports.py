"""One report writer and one reader for every benchmark file: the files kept
in benchmarks/ in the scripts' older layouts still read as they were
measured, and the scripts' readers (`--from-json`, merges) give from them
exactly the reports stored beside them, and the same from the new layout
(`benchmarking.write_report`)."""

import importlib.util
import json
import pathlib
import shutil

import pytest

from freezeout_tf.tools.benchmarking import read_report, write_report

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
PROVENANCE = {"commit", "versions", "machine", "command", "utc"}


def _script(name):
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _as_new_layout(old, path):
    """`old`'s figures rewritten by `write_report`, as a script writes now."""
    report = read_report(old)
    write_report(path, report.results, command=report.provenance.get("command"))
    return path


def test_every_kept_file_reads_with_its_provenance():
    paths = sorted(BENCHMARKS.rglob("*.json"))
    assert len(paths) >= 45
    for path in paths:
        report = read_report(path)
        assert isinstance(report.results, dict), path
        assert set(report.provenance) <= PROVENANCE, path
        if "provenance" in json.loads(path.read_text()):
            assert set(report.provenance) == PROVENANCE, path
    # An older layout's provenance, in write_report's names.
    speedup = read_report(BENCHMARKS / "speedup" / "speedup.json")
    assert speedup.provenance["machine"]["processor"] == "AMD EPYC"
    assert speedup.provenance["versions"] == {"tensorflow": "2.21.0",
                                              "keras": "3.15.1"}
    assert speedup.provenance["command"].startswith(
        "python scripts/benchmark_speedup.py")
    assert "runs" in speedup.results  # the figures as stored
    settings = read_report(BENCHMARKS / "adaptive" / "adaptive_settings.json")
    assert settings.provenance["utc"] == "2026-12-01 22:33:04"
    apps = read_report(BENCHMARKS / "applications" / "applications.json")
    assert apps.provenance["machine"]["cpus"] == 2


@pytest.mark.parametrize("layout", ["stored", "new"])
def test_overhead_from_json_gives_the_stored_table(tmp_path, layout):
    stored = BENCHMARKS / "overhead" / "overhead.json"
    path = (stored if layout == "stored"
            else _as_new_layout(stored, tmp_path / "new.json"))
    _script("benchmark_overhead").main(
        ["--from-json", str(path), "--out", str(tmp_path / "ov")])
    assert ((tmp_path / "ov.md").read_text()
            == (BENCHMARKS / "overhead" / "overhead.md").read_text())
    assert read_report(tmp_path / "ov.json").results["runs"][0]["label"] == "7"


def test_speedup_from_json_gives_the_stored_table(capsys):
    _script("benchmark_speedup").main(
        ["--from-json", str(BENCHMARKS / "speedup" / "speedup.json")])
    printed = capsys.readouterr().out.strip().splitlines()
    kept = (BENCHMARKS / "speedup" / "speedup.md").read_text().strip()
    # The kept table's command line was edited to name benchmarks/ as --out;
    # the file records the command as run.
    command = read_report(BENCHMARKS / "speedup" / "speedup.json").provenance[
        "command"]
    assert f"Command: `{command}`" in printed
    assert [line for line in printed if not line.startswith("Command:")] == [
        line for line in kept.splitlines() if not line.startswith("Command:")]


def test_xla_from_json_gives_the_stored_tables(capsys, tmp_path):
    names = ["xla-main", "xla-l76", "xla-steady", "xla-l100", "xla-graph"]
    stored = [BENCHMARKS / "xla" / f"{n}.json" for n in names]
    tables = []
    for paths in (stored, [_as_new_layout(p, tmp_path / p.name)
                           for p in stored]):
        _script("benchmark_xla").main(["--from-json", *map(str, paths)])
        tables.append([line for line in capsys.readouterr().out.splitlines()
                       if line.startswith("|")])
    kept = [line for line in (BENCHMARKS / "xla" / "xla.md").read_text()
            .splitlines() if line.startswith("|")]
    assert tables[0] == tables[1] == kept


def test_adaptive_merge_of_the_stored_files_gives_the_stored_report(tmp_path):
    folder = BENCHMARKS / "adaptive"
    for path in folder.glob("adaptive-*-s*.json"):
        shutil.copy(path, tmp_path)
    out = tmp_path / "adaptive"
    _script("benchmark_adaptive").main(
        ["--phase", "merge", "--out", str(out),
         "--settings", str(folder / "adaptive_settings.json")])
    assert (tmp_path / "adaptive.md").read_text() == (
        folder / "adaptive.md").read_text()
    merged = read_report(tmp_path / "adaptive.json")
    assert set(merged.provenance) == PROVENANCE
    assert merged.results["tasks"]["vit"]["summary"] == json.loads(
        (folder / "adaptive.json").read_text())["results"]["vit"]["summary"]
