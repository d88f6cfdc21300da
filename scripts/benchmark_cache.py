"""Benchmark: step time with the frozen prefix cached, against not cached.

A small BERT-like transformer (KerasHub `BertBackbone`, random weights,
split by `FreezeOutModel.from_model`), its first k freeze units frozen
(`schedule_state.freeze_prefix(k)`). For each k, two models of the same
architecture: one with `cache_frozen_prefix`, one without. The cached one
first runs one untimed epoch, so that every example is cached at boundary
k; then the arms are timed step by step, interleaved
(`freezeout_tf.tools.benchmarking.alternate_steps`), on shuffled batches of one
fixed set of examples. Printed: per-step medians and the cached step as a
multiple of the uncached one (paired, 95 % bootstrap interval over rounds).
With --out, `<out>/cache.json` holds them and every step time
(`benchmarking.write_report`: with the commit, versions, machine, command
and UTC time).

Usage:
    python scripts/benchmark_cache.py [--layers 6] [--hidden 128]
        [--sequence 64] [--batch-size 16] [--examples 64]
        [--frozen 0 3 6 9] [--rounds 5] [--steps 2]
        [--out benchmarks/cache]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from freezeout_tf import FreezeOutModel, with_example_ids  # noqa: E402
from freezeout_tf.tools.benchmarking import (  # noqa: E402
    alternate_steps, median_ms, ratio_spread, write_report)

VOCAB, CLASSES = 1000, 4


def bert(args):
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB, num_layers=args.layers, num_heads=2,
        hidden_dim=args.hidden, intermediate_dim=4 * args.hidden,
        max_sequence_length=args.sequence,
    )
    names = ("token_ids", "segment_ids", "padding_mask")
    inputs = {n: keras.Input((None,), dtype="int32", name=n) for n in names}
    logits = keras.layers.Dense(CLASSES)(backbone(inputs)["pooled_output"])
    return FreezeOutModel.from_model(keras.Model(inputs, logits))


def dataset(args):
    rng = np.random.default_rng(0)
    n, t = args.examples, args.sequence
    lengths = rng.integers(t // 2, t + 1, size=n)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype("int32")
    x = {"token_ids": rng.integers(1, VOCAB, size=(n, t)).astype("int32"),
         "segment_ids": np.zeros((n, t), "int32"), "padding_mask": mask}
    y = rng.integers(0, CLASSES, size=n).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    return (with_example_ids(ds).shuffle(n, seed=0).repeat()
            .batch(args.batch_size, drop_remainder=True).prefetch(2))


def arm(args, k, cache):
    """A step function for one model with units 0..k-1 frozen."""
    model = bert(args)
    model.compile(keras.optimizers.Adam(1e-4),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.optimizer.build(model.trainable_variables)
    model.schedule_state.freeze_prefix(k)
    batches = iter(dataset(args))
    if cache:
        model.cache_frozen_prefix(args.examples, max_bytes=2**31)
        model.prefix_cache.prepare(model, next(batches))
    step = tf.function(model.train_step, autograph=False)

    def run():
        float(step(next(batches))["loss"])

    return model, run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--sequence", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--frozen", type=int, nargs="+", default=[0, 3, 6, 9],
                   help="numbers of leading units frozen")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=2,
                   help="timed steps per arm per round")
    p.add_argument("--out", default=None,
                   help="directory for cache.json (e.g. benchmarks/cache)")
    args = p.parse_args(argv)

    arms, models = {}, {}
    for k in args.frozen:
        for cache in (False, True):
            name = f"k={k} {'cached' if cache else 'not cached'}"
            models[name], arms[name] = arm(args, k, cache)
    units = next(iter(models.values())).num_units
    print(f"BERT-like: {args.layers} layers, hidden {args.hidden}, sequence "
          f"{args.sequence}, batch {args.batch_size}, {args.examples} "
          f"examples, {units} freeze units")
    # One epoch untimed first: every example cached at boundary k.
    warmup = args.examples // args.batch_size + 1
    times = alternate_steps(arms, args.rounds, args.steps, warmup=warmup)
    print(f"{'frozen':>8} {'not cached ms':>14} {'cached ms':>10} "
          f"{'cached/not (95% CI)':>24}")
    rows = []
    for k in args.frozen:
        a, b = times[f"k={k} cached"], times[f"k={k} not cached"]
        r = ratio_spread(a, b)
        not_ms = median_ms([t for x in b for t in x])
        cached_ms = median_ms([t for x in a for t in x])
        rows.append({"frozen_units": k, "not_cached_ms": not_ms,
                     "cached_ms": cached_ms, "cached/not_cached": r})
        print(f"{k:>5}/{units:<2} {not_ms:>14.1f} {cached_ms:>10.1f} "
              f"{r['paired']:>9.3f} ({r['ci_low']:.3f}-{r['ci_high']:.3f})")
    for name, model in models.items():
        assert model.train_step_traces == 1, name
    if args.out:
        path = os.path.join(args.out, "cache.json")
        write_report(path, {"args": vars(args), "num_units": units,
                            "rows": rows, "step_times_s": times})
        print("wrote", path)


if __name__ == "__main__":
    main()
