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


# Issue 31's suite (finetune-2).

def test_fit_epochs_make_the_fit_20x_its_first_step():
    # 8 s first step, 40 ms steps, 25 steps an epoch: 20 x 8 = 160 s =
    # 4000 steps, x 1.25 = 5000 steps = 200 epochs.
    assert fb.fit_epochs(8.0, 0.04, 25) == 200
    assert fb.fit_epochs(8.0, 0.04, 25, margin=1.0) == 160
    assert fb.fit_epochs(0.1, 1.0, 100) == 2  # at least min_epochs
    with pytest.raises(ValueError, match=r"step_s=0\): must be > 0"):
        fb.fit_epochs(8.0, 0, 25)


def test_estimated_speedup_by_hand():
    costs = [2.0, 1.0, 1.0, 0.0]  # three units, a free head
    # Full: 3 * 4 = 12. Unit 0 frozen from the start (static, k = 1):
    # 2 + (3 + 3) = 8 -> 1.5x; cached, its forward gone too: 12 / 6 = 2x.
    assert fb.estimated_speedup(costs, [0, None, None], 100) == (
        pytest.approx(1.5))
    assert fb.estimated_speedup(costs, [0, None, None], 100, cached=True) == (
        pytest.approx(2.0))
    # Units 0-1 frozen at steps 25 and 50 of 100: 2 + 4 * 0.25 + 1 + 2 *
    # 0.5 + 3 = 8 -> 1.5x; cached 6 * 0.25 + 3 * 0.5 + 3 = 6 -> 2x.
    assert fb.estimated_speedup(costs, [25, 50, None], 100) == (
        pytest.approx(1.5))
    assert fb.estimated_speedup(costs, [25, 50, None], 100, cached=True) == (
        pytest.approx(2.0))
    assert fb.estimated_speedup(costs, [None] * 3, 100) == 1.0
    with pytest.raises(ValueError, match="one step per unit"):
        fb.estimated_speedup(costs, [None] * 4, 100)


def test_new_suite_rule_chooses_by_the_estimate_and_its_targets():
    def runs(rows):
        return _runs(0.9, []) + [
            {"arm": a, "setting": s, "quality": q, "wall_s": w,
             "estimated_speedup": e} for a, s, q, w, e in rows]

    grid = fb.GRID_2["adaptive"]
    rows = [("static", 0.25, 0.9, 20.0, 1.2), ("static", 0.5, 0.9, 30.0, 1.6),
            ("static", 0.75, 0.8, 5.0, 2.5),
            ("schedule", 0.5, 0.9, 9.0, 1.3), ("schedule", 0.8, 0.9, 9.0, 1.1)]
    # The default reaches 1.7x (wall: slower, a loaded machine) but loses
    # 2 points; settle keeps the quality at 1.65x: it replaces the default.
    rows += [("adaptive", grid[0], 0.88, 50.0, 1.7),
             ("adaptive", grid[1], 0.9, 50.0, 1.65)] + [
        ("adaptive", s, 0.85, 5.0, 3.0) for s in grid[2:]]
    chosen = fb.choose_settings(
        {"vit-odd": {"higher_is_better": True, "runs": runs(rows)}},
        "finetune-2")
    assert chosen["static"] == {"vit-odd": 0.5}  # by the estimate, not wall
    assert chosen["schedule"] == {"vit-odd": 0.5}
    assert chosen["adaptive"] == {"criterion": "settle"}
    assert chosen["default_changed"]
    with pytest.raises(ValueError, match="suite must be one of"):
        fb.choose_settings({}, "finetune-3")


def test_new_suite_report_holds_the_new_targets():
    tests = [_test_result(s, [31.0, 20.0, 25.0, 20.0, 15.0],
                          [0.98] * 5) for s in (0, 1)]
    for t in tests:
        t["task"] = "vit-odd"
    targets = fb.report(tests)[0]["vit-odd"]["targets"]
    # 1.55x meets the first suite's 1.5x target, not issue 31's 1.6x.
    assert not targets["adaptive >= 1.6x at equal quality"]["met"]
    old = fb.report([dict(t, task="vit") for t in tests])[0]["vit"]
    assert old["targets"]["adaptive >= 1.5x at equal quality"]["met"]


def test_new_suite_phases_refuse_what_they_need(tmp_path):
    script = _script()
    with pytest.raises(SystemExit):  # a task of the other suite
        script.main(["size", "--task", "vit-odd", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):  # validate before the sizing
        script.main(["validate", "--suite", "finetune-2", "--task",
                     "lm-idle", "--out", str(tmp_path)])
    assert os.listdir(tmp_path) == []
    task = fb.load_task("bert-pkg", validation=True, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="size it first"):
        fb.run_arm(task, "full", None, seed=0)


def test_new_tasks_data_splits():
    vit = fb.load_task("vit-odd", quick=True)
    vit_val = fb.load_task("vit-odd", quick=True, validation=True)
    assert set(vit.train[1]) == set(range(5)) == set(vit.evaluation[1])
    # The validation split is carved from the test split's training part.
    assert len(vit_val.train[1]) + len(vit_val.evaluation[1]) == len(
        vit.train[1])
    # The odd digits, turned: a 1 (label 0) lies across the image.
    ones = vit.train[0][vit.train[1] == 0].mean(axis=0)[..., 0]
    assert ones.std(axis=1).mean() < ones.std(axis=0).mean()

    lm = fb.load_task("lm-idle", quick=True, validation=True)
    assert not set(fb.LM2_PRETRAIN + [fb.LM2_FINE_TUNE]) & set(
        fb.LM_PRETRAIN + [fb.LM_FINE_TUNE, "email", "json", "html"])
    test_files = set(fb.load_task("lm-idle", quick=True).files["evaluation"])
    assert not test_files & set(lm.files["train"] + lm.files["evaluation"])

    bert = fb.load_task("bert-pkg", quick=True, validation=True)
    test_bert = fb.load_task("bert-pkg", quick=True)
    assert sorted(set(bert.train["labels"])) == list(range(5))
    for package, (train, held) in bert.files.items():
        assert train and held
        assert not set(test_bert.files[package][1]) & set(train + held)
    assert not set(fb.BERT_PRETRAIN) & set(fb.BERT_CLASSES)
