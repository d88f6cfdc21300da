"""Profile: where the Llama-style causal LM's FreezeOut step (nothing
frozen) differs from plain Keras', op by op.

Builds the model of `scripts/benchmark_llm.py` (full fine-tuning or LoRA),
profiles a few steps of FreezeOut's train step with nothing frozen and of
the CausalLM's own (plain Keras) train step with TensorFlow's profiler
(`scripts/profile_step.py` reads the trace), and prints, by op type, the op
time per step of each and the difference, and the number of ops per step
in the forward, the backward (ops of the gradient tape) and the optimizer.
What the executor spends outside the ops (the wall-clock step minus the op
time) is the rest of the difference.

Usage:
    python scripts/profile_llm.py [--mode full|lora] [--steps 5]
        [--out benchmarks/llm/llm-profile.json]
"""

import argparse
import collections
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_llm import MODES  # noqa: E402
from profile_step import diff_table, op_table, profile, raw  # noqa: E402


def phase(op_name):
    """forward (and loss), backward or optimizer, from an op's name
    scope."""
    if "adam_w" in op_name:
        return "optimizer"
    return "backward" if "gradient_tape" in op_name else "forward"


# The thread pool's own spans in the trace, not TensorFlow ops.
_NOT_OPS = {"Record", "StartRegion", "StopRegion"}


def phase_counts(ops, steps):
    count = collections.Counter(phase(name) for name, op_type, _ in ops
                                if op_type not in _NOT_OPS)
    return {k: v // steps for k, v in sorted(count.items())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", default="full", choices=MODES)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--out", help="JSON file for the op tables (write_report)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be >= 1; got {args.steps}")

    import keras
    import tensorflow as tf

    from freezeout_tf import FreezeOutModel
    from freezeout_tf.recipes import text
    from freezeout_tf.tools.benchmarking import write_report

    # benchmark_llm.py's model and batch, its defaults.
    lm = text.byte_llama(8, 256, 4, intermediate_dim=768,
                         num_key_value_heads=2, seed=0)
    if args.mode == "lora":
        lm.backbone.enable_lora(8)
    model = FreezeOutModel.from_model(lm, num_units=8)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.AdamW(1e-4), loss)
    model.optimizer.build(model.trainable_variables)
    lm.compile(keras.optimizers.AdamW(1e-4), loss, weighted_metrics=None)
    lm.optimizer.build(lm.trainable_variables)
    batch = next(iter(text.lm_dataset(
        text.windows(text.package_files(["email"]), 128), 8)))
    root = tempfile.mkdtemp(prefix="freezeout_llm_profile_")
    ops = profile(tf.function(model.train_step, autograph=False), batch,
                  args.steps, os.path.join(root, "freezeout"))
    plain = profile(tf.function(lm.train_step, autograph=False), batch,
                    args.steps, os.path.join(root, "plain"))
    print("FreezeOut, nothing frozen:")
    op_table(ops, args.steps, args.top)
    print("plain Keras:")
    op_table(plain, args.steps, args.top)
    diff_table(ops, plain, args.steps, args.top)
    counts = {"freezeout": phase_counts(ops, args.steps),
              "plain": phase_counts(plain, args.steps)}
    print("ops per step by phase:", counts)
    if args.out:
        write_report(args.out, {
            "mode": args.mode, "steps": args.steps,
            "ops_per_step_by_phase": counts,
            "freezeout": raw(ops, args.steps), "plain": raw(plain, args.steps)})
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
