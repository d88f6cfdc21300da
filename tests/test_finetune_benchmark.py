"""freezeout_tf.tools.finetune_benchmark: the pre-registration holds (no test
run without settings; the rule picks what it says), the report computes
the targets it states, and an arm's run gives finite figures with the
static recipe's prefix untouched (times are never asserted)."""

import importlib.util
import math
import os
import pathlib

import pytest

from freezeout_tf.tools import finetune_benchmark as fb

SCRIPT = (pathlib.Path(__file__).resolve().parents[1] / "scripts"
          / "benchmark_finetune.py")


def _script():
    spec = importlib.util.spec_from_file_location("benchmark_finetune",
                                                  SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_test_phase_refuses_without_settings(tmp_path):
    with pytest.raises(FileNotFoundError, match="validate phase"):
        _script().main(["test", "--quick", "--out", str(tmp_path)])
    assert os.listdir(tmp_path) == []  # no test file, no run


def _runs(full, rows):
    return [{"arm": "full", "setting": None, "quality": full, "wall_s": 10.0}
            ] + [{"arm": a, "setting": s, "quality": q, "wall_s": w}
                 for a, s, q, w in rows]


def test_rule_keeps_or_changes_the_default_on_validation():
    rows = [("static", 0.25, 0.990, 9.0), ("static", 0.5, 0.986, 6.0),
            ("static", 0.75, 0.95, 4.0),  # fastest, but 4 points down
            ("schedule", 0.5, 0.97, 7.0), ("schedule", 0.8, 0.98, 8.0),
            ("adaptive", {}, 0.99, 8.0),  # equal quality, only 1.25x
            ("adaptive", {"intervals": 20}, 0.987, 5.0),
            ("adaptive", {"percentile": 75.0}, 0.96, 3.0)]
    loss_rows = [("static", s, q, w) for _, s, q, w in rows[:3]] + [
        ("schedule", 0.5, 1.0, 7.0), ("schedule", 0.8, 1.0, 8.0),
        ("adaptive", {}, 1.005, 6.0), ("adaptive", {"intervals": 20}, 1.009,
                                       6.5),
        ("adaptive", {"percentile": 75.0}, 1.2, 2.0)]
    chosen = fb.choose_settings({
        "vit": {"higher_is_better": True, "runs": _runs(0.99, rows)},
        "lm": {"higher_is_better": False, "runs": _runs(1.0, loss_rows)}})
    assert chosen["static"] == {"vit": 0.5, "lm": 0.75}  # lower loss wins
    # No t_0 within 0.5 points on vit: the most accurate; on lm the faster.
    assert chosen["schedule"] == {"vit": 0.8, "lm": 0.5}
    # The default misses 1.5x on vit: the best admissible on both replaces it.
    assert chosen["adaptive"] == {"intervals": 20}
    assert chosen["default_changed"]


def _test_result(seed, walls, qualities, hib=True):
    return {"task": "vit", "seed": seed, "higher_is_better": hib,
            "order": list(fb.ARMS), "settings": dict.fromkeys(fb.ARMS),
            "runs": {arm: {"quality": q, "wall_s": w, "steps_s": w / 2,
                           "first_step_s": w / 4,
                           "peak_mib": None, "load_before": 1.0}
                     for arm, w, q in zip(fb.ARMS, walls, qualities)}}


def test_report_targets():
    walls = [30.0, 20.0, 25.0, 18.0, 15.0]  # full static schedule adaptive cached
    tests = [_test_result(s, walls, [0.98, 0.98, 0.97, 0.978, 0.978])
             for s in (0, 1)]
    summary, lines = fb.report(tests)
    arms, targets = summary["vit"]["arms"], summary["vit"]["targets"]
    assert arms["adaptive"]["speedup_wall"] == pytest.approx(30 / 18)
    assert not arms["schedule"]["equal_quality"]  # 1 point down
    assert targets["adaptive >= 1.5x at equal quality"]["met"]
    assert not targets["adaptive_cached >= 2.2x at equal quality"]["met"]
    assert targets["adaptive faster than static at equal quality"]["met"]
    assert any(line.startswith("| adaptive_cached |") for line in lines)


@pytest.mark.slow  # a pretraining and a fit of a tiny ViT: ~20 s on 2 cores
def test_static_arm_on_tiny_vit(tmp_path):
    task = fb.load_task("vit", quick=True, validation=True,
                        cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="test split"):
        fb.run_seed(task, {}, 0)
    result = fb.run_arm(task, "static", 0.5, seed=0)
    assert result["frozen_units"] == result["num_units"] // 2 > 0
    assert result["frozen_unchanged"]
    for key in ("quality", "wall_s", "steps_s"):
        assert math.isfinite(result[key])
    assert 0 <= result["quality"] <= 1
    assert result["total_steps"] == task.steps_per_epoch() * 2
