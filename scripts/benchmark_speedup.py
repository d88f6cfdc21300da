"""Benchmark: how much training time FreezeOut really saves, in one process.

Trains the same DenseNet-BC on the same synthetic CIFAR-shaped data under
four arms, each a complete run of the same number of steps, interleaved
(A B C D A B C D ...) after a warm-up, medians over the repetitions:

  A  plain Keras: the same layers in a `keras.Sequential`, stock
     `train_step`, the same optimizer with a cosine schedule, no FreezeOut;
  B  FreezeOut with t_0 = 1 (nothing ever freezes): the machinery's cost;
  C  FreezeOut at the given schedule (default cubic, t_0 = 0.8);
  D  common practice: a callback that sets `layer.trainable = False` at the
     same freeze steps as C and rebuilds the train function (retraces).

It prints wall-clock per arm (tracing included and excluded), the step time
in each freeze phase, the measured saving of C against B and A, the
FLOP-based `estimate_speedup` for C and the ratio measured / estimated, and
checks the targets: B/A <= 1.02, saving(C vs B) >= 0.9 x estimate, C faster
than D in total wall-clock. With --out it writes there `speedup.json`
(`benchmarking.write_report`: the run with its commit, versions, machine,
command and UTC time), a markdown table `speedup.md` and PNG plots.

Usage (the committed results in benchmarks/speedup/):
    python scripts/benchmark_speedup.py --depth 22 --growth-rate 12 \
        --batch-size 32 --steps-per-epoch 20 --epochs 5 --repeats 3 \
        --out benchmarks/speedup
    python scripts/benchmark_speedup.py --from-json benchmarks/speedup/speedup.json
"""

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from freezeout_tf import FreezeOut, models, schedule, validation  # noqa: E402
from freezeout_tf.core.optimizer import SGDWithL2  # noqa: E402
from freezeout_tf.estimates.speedup import estimate_speedup  # noqa: E402
from freezeout_tf.tools.benchmarking import (  # noqa: E402
    StepTimer, provenance, read_report, write_report)

LOSS = "sparse_categorical_crossentropy"


class FreezeByRecompiling(keras.callbacks.Callback):
    """Arm D: what users write today. At each freeze step, set the units'
    `trainable = False` and rebuild the train function (a new trace)."""

    def __init__(self, units, freeze_steps):
        super().__init__()
        self.units = units
        self.freeze_steps = list(freeze_steps)
        self.retrace_steps = []

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        frozen = int(np.sum(step >= np.asarray(self.freeze_steps)))
        if frozen and self.units[frozen - 1].trainable:
            for unit in self.units[:frozen]:
                unit.trainable = False
            self.model.make_train_function(force=True)
            self.retrace_steps.append(step)


def optimizer(learning_rate):
    # The original recipe: SGD, Nesterov 0.9, L2 1e-4 in the gradient.
    return SGDWithL2(learning_rate, momentum=0.9, nesterov=True, l2=1e-4)


def build(args):
    keras.utils.set_random_seed(args.seed)
    return models.densenet_bc(args.depth, args.growth_rate, num_classes=100)


def run_arm(arm, args, data, total_steps):
    """One complete run of an arm; returns its timings."""
    model = build(args)
    callbacks = []
    freeze = None
    if arm == "A" or arm == "D":
        units = model.freeze_units
        net = keras.Sequential(units + [model.head])
        lr = keras.optimizers.schedules.CosineDecay(args.learning_rate,
                                                    total_steps)
        net.compile(optimizer(lr), LOSS)
        if arm == "D":
            fr = schedule.freeze_fractions(len(units), args.t_0,
                                           args.how_scale)
            freeze = FreezeByRecompiling(
                units, schedule.freeze_steps(total_steps, fr)[:-1])
            callbacks.append(freeze)
    else:
        net = model
        net.compile(optimizer(args.learning_rate), LOSS)
        t_0 = 1.0 if arm == "B" else args.t_0
        callbacks.append(FreezeOut(t_0=t_0, how_scale=args.how_scale))
    timer = StepTimer()
    start = time.perf_counter()
    net.fit(data, epochs=args.epochs, verbose=0, callbacks=callbacks + [timer])
    wall = time.perf_counter() - start
    times = np.array(timer.times)
    traced = [0] + ([s for s in freeze.retrace_steps] if freeze else [])
    untraced = np.delete(times, [s for s in traced if s < len(times)])
    typical = float(np.median(untraced))
    excess = sum(max(times[s] - typical, 0.0) for s in traced
                 if s < len(times))
    return {
        "wall": wall,
        "wall_excl_tracing": wall - excess,
        "tracing": excess,
        "step_times": times.tolist(),
        "retrace_steps": traced,
    }


def summarize(results, freeze_steps):
    """Per arm: medians over repetitions of the wall-clock figures, the step
    time by freeze phase, and `steps_s`, the robust training time: the sum
    over steps of each step's median time across repetitions, with traced
    steps counted at their phase's median (tracing excluded). On a noisy
    machine one slow repetition moves a sum of medians far less than a
    median of sums, so the targets use `steps_s`."""
    summary = {}
    for arm, runs in results.items():
        def med(key):
            return statistics.median(r[key] for r in runs)

        per_step = np.median([r["step_times"] for r in runs], axis=0)
        phases = phase_medians(per_step, freeze_steps)
        traced = set(runs[0]["retrace_steps"])
        steps_s = sum(
            phases[int(np.sum(j >= freeze_steps))] if j in traced else t
            for j, t in enumerate(per_step)
        )
        summary[arm] = {
            "wall": med("wall"),
            "wall_excl_tracing": med("wall_excl_tracing"),
            "tracing": med("tracing"),
            "steps_s": float(steps_s),
            "phase_ms": {k: 1000 * v for k, v in phases.items()},
        }
    return summary


def phase_medians(step_times, freeze_steps):
    """Median step time for each number of frozen units (step 0 excluded)."""
    phases = {}
    for j, t in enumerate(step_times[1:], start=1):  # step 0 holds the trace
        # Step j runs with the units frozen whose freeze step is <= j.
        k = int(np.sum(j >= freeze_steps))
        phases.setdefault(k, []).append(t)
    return {k: float(np.median(v)) for k, v in sorted(phases.items())}


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=22, help="DenseNet-BC depth L")
    p.add_argument("--growth-rate", type=int, default=12, help="k")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps-per-epoch", type=int, default=20)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--t-0", type=float, default=0.8)
    p.add_argument("--how-scale", default="cubic",
                   choices=sorted(schedule.SCALINGS))
    p.add_argument("--learning-rate", type=float, default=0.1)
    p.add_argument("--arms", default="ABCD",
                   help="which arms to run, e.g. ABC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="directory for JSON, markdown table and plots "
                        "(e.g. benchmarks/speedup)")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="recompute the summary, table and plots of a saved "
                        "run (its speedup.json, kept as it is) instead of "
                        "running")
    args = p.parse_args(argv)
    if args.from_json:
        saved = read_report(args.from_json)
        return finish(saved.results, saved.provenance, args.out)
    validation.check_t_0(args.t_0)
    for name in ("batch_size", "steps_per_epoch", "epochs", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1; got "
                    f"{getattr(args, name)}")

    total_steps = args.steps_per_epoch * args.epochs
    n = args.batch_size * args.steps_per_epoch
    rng = np.random.default_rng(args.seed)
    x = rng.normal(size=(n, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 100, n).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(
        args.batch_size, drop_remainder=True).cache()

    probe = build(args)
    estimate = estimate_speedup(probe, args.t_0, args.how_scale)
    fr = schedule.freeze_fractions(probe.num_units, args.t_0, args.how_scale)
    freeze_steps = schedule.freeze_steps(total_steps, fr)[:-1]
    arms = list(args.arms)

    # Warm-up: one short run of every arm (kernels, allocator, caches).
    warm = argparse.Namespace(**vars(args))
    warm.epochs = 1
    for arm in arms:
        run_arm(arm, warm, data.take(3), 3)

    runs = {arm: [] for arm in arms}
    for rep in range(args.repeats):
        for arm in arms:
            r = run_arm(arm, args, data, total_steps)
            runs[arm].append(r)
            print(f"rep {rep} arm {arm}: {r['wall']:.1f} s "
                  f"({r['wall_excl_tracing']:.1f} s without tracing)",
                  flush=True)

    results = {
        "args": vars(args),
        "cpu_name": _cpu_name(),
        "model": f"DenseNet-BC L={args.depth} k={args.growth_rate}, "
                 f"{probe.num_units} units",
        "total_steps": total_steps,
        "freeze_steps": freeze_steps.tolist(),
        "estimate_speedup": estimate,
        "runs": runs,
        "fractions": fr.tolist(),
    }
    return finish(results, None, args.out)


def finish(report, where, out):
    """Summary, targets, table and (with `out`) the files of a run.

    `where` is the provenance of a saved run (`read_report`); `None` for a
    run just measured, whose `speedup.json` is then written to `out`."""
    freeze_steps = np.asarray(report["freeze_steps"])
    report["summary"] = summarize(report["runs"], freeze_steps)
    report["targets"] = targets(report["summary"],
                                report["estimate_speedup"])
    if where is None and out:
        where = write_report(os.path.join(out, "speedup.json"),
                             report)["provenance"]
    text = markdown(report, where or provenance())
    print(text)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "speedup.md"), "w") as f:
            f.write(text)
        plot(report, out)
    return 0


def targets(summary, estimate):
    out = {}
    if "A" in summary and "B" in summary:
        ratio = summary["B"]["steps_s"] / summary["A"]["steps_s"]
        out["overhead B/A <= 1.02"] = {"value": ratio, "met": bool(ratio <= 1.02)}
    if "B" in summary and "C" in summary:
        saving = 1 - summary["C"]["steps_s"] / summary["B"]["steps_s"]
        out["saving(C vs B) >= 0.9 x estimate"] = {
            "value": saving / estimate, "met": bool(saving >= 0.9 * estimate)}
    if "C" in summary and "D" in summary:
        ratio = summary["C"]["wall"] / summary["D"]["wall"]
        out["C faster than D (wall, tracing included)"] = {
            "value": ratio, "met": bool(ratio < 1.0)}
    return out


def markdown(report, where):
    s = report["summary"]
    machine, versions = where.get("machine", {}), where.get("versions", {})
    lines = [
        f"{report['model']}, {report['total_steps']} steps per run; "
        f"{machine.get('cpus')} CPU cores "
        f"({report.get('cpu_name', machine.get('processor'))}), TF "
        f"{versions.get('tensorflow')}, Keras "
        f"{versions.get('keras')}.",
        "",
        f"Command: `{where.get('command')}`",
        "",
        "Medians over the repetitions. `train s` is the robust training"
        " time (sum of per-step medians, tracing excluded); savings use it.",
        "",
        "| arm | wall s (tracing incl.) | wall s (excl.) | tracing s |"
        " train s | saving vs B | saving vs A |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"A": "A plain Keras", "B": "B FreezeOut t_0=1",
             "C": "C FreezeOut", "D": "D trainable=False + retrace"}
    for arm, r in s.items():
        vs = {ref: (f"{1 - r['steps_s'] / s[ref]['steps_s']:.1%}"
                    if ref in s else "-") for ref in "BA"}
        lines.append(
            f"| {names[arm]} | {r['wall']:.1f} | {r['wall_excl_tracing']:.1f}"
            f" | {r['tracing']:.1f} | {r['steps_s']:.1f} | {vs['B']} |"
            f" {vs['A']} |")
    lines += ["", f"FLOP-based estimate for C (`estimate_speedup`): "
                  f"{report['estimate_speedup']:.1%}", ""]
    if "C" in s:
        lines += ["Step time (ms, median) by number of frozen units:", "",
                  "| frozen units | " + " | ".join(s) + " |",
                  "|---:|" + "---:|" * len(s)]
        for k in s["C"]["phase_ms"]:
            cells = [f"{s[a]['phase_ms'].get(k, float('nan')):.0f}"
                     for a in s]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("")
    for name, t in report["targets"].items():
        lines.append(f"- target {name}: {t['value']:.3f} -> "
                     f"{'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"


def plot(report, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for arm, runs in report["runs"].items():
        per_step = np.median([r["step_times"] for r in runs], axis=0)
        ax.plot(np.arange(1, len(per_step)), 1000 * per_step[1:],
                label=f"arm {arm}", lw=1)
    for s in report["freeze_steps"]:
        ax.axvline(s, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("training step (dotted: a unit freezes)")
    ax.set_yscale("log")  # D's retrace spikes would flatten the rest
    ax.set_ylabel("step time, ms (median over repetitions, log scale)")
    ax.set_title(report["model"] + ": step time over the run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "step_time.png"), dpi=110)
    plt.close(fig)

    total = report["total_steps"]
    steps = np.arange(total)
    mult = np.array([schedule.lr_multipliers(j, total, report["fractions"])
                     for j in steps])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    cmap = plt.get_cmap("viridis")
    for i in range(mult.shape[1]):
        last = i == mult.shape[1] - 1
        ax.plot(steps, mult[:, i], color="red" if last else cmap(
            i / mult.shape[1]), lw=1.5 if last else 0.8,
            label="head" if last else None)
    ax.set_xlabel("training step")
    ax.set_ylabel("learning-rate multiplier")
    ax.set_title("Per-unit learning-rate multipliers (unit 0 dark, head red)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "lr_multipliers.png"), dpi=110)
    plt.close(fig)


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
