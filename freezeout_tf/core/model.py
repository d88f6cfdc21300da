"""`FreezeOutModel`: a chain of freeze units and a head, with a train step
that skips the backward pass of frozen units inside one traced graph.

The train step (see docs/design.md for the measurements behind it):

* **Forward, with no branch.** Each unit runs once, with `training=True`,
  but its BatchNormalization and Dropout layers take their mode from the
  unit's in-graph "active" flag (`freezeout_tf.core.unit_mode`): a frozen unit
  computes exactly its inference-mode output and leaves its moving
  statistics as they are. Between units the activation passes through
  `tf.stop_gradient`, so the tape holds one short piece per unit.
* **Backward, unit by unit in reverse, each under its own branch.** The
  head's gradients come first; then, for unit i from the last to the first,
  a `tf.cond` on its frozen flag either skips the unit (zero weight
  gradients, no op of its backward runs) or computes its weight and input
  gradients from the output gradient the unit after it handed down. The
  branches read the forward's tensors directly; nothing is differentiated
  *through* a branch, so no branch has to export the forward's
  intermediates. That is what keeps the graph small and its lowering to
  XLA linear in the number of units.

The optimizer skips frozen units' updates, slots and weight decay
(`freezeout_tf.core.optimizer`)."""

import logging
import types
from typing import List, NamedTuple

import keras
import tensorflow as tf

from freezeout_tf import validation
from freezeout_tf._internals import keras_internals, tf_internals
from freezeout_tf.adaptive.criteria import AdaptiveState
from freezeout_tf.core import optimizer as fo_optimizer
from freezeout_tf.core import prefix_cache, side_inputs
from freezeout_tf.core.schedule_state import HOST, ScheduleState
from freezeout_tf.core.unit_mode import mode_switched_leaves, unit_mode
from freezeout_tf.split import layer_configs, lora, ownership

__all__ = ["FreezeOutModel"]


class _StepGradients(NamedTuple):
    """What `FreezeOutModel._gradients_by_unit` computes for a step."""

    loss: tf.Tensor  # unscaled
    y_pred: tf.Tensor
    gradients: List[tf.Tensor]  # of `trainable_variables`, in order
    step: tf.Tensor  # the 0-based step taken
    unit_grads: List[List[tf.Tensor]]  # per unit, the head last
    frozen: List[tf.Tensor]  # per unit, its (host-placed) frozen flag


def _dense(gradients):
    # Both branches of a unit's cond must return dense tensors; embedding
    # lookups and slices give IndexedSlices. A hidden state with carried
    # tensors is a dict (`side_inputs`).
    return tf.nest.map_structure(tf.convert_to_tensor, gradients)


def _stop(hidden):
    # The hidden state, or a dict with carried tensors (`side_inputs`).
    return tf.nest.map_structure(tf.stop_gradient, hidden)


def _split_input_names(model, head):
    """`input_names` for a model split by `from_model`: its inputs' names
    when its parts take named inputs (it has several, or one the split
    names: `functional.split_model`), else None (one plain input)."""
    names = side_inputs.part_input_names(head) or ()
    if len(model.inputs) == 1 and side_inputs.HIDDEN not in names:
        return None
    return [t.name for t in model.inputs]


XLA_AUTO_NOTE = (
    "FreezeOutModel: jit_compile='auto' resolves to False. The one-graph "
    "step compiles under XLA (pass jit_compile=True to use it), but its "
    "steady step time under XLA has only been measured on CPU, where XLA "
    "runs the convolutions inside the per-unit branches on a slow path; "
    "see docs/guides/xla.md."
)


# Measured with `scripts/benchmark_xla.py --configs densenet:22 --only steady
# --graph-arms` (benchmarks/xla/README.md): DenseNet-BC L=22 k=12, batch 50,
# 2 CPU cores, no unit frozen, all arms interleaved in one process. The XLA
# step took 8.96x FreezeOut's step without XLA, 8.72x plain Keras' without
# XLA and 10.8x plain Keras' under XLA.
XLA_CPU_FACTOR = "about 9x"

XLA_CPU_NOTE = (
    "FreezeOutModel: jit_compile=True on a machine with no GPU or TPU. "
    "XLA:CPU runs the convolutions inside the per-unit backward branches on "
    f"a slow path: while units train, the compiled step measured "
    f"{XLA_CPU_FACTOR} the step without XLA (DenseNet-BC L=22, 2 CPU "
    "cores). On CPU use jit_compile=False (the default), which runs at "
    "about plain Keras' speed; see docs/guides/xla.md."
)


def _host_only():
    # As Keras decides where "auto" turns XLA off: no device but CPUs.
    return all(d.device_type == "CPU"
               for d in tf.config.list_physical_devices())


def _unscale_loss_for_distribution(loss):
    # As Keras' train step: the loss tracker wants the per-replica loss
    # times the number of replicas.
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss * replicas if replicas > 1 else loss


def _batch_spec(iterator):
    """Symbolic stand-ins for a batch of the data `fit` iterates (Keras'
    epoch iterator; its `_get_iterator` is the dataset each epoch opens a
    pass over), from the dataset's element spec: no batch is read."""
    spec = iterator._get_iterator().element_spec
    return tf.nest.map_structure(
        lambda s: keras.KerasTensor(s.shape, s.dtype.name), spec)


def _mark_shared_layers(parts, configs):
    """Marks a layer called in several parts (a causal LM's reversible
    embedding, in unit 0 and the head) as one shared object in the parts'
    functional configs, so that `keras.saving.load_model` (which loads
    under Keras' object-sharing scope) makes one layer again, not one per
    part whose weights would be loaded once only. When a later part is
    loaded the layer already holds the earlier parts' call nodes, so that
    part's references to the layer's nodes are shifted past them."""
    seen, calls = {}, {}
    for part, config in zip(parts, configs):
        shift = {}
        # Layers and Keras ops (a slice is a `GetItem` operation) by name.
        operations = {op.name: op for op in getattr(part, "operations", ())}
        for layer_config in config.get("config", {}).get("layers", []):
            name = layer_config.get("name")
            layer = operations.get(name)
            if layer is None or "inbound_nodes" not in layer_config:
                continue  # not a functional model's layer (a Sequential's)
            if id(layer) in seen:
                shift[name] = calls[id(layer)]
            seen.setdefault(id(layer), []).append(layer_config)
            calls[id(layer)] = (calls.get(id(layer), 0)
                                + len(layer_config["inbound_nodes"]))
        if shift:
            _shift_node_indices(config["config"], shift)
    for number, shared in enumerate(c for c in seen.values() if len(c) > 1):
        for layer_config in shared:
            layer_config["shared_object_id"] = f"freezeout_tf/{number}"


def _shift_node_indices(config, shift):
    """Adds `shift[name]` to the node index of every reference to layer
    `name`'s outputs in a functional config (`keras_history` of call
    arguments and the model's output list)."""
    def visit(obj):
        if isinstance(obj, dict):
            history = obj.get("keras_history")
            if isinstance(history, list) and history[0] in shift:
                history[1] += shift[history[0]]
            for value in obj.values():
                visit(value)
        elif isinstance(obj, list):
            for value in obj:
                visit(value)

    def visit_refs(refs):  # [name, node_index, tensor_index], nested
        if (isinstance(refs, list) and len(refs) == 3
                and isinstance(refs[0], str)):
            if refs[0] in shift:
                refs[1] += shift[refs[0]]
        else:
            for value in (refs.values() if isinstance(refs, dict)
                          else refs):
                visit_refs(value)

    visit(config["layers"])
    visit_refs(config["output_layers"])


@keras.saving.register_keras_serializable(package="freezeout_tf")
class FreezeOutModel(keras.Model):
    """A chain of freeze units followed by a head that never freezes.

    Train it with `fit(..., callbacks=[FreezeOut(...)])`. Without the
    callback it trains like a plain Keras model. `evaluate` and `predict`
    run the plain forward pass.

    Args:
        freeze_units: ordered list of Keras layers (or models), one per freeze
            unit; unit 0 is the first in the forward pass. Available as
            `model.freeze_units`.
        head: a Keras layer (or model) applied after the last unit; never
            frozen. Available as `model.head`.
        input_names: for a model with several inputs (a transformer's token
            ids and padding mask, say): their names, in the order a list of
            inputs is given. Each unit and the head is then a functional
            model with named inputs, `side_inputs.HIDDEN` for the hidden
            state and model input names for the side inputs it reads
            (`freezeout_tf.core.side_inputs`). `None` (default): one plain input.
        tied_owner: which part owns a variable read by one freeze unit and
            by the head (a causal LM's tied embedding, read by the lookup
            and the output projection): `"first"` (default), the unit, so
            it freezes with the bottom of the network and the head's
            gradient of it stops then; or `"head"`, so it trains to the end
            and frozen units keep passing the hidden-state gradient down
            (`freezeout_tf.split.ownership`).
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Raises:
        ValueError: a unit or the head is not a Keras layer, `tied_owner`
            is not allowed, or a variable is read by two freeze units.

    Example:

    >>> units = [keras.Sequential([keras.layers.Conv2D(8, 3, padding="same"),
    ...                            keras.layers.BatchNormalization(),
    ...                            keras.layers.ReLU()]) for _ in range(4)]
    >>> head = keras.Sequential([keras.layers.GlobalAveragePooling2D(),
    ...                          keras.layers.Dense(10)])
    >>> model = FreezeOutModel(units, head)
    >>> model.compile(original_sgd(), "sparse_categorical_crossentropy")
    >>> model.fit(ds, epochs=10, callbacks=[FreezeOut()])  # doctest: +SKIP
    """

    def __init__(self, freeze_units, head, input_names=None,
                 tied_owner="first", **kwargs):
        validation.check_tied_owner(tied_owner)
        super().__init__(**kwargs)
        freeze_units = list(freeze_units)
        if not freeze_units:
            raise ValueError("freeze_units must hold at least one layer.")
        for i, unit in enumerate(freeze_units + [head]):
            if not isinstance(unit, keras.layers.Layer):
                name = "head" if i == len(freeze_units) else f"unit {i}"
                raise ValueError(
                    f"Each freeze unit and the head must be a Keras layer or "
                    f"model; {name} is {unit!r}."
                )
        self.freeze_units = freeze_units
        self.head = head
        self._part_inputs = side_inputs.check_side_inputs(
            freeze_units + [head], input_names)
        self.input_names = (None if input_names is None
                            else list(input_names))
        self.tied_owner = tied_owner
        # Whether each variable is trained, as at first sight (before any
        # unit froze), and the ownership found for the variables seen. A
        # plain namespace: Keras would track variables in a list attribute.
        self._owners = types.SimpleNamespace(trained={}, key=None,
                                             result=None)
        self._variable_ownership()
        # The schedule's clock: batches taken, saved with the model. Not
        # optimizer.iterations, which a mixed-float16 loss-scale optimizer
        # does not advance on the steps it skips (non-finite gradients).
        # On the host, as the frozen flags made from it (schedule_state).
        with tf.device(HOST):
            self.batches_taken = self.add_weight(
                shape=(), dtype="int64", initializer="zeros",
                trainable=False, name="batches_taken",
                aggregation="only_first_replica",
            )
        self.schedule_state = ScheduleState(len(freeze_units),
                                            self.batches_taken)
        # The adaptive criterion's state (freezeout_tf.adaptive): model
        # weights, so checkpoints save it; idle unless FreezeOut(adaptive=).
        self.adaptive_state = AdaptiveState(len(freeze_units))
        # Opt-in (cache_frozen_prefix): frozen units' outputs kept per
        # example (freezeout_tf.core.prefix_cache).
        self.prefix_cache = None
        # Set by from_config on a LoRA model (Keras saved the merged
        # kernels); checkpoint.load_checkpoint restores the factors.
        self._lora_factors_lost = False
        # Python-side count of train_step traces: 1 for a whole run.
        self.train_step_traces = 0
        # Callables `(step, unit_gradients, frozen_flags)` run inside the
        # train step after the optimizer's update; see train_step.
        self.gradient_observers = []
        # The leaf layers whose training/inference mode follows each unit's
        # in-graph flag (rejects layers that cannot switch, before training).
        # Looked for again once a unit is built (`build`): a layer that
        # makes its sublayers in `build` (a keras_hub TransformerEncoder)
        # cannot be told from a leaf before. A namespace: not tracked.
        self._modes = types.SimpleNamespace(
            leaves=[None] * len(freeze_units),
            built=[False] * len(freeze_units), shapes_only=False)
        self._switch_units()

    @classmethod
    def from_sequential(cls, sequential, num_head_layers=1, **kwargs):
        """Makes a `FreezeOutModel` from a `keras.Sequential`.

        Each layer of `sequential` becomes one freeze unit, except the last
        `num_head_layers`, which form the head. Group layers into blocks
        (nested `keras.Sequential`s) first if a unit should hold several.

        Args:
            sequential: a `keras.Sequential`.
            num_head_layers: how many trailing layers make up the head.
            **kwargs: passed to the constructor (e.g. `name`).
        """
        layers = list(sequential.layers)
        if not 1 <= num_head_layers < len(layers):
            raise ValueError(
                f"num_head_layers must be between 1 and {len(layers) - 1} "
                f"for a Sequential of {len(layers)} layers; got "
                f"{num_head_layers!r}."
            )
        head_layers = layers[-num_head_layers:]
        head = head_layers[0] if num_head_layers == 1 else keras.Sequential(
            head_layers, name="head"
        )
        return cls(layers[:-num_head_layers], head, **kwargs)

    @classmethod
    def from_model(cls, model, num_units=None, boundaries=None,
                   tied_owner="first", **kwargs):
        """Splits a functional `keras.Model` into freeze units and a head.

        The result shares the layers and weights of `model`. See
        `freezeout_tf.split.functional.split_model` for how the cut points are
        found and grouped.

        Args:
            model: a functional `keras.Model` (several inputs become side
                inputs; see `split_model`).
            num_units: group the segments into this many units of about
                equal forward cost; by default one unit per segment.
            boundaries: names of layers right after which to cut, instead of
                `num_units`.
            tied_owner: `"first"` or `"head"`, the owner of a variable read
                by a unit and the head (see the constructor).
            **kwargs: passed to the constructor (e.g. `name`).
        """
        from freezeout_tf.split.functional import split_model

        validation.check_tied_owner(tied_owner)  # before the split's work
        units, head = split_model(model, num_units=num_units,
                                  boundaries=boundaries)
        kwargs.setdefault("input_names", _split_input_names(model, head))
        return cls(units, head, tied_owner=tied_owner, **kwargs)

    @property
    def num_units(self):
        return len(self.freeze_units)

    def build(self, input_shape):
        if self.input_names is None:
            # Built by fit from a batch with example ids (a dict of shapes:
            # the input's and the ids', `with_example_ids`).
            input_shape, _ = prefix_cache.split_example_ids(input_shape)
            self.call(keras.KerasTensor(input_shape))
        self.built = True  # named parts are functional models, built
        self._switch_units()

    def _switch_units(self):
        """Installs the in-graph mode switch on each unit not seen built
        yet (`unit_mode.mode_switched_leaves`, which refuses a layer it
        cannot switch, and leaves out layers that may make sublayers when
        built)."""
        modes = self._modes
        for i, unit in enumerate(self.freeze_units):
            if not modes.built[i]:
                modes.leaves[i] = mode_switched_leaves(unit, f"unit {i}")
                modes.built[i] = unit.built

    def _unit_leaves(self, i):
        """Unit i's mode-switched leaves (the unit is built by the step)."""
        if not self._modes.built[i]:
            self._switch_units()
        return self._modes.leaves[i]

    def _part_arguments(self, index, hidden, side):
        return side_inputs.arguments(self._part_inputs[index], hidden, side)

    def call(self, inputs, training=None):
        if self._modes.shapes_only:
            spec = self._shapes_only_output(inputs)
            if spec is not None:
                return spec
        inputs, _ = prefix_cache.split_example_ids(inputs)
        side = side_inputs.side_values(inputs, self.input_names)
        x = inputs if side is None else None
        for i, unit in enumerate(self.freeze_units):
            x = unit(self._part_arguments(i, x, side), training=training)
        return self.head(self._part_arguments(self.num_units, x, side),
                         training=training)

    def _shapes_only_output(self, inputs):
        """Placeholders shaped as the output, from the parts' own shape
        inference (`compute_output_spec`: no op for a Keras layer that
        knows its output shape), or None if a part cannot tell.

        For Keras' symbolic build (`_maybe_symbolic_build`), which runs the
        model in a scratch graph only to learn the output's shape: running
        every unit's ops there was most of `fit`'s setup (0.23 of 0.36 s
        on the conv net of `benchmark_adaptive.py`)."""
        def spec(t):
            return keras.KerasTensor(t.shape, t.dtype)

        side = side_inputs.side_values(inputs, self.input_names)
        h = tf.nest.map_structure(spec, inputs) if side is None else None
        side = None if side is None else tf.nest.map_structure(spec, side)
        try:
            for i, part in enumerate(self.freeze_units + [self.head]):
                h = part.compute_output_spec(self._part_arguments(i, h, side))
        except Exception:  # noqa: BLE001 (the scratch forward then runs)
            return None
        return tf.nest.map_structure(
            lambda s: tf.compat.v1.placeholder(s.dtype, s.shape), h)

    def compile(self, optimizer="rmsprop", *args, jit_compile="auto",
                **kwargs):
        """As `keras.Model.compile`, with three checks before any training.

        * The private Keras and TensorFlow internals FreezeOut relies on
          are as expected (`freezeout_tf._internals.keras_internals`,
          `freezeout_tf._internals.tf_internals`), else a clear error.
        * Optimizer options that would move frozen variables are refused:
          `use_ema` (the average is written into every variable) and
          `gradient_accumulation_steps` (updates are applied outside the
          per-unit skip).
        * `jit_compile="auto"` stays off (one log line says so) where Keras
          would turn XLA on, i.e. on GPUs: see `XLA_AUTO_NOTE`. An explicit
          `jit_compile=True` is honoured; on a machine with only CPUs one
          log line gives its measured cost and the alternative
          (`XLA_CPU_NOTE`).
        """
        keras_internals.check()
        tf_internals.check()
        super().compile(optimizer, *args, jit_compile=jit_compile, **kwargs)
        fo_optimizer.check_supported(self.optimizer)
        log = logging.getLogger("freezeout_tf")
        if jit_compile == "auto" and self.jit_compile:
            self.jit_compile = False
            log.warning(XLA_AUTO_NOTE)
        elif self.jit_compile and _host_only():
            log.warning(XLA_CPU_NOTE)

    def compile_from_config(self, config):
        # Keras skips restoring the compile state of a model whose compile()
        # is overridden; ours only adds checks, so restore as Keras does.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    # The variables FreezeOut trains.

    def _variable_ownership(self):
        """`ownership.variable_owners`' `Ownership`: each part's variables
        (`owned`), and those it reads but another part owns (`foreign`).

        The variables trained are those of the parts' layers that were
        trainable when first seen (not LoRA's base kernels, nor layers set
        `trainable = False` before the split), or all of a part whose
        `trainable` is False then (a unit loaded frozen). The FreezeOut
        callback's later `trainable = False` changes nothing: the set, and
        the optimizer's slots, never change. Recomputed only when a
        variable is new (a part built late)."""
        parts = self.freeze_units + [self.head]
        cache = self._owners
        for part in parts:
            for v in ownership.part_variables(part):
                if id(v) not in cache.trained:
                    cache.trained[id(v)] = v.trainable or not part.trainable
        key = frozenset(cache.trained)
        if cache.key != key:
            trained = {k for k, t in cache.trained.items() if t}
            cache.result = ownership.variable_owners(parts, trained,
                                                     self.tied_owner)
            cache.key = key
        return cache.result

    def _unit_variable_ids(self):
        """For each unit and the head, ids of the variables it owns."""
        return [{id(v) for v in owned}
                for owned in self._variable_ownership().owned]

    @property
    def trainable_variables(self):
        """All variables of the units and head that FreezeOut trains,
        including those of units frozen so far (their `trainable` flag is
        False, but they keep their optimizer slots so that saving, loading
        and resuming see one fixed variable list)."""
        unit_ids = set().union(*self._unit_variable_ids())
        return [v for v in self.weights if id(v) in unit_ids]

    def variable_units(self, variables):
        """Unit index of each variable (the head is `num_units`)."""
        unit_ids = self._unit_variable_ids()
        units = []
        for v in variables:
            owner = [u for u, ids in enumerate(unit_ids) if id(v) in ids]
            if not owner:
                raise ValueError(f"Variable {v.path} belongs to no unit.")
            units.append(owner[0])
        return units

    def cache_frozen_prefix(self, num_examples, max_bytes, max_units=None):
        """Keeps frozen leading units' outputs per example, in host memory,
        so that a cached frozen unit costs no forward either.

        Call before the first `fit`. The training data must carry example
        ids (`freezeout_tf.with_example_ids`) and give each example the same
        input at every epoch (no random augmentation in the dataset). At
        the start of every `fit` the run is checked (ids present, no XLA,
        no `tf.distribute`, boundaries of one shape) and the cache's size,
        `num_examples` x one unit output x its dtype, is refused in one
        line if over `max_bytes`; the cache is then emptied and refilled
        as units freeze. Losses and weights equal those of the run without
        it (to float rounding: `docs/design.md`).

        Args:
            num_examples: the ids run over `[0, num_examples)`.
            max_bytes: host-memory budget for the cache, in bytes.
            max_units: cache at most the first `max_units` units' outputs;
                default: as many leading units as share unit 0's output
                shape (one buffer holds one activation per example).

        Returns:
            the `freezeout_tf.core.prefix_cache.PrefixCache`.

        Raises:
            ValueError: a bad argument, or (at `fit`) a run the cache does
                not support, or a cache over the budget.

        Example:

        >>> model = FreezeOutModel([keras.layers.Dense(4)],
        ...                        keras.layers.Dense(2))
        >>> cache = model.cache_frozen_prefix(50_000, max_bytes=2**30)
        >>> model.fit(  # doctest: +SKIP
        ...     with_example_ids(ds).shuffle(1000).batch(64), epochs=3,
        ...     callbacks=[FreezeOut(frozen_from_start=4)])
        >>> model.cache_frozen_prefix(50_000, max_bytes=0)
        Traceback (most recent call last):
        ...
        ValueError: cache_frozen_prefix(max_bytes=0): must be a positive integer.
        """
        if self.train_function is not None:
            raise ValueError(
                "cache_frozen_prefix must be called before the first fit "
                "(the train step is already traced without the cache).")
        self.prefix_cache = prefix_cache.PrefixCache(num_examples, max_bytes,
                                                     max_units)
        return self.prefix_cache

    def fit(self, *args, **kwargs):
        """As `keras.Model.fit`; with `cache_frozen_prefix`, the cache is
        checked, sized and emptied first, before any step."""
        lora.check_trainable(self)
        if self.prefix_cache is not None:
            self.prefix_cache.pending = True  # prepared at symbolic build
        return super().fit(*args, **kwargs)

    def unit_variable_owners(self):
        """For each unit, the set of parts (unit indices; the head is
        `num_units`) that own a variable the unit reads: itself, and the
        owners of what it reads but does not own (a tied embedding)."""
        reads = self._foreign_reads()
        return [{i} | {owner for owner, _ in reads[i]}
                for i in range(self.num_units)]

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if (data_batch is None and iterator is not None
                and self._distribute_strategy is None
                and not tf.distribute.has_strategy()):
            # Shapes and dtypes only, from the data's element spec. Reading
            # a batch would start a pass over the data that no step trains
            # on: a shuffled dataset would reshuffle, and the run would
            # train on other batches than plain Keras, which builds at its
            # first trace from the batch it trains on. (Under a strategy
            # Keras reads one, for plain models too: left as it is.)
            data_batch = _batch_spec(iterator)
            iterator = None
        if self.prefix_cache is not None and self.prefix_cache.pending:
            # Before training: the cache's checks and size.
            self.prefix_cache.prepare(self, data_batch)
        # Without a distribution strategy Keras (TF backend) defers creating
        # the model, metric and optimizer variables to the first trace of the
        # train function, which tf.function then traces a second time. Build
        # everything up front, as Keras does under a strategy, so that the
        # train function is traced exactly once per run.
        # The model is built: Keras' build needs only its output's shape
        # (`_shapes_only_output`).
        self._modes.shapes_only = (self.prefix_cache is None and all(
            layer.built for layer in self._flatten_layers()))
        try:
            if self._distribute_strategy is not None:
                return super()._maybe_symbolic_build(iterator, data_batch)
            self._distribute_strategy = tf.distribute.get_strategy()
            try:
                super()._maybe_symbolic_build(iterator, data_batch)
            finally:
                self._distribute_strategy = None
        finally:
            self._modes.shapes_only = False

    # The train step.

    def _unit_variables(self):
        """Variables of each unit and of the head (last), as
        `trainable_variables` orders them."""
        variables = self.trainable_variables
        groups = [[] for _ in range(self.num_units + 1)]
        for v, unit in zip(variables, self.variable_units(variables)):
            groups[unit].append(v)
        return groups

    def _foreign_reads(self):
        """For each part, `[(owner, variables)]`: the variables it reads but
        another part owns, grouped by owner (a tied embedding: the head
        reads unit 0's, or unit 0 reads the head's)."""
        owner = {id(v): u for u, owned in
                 enumerate(self._variable_ownership().owned) for v in owned}
        reads = []
        for variables in self._variable_ownership().foreign:
            by_owner = {}
            for v in variables:
                by_owner.setdefault(owner[id(v)], []).append(v)
            reads.append(sorted(by_owner.items()))
        return reads

    def compute_freezeout_gradients(self, x, y, sample_weight=None):
        """Loss, predictions and gradients of one training step.

        The gradients are those of `self.trainable_variables`; for units
        frozen at the current step no backward op runs and their entries are
        zeros that the optimizer skips.

        Returns:
            `(loss, y_pred, gradients)`, `loss` unscaled.
        """
        out = self._gradients_by_unit(x, y, sample_weight)
        return out.loss, out.y_pred, out.gradients

    def _gradients_by_unit(self, x, y, sample_weight=None):
        """`compute_freezeout_gradients`' results, the step, each unit's
        gradient list and the frozen flags, as a `_StepGradients`."""
        x, ids = prefix_cache.split_example_ids(x)
        side = side_inputs.side_values(x, self.input_names)
        state = self.schedule_state
        step = state.step()
        frozen = state.frozen_flags(step)  # host-placed (schedule_state)
        groups = self._unit_variables()
        values = [[v.value for v in group] for group in groups]
        value_of = {id(v): x for group, xs in zip(groups, values)
                    for v, x in zip(group, xs)}
        foreign = self._foreign_reads()
        zero = tf.UnconnectedGradients.ZERO
        with tf.GradientTape(
            persistent=True, watch_accessed_variables=False
        ) as tape:
            tape.watch(tf.nest.flatten(values))
            unit_inputs, unit_outputs, h = self._forward_units(
                tape, x, ids, side, frozen)
            head_input = _stop(h)
            tape.watch(head_input)
            y_pred = self.head(
                self._part_arguments(self.num_units, head_input, side),
                training=True)
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                training=True,
            )
            scaled_loss = self.optimizer.scale_loss(loss)
            # Regularisation and add_loss terms reach unit variables (and
            # unit inputs, for activity regularisers) without the head.
            has_extra_losses = bool(self.losses)

        # The head first (its regularisers and add_loss terms included).
        head_grads = tape.gradient(
            scaled_loss, values[-1] + [head_input], unconnected_gradients=zero
        )
        grads = [None] * self.num_units + [head_grads[:-1]]
        upstream = head_grads[-1]
        extra_vars, extra_inputs = self._extra_loss_gradients(
            tape, scaled_loss, values[:-1], unit_inputs, has_extra_losses
        )
        added = {}  # id(variable) -> gradients of its foreign reads
        if not has_extra_losses:  # else the extra terms hold the head's
            self._foreign_gradients(tape, frozen, foreign[-1], value_of,
                                    scaled_loss, None, added)
        pass_down = self._pass_down_flags(foreign)
        for i in reversed(range(self.num_units)):
            self._foreign_gradients(tape, frozen, foreign[i], value_of,
                                    unit_outputs[i], upstream, added)
            grads[i], upstream = self._unit_backward(
                tape, i, frozen, values[i], unit_inputs[i], unit_outputs[i],
                upstream, pass_down[i],
            )
            if extra_inputs[i] is not None:
                upstream = tf.nest.map_structure(
                    lambda u, e: u if e is None else u + e, upstream,
                    extra_inputs[i])
            grads[i] = [g if e is None else g + e
                        for g, e in zip(grads[i], extra_vars[i])]
        del tape
        grads = [[g if id(v) not in added else
                  tf.add_n([tf.convert_to_tensor(g)] + added[id(v)])
                  for v, g in zip(group, gs)]
                 for group, gs in zip(groups, grads)]
        by_id = {
            id(v): g for group, gs in zip(groups, grads)
            for v, g in zip(group, gs)
        }
        gradients = [by_id[id(v)] for v in self.trainable_variables]
        return _StepGradients(loss=loss, y_pred=y_pred, gradients=gradients,
                              step=step, unit_grads=grads, frozen=frozen)

    def _forward_units(self, tape, x, ids, side, frozen):
        """The units' forward on `tape`: `(unit_inputs, unit_outputs,
        last_output)`. Every unit runs once; with `cache_frozen_prefix`,
        the cache's runner (`freezeout_tf.core.prefix_cache`) decides how."""
        def run_unit(i, h, side):
            with unit_mode(self._unit_leaves(i), tf.logical_not(frozen[i]),
                           static_shapes=bool(self.jit_compile)):
                return self.freeze_units[i](
                    self._part_arguments(i, h, side), training=True)

        if self.prefix_cache is not None:
            run = self.prefix_cache.unit_runner(self, ids, side, frozen,
                                                run_unit)
        else:
            def run(i, h):
                return run_unit(i, h, side)
        unit_inputs, unit_outputs = [], []
        # Side inputs go to the units as they are, never watched.
        h = x if side is None else None
        for i in range(self.num_units):
            if i > 0:
                # Cut the tape between units: each unit's backward is
                # computed on its own, below.
                h = _stop(h)
                tape.watch(h)
            unit_inputs.append(h)
            h = run(i, h)
            unit_outputs.append(h)
        return unit_inputs, unit_outputs, h

    @staticmethod
    def _extra_loss_gradients(tape, scaled_loss, values, unit_inputs,
                              has_extra_losses):
        """Gradients of the loss terms that reach into units directly:
        weight regularisers (per unit variable) and activity regularisers or
        `add_loss` terms (per unit input, to add to the gradient handed down
        to the unit before). `None` where a term does not reach."""
        extra_vars = [[None] * len(v) for v in values]
        extra_inputs = [None] * len(values)
        if not has_extra_losses:
            return extra_vars, extra_inputs
        flat = tf.nest.flatten(values)
        grads = tape.gradient(scaled_loss, flat + unit_inputs[1:])
        extra_vars = tf.nest.pack_sequence_as(values, grads[:len(flat)])
        extra_inputs = [None] + grads[len(flat):]
        return extra_vars, extra_inputs

    def _foreign_gradients(self, tape, frozen, reads, value_of, output,
                           upstream, added):
        """Adds to `added` a part's gradients of the variables it reads but
        does not own (`_foreign_reads`), each owner's under a `tf.cond` on
        the owner's frozen flag (none for the head, which never freezes):
        a tied embedding's projection gradient in the head stops when the
        unit that owns it freezes."""
        def gradient(variables):
            return _dense(tape.gradient(
                output, [value_of[id(v)] for v in variables],
                output_gradients=upstream,
                unconnected_gradients=tf.UnconnectedGradients.ZERO))

        def branch(variables):
            with tf_internals.constants_by_value():
                return gradient(variables)

        for owner, variables in reads:
            if owner == self.num_units:
                grads = gradient(variables)
            else:
                grads = tf.cond(
                    frozen[owner],
                    lambda vs=variables: [tf.zeros(v.shape, v.dtype)
                                          for v in vs],
                    lambda vs=variables: branch(vs))
            for v, g in zip(variables, grads):
                added.setdefault(id(v), []).append(g)

    def _pass_down_flags(self, foreign):
        """For each unit, whether it must hand its input gradient down even
        while frozen: a unit before it reads a variable the head owns (a
        tied embedding with `tied_owner="head"`: the lookup in unit 0 needs
        the hidden-state gradient through every block). A read of an
        earlier unit's variable (an encoder-decoder's shared embedding,
        owned by unit 0, read again by the decoder) needs none: its owner
        freezes before the reader, and the reader's own backward gives
        its gradient while the owner trains."""
        flags, reads_before = [], False
        for i, reads in enumerate(foreign[:self.num_units]):
            flags.append(reads_before)
            reads_before = reads_before or any(owner > i
                                               for owner, _ in reads)
        return flags

    def _unit_backward(self, tape, i, frozen, values, unit_input, output,
                       upstream, pass_down=False):
        """Weight gradients of unit i and the gradient for unit i - 1.

        One `tf.cond` on the unit's frozen flag: frozen, nothing runs (zero
        weight gradients); active, the weight and input gradients. The
        frozen branch hands down the unit's input itself as a stand-in for
        the input gradient: unit i - 1 is frozen too then and never reads
        it, and passing a tensor through costs nothing, where zeros would be
        written out at every step. Where `pass_down` (`_pass_down_flags`) is
        true, the frozen branch computes the input gradient only."""
        def zeros():
            return [tf.zeros(v.shape, v.dtype) for v in values]

        def backward(sources):
            # Built inside a branch. Constants the gradient reads stay
            # constants there, so Grappler simplifies as at the top level
            # (tf_internals).
            with tf_internals.constants_by_value():
                return _dense(tape.gradient(
                    output, sources, output_gradients=upstream,
                    unconnected_gradients=tf.UnconnectedGradients.ZERO))

        if i == 0:
            # The first unit never hands a gradient down (and with side
            # inputs it has no hidden-state input at all).
            return tf.cond(frozen[0], zeros, lambda: backward(values)), None

        def skip():
            return zeros(), unit_input

        def weights_and_input():
            grads = backward(values + [unit_input])
            return grads[:-1], grads[-1]

        # Two branches, not three: a third "weights only" branch for the
        # first active unit (nothing before it trains) would save one unit's
        # input gradient per step, but it repeats every unit's weight-gradient
        # code in the graph: the first fit step of DenseNet-BC L=40 took
        # about twice as long (graph and XLA alike; docs/design.md).
        def input_only():
            return zeros(), backward([unit_input])[0]

        return tf.cond(frozen[i], input_only if pass_down else skip,
                       weights_and_input)

    # No AutoGraph: the step has no Python control flow on tensors (every
    # branch is an explicit tf.cond), and converting the per-unit branch
    # closures, new function objects for every unit, was most of the trace.
    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        self.train_step_traces += 1
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        fo_optimizer.attach_schedule(
            self.optimizer, variables, self.variable_units(variables),
            self.schedule_state,
        )
        out = self._gradients_by_unit(x, y, sample_weight)
        # As Keras' own train_step: track the loss for the progress bar.
        self._loss_tracker.update_state(
            _unscale_loss_for_distribution(out.loss),
            sample_weight=tf.shape(tf.nest.flatten(x)[0])[0],
        )
        self.optimizer.apply(out.gradients, variables)
        # Observers see every unit's gradients inside the step (adaptive
        # freezing decides from them in the graph). Placed after the update,
        # so that the optimizer's reads of the freeze steps (which a
        # decision at this step does not change: it freezes from the next)
        # need not wait for the observers' writes; their work runs beside
        # the update instead of before it.
        for observe in self.gradient_observers:
            observe(out.step, out.unit_grads, out.frozen)
        self.batches_taken.assign_add(1)
        return self.compute_metrics(x, y, out.y_pred,
                                    sample_weight=sample_weight)

    def get_config(self):
        config = super().get_config()
        parts = self.freeze_units + [self.head]
        # Layers the original model never serialized one by one (a KerasHub
        # backbone saves its arguments) may have a get_config that does not
        # round-trip (layer_configs).
        with layer_configs.repaired_configs(parts):
            configs = [keras.saving.serialize_keras_object(p) for p in parts]
        layer_configs.mark_tensors_only(parts, configs)
        _mark_shared_layers(parts, configs)
        config.update(
            freeze_units=configs[:-1],
            head=configs[-1],
            input_names=self.input_names,
            tied_owner=self.tied_owner,
            lora=lora.config(parts),
            trained=ownership.trained_flags(parts, self.trainable_variables),
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        parts = config["freeze_units"] + [config["head"]]
        custom_objects = {**layer_configs.tensors_only_objects(parts),
                          **(custom_objects or {})}
        units, frozen = [], []
        for unit_config in config.pop("freeze_units"):
            # (Read first: deserializing takes the flag out of the config.)
            frozen.append(
                unit_config.get("config", {}).get("trainable") is False)
            units.append(keras.saving.deserialize_keras_object(
                unit_config, custom_objects=custom_objects
            ))
            # A frozen unit's layers load non-trainable: trainable until
            # the model has fixed what it trains (as at its first sight,
            # before any unit froze), frozen again after. (Only frozen
            # ones: a trained unit keeps its layers' own flags, e.g. a
            # BatchNorm set non-trainable, which runs in inference mode.)
            if frozen[-1]:
                units[-1].trainable = True
        head = keras.saving.deserialize_keras_object(
            config.pop("head"), custom_objects=custom_objects
        )
        lora_config = config.pop("lora", None)
        lora.enable(units + [head], lora_config)
        # A frozen unit's variables load non-trainable, and a variable's
        # own flag (which LoRA sets) is not saved: the model trains those
        # it trained when saved.
        ownership.set_trained(units + [head], config.pop("trained", None))
        model = cls(units, head, **config)
        # keras.Sequential.from_config drops its own `trainable` flag;
        # restore it so a loaded model shows which units were frozen.
        for unit, is_frozen in zip(units, frozen):
            if is_frozen:
                unit.trainable = False
        # Keras saved the merged kernels, not the factors: until
        # checkpoint.load_checkpoint restores them, fit refuses the model.
        model._lora_factors_lost = bool(lora_config)
        return model
