"""Benchmark: a Llama-style causal LM frozen block by block, full and LoRA.

A KerasHub `Llama3CausalLM` built from a config (`freezeout_tf.recipes.text.
byte_llama`: byte-level vocabulary, random weights), fed real text (windows
of the standard library's sources, `freezeout_tf.recipes.text`) with the padding
`sample_weight` on the token loss, is split by `FreezeOutModel.from_model`
into one freeze unit per decoder block and trained

* fully (every weight trains), and
* with LoRA (`backbone.enable_lora(rank)`: only the adapters train),

with 0, 25, 50, 75 and 100 % of the units frozen, next to plain Keras (the
CausalLM's own train step, same weights) and the FLOP prediction
(`unit_flops`; the backward costs 2x the forward fully, about 1x under
LoRA, which computes input gradients only). The settings are interleaved
step by step in one process (`benchmarking.frozen_prefix_sweep`); figures
are per-step medians with quartiles; peak memory from TensorFlow's BFC
allocator (`TF_CPU_ALLOCATOR_USE_BFC=true`, set here before TensorFlow
starts), above the memory in use before the step.

Results go to `<out>/llm-<run>.json` (`benchmarking.write_report`: with
the commit, versions, machine, command and UTC time) and
`<out>/llm-<run>.md`.

Usage:
    python scripts/benchmark_llm.py --run 1 [--modes full lora]
        [--rounds 12] [--out benchmarks/llm]
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

MODES = ("full", "lora")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True,
                   help="run label: writes llm-<run>.json/.md")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--num-layers", type=int, default=8)
    p.add_argument("--hidden-dim", type=int, default=256)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--num-key-value-heads", type=int, default=2)
    p.add_argument("--intermediate-dim", type=int, default=768)
    p.add_argument("--sequence", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--rounds", type=int, default=12,
                   help="timed steps of each setting, interleaved")
    p.add_argument("--out", default="benchmarks/llm")
    args = p.parse_args(argv)
    for name in ("num_layers", "hidden_dim", "num_heads", "sequence",
                 "batch_size", "lora_rank", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1; got "
                    f"{getattr(args, name)}")
    if not all(c.isalnum() or c in "-_" for c in args.run):
        p.error(f"--run must be letters, digits, '-' or '_'; got {args.run!r}")
    return args


def bench(mode, args, batch):
    import keras

    from freezeout_tf import FreezeOutModel
    from freezeout_tf.tools import benchmarking
    from freezeout_tf.recipes import text

    print(f"== {mode}", flush=True)
    lm = text.byte_llama(
        args.num_layers, args.hidden_dim, args.num_heads,
        intermediate_dim=args.intermediate_dim,
        num_key_value_heads=args.num_key_value_heads, seed=0)
    if mode == "lora":
        lm.backbone.enable_lora(args.lora_rank)
    model = FreezeOutModel.from_model(lm, num_units=args.num_layers)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.AdamW(1e-4), loss)
    model.optimizer.build(model.trainable_variables)
    # No metric on either side: the same work besides the loss.
    lm.compile(keras.optimizers.AdamW(1e-4), loss, weighted_metrics=None)
    lm.optimizer.build(lm.trainable_variables)
    shape = {"token_ids": (args.sequence,), "padding_mask": (args.sequence,)}
    result = benchmarking.frozen_prefix_sweep(
        model, lm, batch, rounds=args.rounds, input_shape=shape,
        backward=2.0 if mode == "full" else 1.0)
    result.update(
        mode=mode, trainable_weights=int(sum(
            v.numpy().size for v in model.trainable_variables)),
        unit_names=[u.name for u in model.freeze_units],
        train_step_traces=model.train_step_traces)
    print("\n".join(benchmarking.sweep_table(result)), flush=True)
    return result


def markdown(report):
    from freezeout_tf.tools.benchmarking import sweep_table

    p, r = report["provenance"], report["results"]
    a, v = r["args"], p["versions"]
    lines = [
        "# A Llama-style causal LM frozen block by block",
        "",
        f"`{p['command']}` at {p['utc']}, commit {p['commit']}; TensorFlow "
        f"{v['tensorflow']}, Keras {v['keras']}, KerasHub "
        f"{v.get('keras_hub')}, {p['machine']['cpus']} CPUs.",
        "",
        f"`Llama3CausalLM`: {a['num_layers']} blocks, hidden "
        f"{a['hidden_dim']}, {a['num_heads']} query / "
        f"{a['num_key_value_heads']} key-value heads, feed-forward "
        f"{a['intermediate_dim']}, byte vocabulary; sequence {a['sequence']}, "
        f"batch {a['batch_size']} of standard-library source, padding "
        "weighted 0. Settings interleaved step by step in one process; "
        f"{a['rounds']} steps each; per-step medians (quartiles). FLOP "
        "prediction: backward = 2x forward fully, 1x under LoRA. Peak: BFC "
        "allocator, above the memory in use before the step.",
        "",
    ]
    for m in r["modes"]:
        title = ("full fine-tuning" if m["mode"] == "full" else
                 f"LoRA rank {a['lora_rank']}")
        lines += [f"## {title} ({m['num_units']} units, "
                  f"{m['trainable_weights']:,} trainable weights, "
                  f"{m['train_step_traces']} trace)", ""]
        lines += sweep_table(m) + [""]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)

    import keras_hub  # noqa: F401 (its version goes into the report)

    from freezeout_tf.recipes import text
    from freezeout_tf.tools.benchmarking import write_report

    arrays = text.windows(text.package_files(["email"]), args.sequence)
    batch = next(iter(text.lm_dataset(arrays, args.batch_size)))
    results = {"args": vars(args), "freezeout_tf": os.path.dirname(
        sys.modules["freezeout_tf"].__file__),
        "modes": [bench(mode, args, batch) for mode in args.modes]}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"llm-{args.run}")
    report = write_report(stem + ".json", results)
    with open(stem + ".md", "w") as f:
        f.write(markdown(report) + "\n")
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
