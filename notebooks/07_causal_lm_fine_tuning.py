# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fine-tuning a causal LM with FreezeOut
#
# Most fine-tuning today is of language models. This notebook does it
# offline, end to end, on real text that every machine with Python has:
# the standard library's own source files.
#
# 1. pretrain a small byte-level Llama-style model (KerasHub
#    `Llama3CausalLM`, built from a config, fed token ids: no tokenizer, no
#    download) on the sources of a dozen standard-library packages;
# 2. fine-tune it on a package it has never seen, `asyncio` (a new domain),
#    with FreezeOut, on its schedule and with the adaptive default
#    `AdaptiveFreeze()`, against full fine-tuning without freezing:
#    held-out loss and perplexity (on `asyncio` files held out of
#    fine-tuning) and wall-clock time over 3 seeds;
# 3. `generate()` a few lines with the original `CausalLM`, which the
#    split model trained in place.
#
# `FreezeOutModel.from_model` splits the causal LM block by block; its
# token embedding is called twice (the lookup in the first unit, the output
# projection in the head) and each call's variables belong to the part
# that reads them (see docs/guides/llms.md).
# With `FREEZEOUT_QUICK=1` (set by the test suite) everything is shrunk to
# a smoke test.

# %%
import os
import time

import keras
import keras_hub
import numpy as np

import freezeout_tf as fo
from freezeout_tf import text
from freezeout_tf.tools import benchmarking

QUICK = os.environ.get("FREEZEOUT_QUICK") == "1"
if QUICK:
    LAYERS, HIDDEN, HEADS, SEQUENCE, MAX_BYTES = 2, 32, 2, 32, 5_000
    PRETRAIN_STEPS, FINE_TUNE_STEPS, SEEDS, GENERATE = 10, 10, [0], 24
else:
    LAYERS, HIDDEN, HEADS, SEQUENCE, MAX_BYTES = 4, 128, 4, 128, None
    PRETRAIN_STEPS, FINE_TUNE_STEPS, SEEDS, GENERATE = 1500, 400, [0, 1, 2], 160
BATCH = 16
PRETRAIN_PACKAGES = ["collections", "concurrent", "email", "http",
                     "importlib", "json", "logging", "multiprocessing", "re",
                     "unittest", "urllib", "xml"]
NEW_DOMAIN = "asyncio"

# %% [markdown]
# ## Data: bytes of the standard library's sources
#
# `text.stdlib_corpus` reads the `.py` files of each package (sorted, so
# every run on this Python sees the same text) into windows of `SEQUENCE`
# byte ids, with the padding of a file's last window weighted 0 in the
# token loss. One file in five of `asyncio` is held out of fine-tuning.

# %%
corpus = text.stdlib_corpus(PRETRAIN_PACKAGES, NEW_DOMAIN, SEQUENCE,
                            holdout_fraction=0.2, max_bytes=MAX_BYTES)
for part, arrays in corpus.items():
    print(f"{part:10s} {len(arrays['files']):4d} files, "
          f"{int(arrays['sample_weight'].sum()):9,d} tokens, "
          f"{len(arrays['labels']):6,d} windows")
print("held out:", [os.path.basename(f) for f in corpus["heldout"]["files"]])
heldout = text.lm_dataset(corpus["heldout"], BATCH)
print(repr(text.decode(corpus["fine_tune"]["token_ids"][0])[:120]))

# %% [markdown]
# ## Pretraining
#
# A Llama-style decoder (RoPE, RMSNorm, SwiGLU, grouped-query attention)
# with a 258-id byte vocabulary, trained with plain Keras `fit`.

# %%
def new_model(seed=0):
    return text.byte_llama(LAYERS, HIDDEN, HEADS, num_key_value_heads=HEADS // 2,
                           seed=seed)


def token_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


lm = new_model()
lm.compile(keras.optimizers.AdamW(1e-3), token_loss(), weighted_metrics=None)
start = time.perf_counter()
lm.fit(text.lm_dataset(corpus["pretrain"], BATCH, shuffle_seed=0, repeat=True),
       epochs=1, steps_per_epoch=PRETRAIN_STEPS, shuffle=False, verbose=0)
print(f"pretrained {PRETRAIN_STEPS} steps in {time.perf_counter() - start:.0f} s")
pretrained = lm.get_weights()
before = text.token_loss(lm, heldout)
print(f"held-out {NEW_DOMAIN} loss before fine-tuning: {before:.3f} nats/byte "
      f"(perplexity {np.exp(before):.2f})")

# %% [markdown]
# ## The model split into freeze units
#
# One unit per decoder block: the token lookup joins the first block, the
# final norm the last; the head is the output projection.

# %%
model = fo.FreezeOutModel.from_model(new_model(), num_units=LAYERS)
print(model.num_units, "freeze units:",
      [[layer.name for layer in unit.layers if layer.weights]
       for unit in model.freeze_units])
print(f"the schedule's estimated saving (t_0=0.8, cubic): "
      f"{fo.estimate_speedup(model, 0.8, 'cubic'):.1%}")

# %% [markdown]
# ## Fine-tuning on the new domain
#
# Each run starts from the pretrained weights with the same optimizer
# (AdamW, constant rate), steps and data order (shuffled by the seed):
#
# * **no freezing**: plain Keras `fit` of the `CausalLM`;
# * **FreezeOut schedule**: the cubic schedule, `t_0=0.8` (each block's
#   learning rate anneals to zero, then the block freezes);
# * **AdaptiveFreeze()**: the adaptive default, blocks freeze when their
#   gradient norm stops changing (`FreezeOut(t_0=None, adaptive=...)`).
#
# The methods alternate per seed, so a noisy machine slows each alike.

# %%
METHODS = {
    "no freezing": None,
    "FreezeOut schedule": lambda: fo.FreezeOut(t_0=0.8),
    "AdaptiveFreeze()": lambda: fo.FreezeOut(t_0=None,
                                             adaptive=fo.AdaptiveFreeze()),
}


def run(seed, method):
    lm = new_model()
    lm.set_weights(pretrained)
    callback = METHODS[method]
    net = lm if callback is None else fo.FreezeOutModel.from_model(
        lm, num_units=LAYERS)
    net.compile(keras.optimizers.AdamW(3e-4), token_loss())
    data = text.lm_dataset(corpus["fine_tune"], BATCH, shuffle_seed=seed,
                           repeat=True)
    start = time.perf_counter()
    net.fit(data, epochs=1, steps_per_epoch=FINE_TUNE_STEPS, shuffle=False,
            verbose=0,
            callbacks=[] if callback is None else [callback()])
    seconds = time.perf_counter() - start
    frozen = 0 if callback is None else sum(
        not unit.trainable for unit in net.freeze_units)
    return {"loss": text.token_loss(net, heldout), "seconds": seconds,
            "frozen_at_end": frozen}, lm


results = {name: [] for name in METHODS}
for seed in SEEDS:
    order = list(METHODS) if seed % 2 == 0 else list(METHODS)[::-1]
    for method in order:
        row, tuned = run(seed, method)
        results[method].append(row)
        print(f"seed {seed} {method}: held-out loss {row['loss']:.3f}, "
              f"{row['seconds']:.1f} s, {row['frozen_at_end']} of {LAYERS} "
              "blocks frozen at the end")
        if method == "FreezeOut schedule" and seed == SEEDS[0]:
            generator = tuned  # the CausalLM the split model trained

# %%
base = np.mean([r["seconds"] for r in results["no freezing"]])
print(f"held-out {NEW_DOMAIN} loss before fine-tuning: {before:.3f} "
      f"(perplexity {np.exp(before):.2f})")
print("| method | held-out loss, nats/byte (mean, min-max) | perplexity (mean) "
      "| fit s (mean) | speed-up |")
print("|---|---|---:|---:|---:|")
for name, rows in results.items():
    loss = np.array([r["loss"] for r in rows])
    secs = np.mean([r["seconds"] for r in rows])
    print(f"| {name} | {loss.mean():.3f} ({loss.min():.3f}-{loss.max():.3f}) | "
          f"{np.exp(loss).mean():.2f} | {secs:.1f} | {base / secs:.2f}x |")
figures = {"quick": QUICK, "seeds": SEEDS, "pretrain_steps": PRETRAIN_STEPS,
           "fine_tune_steps": FINE_TUNE_STEPS, "loss_before": before,
           "results": results}


def keep(figures):
    """Writes the figures where `FREEZEOUT_REPORT` says, if it is set (the
    documentation's figures come from such a file)."""
    if os.environ.get("FREEZEOUT_REPORT"):
        benchmarking.write_report(
            os.environ["FREEZEOUT_REPORT"], figures,
            command="python notebooks/07_causal_lm_fine_tuning.py")


keep(figures)

# %% [markdown]
# ## Generating with the original `CausalLM`
#
# The split model shares its layers with the `CausalLM` it was made from,
# so after fine-tuning that model generates with the trained weights. It
# has no tokenizer: `text.generate_text` encodes each prompt as bytes,
# calls `generate()` with token ids and a padding mask (`stop_token_ids=
# None`), and decodes the bytes. Top-k sampling, k=5.

# %%
generator.compile(sampler=keras_hub.samplers.TopKSampler(k=5, seed=0))
figures["generated"] = text.generate_text(
    generator, ["import ", "async def ", "class "], GENERATE)
for sample in figures["generated"]:
    print(sample)
    print("-" * 40)
keep(figures)
