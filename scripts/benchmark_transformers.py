"""Benchmark: KerasHub transformers frozen block by block.

For a BERT-like backbone (token ids, segment ids and a padding mask: side
inputs) and a ViT (its blocks inside one `ViTEncoder` layer), each with a
classification head and split by `FreezeOutModel.from_model`, this measures
the step time and the peak memory of one traced train step with 0, 25, 50,
75 and 100 % of the freeze units frozen, next to the FLOP-predicted saving
(`unit_flops`, attention included; backward = 2x forward). Plain Keras (the
original functional model's own train step, same weights) is timed too.
The settings are interleaved step by step in one process; figures are
per-step medians with quartiles.

Peak memory comes from TensorFlow's BFC allocator
(`TF_CPU_ALLOCATOR_USE_BFC=true`, set here before TensorFlow starts):
`tf.config.experimental.get_memory_info("CPU:0")["peak"]` after a reset,
over single steps, minus the memory in use before the step.

Results go to `<out>/transformers.md` and `<out>/transformers.json`.

Usage:
    python scripts/benchmark_transformers.py [--models bert vit]
        [--repeats 12] [--steps 1] [--out benchmarks]
"""

import argparse
import json
import os
import platform
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_step import frozen_saving, time_interleaved  # noqa: E402

from freezeout_tf import FreezeOutModel, unit_flops  # noqa: E402
from freezeout_tf.benchmarking import (  # noqa: E402
    peak_step_bytes,
    ratio_spread,
)

CLASSES = 4
SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


def bert(args):
    """BERT-like: 8 layers, hidden 256, 4 heads, sequence 128."""
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=4000, num_layers=8, num_heads=4, hidden_dim=256,
        intermediate_dim=1024, max_sequence_length=args.sequence,
    )
    names = ("token_ids", "segment_ids", "padding_mask")
    inputs = {n: keras.Input((None,), dtype="int32", name=n) for n in names}
    logits = keras.layers.Dense(CLASSES)(backbone(inputs)["pooled_output"])
    net = keras.Model(inputs, logits, name="bert")
    rng = np.random.default_rng(0)
    b, t = args.batch_size, args.sequence
    lengths = rng.integers(t // 2, t + 1, size=b)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype("int32")
    x = {"token_ids": rng.integers(1, 4000, size=(b, t)).astype("int32"),
         "segment_ids": np.zeros((b, t), "int32"), "padding_mask": mask}
    return net, x, {"sequence_length": t}


def vit(args):
    """ViT: 8 layers, hidden 192, 3 heads, 32x32 input, patch 4."""
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=4, num_layers=8, num_heads=3,
        hidden_dim=192, mlp_dim=768,
    )
    images = keras.Input((32, 32, 3), name="images")
    features = keras.layers.GlobalAveragePooling1D()(backbone(images))
    net = keras.Model(images, keras.layers.Dense(CLASSES)(features),
                      name="vit")
    x = np.random.default_rng(0).random(
        (args.batch_size, 32, 32, 3)).astype("float32")
    return net, x, {"image_shape": [32, 32, 3]}


BUILDERS = {"bert": bert, "vit": vit}


def bench(name, args):
    print(f"== {name}", flush=True)
    keras.utils.set_random_seed(0)
    net, x, shape_note = BUILDERS[name](args)
    model = FreezeOutModel.from_model(net, num_units=args.num_units)
    y = np.arange(args.batch_size) % CLASSES
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.AdamW(1e-4), loss)
    model.optimizer.build(model.trainable_variables)
    net.compile(keras.optimizers.AdamW(1e-4), loss)
    net.optimizer.build(net.trainable_variables)
    batch = (tf.nest.map_structure(tf.constant, x), tf.constant(y))
    step = tf.function(model.train_step, autograph=False)
    plain_step = tf.function(net.train_step, autograph=False)
    n = model.num_units
    ks = sorted({round(s * n) for s in SHARES})

    def run(setting):
        if setting == "plain":
            return plain_step(batch)
        model.schedule_state.freeze_prefix(setting)
        return step(batch)

    settings = ks + ["plain"]
    times = time_interleaved(run, settings, args.repeats, args.steps)
    peaks = {s: peak_step_bytes(lambda: run(s)) for s in settings}
    if name == "bert":
        flops = unit_flops(model, {k: (args.sequence,) for k in x})
    else:
        flops = unit_flops(model)
    base = statistics.median(times[0])
    rows = []
    for s in settings:
        med = statistics.median(times[s])
        row = {
            "setting": s,
            "ms_per_step": 1000 * med,
            "ms_quartiles": [1000 * float(q)
                             for q in np.percentile(times[s], [25, 75])],
            "measured_saving": 1 - med / base,
            "peak_mib": peaks[s] / 2**20,
            "peak_vs_full": peaks[s] / peaks[0],
            "step_times_s": times[s],
        }
        if s != "plain":
            row.update(frozen_units=s, frozen_share=s / n,
                       flop_predicted_saving=frozen_saving(flops, s))
        rows.append(row)
        label = "plain Keras" if s == "plain" else f"{s}/{n} frozen"
        predicted = ("" if s == "plain" else
                     f" (FLOPs: {row['flop_predicted_saving']:.1%})")
        print(f"  {label}: {1000 * med:.0f} ms/step, saving "
              f"{row['measured_saving']:.1%}{predicted}; peak "
              f"{row['peak_mib']:.0f} MiB ({row['peak_vs_full']:.2f}x full)",
              flush=True)
    # Nothing frozen against plain Keras: the paired ratio of the steps
    # timed back to back in each round, with its bootstrap interval.
    rounds = args.repeats
    overhead = ratio_spread(
        [times[0][r * args.steps:(r + 1) * args.steps] for r in range(rounds)],
        [times["plain"][r * args.steps:(r + 1) * args.steps]
         for r in range(rounds)])
    print(f"  nothing frozen / plain Keras: {overhead['paired']:.3f} "
          f"({overhead['ci_low']:.3f}-{overhead['ci_high']:.3f})", flush=True)
    return {"model": name, "num_units": n, "batch_size": args.batch_size,
            "overhead_vs_plain": overhead,
            **shape_note, "unit_macs": flops,
            "unit_names": [u.name for u in model.freeze_units],
            "rows": rows}


def markdown(report):
    lines = [
        "# Transformers frozen block by block",
        "",
        f"`{report['command']}`; TensorFlow {report['tensorflow']}, Keras "
        f"{report['keras']}, {report['cpus']} CPUs. Settings interleaved "
        "step by step in one process; per-step medians (quartiles). Peak: "
        "BFC allocator, above the memory in use before the step.",
        "",
    ]
    for r in report["results"]:
        lines += [f"## {r['model']} ({r['num_units']} units, batch "
                  f"{r['batch_size']})", "",
                  "| frozen | ms/step (quartiles) | saving | FLOP-predicted "
                  "| measured / predicted | peak MiB | peak / full |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        o = r["overhead_vs_plain"]
        overhead = (f"Nothing frozen / plain Keras, paired per round: "
                    f"{o['paired']:.3f} (95 % interval {o['ci_low']:.3f}-"
                    f"{o['ci_high']:.3f}).")
        for row in r["rows"]:
            q = row["ms_quartiles"]
            if row["setting"] == "plain":
                lines.append(
                    f"| plain Keras | {row['ms_per_step']:.0f} ({q[0]:.0f}-"
                    f"{q[1]:.0f}) | {row['measured_saving']:.1%} | | | "
                    f"{row['peak_mib']:.0f} | {row['peak_vs_full']:.2f} |")
                continue
            pred = row["flop_predicted_saving"]
            ratio = (f"{row['measured_saving'] / pred:.2f}" if pred else "")
            lines.append(
                f"| {row['frozen_units']}/{r['num_units']} | "
                f"{row['ms_per_step']:.0f} ({q[0]:.0f}-{q[1]:.0f}) | "
                f"{row['measured_saving']:.1%} | {pred:.1%} | {ratio} | "
                f"{row['peak_mib']:.0f} | {row['peak_vs_full']:.2f} |")
        lines += ["", overhead, ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(BUILDERS),
                   choices=sorted(BUILDERS))
    p.add_argument("--num-units", type=int, default=8,
                   help="freeze units (8 blocks: about one block each)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sequence", type=int, default=128,
                   help="BERT sequence length")
    p.add_argument("--repeats", type=int, default=12,
                   help="rounds over all settings")
    p.add_argument("--steps", type=int, default=1,
                   help="timed steps per setting per round")
    p.add_argument("--out", default="benchmarks")
    args = p.parse_args(argv)
    report = {
        "command": "python scripts/benchmark_transformers.py "
                   + " ".join(argv if argv is not None else sys.argv[1:]),
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "cpus": os.cpu_count(), "machine": platform.machine(),
        "results": [bench(name, args) for name in args.models],
    }
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "transformers")
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(report) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
