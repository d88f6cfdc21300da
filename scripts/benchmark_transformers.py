"""Benchmark: KerasHub transformers frozen block by block.

For a BERT-like backbone (token ids, segment ids and a padding mask: side
inputs) and a ViT (its blocks inside one `ViTEncoder` layer), each with a
classification head and split by `FreezeOutModel.from_model`, this measures
the step time and the peak memory of one traced train step with 0, 25, 50,
75 and 100 % of the freeze units frozen, next to the FLOP-predicted saving
(`unit_flops`, attention included; backward = 2x forward). Plain Keras (the
original functional model's own train step, same weights) is timed too.
The settings are interleaved step by step in one process
(`freezeout_tf.tools.benchmarking.frozen_prefix_sweep`, the method the LLM
benchmark shares); figures are per-step medians with quartiles.

Peak memory comes from TensorFlow's BFC allocator
(`TF_CPU_ALLOCATOR_USE_BFC=true`, set here before TensorFlow starts):
`tf.config.experimental.get_memory_info("CPU:0")["peak"]` after a reset,
over single steps, minus the memory in use before the step.

Results go to `<out>/transformers.md` and `<out>/transformers.json`
(`benchmarking.write_report`: commit, versions, machine, command, time).

Usage:
    python scripts/benchmark_transformers.py [--models bert vit]
        [--repeats 12] [--out benchmarks/transformers]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from freezeout_tf import FreezeOutModel  # noqa: E402
from freezeout_tf.tools.benchmarking import (  # noqa: E402
    frozen_prefix_sweep,
    sweep_table,
    write_report,
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
    """One model's sweep (`benchmarking.frozen_prefix_sweep`)."""
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
    shape = ({k: (args.sequence,) for k in x} if name == "bert" else None)
    result = frozen_prefix_sweep(model, net, batch, shares=SHARES,
                                 rounds=args.repeats, input_shape=shape)
    result.update(model=name, batch_size=args.batch_size, **shape_note,
                  unit_names=[u.name for u in model.freeze_units])
    print("\n".join(sweep_table(result)), flush=True)
    return result


def markdown(report):
    p = report["provenance"]
    v = p["versions"]
    lines = [
        "# Transformers frozen block by block",
        "",
        f"`{p['command']}` at {p['commit'][:12]}, {p['utc']}; TensorFlow "
        f"{v['tensorflow']}, Keras {v['keras']}, {p['machine']['cpus']} "
        "CPUs. Settings interleaved step by step in one process "
        "(`benchmarking.frozen_prefix_sweep`); per-step medians (quartiles). "
        "Peak: BFC allocator, above the memory in use before the step.",
        "",
    ]
    for r in report["results"]["models"]:
        lines += [f"## {r['model']} ({r['num_units']} units, batch "
                  f"{r['batch_size']})", ""]
        lines += sweep_table(r) + [""]
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
    p.add_argument("--out", default="benchmarks/transformers")
    args = p.parse_args(argv)
    results = {"args": vars(args),
               "models": [bench(name, args) for name in args.models]}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "transformers")
    report = write_report(stem + ".json", results)
    with open(stem + ".md", "w") as f:
        f.write(markdown(report) + "\n")
    print(markdown(report))

if __name__ == "__main__":
    main()
