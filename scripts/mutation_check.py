"""Mutation check of the core claims: does the suite catch a wrong library?

Each mutation below is a small wrong edit of the library (a file, its exact
old text, the new text) with the tests that should catch it. The script
copies the tree to a temporary directory (never edits this checkout),
runs the named tests there once unmutated (they must pass, or a failure
would mean nothing), then, one mutation at a time, applies the edit, runs
the tests with that copy first on PYTHONPATH, and puts the file back. A
mutation is "caught" when tests fail (pytest's exit code 1), "survived"
when they pass, "no verdict" on any other exit (nothing selected, a
collection error, a timeout). An
old text found zero or several times is reported as "anchor missing" /
"anchor ambiguous" (the code moved: re-anchor the table), never skipped
silently.

The claims (docs/algorithm.md, docs/design.md): a frozen unit's backward
is skipped; its state (weights, BatchNorm statistics, optimizer slots)
is untouched; the schedule freezes each unit at floor(t_i * T) + 1; the
learning-rate multipliers (scale_lr, cosine) reach the weights; the prefix
cache; resume; the internals guard.

Not a timing benchmark: the times say how long each check takes.

Usage:
    python scripts/mutation_check.py [--only NAME ...] [--list]
        [--timeout 1200] [--out benchmarks/mutation]

`--list` prints the table and checks every anchor against this tree
(fast, no TensorFlow): run it after others edit the library.
"""

import argparse
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

# name, claim, [(file, old text, new text)], pytest arguments, and why it
# is expected to survive if it does (None: it must be caught).
MUTATIONS = [
    dict(
        name="frozen-branch-runs-backward-times-zero",
        claim="backward skipped",
        edits=[("freezeout_tf/core/model.py",
                "        def skip():\n"
                "            return zeros(), unit_input\n",
                "        def skip():\n"
                "            grads = backward(values + [unit_input])\n"
                "            return ([g * 0.0 for g in grads[:-1]],\n"
                "                    unit_input)\n"),
               ("freezeout_tf/core/model.py",
                "return tf.cond(frozen[0], zeros, lambda: backward(values))",
                "return tf.cond(frozen[0], lambda: [g * 0.0 for g in "
                "backward(values)], lambda: backward(values))")],
        tests="tests/test_backward_skip.py -k 'not the_check_fails'"),
    dict(
        name="backward-branch-ignores-frozen-flag",
        claim="backward skipped",
        edits=[("freezeout_tf/core/model.py",
                "        return tf.cond(frozen[i], input_only if pass_down "
                "else skip,\n",
                "        return tf.cond(tf.constant(False), input_only if "
                "pass_down else skip,\n")],
        tests="tests/test_train_step.py -k gradients_equal_plain_tape"),
    dict(
        name="optimizer-updates-frozen-units",
        claim="frozen state: weights and optimizer slots",
        edits=[("freezeout_tf/core/optimizer.py",
                "            skip_frozen(flags[unit], update)\n",
                "            update()\n")],
        tests="tests/test_train_step.py -k bit_identical"),
    dict(
        name="weight-decay-reaches-frozen-units",
        claim="frozen state: weights (decoupled weight decay)",
        edits=[("freezeout_tf/core/optimizer.py",
                "                skip_frozen(flags[unit], decay)\n",
                "                decay()\n")],
        tests="tests/test_internals_guard.py -k probe_finds",
        note="caught by the guard's probe only: while a unit anneals its "
             "multiplier is 0 when frozen, so the decay is 0 in a fit; the "
             "probe (multipliers 1) reports it as a Keras change, since "
             "FreezeOut's decay hook is not instrumented like its update "
             "hook"),
    dict(
        name="frozen-batchnorm-keeps-training-its-statistics",
        claim="frozen state: BatchNorm statistics",
        edits=[("freezeout_tf/core/unit_mode.py",
                "            mean, variance = _moments_while(\n"
                "                flag, inputs,",
                "            mean, variance = _moments_while(\n"
                "                tf.constant(True), inputs,"),
               ("freezeout_tf/core/unit_mode.py",
                "        layer.moving_mean.assign(tf.where(\n            flag,",
                "        layer.moving_mean.assign(tf.where(\n            True,"),
               ("freezeout_tf/core/unit_mode.py",
                "        layer.moving_variance.assign(tf.where(\n"
                "            flag,",
                "        layer.moving_variance.assign(tf.where(\n"
                "            True,")],
        tests="tests/test_train_step.py -k bit_identical"),
    dict(
        name="unit-1-freeze-step-off-by-one",
        claim="schedule",
        edits=[("freezeout_tf/schedule.py",
                "    steps[:frozen_from_start] = 0\n    return steps\n",
                "    steps[:frozen_from_start] = 0\n    steps[1] += 1\n"
                "    return steps\n")],
        tests="tests/test_schedule.py tests/test_train_step.py -k hand"),
    dict(
        name="part-flags-off-by-one",
        claim="schedule (in-graph frozen flags)",
        edits=[("freezeout_tf/core/schedule_state.py",
                "            return tf.unstack(tf.cast(step, tf.int64) >= "
                "self.freeze_steps,",
                "            return tf.unstack(tf.cast(step, tf.int64) > "
                "self.freeze_steps,")],
        tests="tests/test_schedule.py -k hand"),
    dict(
        name="fractions-spread-over-n-plus-1",
        claim="schedule (t_i)",
        edits=[("freezeout_tf/schedule.py",
                "    own = scale(t_0 + (1.0 - t_0) * i / n, how_scale)",
                "    own = scale(t_0 + (1.0 - t_0) * i / (n + 1), how_scale)")],
        tests="tests/test_schedule.py"),
    dict(
        name="callback-always-scales-lr",
        claim="multipliers (scale_lr)",
        edits=[("freezeout_tf/callbacks/freezeout.py",
                "state.set(total, fractions, self.scale_lr, k)",
                "state.set(total, fractions, True, k)")],
        tests="tests/test_train_step.py -k scale_lr"),
    dict(
        name="multipliers-ignore-scale-lr",
        claim="multipliers (scale_lr)",
        edits=[("freezeout_tf/core/schedule_state.py",
                "        t = self.fractions\n"
                "        cosine = 0.5 * (1.0 + tf.cos(math.pi * j / "
                "(t * self.total_steps)))\n"
                "        initial = tf.where(self.scale_lr, 1.0 / t, 1.0)\n",
                "        t = self.fractions\n"
                "        cosine = 0.5 * (1.0 + tf.cos(math.pi * j / "
                "(t * self.total_steps)))\n"
                "        initial = 1.0 / t\n")],
        tests="tests/test_train_step.py -k scale_lr"),
    dict(
        name="multipliers-without-cosine",
        claim="multipliers (annealing)",
        edits=[("freezeout_tf/core/schedule_state.py",
                "        annealed = tf.where(tf.stack(flags), 0.0, "
                "initial * cosine)",
                "        annealed = tf.where(tf.stack(flags), 0.0, initial)")],
        tests="tests/test_train_step.py -k scale_lr"),
    dict(
        name="prefix-cache-not-emptied-at-fit",
        claim="cache",
        edits=[("freezeout_tf/core/prefix_cache.py",
                "        self.levels.assign(tf.zeros_like(self.levels))\n",
                "")],
        tests="tests/test_cache_resume.py -k empty_cache"),
    dict(
        name="checkpoint-drops-loss-check",
        claim="resume (only finite checkpoints)",
        edits=[("freezeout_tf/recipes/checkpoint.py",
                "        if (loss is not None and not "
                "math.isfinite(float(loss))) or not (",
                "        if False or not (")],
        tests="tests/test_divergence.py -k checks_the_loss"),
    dict(
        name="checkpoint-drops-weights-check",
        claim="resume (only finite checkpoints)",
        edits=[("freezeout_tf/recipes/checkpoint.py",
                "            is_finite_state(self.model)\n",
                "            True\n")],
        tests="tests/test_divergence.py -k checks_the_loss"),
    dict(
        name="completed-epochs-off-by-one",
        claim="resume (where a checkpoint continues)",
        edits=[("freezeout_tf/recipes/checkpoint.py",
                "    return steps // steps_per_epoch\n",
                "    return steps // steps_per_epoch + 1\n")],
        tests="tests/test_train_cifar.py -k resume_gives_the_same_weights"),
    dict(
        name="resume-ignores-steps-taken",
        claim="resume (the schedule continues)",
        edits=[("freezeout_tf/callbacks/freezeout.py",
                "    def _iterations(self):\n"
                "        return int(keras.ops.convert_to_numpy("
                "self.model.batches_taken))\n",
                "    def _iterations(self):\n"
                "        return 0\n")],
        tests="tests/test_train_step.py -k load_and_resume_exactly"),
    dict(
        name="guard-signature-check-off",
        claim="guard",
        edits=[("freezeout_tf/_internals/keras_internals.py",
                "        if actual[: len(params)] != params:\n",
                "        if False:\n")],
        tests="tests/test_internals_guard.py -k renamed_parameter"),
    dict(
        name="guard-attribute-check-off",
        claim="guard",
        edits=[("freezeout_tf/_internals/keras_internals.py",
                "        if not hasattr(samples[owner], name):\n",
                "        if False:\n")],
        tests="tests/test_internals_guard.py -k missing_attribute"),
    dict(
        name="guard-probe-off",
        claim="guard",
        edits=[("freezeout_tf/_internals/keras_internals.py",
                "            found = update_routing_problems()\n",
                "            found = []\n")],
        tests="tests/test_internals_guard.py -k probe_raises"),
    dict(
        name="guard-blames-keras-for-own-faults",
        claim="guard (errors name their real cause)",
        edits=[("freezeout_tf/_internals/keras_internals.py",
                "    own = _own_faults(seen)\n",
                "    own = []\n")],
        tests="tests/test_internals_guard.py -k blames_freezeout"),
]


def pytest_command(tests):
    # `-m ""`: the named tests run whether or not they are marked slow
    # (setup.cfg's addopts leave slow ones out).
    return [sys.executable, "-m", "pytest", "-q", "-x", "-p",
            "no:cacheprovider", "-m", "", *shlex.split(tests)]


def run_tests(tree, tests, timeout):
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1",
               TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    try:
        done = subprocess.run(pytest_command(tests), cwd=tree, env=env,
                              capture_output=True, text=True,
                              timeout=timeout)
        code, out = done.returncode, done.stdout
    except subprocess.TimeoutExpired as err:
        code, out = "timeout", str(err.stdout or "")
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return code, time.perf_counter() - start, lines[-1] if lines else ""


def apply_edits(tree, edits):
    """Applies the edits; returns the files' original texts, or raises
    LookupError naming an anchor found zero or several times."""
    originals = {}
    for path, old, new in edits:
        file = tree / path
        text = originals.get(path) or file.read_text()
        originals.setdefault(path, text)
        current = file.read_text()
        count = current.count(old)
        if count != 1:
            raise LookupError(
                f"anchor {'missing' if count == 0 else 'ambiguous'} in "
                f"{path} (found {count} times): {old!r}")
        file.write_text(current.replace(old, new))
    return originals


def check(mutation, tree, timeout):
    row = {"name": mutation["name"], "claim": mutation["claim"],
           "files": sorted({e[0] for e in mutation["edits"]}),
           "tests": mutation["tests"]}
    try:
        originals = apply_edits(tree, mutation["edits"])
    except LookupError as err:
        print(f"!!! {mutation['name']}: {err}", file=sys.stderr)
        return dict(row, status="anchor missing", detail=str(err),
                    seconds=0.0)
    try:
        code, seconds, last = run_tests(tree, mutation["tests"], timeout)
    finally:
        for path, text in originals.items():
            (tree / path).write_text(text)
    # pytest's exit codes: 1 = tests failed. Anything else (no test
    # selected, a collection error, a timeout) proves nothing about the
    # mutation and is reported as such.
    status = {0: "survived", 1: "caught"}.get(code, f"no verdict (rc={code})")
    return dict(row, status=status, returncode=code, detail=last,
                seconds=round(seconds, 1))


def copy_tree(dest):
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.pyc", "site"))


def anchor_problems(mutations):
    """Each edit whose old text is not found exactly once in this tree."""
    found = []
    for m in mutations:
        for path, old, _ in m["edits"]:
            count = (ROOT / path).read_text().count(old)
            if count != 1:
                found.append(f"{m['name']}: anchor "
                             f"{'missing' if count == 0 else 'ambiguous'} "
                             f"in {path} (found {count} times): {old!r}")
    return found


def readme(report, command):
    rows = report["results"]["mutations"]
    caught = sum(r["status"] == "caught" for r in rows)
    lines = [
        "# Mutation check of the core claims",
        "",
        "`scripts/mutation_check.py` applies each listed wrong edit of the "
        "library to a temporary copy of the tree and runs the tests that "
        "should catch it (issue 34). Not a timing benchmark: the seconds "
        "are how long each check took on a shared machine.",
        "",
        "Command (from the repository root):",
        "",
        f"    {command}",
        "",
        f"Run: {report['provenance']['utc']} UTC, commit "
        f"{report['provenance']['commit']}; the baseline (every named test "
        f"unmutated) {report['results']['baseline']['status']}.",
        "",
        f"Score: **{caught} of {len(rows)} caught**.",
        "",
        "| mutation | claim | file | tests | result | s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['claim']} | "
                     f"{', '.join(r['files'])} | `{r['tests']}` | "
                     f"{r['status']} | {r['seconds']} |")
    survivors = [r for r in rows if r["status"] != "caught"]
    lines += ["", "Survivors and missing anchors: "
              + ("none." if not survivors else "")]
    for r in survivors:
        lines.append(f"- {r['name']}: {r['status']} ({r['detail']})")
    notes = [(m["name"], m["note"]) for m in MUTATIONS if m.get("note")]
    if notes:
        lines += ["", "Notes:"] + [f"- {name}: {note}" for name, note in notes]
    lines += ["", "Files: `mutation.json` (`benchmarking.write_report`: "
              "every row, with the commit, versions, machine, command "
              "and time).", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME")
    parser.add_argument("--list", action="store_true",
                        help="list the mutations and check their anchors")
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m["name"] in args.only]
    unknown = set(args.only or ()) - {m["name"] for m in MUTATIONS}
    if unknown:
        parser.error(f"--only: unknown mutation(s) {sorted(unknown)}; "
                     f"choose from {[m['name'] for m in MUTATIONS]}")
    if args.list:
        for m in chosen:
            print(f"{m['name']:48} {m['claim']:40} {m['tests']}")
        problems = anchor_problems(chosen)
        for line in problems:
            print(f"!!! {line}", file=sys.stderr)
        return 1 if problems else 0
    command = shlex.join(["python", "scripts/mutation_check.py"]
                         + (argv if argv is not None else sys.argv[1:]))
    with tempfile.TemporaryDirectory(prefix="mutation_") as tmp:
        tree = pathlib.Path(tmp) / "tree"
        copy_tree(tree)
        # Every named test, unmutated: a failure here would make "caught"
        # meaningless.
        all_tests = " ".join(sorted({m["tests"] for m in chosen}))
        baseline = []
        for tests in sorted({m["tests"] for m in chosen}):
            code, seconds, last = run_tests(tree, tests, args.timeout)
            baseline.append({"tests": tests, "returncode": code,
                             "seconds": round(seconds, 1), "detail": last})
            print(f"baseline {tests}: rc={code} {last}", flush=True)
        ok = all(b["returncode"] == 0 for b in baseline)
        if not ok:
            print("!!! the named tests fail unmutated: fix them first",
                  file=sys.stderr)
        rows = []
        for mutation in chosen:
            row = check(mutation, tree, args.timeout)
            rows.append(row)
            print(f"{row['status']:15} {row['seconds']:7.1f}s  "
                  f"{row['name']}  ({row['detail']})", flush=True)
    results = {"baseline": {"status": "passed" if ok else "FAILED",
                            "runs": baseline, "tests": all_tests},
               "mutations": rows,
               "caught": sum(r["status"] == "caught" for r in rows),
               "total": len(rows)}
    print(f"caught {results['caught']} of {results['total']}")
    if args.out:
        from freezeout_tf.tools.benchmarking import write_report

        out = pathlib.Path(args.out)
        report = write_report(str(out / "mutation.json"), results, command)
        (out / "README.md").write_text(readme(report, command))
    missing = [r for r in rows if r["status"] == "anchor missing"]
    return 1 if (missing or not ok) else 0


if __name__ == "__main__":
    sys.exit(main())
