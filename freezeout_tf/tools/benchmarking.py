"""Measuring helpers shared by the benchmark scripts (not used in training).

Every comparison in this project is made side by side in one process,
interleaved, by per-step medians: the machines are noisy, and a single
wall-clock sum hides stalls. These helpers give the scripts one way to do
that.
"""

import collections
import datetime
import json
import os
import platform
import random
import re
import shlex
import statistics
import subprocess
import sys
import time
import typing

import keras
import tensorflow as tf

from freezeout_tf.estimates.speedup import unit_flops

__all__ = [
    "Report",
    "StepTimer",
    "alternate_steps",
    "first_call_costs",
    "fit_costs",
    "frozen_prefix_sweep",
    "frozen_saving",
    "graph_counts",
    "grappler_times",
    "lower_train_step",
    "median_ms",
    "peak_step_bytes",
    "plain_keras_model",
    "provenance",
    "ratio_spread",
    "read_report",
    "sweep_table",
    "timed_steps",
    "trace_costs",
    "write_report",
]


class StepTimer(keras.callbacks.Callback):
    """Wall-clock time of every training step of `fit` (waits for each step
    to finish by reading its loss): pass it to `fit` in `callbacks`, then
    read `times`, in seconds (and `first_begin`, the `time.perf_counter()`
    at which the first step began)."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()
        if not self.times:
            self.first_begin = self._start

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])  # block until the step has run
        self.times.append(time.perf_counter() - self._start)


def fit_costs(model, x, y, epochs, batch_size, callbacks=()):
    """Times one `fit` and splits it into its steps and what is outside
    them: the fixed costs of a short fit.

    Args:
        model: a compiled Keras model.
        x: the training inputs (arrays).
        y: the training targets (arrays).
        epochs: epochs to run.
        batch_size: the batch size.
        callbacks: more callbacks for `fit` (e.g. `FreezeOut()`).

    Returns:
        dict: `wall_s` (the `fit` call), `setup_s` (from the call to the
        first step: data, building, callbacks' `on_train_begin`),
        `first_step_s` (the trace and graph optimisation, then one step),
        `steps_s` (the other steps, summed), `median_step_ms`, `start_s`
        (`setup_s` + `first_step_s`: Keras without a strategy builds the
        optimizer in the first step, `FreezeOutModel` before it, so only
        their sum compares) and `outside_per_epoch_s` (the rest of
        `wall_s`, outside every step, over the epochs).

    Example:

    >>> net = keras.Sequential([keras.layers.Dense(2)])
    >>> net.compile("sgd", "mse")
    >>> costs = fit_costs(net, tf.ones((8, 3)), tf.ones((8, 2)), 2, 4)
    >>> costs["wall_s"] >= costs["start_s"] + costs["steps_s"]
    True
    """
    timer = StepTimer()
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0,
              callbacks=list(callbacks) + [timer])
    wall = time.perf_counter() - start
    times = timer.times
    setup = timer.first_begin - start
    return {
        "wall_s": wall,
        "setup_s": setup,
        "first_step_s": times[0],
        "steps_s": sum(times[1:]),
        "median_step_ms": median_ms(times[1:] or times),
        "start_s": setup + times[0],
        "outside_per_epoch_s": (wall - setup - sum(times)) / epochs,
    }


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


def first_call_costs(function, args, steady_calls=3):
    """Splits the first call of a `tf.function` (a train step) into the
    trace and the preparation of its graph, and counts the graph's parts.

    Args:
        function: a `tf.function` not yet traced for `args` (its variables
            already made: a built model and optimizer).
        args: the positional arguments of one call, e.g. `((x, y),)`.
        steady_calls: calls after the first, timed to take one run's time
            out of the first call's.

    Returns:
        dict: `trace_s` (`get_concrete_function`: the Python trace and the
        function definitions made from it), `first_call_s` (the first run:
        the runtime's graph passes, Grappler, the executor, one step),
        `steady_s` (median of the next calls), `prepare_s` (`first_call_s`
        less `steady_s`) and `graph` (`graph_counts`).

    Example:

    >>> f = tf.function(lambda x: tf.cond(x > 0, lambda: x, lambda: -x))
    >>> costs = first_call_costs(f, (tf.constant(1.0),))
    >>> costs["graph"]["conds"]
    1
    """
    def run():
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), function(*args))
        return time.perf_counter() - start

    start = time.perf_counter()
    concrete = function.get_concrete_function(*args)
    trace = time.perf_counter() - start
    first = run()
    steady = statistics.median(run() for _ in range(steady_calls))
    return {"trace_s": trace, "first_call_s": first, "steady_s": steady,
            "prepare_s": first - steady, "graph": graph_counts(concrete)}


def trace_costs(model, batch):
    """Where the first call of a model's train step goes, as `fit` meets it.

    `first_call_costs` of `model.train_step` wrapped in a fresh
    `tf.function` (no AutoGraph, as `FreezeOutModel.train_step` asks) for
    batches of any size, as `fit` traces it from a dataset's batches (their
    batch size unknown to the graph; a known one lets Grappler fold shapes
    `fit` cannot): traced (the Python code runs and builds the graph, the
    gradients included); called once (TensorFlow instantiates the function:
    Grappler, the lowering of `If` ops to switch/merge, placement, the
    executors; then one step); called again (the step alone).

    The model's optimizer (and with `cache_frozen_prefix`, its cache:
    `PrefixCache.prepare`) must be built; the calls train it.

    Args:
        model: a compiled Keras model, built.
        batch: one batch, `(x, y)` or `(x, y, sample_weight)` of tensors.

    Returns:
        dict: `trace_s`, `first_call_s`, `second_call_s`, `instantiate_s`
        (`first_call_s - second_call_s`: what the first call costs beyond
        a step), and the graph's `graph_counts`, flattened.
    """
    spec = tf.nest.map_structure(
        lambda t: tf.TensorSpec([None] + t.shape[1:], t.dtype), batch)
    step = tf.function(model.train_step, autograph=False,
                       input_signature=[spec])
    costs = first_call_costs(step, (batch,), steady_calls=1)
    graph = costs.pop("graph")
    return {"trace_s": costs["trace_s"], "first_call_s": costs["first_call_s"],
            "second_call_s": costs["steady_s"],
            "instantiate_s": costs["prepare_s"], **graph,
            "if_ops": graph["conds"]}


_CONDS = ("If", "StatelessIf")


def graph_counts(concrete):
    """Sizes of a traced function's graph: what the runtime prepares.

    Args:
        concrete: a `tf.types.experimental.ConcreteFunction`.

    Returns:
        dict: `nodes` (the top-level graph's), `op_types` (count per op type
        there), `conds` (`If`/`StatelessIf` ops in the whole graph, branches
        included), `cond_inputs` (their inputs, summed: each is a tensor the
        branches capture), `functions` (in the library) and
        `function_nodes` (their nodes, summed), `branch_nodes` (nodes of
        each cond's then and else branch, in graph order).
    """
    graph_def = concrete.graph.as_graph_def()
    library = {f.signature.name: f for f in graph_def.library.function}
    op_types = collections.Counter(n.op for n in graph_def.node)
    conds = [n for n in graph_def.node if n.op in _CONDS]
    conds += [n for f in library.values() for n in f.node_def
              if n.op in _CONDS]
    return {
        "nodes": len(graph_def.node),
        "op_types": dict(op_types.most_common()),
        "conds": len(conds),
        "cond_inputs": sum(len(n.input) for n in conds),
        "functions": len(library),
        "function_nodes": sum(len(f.node_def) for f in library.values()),
        "branch_nodes": [[len(library[n.attr[b].func.name].node_def)
                          for b in ("then_branch", "else_branch")]
                         for n in conds],
    }


_GRAPPLER_ITEM = re.compile(
    r"(?:Starting optimization|Optimization results) for grappler item: "
    r"(\S+)")
_GRAPPLER_PASS = re.compile(
    r"(?:\] |^\s*)([\w-]+)\S*: Graph size after: .*time = ([0-9.]+)ms")


def grappler_times(log):
    """Grappler's own timings, read from TensorFlow's log.

    TensorFlow logs them when started with `TF_CPP_MIN_LOG_LEVEL=0` and
    `TF_CPP_VMODULE=meta_optimizer=1` (set before TensorFlow loads: run the
    measured code in a child process and read its stderr).

    Args:
        log: the log text.

    Returns:
        list, one dict per optimized graph ("grappler item": a function's
        graph), in log order: `item`, `ms` (all passes) and `passes`
        (ms per pass name, summed over the meta-optimizer's iterations).

    Example:

    >>> grappler_times("Optimization results for grappler item: f\\n"
    ...                "  constant_folding: Graph size after: 3 nodes (0), "
    ...                "2 edges (0), time = 1.5ms.")
    [{'item': 'f', 'ms': 1.5, 'passes': {'constant_folding': 1.5}}]
    """
    items = []
    for line in log.splitlines():
        item = _GRAPPLER_ITEM.search(line)
        if item:
            items.append({"item": item.group(1), "ms": 0.0, "passes": {}})
            continue
        found = _GRAPPLER_PASS.search(line)
        if found and items:
            name, ms = found.group(1), float(found.group(2))
            passes = items[-1]["passes"]
            passes[name] = passes.get(name, 0.0) + ms
            items[-1]["ms"] += ms
    return items


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
        rounds_a: per-round step times of arm a, as a list of lists,
            measured in the same rounds as arm b's (`alternate_steps`).
        rounds_b: arm b's, likewise.
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


def frozen_saving(flops, k, backward=2.0):
    """FLOP-predicted saving of a step with units `0..k-1` frozen.

    Args:
        flops: forward cost of each unit and the head (`unit_flops`).
        k: frozen units.
        backward: the backward pass' cost as a multiple of the forward's: 2
            when every weight trains (input and weight gradients), about 1
            under LoRA (input gradients only, besides the small adapters).

    Returns:
        the frozen units' backward out of the whole step's cost.

    Example:

    >>> round(frozen_saving([1, 1, 2], 1), 4)
    0.1667
    """
    return backward * sum(flops[:k]) / ((1 + backward) * sum(flops))


def peak_step_bytes(step, repeats=3):
    """Median over `repeats` calls of `step()` (one training step returning
    its logs) of the peak memory TensorFlow's allocator held during the
    step, above what was in use before it.

    Needs TensorFlow's BFC allocator on the CPU
    (`TF_CPU_ALLOCATOR_USE_BFC=true` before TensorFlow starts); otherwise
    `get_memory_info` raises.

    Example: ``peak_step_bytes(lambda: step(batch))`` with ``step`` a
    traced ``train_step`` (`scripts/benchmark_transformers.py`).
    """
    peaks = []
    for _ in range(repeats):
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        tf.config.experimental.reset_memory_stats("CPU:0")
        float(step()["loss"])
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
        peaks.append(peak - before)
    return int(statistics.median(peaks))


def frozen_prefix_sweep(model, plain, batch, shares=(0.0, 0.25, 0.5, 0.75,
                                                      1.0),
                        rounds=12, input_shape=None, backward=2.0,
                        memory=True):
    """Step time and peak memory of a `FreezeOutModel` with a frozen prefix
    of 0-100 % of its units, against plain Keras and the FLOP prediction.

    One traced train step serves every setting (`schedule_state.
    freeze_prefix(k)` between steps); the settings and plain Keras are
    interleaved step by step (`alternate_steps`, one step per round).

    Args:
        model: a compiled `FreezeOutModel` whose optimizer is built.
        plain: the plain Keras model over the same weights (e.g. the model
            `from_model` split), compiled, its optimizer built.
        batch: `(x, y)` or `(x, y, sample_weight)` of tensors.
        shares: frozen shares of the units (rounded to whole units).
        rounds: timed steps of each setting.
        input_shape: for `unit_flops`.
        backward: for `frozen_saving`.
        memory: also measure each setting's peak (`peak_step_bytes`).

    Returns:
        dict with `num_units`, `unit_macs`, `overhead_vs_plain` (nothing
        frozen over plain Keras: `ratio_spread`) and `rows`, one per setting
        (`setting` = frozen units or `"plain"`): `ms_per_step` (median),
        `ms_quartiles`, `measured_saving` (against nothing frozen),
        `peak_mib` and `peak_vs_full` (if `memory`), `step_times_s`, and for
        the frozen settings `frozen_units`, `frozen_share`,
        `flop_predicted_saving`.

    Raises:
        ValueError: a share outside [0, 1], or `rounds` < 1.

    Example: ``result = frozen_prefix_sweep(model, plain, (x, y))``, then
    ``sweep_table(result)``; `scripts/benchmark_llm.py` runs it,
    `tests/test_benchmarking.py` checks it.
    """
    bad = [s for s in shares if not 0 <= s <= 1]
    if bad or not shares:
        raise ValueError(
            f"shares must be frozen shares of the units in [0, 1]; got "
            f"{list(shares)!r}.")
    step = tf.function(model.train_step, autograph=False)
    plain_step = tf.function(plain.train_step, autograph=False)
    n = model.num_units
    ks = sorted({round(s * n) for s in shares})

    def arm(setting):
        if setting == "plain":
            return lambda: plain_step(batch)

        def run():
            model.schedule_state.freeze_prefix(setting)
            return step(batch)
        return run

    def waited(run):
        def call():
            float(run()["loss"])  # block until the step has run
        return call

    arms = {s: arm(s) for s in ks + ["plain"]}
    timed = alternate_steps({s: waited(a) for s, a in arms.items()}, rounds,
                            steps=1)
    peaks = ({s: peak_step_bytes(a) for s, a in arms.items()}
             if memory else {})
    flops = unit_flops(model, input_shape)
    times = {s: [t for r in timed[s] for t in r] for s in arms}
    base = statistics.median(times[ks[0]])
    rows = []
    for s in arms:
        med = statistics.median(times[s])
        row = {"setting": s, "ms_per_step": 1000 * med,
               "ms_quartiles": [1000 * q for q in statistics.quantiles(
                   times[s], n=4, method="inclusive")[::2]],
               "measured_saving": 1 - med / base, "step_times_s": times[s]}
        if memory:
            row.update(peak_mib=peaks[s] / 2**20,
                       peak_vs_full=peaks[s] / peaks[ks[0]])
        if s != "plain":
            row.update(frozen_units=s, frozen_share=s / n,
                       flop_predicted_saving=frozen_saving(flops, s,
                                                           backward))
        rows.append(row)
    return {"num_units": n, "unit_macs": flops, "rows": rows,
            "overhead_vs_plain": ratio_spread(timed[ks[0]], timed["plain"])}


def sweep_table(result):
    """A `frozen_prefix_sweep` result as Markdown lines: a table with a row
    per setting, then the nothing-frozen / plain Keras ratio.

    Example: `tests/test_benchmarking.py`.
    """
    memory = "peak_mib" in result["rows"][0]
    lines = ["| frozen | ms/step (quartiles) | saving | FLOP-predicted | "
             "measured / predicted |"
             + (" peak MiB | peak / none frozen |" if memory else ""),
             "|---|---:|---:|---:|---:|" + ("---:|---:|" if memory else "")]
    for row in result["rows"]:
        q = row["ms_quartiles"]
        cells = [f"{row['ms_per_step']:.0f} ({q[0]:.0f}-{q[1]:.0f})",
                 f"{row['measured_saving']:.1%}"]
        if row["setting"] == "plain":
            label, cells = "plain Keras", cells + ["", ""]
        else:
            pred = row["flop_predicted_saving"]
            label = f"{row['frozen_units']}/{result['num_units']}"
            cells += [f"{pred:.1%}",
                      f"{row['measured_saving'] / pred:.2f}" if pred else ""]
        if memory:
            cells += [f"{row['peak_mib']:.0f}", f"{row['peak_vs_full']:.2f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    o = result["overhead_vs_plain"]
    lines += ["", f"Nothing frozen / plain Keras, paired per round: "
              f"{o['paired']:.3f} (95 % interval {o['ci_low']:.3f}-"
              f"{o['ci_high']:.3f})."]
    return lines


def _commit():
    """The checked-out commit of the repository holding this package, with
    `+dirty` if it has uncommitted changes; "unknown" outside git."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
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

    Every figure the documentation quotes comes from such a file (or from a test):
    it says which commit, versions, machine and command produced it, and
    when.

    Args:
        path: the `.json` file to write (its directory is made if missing).
        results: JSON-serialisable figures.
        command: see `provenance`.

    Returns:
        the report written: `{"provenance": ..., "results": results}`
        (`read_report` reads it back).

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
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return report


class Report(typing.NamedTuple):
    """A figure file as read by `read_report`: its `results` and its
    `provenance` (`commit`, `versions`, `machine`, `command`, `utc`; a
    file written before `write_report` existed holds only some of them)."""

    results: typing.Any
    provenance: dict


# Where the benchmark scripts put provenance before `write_report` existed
# (their own layouts, kept as measured in benchmarks/).
_LEGACY_VERSIONS = ("tensorflow", "keras")
_LEGACY_MACHINE = {"cpus": "cpus", "cpu_count": "cpus",
                   "platform": "platform", "processor": "processor"}


def _legacy_provenance(data):
    machine = data.get("machine")
    machine = (dict(machine) if isinstance(machine, dict)
               else {"processor": machine} if machine else {})
    versions = {k: machine.pop(k) for k in _LEGACY_VERSIONS if k in machine}
    versions.update({k: data[k] for k in _LEGACY_VERSIONS if k in data})
    machine.update({new: data[old] for old, new in _LEGACY_MACHINE.items()
                    if old in data})
    found = {"versions": versions, "machine": machine,
             "command": data.get("command"), "utc": data.get("written_utc")}
    return {k: v for k, v in found.items() if v}


def read_report(path):
    """Reads a figure file: one `write_report` wrote, or an older one.

    The benchmark scripts once each wrote their own JSON layout, with their
    command, machine and versions among the figures; those files are kept
    as measured. Either way this returns the figures and what is known of
    where they come from, in `write_report`'s terms.

    Args:
        path: the `.json` file.

    Returns:
        `Report(results, provenance)`. For a `write_report` file, its
        `results` and `provenance`. For an older file, `results` is the
        whole file as stored (so the keys its readers used still work) and
        `provenance` what it recorded of `command`, `versions`
        (TensorFlow, Keras), `machine` (`cpus`, `platform`, `processor`)
        and `utc`, under those names; no `commit`.

    Example:

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "r.json")
    >>> _ = write_report(path, {"a": 1}, command="python x.py")
    >>> report = read_report(path)
    >>> report.results, report.provenance["command"]
    ({'a': 1}, 'python x.py')
    >>> with open(path, "w") as f:
    ...     json.dump({"command": "python y.py", "keras": "3.8.0",
    ...                "runs": [1]}, f)
    >>> read_report(path).provenance
    {'versions': {'keras': '3.8.0'}, 'command': 'python y.py'}
    """
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict) and set(data) == {"provenance", "results"}:
        return Report(data["results"], data["provenance"])
    legacy = _legacy_provenance(data) if isinstance(data, dict) else {}
    return Report(data, legacy)
