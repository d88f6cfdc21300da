"""Caching the frozen prefix: frozen units' outputs computed once per example.

When the first units of a `FreezeOutModel` are frozen and every example's
input is the same at every epoch, those units' outputs never change either.
`FreezeOutModel.cache_frozen_prefix` makes the train step keep them in host
memory, keyed by example id: a cached frozen unit then costs neither its
backward (as before) nor its forward. Opt-in; without it the train step and
its trace are exactly the default ones.

The step (one traced graph for the whole run; docs/design.md, "Caching the
frozen prefix"):

* The *cached boundary* b is the number of leading units that are frozen
  and *cacheable* at this step: a unit is cacheable while every variable it
  reads belongs to a frozen part (a tied embedding whose owner trains is
  not). b is an in-graph value; it moves as units freeze, with no retrace.
* Per example the cache holds one activation, the output of unit `l - 1`,
  and its level `l` (0: nothing cached; levels above b are ignored). Each
  of the first K units (`max_units`) sits under one `tf.cond` on "a row
  of the batch has a level of at most i": then it runs as in the default
  step, on the tape and on the whole batch, and the rows cached past it
  take their cached activation (one select); else the branch is the
  cached batch, with no op of the unit. A unit that trains (i >= b) takes
  the first branch at every step (the levels are at most b); a unit the
  batch is cached past takes the second, its backward skipped as any
  frozen unit's. After unit K - 1 one `tf.cond`, off the tape, writes the
  output at b back (level b).
* One trace: the unit is traced once, in its branch, and its backward
  differentiates through that branch (docs/design.md, "Caching the frozen
  prefix"). An earlier version nested branches and traced each unit again
  in inference mode; its first step was about 4x the uncached one. The
  step refuses XLA (its host buffers and branches on the levels are not
  built for it).

The contract (what must be deterministic): everything the model receives
up to the cached boundary, i.e. the input pipeline (no random augmentation
in the dataset; the ids must name the same example every epoch). Frozen
units already run in inference mode, so their Dropout and BatchNorm are
deterministic. The cache is emptied at the start of every `fit`, so a
resumed or reloaded model rebuilds it and trains exactly as without it.
"""

import keras
import numpy as np
import tensorflow as tf

from freezeout_tf import validation
from freezeout_tf.core import side_inputs
from freezeout_tf.core.schedule_state import HOST

__all__ = ["EXAMPLE_ID", "INPUTS", "PrefixCache", "UNIT_BRANCH",
           "split_example_ids", "with_example_ids"]

# Reserved input keys: the example id, and a plain (single-input) model's
# input once the id is added beside it.
EXAMPLE_ID = "freezeout_example_id"
INPUTS = "freezeout_inputs"
# The name of cached unit i's `tf.cond` is this prefix and i (graph tests
# read its branches).
UNIT_BRANCH = "fo_cached_unit_"


def with_example_ids(dataset):
    """Adds each example's position as its id, for `cache_frozen_prefix`.

    Apply it to the dataset of single examples, before `shuffle` and
    `batch`, so that an id names the same example at every epoch.

    Args:
        dataset: a `tf.data.Dataset` of `(x, y)`, `(x, y, sample_weight)`
            or `x` elements, one example each. `x` is a tensor (a model
            with one input) or a dict by input name (side inputs).

    Returns:
        the dataset with `x` replaced by a dict: the input names (or
        `INPUTS` for a single input) plus `EXAMPLE_ID`, an int64 scalar.

    Example:

    >>> ds = tf.data.Dataset.from_tensor_slices(([[1.0], [2.0]], [0, 1]))
    >>> ids = with_example_ids(ds)
    >>> [int(x[EXAMPLE_ID]) for x, _ in ids]
    [0, 1]
    """
    def add_id(i, element):
        is_tuple = isinstance(element, tuple)
        parts = list(element) if is_tuple else [element]
        x = parts[0]
        x = dict(x) if isinstance(x, dict) else {INPUTS: x}
        x[EXAMPLE_ID] = i
        parts[0] = x
        return tuple(parts) if is_tuple else x

    return dataset.enumerate().map(add_id)


def split_example_ids(x):
    """`(x, ids)`: the model's inputs without the id, and the ids (None
    when `x` has none). Python only: adds no op to a graph."""
    if not isinstance(x, dict) or EXAMPLE_ID not in x:
        return x, None
    x = dict(x)
    ids = x.pop(EXAMPLE_ID)
    if set(x) == {INPUTS}:
        x = x[INPUTS]
    return x, ids


def _nbytes(shape, dtype):
    return int(np.prod(shape, dtype=np.int64)) * tf.as_dtype(dtype).size


def _describe(nbytes):
    return f"{nbytes:,} bytes ({nbytes / 2**20:.1f} MiB)"


class PrefixCache:
    """The host buffers and the forward pass of `cache_frozen_prefix`.

    Made by `FreezeOutModel.cache_frozen_prefix`; not constructed directly.

    Args:
        num_examples: how many examples the ids number (ids in
            `[0, num_examples)`).
        max_bytes: the host-memory budget for the cache.
        max_units: cache the output of at most this many leading units
            (default: as many as share the first unit's output shape).
    """

    def __init__(self, num_examples, max_bytes, max_units=None):
        call = "cache_frozen_prefix"
        validation.check_positive_int("num_examples", num_examples, call=call)
        validation.check_positive_int("max_bytes", max_bytes, call=call)
        if max_units is not None:
            validation.check_positive_int(
                "max_units", max_units, "None or a positive integer", call)
        self.num_examples = int(num_examples)
        self.max_bytes = int(max_bytes)
        self.max_units = max_units
        self.num_cached_units = None  # K: set by `prepare`
        self.activations = None
        self.levels = None
        self.pending = False  # set by fit: prepare before the first step

    # Before training.

    def prepare(self, model, data_batch):
        """Checks the run against the contract and the budget, creates the
        buffers (once) and empties the cache. Called at the start of `fit`.

        Returns:
            the cache's size in bytes.

        Raises:
            ValueError: no example ids in the data, XLA or a distribution
                strategy, boundaries of different shapes, a shape not fixed
                per example, an activity regularizer in a cached unit, or a
                cache over the budget.
        """
        if model.jit_compile:
            raise ValueError(
                "cache_frozen_prefix does not support jit_compile=True: the "
                "cached step reads and writes host buffers per example and "
                "branches on each batch's cached levels, which is not "
                "built for XLA (docs/design.md). Compile with "
                "jit_compile=False.")
        strategy = model.distribute_strategy
        # `_distribute_strategy`: set by Keras when the model was created
        # under a strategy's scope (keras_internals).
        if (model._distribute_strategy is not None
                or tf.distribute.has_strategy()):
            raise ValueError(
                f"cache_frozen_prefix does not support tf.distribute (got "
                f"{type(strategy).__name__} with "
                f"{strategy.num_replicas_in_sync} replicas): each replica "
                "would need its own examples' cache. Train without a "
                "strategy, or without the cache.")
        x = data_batch[0] if isinstance(data_batch, tuple) else data_batch
        x, ids = split_example_ids(x)
        if ids is None:
            raise ValueError(
                "cache_frozen_prefix needs an example id in every batch: "
                "apply freezeout_tf.with_example_ids(dataset) to the "
                f"dataset of single examples, before shuffle and batch "
                f"(the model's inputs have no {EXAMPLE_ID!r}).")
        shapes = self._boundary_shapes(model, x)
        k = self._cached_units(shapes)
        shape, dtype = shapes[0]
        nbytes = (self.num_examples * _nbytes(shape, dtype)
                  + self.num_examples * 4)
        if nbytes > self.max_bytes:
            raise ValueError(
                f"cache_frozen_prefix: the cache needs {_describe(nbytes)} "
                f"({self.num_examples} examples x {list(shape)} x {dtype}), "
                f"over the budget max_bytes={self.max_bytes:,}.")
        if self.activations is None:
            with tf.device(HOST):
                self.activations = tf.Variable(
                    tf.zeros((self.num_examples,) + tuple(shape), dtype),
                    trainable=False, name="fo_cache_activations")
                self.levels = tf.Variable(
                    tf.zeros((self.num_examples,), tf.int32),
                    trainable=False, name="fo_cache_levels")
        elif tuple(self.activations.shape[1:]) != tuple(shape):
            raise ValueError(
                f"cache_frozen_prefix: this fit's boundary shape "
                f"{list(shape)} differs from the cache's "
                f"{list(self.activations.shape[1:])}; call "
                "cache_frozen_prefix again (before the first fit) for "
                "another input shape.")
        for i, unit in enumerate(model.freeze_units[:k]):
            for layer in unit._flatten_layers(include_self=True):
                if getattr(layer, "activity_regularizer", None) is not None:
                    raise ValueError(
                        f"cache_frozen_prefix: layer {layer.name!r} in unit "
                        f"{i} has an activity regularizer; its loss would "
                        "cover only the rows not cached. Cache "
                        f"fewer units (max_units <= {i}) or drop it.")
        self.num_cached_units = k
        # Rebuilt at every fit: a reloaded or resumed model recomputes the
        # prefix rather than trusting outputs of other weights.
        self.levels.assign(tf.zeros_like(self.levels))
        self.pending = False
        return nbytes

    def _boundary_shapes(self, model, x):
        """(per-example shape, dtype) of each unit's output, from a batch."""
        def spec(t):
            return keras.KerasTensor((None,) + tuple(t.shape[1:]),
                                     tf.as_dtype(t.dtype).name)

        side = side_inputs.side_values(x, model.input_names)
        h = spec(x) if side is None else None
        side = None if side is None else {n: spec(t) for n, t in side.items()}
        shapes = []
        for i, unit in enumerate(model.freeze_units):
            h = unit.compute_output_spec(model._part_arguments(i, h, side))
            if not isinstance(h, keras.KerasTensor):
                raise ValueError(
                    f"cache_frozen_prefix: unit {i} returns "
                    f"{type(h).__name__}, not one tensor; only a chain of "
                    "single tensors can be cached.")
            shapes.append((tuple(h.shape[1:]), h.dtype))
        return shapes

    def _cached_units(self, shapes):
        """K: how many leading units' outputs the cache may hold. One buffer
        holds one activation per example, so the boundaries 1..K share the
        first one's shape and dtype."""
        first = shapes[0]
        if None in first[0]:
            raise ValueError(
                f"cache_frozen_prefix: unit 0's output shape per example "
                f"{list(first[0])} is not fixed; give the dataset fixed "
                "shapes (pad sequences to one length).")
        same = 1
        while same < len(shapes) and shapes[same] == first:
            same += 1
        if self.max_units is None:
            return same
        if self.max_units > same:
            raise ValueError(
                f"cache_frozen_prefix(max_units={self.max_units}): the "
                f"outputs of units 0..{self.max_units - 1} must share one "
                f"shape and dtype; they are "
                f"{[(list(s), d) for s, d in shapes[:self.max_units]]}. "
                f"Use max_units <= {same}.")
        return self.max_units

    # In the train step.

    def cached_boundary(self, model, frozen):
        """b, an int32 scalar: leading units frozen and cacheable now (at
        most K). A unit is cacheable while every part owning a variable it
        reads is frozen (the head never is)."""
        owners = model.unit_variable_owners()
        flags = []
        for i in range(self.num_cached_units):
            parts = owners[i] | {i}
            if model.num_units in parts:
                flags.append(tf.constant(False))
                continue
            flags.append(tf.reduce_all(tf.stack([frozen[j]
                                                 for j in sorted(parts)])))
        leading = tf.math.cumprod(tf.cast(tf.stack(flags), tf.int32))
        return tf.reduce_sum(leading)

    def unit_runner(self, model, ids, side, frozen, run_unit):
        """The forward of one unit with the cache, for the default forward's
        loop over the units (`FreezeOutModel._forward_units`).

        Unit i (of the first K) runs under one `tf.cond` (named
        `UNIT_BRANCH` i): while a row of the batch has a cached level of
        at most i (every row, while it trains), as in the default step, on
        the tape and on the whole batch, the other rows taking their
        cached activation; once none has, the branch taken holds no op of
        the unit, only the cached batch, and its backward is skipped as a
        frozen unit's. After unit K - 1, one `tf.cond` writes the output
        at the boundary b back, for the rows cached below it.

        Args:
            model: the `FreezeOutModel`.
            ids: the batch's example ids.
            side: the side inputs by name, or None.
            frozen: the units' frozen flags at this step.
            run_unit: `run_unit(i, h, side)`, the default forward of unit i
                on the tape (its input already cut and watched).

        Returns:
            `run(i, h)`: unit i's output.
        """
        k = self.num_cached_units
        ids = tf.cast(ids, tf.int32)
        with tf.device(HOST):
            tf.debugging.assert_less(
                ids, self.num_examples,
                message=f"an example id is not below the cache's "
                f"num_examples={self.num_examples}")
            b = self.cached_boundary(model, frozen)
            levels = tf.gather(self.levels, ids)
            # A level above b was written under another schedule: unused.
            levels = tf.where(levels <= b, levels, 0)
        cached = tf.gather(self.activations, ids)
        outputs = []

        def run(i, h):
            if i >= k:
                return run_unit(i, h, side)
            # The rows whose cached activation is from before unit i.
            todo = levels <= i
            mask = tf.reshape(todo, tf.concat(
                [tf.shape(todo), tf.ones([tf.rank(cached) - 1], tf.int32)],
                0))

            def compute():
                return tf.where(mask, run_unit(i, h, side), cached)

            # The one branch around the unit, traced once: while a row of
            # the batch is left for it (always while it trains), it runs
            # on the whole batch, as in the default step, and the rows
            # cached past it take their activation; once none is, the
            # cached batch as it is, no op of the unit.
            out = tf.cond(tf.reduce_any(todo), compute, lambda: cached,
                          name=f"{UNIT_BRANCH}{i}")
            outputs.append(tf.stop_gradient(out))
            if i == k - 1:
                self._write_back(outputs, b, levels, ids)
            return out

        return run

    def _write_back(self, outputs, b, levels, ids):
        """Stores the output of unit b - 1 (the boundary) for the batch's
        rows cached below b, under one `tf.cond` off the tape."""
        def write():
            out = tf.gather(tf.stack(outputs), b - 1)
            with tf.device(HOST):
                self.activations.scatter_update(tf.IndexedSlices(out, ids))
                self.levels.scatter_update(tf.IndexedSlices(
                    tf.fill(tf.shape(ids), b), ids))
            return tf.constant(True)

        tf.cond(tf.reduce_any(levels < b), write,
                lambda: tf.constant(False))
