"""Measuring helpers shared by the benchmark scripts (not used in training).

Every comparison in this project is made side by side in one process,
interleaved, by per-step medians: the machines are noisy, and a single
wall-clock sum hides stalls. These helpers give the scripts one way to do
that.
"""

import datetime
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time

import keras
import tensorflow as tf

__all__ = [
    "StepTimer",
    "alternate_steps",
    "lower_train_step",
    "median_ms",
    "plain_keras_model",
    "provenance",
    "ratio_spread",
    "timed_steps",
    "write_report",
]


class StepTimer(keras.callbacks.Callback):
    """Wall-clock time of every training step of `fit` (waits for each step
    to finish by reading its loss): pass it to `fit` in `callbacks`, then
    read `times`, in seconds."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])  # block until the step has run
        self.times.append(time.perf_counter() - self._start)


def plain_keras_model(model):
    """A stock `keras.Sequential` over the same freeze units and head as the
    `FreezeOutModel` `model` (shared layers and weights): the baseline every
    benchmark compares against."""
    return keras.Sequential(list(model.freeze_units) + [model.head])


def timed_steps(model, dataset, steps):
    """Runs `steps` training steps of `fit` and returns their times (s)."""
    timer = StepTimer()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0,
              callbacks=[timer])
    return timer.times


def lower_train_step(model, batch):
    """Traces `model.train_step` under XLA and lowers it to HLO.

    Args:
        model: a compiled model whose variables (and optimizer) are built.
        batch: an `(x, y)` tuple of tensors.

    Returns:
        dict with `trace_s` (Python tracing), `lower_s` (TensorFlow graph to
        HLO through the tf2xla bridge), `hlo_lines` and `hlo_conditionals`.
    """
    fn = tf.function(model.train_step, jit_compile=True)
    start = time.perf_counter()
    fn.get_concrete_function(batch)
    traced = time.perf_counter()
    hlo = fn.experimental_get_compiler_ir(batch)(stage="hlo")
    lowered = time.perf_counter()
    return {
        "trace_s": traced - start,
        "lower_s": lowered - traced,
        "hlo_lines": hlo.count("\n"),
        "hlo_conditionals": hlo.count(" conditional("),
    }


def median_ms(times):
    """Median of step times (s) in milliseconds."""
    return 1000.0 * statistics.median(times)


def alternate_steps(arms, rounds, steps, warmup=2):
    """Times one step of each arm in turn, step by step, in short rounds.

    Each arm first runs `warmup` untimed steps. Then every round runs
    `steps` passes over the arms, one step of each per pass, timing each
    step on its own; the order of the arms is reversed every other round,
    so neither always runs right after the other.

    Args:
        arms: dict name -> callable that runs one training step and returns
            only once it has finished (e.g. reads its loss). It returns
            `None`, and the call is timed, or its own measured step time in
            seconds (e.g. `StepTimer`'s, leaving `fit`'s setup out).
        rounds: number of rounds.
        steps: timed steps per arm per round.
        warmup: untimed steps per arm before the first round.

    Returns:
        dict name -> list of `rounds` lists of `steps` step times (s).

    Example:

    >>> times = alternate_steps({"a": lambda: None, "b": lambda: None}, 3, 2)
    >>> [len(times["a"]), len(times["a"][0])]
    [3, 2]
    """
    if rounds < 1 or steps < 1:
        raise ValueError(
            f"rounds and steps must be >= 1; got rounds={rounds!r}, "
            f"steps={steps!r}.")
    names = list(arms)
    for name in names:
        for _ in range(warmup):
            arms[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        per_round = {name: [] for name in names}
        for _ in range(steps):
            for name in order:
                start = time.perf_counter()
                measured = arms[name]()
                elapsed = time.perf_counter() - start
                per_round[name].append(
                    elapsed if measured is None else measured)
        for name in names:
            times[name].append(per_round[name])
    return times


def _pooled_median(rounds):
    return statistics.median(t for r in rounds for t in r)


def ratio_spread(rounds_a, rounds_b, resamples=2000, seed=0):
    """Arm a's step time as a multiple of arm b's, with its spread.

    The headline is `paired`: the median over every pass of a round of
    `a`'s step over `b`'s step in that pass (`alternate_steps` runs them
    back to back), which cancels the machine's slow drifts; its 95 %
    bootstrap interval resamples whole rounds, so that a slow spell counts
    once per round it lasted.

    Args:
        rounds_a, rounds_b: per-round step times of two arms measured in
            the same rounds (`alternate_steps`), as lists of lists.
        resamples: bootstrap resamples of the rounds.
        seed: seed of the bootstrap.

    Returns:
        dict with `paired`, `ci_low`, `ci_high` (its 95 % interval),
        `ratio` (median step time of a over that of b, all steps pooled)
        and `round_q1`, `round_median`, `round_q3` (quartiles of the
        per-round ratios of medians).

    Example:

    >>> r = ratio_spread([[2.0, 2.2]] * 4, [[1.0, 1.1]] * 4)
    >>> [round(r[k], 3) for k in ("paired", "ci_low", "ci_high", "ratio")]
    [2.0, 2.0, 2.0, 2.0]
    """
    if (len(rounds_a) != len(rounds_b) or not rounds_a
            or any(len(a) != len(b) for a, b in zip(rounds_a, rounds_b))):
        raise ValueError(
            f"rounds_a and rounds_b must hold the same number (>= 1) of "
            f"rounds of the same lengths; got {len(rounds_a)} and "
            f"{len(rounds_b)} rounds.")
    pairs = [[x / y for x, y in zip(a, b)]
             for a, b in zip(rounds_a, rounds_b)]
    per_round = sorted(statistics.median(a) / statistics.median(b)
                       for a, b in zip(rounds_a, rounds_b))
    if len(per_round) > 1:
        q1, q2, q3 = statistics.quantiles(per_round, n=4, method="inclusive")
    else:
        q1 = q2 = q3 = per_round[0]
    rng = random.Random(seed)
    n = len(pairs)
    boot = sorted(
        _pooled_median([pairs[rng.randrange(n)] for _ in range(n)])
        for _ in range(resamples))
    return {
        "paired": _pooled_median(pairs),
        "ci_low": boot[int(0.025 * (resamples - 1))],
        "ci_high": boot[int(0.975 * (resamples - 1))],
        "ratio": _pooled_median(rounds_a) / _pooled_median(rounds_b),
        "round_q1": q1, "round_median": q2, "round_q3": q3,
    }


def _commit():
    """The checked-out commit of the repository holding this package, with
    `+dirty` if it has uncommitted changes; "unknown" outside git."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        def git(*args):
            return subprocess.run(
                ["git", "-C", root, *args], capture_output=True, text=True,
                check=True, timeout=10).stdout.strip()

        commit = git("rev-parse", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain",
                                         "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(command=None):
    """Where a figure comes from: commit, versions, machine, command, time.

    Args:
        command: the command that produced the figures; by default this
            process's `python` command line.

    Returns:
        dict with `commit`, `versions` (Python, TensorFlow, Keras, and
        keras-hub when installed), `machine` (platform, processor, CPU
        count), `command` and `utc` (ISO 8601, seconds).

    Example:

    >>> sorted(provenance("python x.py"))
    ['command', 'commit', 'machine', 'utc', 'versions']
    """
    versions = {"python": platform.python_version(),
                "tensorflow": tf.__version__, "keras": keras.__version__}
    hub = sys.modules.get("keras_hub")
    if hub is not None:
        versions["keras_hub"] = hub.__version__
    if command is None:
        command = shlex.join(["python"] + sys.argv)
    return {
        "commit": _commit(),
        "versions": versions,
        "machine": {"platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "command": command,
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
    }


def write_report(path, results, command=None):
    """Writes `results` as JSON to `path`, with their `provenance`.

    Every figure the README quotes comes from such a file (or from a test):
    it says which commit, versions, machine and command produced it, and
    when.

    Args:
        path: the `.json` file to write (its directory must exist).
        results: JSON-serialisable figures.
        command: see `provenance`.

    Returns:
        the report written: `{"provenance": ..., "results": results}`.

    Raises:
        ValueError: if `results` holds NaN or infinity.

    Example:

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "r.json")
    >>> write_report(path, {"a": 1}, command="python x.py")["results"]
    {'a': 1}
    """
    report = {"provenance": provenance(command), "results": results}
    text = json.dumps(report, indent=1, allow_nan=False)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return report
