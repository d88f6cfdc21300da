"""Benchmark: step time with the frozen prefix cached, against not cached.

A small BERT-like transformer (KerasHub `BertBackbone`, random weights,
split by `FreezeOutModel.from_model`), its first k freeze units frozen
(`schedule_state.freeze_prefix(k)`). For each k, three arms of the same
architecture and weights:

* `cached`: with `cache_frozen_prefix`, warm (one untimed epoch first, so
  that every example is cached at the boundary b = min(k, K), K the units
  the cache holds);
* `not cached`: the same model without the cache;
* `tail`: the uncached step of the units the cached step still computes,
  a `FreezeOutModel` of units b.. and the head, fed unit b - 1's outputs
  (computed once) by an input unit that passes them on; units b..k-1
  frozen as in the cached arm. For k = 0 it is the `not cached` arm.

The arms are timed step by step, interleaved
(`freezeout_tf.tools.benchmarking.alternate_steps`), on shuffled batches
of one fixed set of examples. Printed: per-step medians and the cached
step as a multiple of the uncached one and of the tail (paired, 95 %
bootstrap interval over rounds). With --out, that file holds them, their
quartiles and every step time (`benchmarking.write_report`: with the
commit, versions, machine, command and UTC time).

Usage:
    python scripts/benchmark_cache.py [--layers 6] [--hidden 128]
        [--sequence 64] [--batch-size 16] [--examples 64]
        [--frozen 0 3 6 9] [--rounds 5] [--steps 2]
        [--out benchmarks/cache/cache-steady-1.json]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from freezeout_tf import FreezeOutModel, with_example_ids  # noqa: E402
from freezeout_tf.core.side_inputs import (  # noqa: E402
    HIDDEN, part_input_names)
from freezeout_tf.tools.benchmarking import (  # noqa: E402
    alternate_steps, median_ms, ratio_spread, write_report)

VOCAB, CLASSES = 1000, 4
# The tail model's input that feeds the boundary activation in.
BOUNDARY = "boundary"


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


def examples(args):
    rng = np.random.default_rng(0)
    n, t = args.examples, args.sequence
    lengths = rng.integers(t // 2, t + 1, size=n)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype("int32")
    x = {"token_ids": rng.integers(1, VOCAB, size=(n, t)).astype("int32"),
         "segment_ids": np.zeros((n, t), "int32"), "padding_mask": mask}
    y = rng.integers(0, CLASSES, size=n).astype("int32")
    return x, y


def batches(args, x, y, ids=True):
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if ids:
        ds = with_example_ids(ds)
    return iter(ds.shuffle(args.examples, seed=0).repeat()
                .batch(args.batch_size, drop_remainder=True).prefetch(2))


def compiled(model):
    model.compile(keras.optimizers.Adam(1e-4),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.optimizer.build(model.trainable_variables)
    return model


def stepper(model, data):
    step = tf.function(model.train_step, autograph=False)

    def run():
        float(step(next(data))["loss"])

    return run


def arm(args, k, cache):
    """A step function for one model with units 0..k-1 frozen."""
    model = compiled(bert(args))
    model.schedule_state.freeze_prefix(k)
    data = batches(args, *examples(args))
    if cache:
        model.cache_frozen_prefix(args.examples, max_bytes=2**31)
        model.prefix_cache.prepare(model, next(data))
    return model, stepper(model, data)


def tail_arm(args, b, k):
    """The uncached step of the units the cached step still computes: a
    model of units b.. and the head (the same architecture and weights),
    fed unit b - 1's outputs (computed here once, in inference mode) by an
    input unit that passes them on (an identity, frozen, no variable);
    units b..k-1 frozen as in the cached arm (those beyond the cache)."""
    full = bert(args)
    x, y = examples(args)
    h, inputs = None, {n: tf.constant(v) for n, v in x.items()}
    for i in range(b):
        h = full.freeze_units[i](full._part_arguments(i, h, inputs),
                                 training=False)
    parts = full.freeze_units[b:] + [full.head]
    side = sorted({n for p in parts for n in part_input_names(p) or ()}
                  - {HIDDEN})
    boundary = keras.Input(tuple(h.shape[1:]), dtype=h.dtype, name=BOUNDARY)
    feed = keras.Model({BOUNDARY: boundary},
                       keras.layers.Identity()(boundary))
    model = compiled(FreezeOutModel([feed] + full.freeze_units[b:],
                                    full.head,
                                    input_names=[BOUNDARY] + side))
    model.schedule_state.freeze_prefix(1 + k - b)
    x = {BOUNDARY: np.asarray(h), **{n: x[n] for n in side}}
    return model, stepper(model, batches(args, x, y, ids=False))


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
                   help="JSON file for the report (e.g. "
                   "benchmarks/cache/cache-steady-1.json)")
    args = p.parse_args(argv)

    arms, models = {}, {}
    for k in args.frozen:
        for cache in (False, True):
            name = f"k={k} {'cached' if cache else 'not cached'}"
            models[name], arms[name] = arm(args, k, cache)
        # The cached boundary in the steady state: k, at most the units
        # the cache holds.
        b = min(k, models[f"k={k} cached"].prefix_cache.num_cached_units)
        if b > 0:
            models[f"k={k} tail"], arms[f"k={k} tail"] = tail_arm(args, b, k)
    units = next(iter(models.values())).num_units
    print(f"BERT-like: {args.layers} layers, hidden {args.hidden}, sequence "
          f"{args.sequence}, batch {args.batch_size}, {args.examples} "
          f"examples, {units} freeze units")
    # One epoch untimed first: every example cached at boundary k.
    warmup = args.examples // args.batch_size + 1
    times = alternate_steps(arms, args.rounds, args.steps, warmup=warmup)
    print(f"{'frozen':>8} {'not cached':>11} {'cached':>8} {'tail':>8} "
          f"{'cached/not (95% CI)':>22} {'cached/tail (95% CI)':>22}")
    rows = []
    for k in args.frozen:
        cached, plain = times[f"k={k} cached"], times[f"k={k} not cached"]
        # With nothing cached, the units still computed are all of them.
        tail = times.get(f"k={k} tail", plain)
        row = {"frozen_units": k}
        for arm_name, rounds in (("not_cached", plain), ("cached", cached),
                                 ("tail", tail)):
            row[f"{arm_name}_ms"] = median_ms([t for r in rounds for t in r])
            row[f"{arm_name}_ms_quartiles"] = [
                1000 * q for q in np.percentile(
                    [t for r in rounds for t in r], [25, 75])]
        row["cached/not_cached"] = ratio_spread(cached, plain)
        row["cached/tail"] = ratio_spread(cached, tail)
        rows.append(row)
        ratios = " ".join(
            f"{r['paired']:>8.3f} ({r['ci_low']:.3f}-{r['ci_high']:.3f})"
            for r in (row["cached/not_cached"], row["cached/tail"]))
        print(f"{k:>5}/{units:<2} {row['not_cached_ms']:>11.1f} "
              f"{row['cached_ms']:>8.1f} {row['tail_ms']:>8.1f} {ratios}")
    for name, model in models.items():
        assert model.train_step_traces == 1, name
    if args.out:
        write_report(args.out, {"args": vars(args), "num_units": units,
                                "rows": rows, "step_times_s": times})
        print("wrote", args.out)


if __name__ == "__main__":
    main()
