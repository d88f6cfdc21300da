"""Splitting a functional Keras model into freeze units at its cut points.

FreezeOut needs a chain: units run one after another, each taking the
previous one's output. A functional network (a ResNet, a DenseNet, your own
model with skip connections) is a graph, but it can be cut into a chain at
its *cut points*: tensors that every path from the input to the output
passes through. A ResNet has one after each residual block, a DenseNet after
each dense layer's concatenation and each transition, MobileNetV2 after each
inverted-residual block (and between the layers of blocks without a
residual), a transformer after each encoder block, and any chain of layers
between each pair of layers.

How they are found: with the layer calls in topological order, the output
of call `p` is a cut point exactly when no other tensor made at or before
`p` is used after `p` (every path must cross from calls `<= p` to calls
`> p`, and that one tensor is the only way across).

Several inputs (a transformer's token ids, segment ids and padding mask):
the model's inputs, and whatever weightless calls compute from them alone
(a mask reshaped, say), are *side inputs*. They are not on the chain: a
unit that reads one gets it as an input of the same name
(`freezeout_tf.core.side_inputs`), recomputing the weightless calls it needs,
and their uses do not count when cut points are found. So a BERT is cut
after its embeddings and after each encoder block, though every block
reads the padding mask. A model with one input is treated so too when a
weightless function of it (a mask) is read beside the hidden state.

A tensor made once and read beside the hidden state by several later calls
(DeBERTa's relative embeddings, read by every block) is *carried*
(`_carried`): its uses do not count either, and each unit boundary it spans
passes it on, as an input named `side_inputs.HIDDEN + "_<j>"`; the unit
that computes it owns its weights.

An encoder-decoder runs two streams from its inputs: the encoder, whose
output every decoder block reads (carried), and the decoder's embedding.
A stream read by one later call only is moved right before it
(`_sink_streams`), so the chain runs encoder blocks, then decoder blocks;
a call whose one output read later is carried (the encoder's last) is a
cut point too, that tensor being the hidden state into the next unit. A
layer called in several units (the shared token embedding) belongs to
the first (`freezeout_tf.split.ownership`); a segment holding only weights
an earlier one holds joins the one before it.

Looked into, as if their layers were called in the outer graph:

* nested functional models and `Sequential`s with an `Input` (a pretrained
  backbone inside a fine-tuning model), called on their inputs;
* layers that hold a list of blocks (KerasHub's `ViTEncoder`: one layer
  whose `call` runs its encoder blocks in turn). One mechanism serves them
  all, with no special case per class: a layer (not a model) with two or
  more direct sublayers of one class that themselves hold layers with
  weights has its `call` run symbolically on new inputs, which records the
  sublayer calls and Keras ops it makes as a functional graph. It is looked
  into when that works and the recorded calls hold all of its weights;
  otherwise it stays one call, inside one unit. Outputs the recording
  cannot hold (a constant output, a block's `None`) are left out unless
  the model reads them.

The units re-call the original layer objects on new `keras.Input`s: they
share the model's layers and weights, nothing is copied, and the original
model keeps working (but note that freezing a unit sets `trainable = False`
on layers the original model also uses).
"""

import collections
import inspect
import types

import keras
import tensorflow as tf

from freezeout_tf import validation
from freezeout_tf._internals import keras_internals
from freezeout_tf.core import macs, side_inputs
from freezeout_tf.split import ownership

__all__ = ["cut_points", "split_model"]

# One call of a layer (or other Keras operation) in the flattened graph.
# `node` is the Keras node recorded for the call (its arguments say how to
# call it again); `inputs` and `outputs` are tensor keys; `owners` names the
# nested models the call sits in, outermost first.
# A free length for a model no stand-in of `macs.FREE_DIMENSIONS` runs:
# a waveform of 0.1 s at 16 kHz (Moonshine's strided convolutions).
_LONG_FREE = 1600
_Call = collections.namedtuple("_Call", "op node inputs outputs owners")


class _Graph:
    """The layer calls of a functional model in topological order, nested
    functional models and containers of blocks inlined, with each tensor's
    producer and last user.

    With several model inputs, the model inputs and whatever weightless
    calls compute from them alone are *side* tensors (`side_calls`): they
    are not part of the chain, each unit that reads one gets it as a side
    input (recomputing the weightless calls it needs), and their uses do
    not count when cut points are found. `calls` holds the other calls:
    the chain of the hidden state."""

    def __init__(self, model, name):
        self.name = name
        self.model = model
        self.tensors = {}  # key -> the original KerasTensor (shape, dtype)
        self.input_keys = [((), id(t)) for t in model.inputs]
        self.input_names = {k: t.name for k, t in zip(self.input_keys,
                                                      model.inputs)}
        for k, t in zip(self.input_keys, model.inputs):
            self.tensors[k] = t
        # A traced container may leave out outputs that are not computed
        # from its inputs (`_traced_container`); if the model needs one,
        # that container stays one call and the graph is expanded again.
        whole = set()
        while True:
            every_call, alias, self.missing = [], {}, {}
            self._expand(model, (), alias, (), every_call, whole)
            self.output_keys = [
                alias.get(k, k)
                for k in (((), id(t)) for t in model.outputs)]
            every_call, needed = _live(every_call, self.output_keys)
            kept_whole = {self.missing[k] for k in needed
                          if k in self.missing}
            if not kept_whole:
                break
            whole |= kept_whole
        _unique_names(every_call)
        # Side tensors: model inputs and weightless functions of them only.
        # With one input, only where the chain needs them: a weightless
        # function of the input (ESM's padding mask) read beside the hidden
        # state, or a carried tensor; else the chain starts from the input.
        self.named = len(model.inputs) > 1
        side, side_calls, calls = _side_tensors(every_call,
                                                set(self.input_keys))
        if not self.named:
            masks = side - set(self.input_keys)
            self.named = any(
                masks.intersection(c.inputs)
                and any(k not in side for k in c.inputs) for c in calls
            ) or bool(_carried(calls, side, self.output_keys))
        if not self.named:
            side, side_calls, calls = set(), [], every_call
        self.side, self.side_calls = side, side_calls
        self.calls = _sink_streams(calls, side, self.output_keys)
        self.all_calls = every_call
        # The chain starts from the one plain input (no side inputs), or
        # from nothing: the first unit reads side inputs only.
        self.input_key = None if self.named else self.input_keys[0]
        for key in self.output_keys:
            if key in self.side:
                raise ValueError(
                    f"Model '{name}' returns a tensor computed from its "
                    f"inputs alone, without weights; split_model needs "
                    f"every output to come from the layers being trained."
                )

        n = len(self.calls)
        self.producer = {}
        if self.input_key is not None:
            self.producer[self.input_key] = -1
        for i, call in enumerate(self.calls):
            for key in call.outputs:
                self.producer[key] = i
        # Carried tensors (`_carried`): like side tensors, their uses do not
        # count for cut points; each unit boundary they span passes them on.
        self.carried = _carried(self.calls, self.side, self.output_keys)
        self._carried_ranks()
        self.last_use = dict(self.producer)
        for i, call in enumerate(self.calls):
            for key in call.inputs:
                if key not in self.side and key not in self.carried:
                    self.last_use[key] = max(self.last_use.get(key, -1), i)
        for key in self.output_keys:
            if key not in self.carried:
                self.last_use[key] = n  # used by "the output"

    def _expand(self, function, scope, alias, owners, calls, whole):
        # Tensor keys carry the chain of nested calls they sit in, so that a
        # nested model called twice gets distinct keys for each call.
        def key(tensor):
            k = (scope, id(tensor))
            return alias.get(k, k)

        nodes_by_depth = function._nodes_by_depth
        for depth in sorted(nodes_by_depth, reverse=True):
            for node in nodes_by_depth[depth]:
                if node.is_input:
                    continue
                inputs = tuple(key(t) for t in node.arguments.keras_tensors)
                inner = None if id(node) in whole else _inlinable(node)
                if inner is not None:
                    inner_model, inner_args, inner_outputs = inner
                    inner_scope = scope + (id(node),)
                    for t, outer in zip(inner_model.inputs, inner_args):
                        alias[(inner_scope, id(t))] = self._adjust_rank(
                            t, outer, key(outer), owners, calls)
                    self._expand(inner_model, inner_scope, alias,
                                 owners + (node.operation.name,), calls,
                                 whole)
                    for t, outer in zip(inner_model.outputs, inner_outputs):
                        out = (inner_scope, id(t))
                        alias[(scope, id(outer))] = alias.get(out, out)
                    for outer in node.outputs:  # left out of the recording
                        if all(outer is not o for o in inner_outputs):
                            self.missing[(scope, id(outer))] = id(node)
                    continue
                outputs = tuple((scope, id(t)) for t in node.outputs)
                for k, t in zip(outputs, node.outputs):
                    self.tensors[k] = t
                calls.append(
                    _Call(node.operation, node, inputs, outputs, owners)
                )

    def _adjust_rank(self, inner, outer, outer_key, owners, calls):
        """Key of the tensor a nested model's input `inner` reads when it
        is called on `outer`. A functional model called on a tensor one
        rank off squeezes or adds its last dimension of size 1 (Keras's
        `Functional._adjust_input_rank`: SD3 calls its MMDiT, whose
        timestep input is `(None, 1)`, on a `(None,)` timestep); inlined,
        the same op is recorded as a call of its own."""
        rank, ref = len(outer.shape), inner.shape
        if rank == len(ref) + 1 and outer.shape[-1] == 1:
            adjusted = keras.ops.squeeze(outer, axis=-1)
        elif rank == len(ref) - 1 and ref[-1] == 1:
            adjusted = keras.ops.expand_dims(outer, axis=-1)
        else:
            return outer_key
        op, index, _ = adjusted._keras_history
        out = ((), id(adjusted))
        self.tensors[out] = adjusted
        calls.append(_Call(op, op._inbound_nodes[index], (outer_key,),
                           (out,), owners))
        return out

    def describe(self, index):
        """Name of chain call `index` for messages (`-1`: the input, `n`:
        the output), with the nested models it sits in."""
        if index < 0:
            return "the inputs" if self.named else "the input"
        if index >= len(self.calls):
            return "the output"
        call = self.calls[index]
        inside = "".join(f" (inside '{o}')" for o in reversed(call.owners))
        return f"'{call.op.name}'{inside}"

    def cuts(self):
        """For each chain call but the last, `None` if its output is a cut
        point, else `(producer, user)`: calls at the ends of a tensor that
        goes around it."""
        result = []
        # The tensor made at or before the current call that is used last.
        if self.input_key is None:
            reach, reach_key = -1, None
        else:
            reach, reach_key = self.last_use[self.input_key], self.input_key
        for p, call in enumerate(self.calls[:-1]):
            if reach <= p and (len(self._used_after(p)) == 1
                               or self._carried_out(p)):
                result.append(None)
            elif reach > p:
                result.append((self.producer[reach_key], reach))
            else:  # several outputs: one of them goes around the other
                result.append((p, max(self.last_use[k] for k in call.outputs)))
            for k in call.outputs:
                if self.last_use[k] > reach:
                    reach, reach_key = self.last_use[k], k
        return result

    def _carried_out(self, p):
        """Whether chain call `p`'s one output read later is carried (an
        encoder's output, read by every decoder block): it is then the
        hidden state into the next unit, and carried from there on."""
        return (not self._used_after(p)
                and [k for k in self.calls[p].outputs
                     if k in self.carried] != [])

    def hidden_after(self, p):
        """Key of the hidden state passed on after chain call `p` (a cut
        point): its output read later, or the carried one."""
        used = self._used_after(p)
        return used[0] if used else next(
            k for k in self.calls[p].outputs if k in self.carried)

    def _used_after(self, p):
        """The outputs of chain call `p` that a later call reads (a block's
        unread outputs, such as `None` attention scores, do not count)."""
        return [k for k in self.calls[p].outputs if self.last_use[k] > p]

    def holds_weights(self, lo, hi):
        return any(_holds_weights(c.op) for c in self.calls[lo:hi])

    def holds_new_weights(self, lo, hi):
        """Whether calls `lo..hi-1` hold a weight no earlier call holds (a
        later call of a shared layer, such as a decoder's lookup in an
        embedding the encoder owns, holds none)."""
        seen = {id(w) for c in self.calls[:lo]
                for w in getattr(c.op, "weights", ())}
        return any(id(w) not in seen for c in self.calls[lo:hi]
                   for w in getattr(c.op, "weights", ()))

    def _side_closure(self, keys):
        """The side calls needed to compute side tensors `keys` from the
        model inputs, in topological order."""
        needed, stack = set(), [k for k in keys if k not in self.input_names]
        producers = {k: c for c in self.side_calls for k in c.outputs}
        while stack:
            call = producers[stack.pop()]
            if id(call) not in needed:
                needed.add(id(call))
                stack.extend(k for k in call.inputs
                             if k not in self.input_names)
        return [c for c in self.side_calls if id(c) in needed]

    def carried_across(self, boundary):
        """Carried tensors live across the boundary before chain call
        `boundary`, in producer order, with their input names."""
        return [(k, f"{side_inputs.HIDDEN}_{j}")
                for j, (k, (first, last)) in enumerate(self.carried.items())
                if first < boundary <= last]

    def build(self, lo, hi, name):
        """A functional model of chain calls `lo..hi-1`, re-calling the
        original layers on new `keras.Input`s: the hidden state (unless it
        is the first unit of a model with side inputs), the carried tensors
        it reads or passes on, and the model inputs the calls read. With
        carried tensors to pass on, it returns a dict by input name."""
        calls = self.calls[lo:hi]
        values, inputs = {}, []
        if lo > 0 or self.input_key is not None:
            start = (self.input_key if lo == 0
                     else self.hidden_after(lo - 1))
            spec = self.tensors[start]
            hidden = keras.Input(
                batch_shape=spec.shape, dtype=spec.dtype,
                name=side_inputs.HIDDEN if self.named else
                f"{name}_input")
            values[start] = hidden
            inputs.append(hidden)
        for k, carried_name in self.carried_across(lo):
            if k in values:  # the hidden state here (`hidden_after`)
                continue
            spec = self.tensors[k]
            values[k] = keras.Input(batch_shape=spec.shape, dtype=spec.dtype,
                                    name=carried_name)
            inputs.append(values[k])
        side_keys = {k for c in calls for k in c.inputs if k in self.side}
        side_calls = self._side_closure(side_keys)
        read = side_keys | {k for c in side_calls for k in c.inputs}
        for k in self.input_keys:  # model inputs, in the model's order
            if k in read:
                spec = self.tensors[k]
                values[k] = keras.Input(batch_shape=spec.shape,
                                        dtype=spec.dtype,
                                        name=self.input_names[k])
                inputs.append(values[k])
        for call in side_calls + calls:
            args, kwargs = _fill_in(call, values)
            outputs = keras.tree.flatten(call.op(*args, **kwargs))
            values.update(zip(call.outputs, outputs))
        if hi == len(self.calls):
            outputs = keras.tree.pack_sequence_as(
                self.model.output, [values[k] for k in self.output_keys])
        else:
            hidden = self.hidden_after(hi - 1)
            outputs = values[hidden]
            passed = [(k, n) for k, n in self.carried_across(hi)
                      if k != hidden]
            if passed:
                outputs = {side_inputs.HIDDEN: outputs,
                           **{n: values[k] for k, n in passed}}
        if not self.named:
            inputs = inputs[0]
        return keras.Model(inputs, outputs, name=name)

    def zero_inputs(self, free):
        """Zeros for one example of each model input, by tensor key, with
        `free` for a `None` dimension."""
        values = {}
        for k in self.input_keys:
            spec = self.tensors[k]
            shape = tuple(free if d is None else d for d in spec.shape[1:])
            values[k] = keras.ops.zeros((1,) + shape, dtype=spec.dtype)
        return values

    def call_costs(self):
        """Forward multiply-accumulates of each chain call for one example,
        as `unit_flops` counts them (a `None` dimension as
        `macs.with_free_dimension` chooses)."""
        ops = [c.op for c in self.all_calls
               if isinstance(c.op, keras.layers.Layer)]

        def count(free):
            costs = {}
            with macs.count_macs(ops) as counter:
                def after(call):
                    costs[id(call)] = int(counter[0])
                    counter[0] = 0
                self._run(free, after)
            return [costs[id(c)] for c in self.calls]

        return macs.with_free_dimension(count, ops)

    def _run(self, free, after=None):
        """Runs every call eagerly on `zero_inputs(free)`; returns the
        values by tensor key (`after(call)` is called after each)."""
        values = self.zero_inputs(free)
        for call in self.all_calls:
            args, kwargs = _fill_in(call, values)
            if "training" in getattr(call.op, "_call_context_args", ()):
                kwargs.setdefault("training", False)
            outputs = keras.tree.flatten(call.op(*args, **kwargs))
            values.update(zip(call.outputs, outputs))
            if after is not None:
                after(call)
        return values

    def _carried_ranks(self):
        """Corrects the recorded shape of a carried tensor whose rank the
        symbolic call got wrong (Moonshine's rotary table is recorded as
        `(None,)` but is `(length, dim)`): a unit would declare its input
        with that rank and refuse the tensor. Such a tensor is declared
        with the rank it has when the model runs on zeros, every dimension
        free. A free length of `macs.FREE_DIMENSIONS` may be too short for
        a waveform (Moonshine's strided convolutions): a long one is tried
        last. If none runs, the recorded shapes stay."""
        if not self.carried:
            return
        for free in macs.FREE_DIMENSIONS + (_LONG_FREE,):
            try:
                values = self._run(free)
                break
            except (ValueError, tf.errors.InvalidArgumentError):
                continue
        else:
            return
        for k in self.carried:
            rank = len(values[k].shape)
            if rank != len(self.tensors[k].shape):
                self.tensors[k] = keras.KerasTensor(
                    (None,) * rank, dtype=self.tensors[k].dtype)


def _unique_names(calls):
    """Renames layers so that no two distinct ones share a name.

    Nested models keep their own layer names apart (Stable Diffusion 3's
    VAE encoder and decoder each hold an `input_projection`), but a unit
    re-calls the layers of several of them in one functional model, where
    Keras refuses a name used twice. The later layer gets the name of the
    model or layer it sits in as a prefix (`decoder_input_projection`),
    then a number if that is taken too. The layer object is renamed, so
    the original model reads the new name too; its weights, their paths
    and its outputs are unchanged."""
    ops = list({id(c.op): c for c in calls}.values())
    used = {c.op.name for c in ops}
    seen = set()
    for call in ops:
        name = call.op.name
        if name not in seen:
            seen.add(name)
            continue
        new = f"{call.owners[-1]}_{name}" if call.owners else name
        number = 1
        while new in used:
            number += 1
            new = f"{name}_{number}"
        call.op.name = new
        used.add(new)
        seen.add(new)


def _live(calls, output_keys):
    """`(calls, keys)`: the calls whose outputs reach the model's outputs,
    and the tensor keys they and the outputs read. A nested model's output
    left unused (a backbone's pooled output, when the head reads its
    sequence) is not part of any unit."""
    needed, live = set(output_keys), []
    for call in reversed(calls):
        if needed.intersection(call.outputs):
            needed.update(call.inputs)
            live.append(call)
    return live[::-1], needed


def _side_tensors(calls, inputs):
    """`(side, side calls, other calls)`: the tensors computed from
    `inputs` alone by weightless calls (and `inputs`), and the calls that
    compute them, in order."""
    side, side_calls, rest = set(inputs), [], []
    for call in calls:
        if (not _holds_weights(call.op)
                and all(k in side for k in call.inputs)):
            side_calls.append(call)
            side.update(call.outputs)
        else:
            rest.append(call)
    return side, side_calls, rest


def _sink_streams(calls, side, output_keys):
    """`calls` with each independent stream read once moved right before
    its reader, so that the chain runs in forward order.

    A *stream* starts at a chain call that reads side tensors only (an
    embedding lookup of some model input) and holds the calls that read
    nothing but side tensors and its own outputs. An encoder-decoder has
    two: the encoder (embedding, then its blocks) and the decoder's
    embedding. Topological order may interleave them, and a decoder
    embedding made before the encoder's blocks would go around every one
    of them, leaving no cut point between them. A stream whose outputs are
    read by one later call only (the first decoder block) is moved right
    before that call; one read by several (the encoder's output, read by
    every decoder block and so carried) stays where it is. Calls of one
    stream keep their order, as do streams moved before the same reader.
    """
    if not side:  # one plain input: a single stream from it
        return calls
    producer = {k: i for i, c in enumerate(calls) for k in c.outputs}
    stream = {}  # call index -> index of the call that starts its stream
    for i, call in enumerate(calls):
        chain = [producer[k] for k in call.inputs if k in producer]
        roots = {stream.get(j) for j in chain}
        if not chain:
            stream[i] = i
        elif len(roots) == 1 and None not in roots:
            stream[i] = roots.pop()
    members = {}
    for i, root in stream.items():
        members.setdefault(root, []).append(i)
    before = {}  # reader index -> calls moved right before it
    for root, held in members.items():
        mine = {k for i in held for k in calls[i].outputs}
        readers = {i for i, c in enumerate(calls)
                   if stream.get(i) != root and mine.intersection(c.inputs)}
        if len(readers) == 1 and not mine.intersection(output_keys):
            before.setdefault(readers.pop(), []).extend(held)
    if not before:
        return calls
    moved = {i for held in before.values() for i in held}
    order = []

    def place(i):  # a moved stream may be read by another moved one
        for j in sorted(before.get(i, ())):
            place(j)
        order.append(i)

    for i in range(len(calls)):
        if i not in moved:
            place(i)
    return [calls[i] for i in order]


def _carried(calls, side, output_keys):
    """Tensors to carry across unit boundaries, as `{key: (producer, last
    reader)}` (`len(calls)`: the output), in producer order.

    A tensor made by a chain call and read by two or more later calls, each
    of which also reads another chain tensor (the hidden state): it is
    never a hidden state itself, only an extra input beside it, as
    DeBERTa's relative position embeddings, computed once and read by
    every block. Its uses do not count when cut points are found; each
    unit that reads it or lies between its producer and a reader gets it
    as an input, and the unit that computes it owns its weights. A
    residual branch's input does not qualify: some call (the branch's
    first layer) reads it alone."""
    readers, producer = {}, {}
    for i, call in enumerate(calls):
        for k in call.outputs:
            producer[k] = i
        for k in set(call.inputs):
            if k in producer:
                readers.setdefault(k, []).append(i)
    for k in output_keys:
        if k in producer:
            readers.setdefault(k, []).append(len(calls))
    chosen = {k for k, r in readers.items() if len(r) >= 2}

    def beside(k):  # every reader reads a chain tensor that is not carried
        return all(i == len(calls) or any(
            j not in side and j not in chosen for j in calls[i].inputs)
            for i in readers[k])

    # One at a time, earliest first: a hidden state read by two calls (a
    # block and the carried tensor's producer) drops out before the
    # tensors that sit beside it are judged.
    failing = sorted((k for k in chosen if not beside(k)), key=producer.get)
    while failing:
        chosen.discard(failing[0])
        failing = sorted((k for k in chosen if not beside(k)),
                         key=producer.get)
    return {k: (producer[k], readers[k][-1])
            for k in sorted(chosen, key=producer.get)}


def _holds_weights(op):
    return bool(getattr(op, "weights", None))


def _fill_in(call, values):
    """The call's arguments with its input tensors taken from `values`.

    A `training` argument the layer's `call` does not take is dropped: a
    container's `call` may pass one (HGNetV2's stage to its `Identity`
    downsample layer), and Keras records it in the node though it strips it
    from the call; in a unit, `Functional.compute_output_spec` would hand
    it to that layer's `compute_output_spec`, which refuses it."""
    local = {id(t): values[k]
             for t, k in zip(call.node.arguments.keras_tensors, call.inputs)}
    args, kwargs = call.node.arguments.fill_in(local)
    if ("training" in kwargs and isinstance(call.op, keras.layers.Layer)
            and "training" not in inspect.signature(
                call.op.call).parameters):
        kwargs = {k: v for k, v in kwargs.items() if k != "training"}
    return args, kwargs


def _inlinable(node):
    """`(functional model, outer argument tensors in its input order, outer
    output tensors it computes)` to look into for this call, or None to
    keep the call whole.

    Looked into: a nested functional model (or `Sequential` with an
    `Input`) called on its inputs (one tensor, a list in order, or a dict
    by input name; positionally or as `inputs=`) with no other arguments
    than `training` and arguments left at None (such as `mask`); and a container of blocks
    (`_traced_container`)."""
    op = node.operation
    if isinstance(op, keras.Sequential):
        op = op._functional  # None when built without an `Input`
    # `_nodes_by_depth`: a functional model (keras.Model(inputs, outputs)).
    if not isinstance(op, keras.Model) or not hasattr(op, "_nodes_by_depth"):
        return _traced_container(node)
    # The inputs come positionally or as `inputs=` (a KerasHub task calls
    # `backbone(inputs=inputs)`): the first argument of `Functional.call`.
    args = node.arguments
    positional = list(args.args)
    if "inputs" in args.kwargs and not positional:
        positional = [args.kwargs["inputs"]]
    if (len(positional) != 1
            or any(x is not None for k, v in args.kwargs.items()
                   if k not in ("training", "inputs")
                   for x in keras.tree.flatten(v))):
        return None
    given = positional[0]
    names = [t.name for t in op.inputs]
    if isinstance(given, dict):
        if set(given) != set(names):
            return None
        given = [given[name] for name in names]
    given = keras.tree.flatten(given)
    if len(given) != len(op.inputs) or not all(
            isinstance(t, keras.KerasTensor) for t in given):
        return None
    return op, given, node.outputs


def _is_container(op):
    """A layer (not a model) with sublayers that hold weights."""
    return (isinstance(op, keras.layers.Layer)
            and not isinstance(op, keras.Model)
            and len([s for s in op._flatten_layers(include_self=False)
                     if _holds_weights(s)]) >= 2)


def _has_blocks(layer):
    """Whether `layer` holds a list of blocks: two or more direct sublayers
    of one class that are themselves containers of layers with weights."""
    classes = collections.Counter(
        type(sub) for sub in layer._flatten_layers(include_self=False,
                                                   recursive=False)
        if any(_holds_weights(s)
               for s in sub._flatten_layers(include_self=False)))
    return any(count >= 2 for count in classes.values())


def _traced_container(node):
    """A container of blocks, as a functional model of its own calls.

    The one mechanism for layers that call a list of blocks in their
    `call` (KerasHub's `ViTEncoder`, `DeiTEncoder` and encoders built the
    same way): a layer (not a model) holding a list of blocks
    (`_has_blocks`) is looked into by calling its `call` symbolically on
    new inputs, which records the sublayer calls and Keras ops it makes,
    in order, as a functional graph. Outputs that are not computed from
    its inputs (DeiT's empty `all_hidden_states`) are left out of the
    recording, and so are sublayer outputs that are not tensors (a block's
    `None` attention scores, `_record_tensors_only`): the graph falls back
    to the whole call if anything reads them. It is accepted when the
    recording succeeds and its calls hold every weight of the layer
    (nothing is used outside a sublayer call). Otherwise the layer stays
    one call, and so inside one freeze unit.

    Returns:
        `(model, outer argument tensors, outer output tensors it
        computes)`, or None."""
    op = node.operation
    if (not isinstance(op, keras.layers.Layer) or isinstance(op, keras.Model)
            or not _has_blocks(op)):
        return None
    outer = list(node.arguments.keras_tensors)
    fresh = [keras.Input(batch_shape=t.shape, dtype=t.dtype) for t in outer]
    args, kwargs = node.arguments.fill_in(
        {id(t): f for t, f in zip(outer, fresh)})
    subs = op._flatten_layers(include_self=False, recursive=False)
    for sub in subs:
        _record_tensors_only(sub)
    try:
        flat = keras.tree.flatten(op.call(*args, **kwargs))
        kept = [i for i, t in enumerate(flat)
                if isinstance(t, keras.KerasTensor)]
        traced = keras.Model(fresh, [flat[i] for i in kept], name=op.name)
    except Exception:  # not expressible in Keras layers and ops
        traced = None
    if (traced is None or len(flat) != len(node.outputs) or not kept
            or {id(w) for w in traced.weights} != {id(w) for w in op.weights}
            or not _runs_as_recorded(node, traced, kept)):
        return None
    return traced, outer, [node.outputs[i] for i in kept]


def _runs_as_recorded(node, traced, kept):
    """Whether the recording of a container's call runs on zeros and gives
    outputs of the shapes the layer's own call gives. A symbolic call may
    bake a value in (T5Gemma's decoder layer records a mask of length 0,
    and its recording fails when run): the layer then stays one call. A
    layer that does not run on zeros cannot be judged and passes."""
    outer = list(node.arguments.keras_tensors)
    for free in macs.FREE_DIMENSIONS:
        zeros = [keras.ops.zeros(tuple(free if d is None else d
                                       for d in t.shape), dtype=t.dtype)
                 for t in outer]
        args, kwargs = node.arguments.fill_in(
            {id(t): z for t, z in zip(outer, zeros)})
        try:
            expected = keras.tree.flatten(node.operation(*args, **kwargs))
        except (ValueError, TypeError, tf.errors.InvalidArgumentError):
            continue
        try:
            got = keras.tree.flatten(traced(zeros, training=False))
        except (ValueError, TypeError, tf.errors.InvalidArgumentError):
            return False
        return [tuple(g.shape) for g in got] == [
            tuple(expected[i].shape) for i in kept]
    return True


def _record_tensors_only(layer):
    """Lets `layer` be called symbolically when it returns non-tensors
    beside its tensors (a block's `(hidden, None)` when no attention scores
    are asked for): Keras records a call only if every output is a tensor,
    so a symbolic call returns each non-tensor output as a placeholder
    tensor that nothing reads. Calls on real tensors, and layers whose
    outputs are all tensors, are unchanged."""
    if "symbolic_call" not in vars(layer):
        layer.symbolic_call = types.MethodType(_tensors_only_call, layer)


def records_tensors_only(layer):
    """Whether `_record_tensors_only` was applied to `layer` (a loaded
    split model applies it again: `layer_configs`)."""
    return "symbolic_call" in vars(layer)


def _tensors_only_call(layer, *args, **kwargs):
    # keras Layer.symbolic_call is its output spec; Layer.__call__ then
    # records the call (`symbolic_call` is listed in keras_internals;
    # before Keras 3.10 the replacement records it).
    outputs = keras.tree.map_structure(
        lambda x: x if isinstance(x, keras.KerasTensor)
        else keras.KerasTensor((), dtype="float32"),
        layer.compute_output_spec(*args, **kwargs))
    keras_internals.record_symbolic_call(layer, args, kwargs, outputs)
    return outputs


def _check_model(model):
    if not isinstance(model, keras.Model) or not hasattr(model,
                                                         "_nodes_by_depth"):
        if isinstance(model, keras.Sequential) and model._functional:
            return model._functional
        raise ValueError(
            f"split_model needs a functional keras.Model (built with "
            f"keras.Model(inputs, outputs)) or a Sequential with an Input; "
            f"got {type(model).__name__} {getattr(model, 'name', model)!r}."
        )
    for t in model.inputs:
        if len(model.inputs) > 1 and t.name == side_inputs.HIDDEN:
            raise ValueError(
                f"Model '{model.name}' has an input named {t.name!r}, the "
                f"name freezeout_tf reserves for the hidden state; rename "
                f"it."
            )
    return model


def cut_points(model):
    """Names of the layers whose output is a cut point of `model`.

    A cut point is a tensor that every path from the model's input to its
    output passes through; the model's output itself is not listed. Layers
    of nested functional models are listed by their own names.

    Args:
        model: a functional `keras.Model` (with several inputs, cut points
            are those of the hidden state; see the module docstring).

    Returns:
        list of layer names in forward order.

    Example:

    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    >>> y = keras.layers.Conv2D(4, 3, padding="same", name="conv")(x)
    >>> x = keras.layers.Add(name="add")([x, y])
    >>> outputs = keras.layers.Dense(2, name="out")(x)
    >>> cut_points(keras.Model(inputs, outputs))
    ['stem', 'add']
    """
    graph = _Graph(_check_model(model), model.name)
    return [graph.calls[p].op.name
            for p, bypass in enumerate(graph.cuts()) if bypass is None]


def split_model(model, num_units=None, boundaries=None):
    """Splits a functional model into freeze units and a head at its cut
    points, sharing its layers and weights.

    The calls between two consecutive cut points form a *segment*. The
    segment after the last cut point is the head; if it holds no weights,
    the segments before it join it up to the last one that does. A segment
    holding no weights joins the one before it (a unit without weights has
    nothing to freeze). Then:

    * neither option: each segment is one unit;
    * `num_units=N`: consecutive segments are grouped into `N` units of
      about equal forward cost (multiply-accumulates counted as
      `unit_flops` does, attention included; the grouping minimizes the
      sum of squared unit costs);
    * `boundaries=[names]`: the model is cut right after each named layer;
      each must be a cut point before the head.

    With several model inputs, each unit and the head is a model with named
    inputs: `side_inputs.HIDDEN` for the hidden state (all but the first
    unit) and the model inputs it reads; pass the model's input names to
    `FreezeOutModel(..., input_names=...)` (`from_model` does).

    Nested models are looked into. Two distinct layers of one name in
    different nested models (Stable Diffusion 3's VAE encoder and decoder
    each hold an `input_projection`) would make a unit's model hold a name
    twice, which Keras refuses: the later layer is renamed, with the name
    of the model it sits in as a prefix (`decoder_input_projection`).

    Args:
        model: a functional `keras.Model` (or a `Sequential` with an
            `Input`), built. Several inputs become side inputs; several
            outputs (a KerasHub backbone's dict) are returned by the head.
        num_units: how many freeze units to make, at most the number of
            segments.
        boundaries: names of layers right after which to cut, instead of
            `num_units`.

    Returns:
        `(units, head)`: a list of functional `keras.Model`s and one more
        for the head, named `<model>_unit_<i>` and `<model>_head`.

    Raises:
        ValueError: the model is not functional, or has no cut point before
            its last layer with weights; `num_units` is out of range (the
            message names layers that hold several weighted layers but stay
            whole); a boundary names no layer, a layer called more than
            once, a layer whose output is not a cut point (naming the
            tensor that goes around it), or one in the head; or a unit
            would own no weight (boundaries that cut a shared block's calls
            apart). A weight read by several units (an encoder-decoder's
            token embedding, ALBERT's shared block) belongs to the first
            (`freezeout_tf.split.ownership`); a segment holding only such
            weights joins the one before it.

    Example:

    >>> base = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3),
    ...                                    classes=10)
    >>> units, head = split_model(base, num_units=8)
    >>> model = FreezeOutModel(units, head)  # or FreezeOutModel.from_model
    """
    name = model.name
    graph_model = _check_model(model)
    if num_units is not None and boundaries is not None:
        raise ValueError(
            f"Pass num_units or boundaries, not both; got num_units="
            f"{num_units!r} and boundaries={boundaries!r}."
        )
    graph = _Graph(graph_model, name)
    n = len(graph.calls)
    cuts = graph.cuts()
    ends = [p + 1 for p, bypass in enumerate(cuts) if bypass is None]
    if not ends:
        longest = max((b for b in cuts if b is not None),
                      key=lambda b: b[1] - b[0], default=(-1, n))
        around, user = (graph.describe(q) for q in longest)
        raise ValueError(
            f"Model '{name}' has no cut point: no tensor between its "
            f"input and output lies on every path (e.g. {around} feeds "
            f"{user} around everything between them), so it cannot be "
            f"split into a chain of freeze units."
        )

    # Segments are [start, end) ranges of calls.
    starts = [0] + ends
    segments = list(zip(starts, ends + [n]))
    head = segments.pop()
    while not graph.holds_weights(*head) and segments:
        head = (segments.pop()[0], head[1])
    if not segments:
        last = max(i for i, c in enumerate(graph.calls)
                   if getattr(c.op, "weights", None))
        whole = (" (which holds several layers with weights but stays "
                 "whole: its call is not a chain of blocks that could be "
                 "looked into)" if _is_container(graph.calls[last].op)
                 else "")
        raise ValueError(
            f"Model '{name}' has no cut point before its last layer "
            f"holding weights, {graph.describe(last)}{whole}, which the "
            f"head needs; nothing is left for freeze units."
        )

    if boundaries is not None:
        segments = _at_boundaries(graph, boundaries, cuts, head[0])
    else:
        segments = _merge_weightless(graph, segments)
        if num_units is not None:
            segments = _group(graph, segments, num_units)

    parts = segments + [head]
    models = [graph.build(lo, hi, f"{name}_unit_{i}")
              for i, (lo, hi) in enumerate(segments)]
    models.append(graph.build(*head, f"{name}_head"))
    _check_owners(models)
    return models[:-1], models[-1]


def _merge_weightless(graph, segments):
    """Joins a segment with nothing to freeze to the one before it: one
    holding no weights, or only weights an earlier segment holds (a layer
    called again: the first unit to read a weight owns it,
    `freezeout_tf.split.ownership`)."""
    merged = []
    for lo, hi in segments:
        if merged and not graph.holds_new_weights(lo, hi):
            merged[-1] = (merged[-1][0], hi)
        elif merged and not graph.holds_weights(*merged[-1]):
            merged[-1] = (merged[-1][0], hi)  # a weightless first segment
        else:
            merged.append((lo, hi))
    return merged


def _group(graph, segments, num_units):
    """Groups consecutive segments into `num_units` of about equal cost:
    the partition with the least sum of squared group costs."""
    validation.check_positive_int(
        "num_units", num_units,
        f"a positive integer of at most {len(segments)} (the segments of "
        f"this model)",
    )
    if num_units > len(segments):
        whole = [graph.describe(i) for lo, hi in segments
                 for i in range(lo, hi) if _is_container(graph.calls[i].op)]
        note = (f"; these layers hold several layers with weights but stay "
                f"whole (their call is not a chain of blocks that could be "
                f"looked into): {_short_list(whole)}" if whole else "")
        raise ValueError(
            f"num_units must be at most {len(segments)} (the segments "
            f"between this model's cut points that hold weights); got "
            f"{num_units}{note}."
        )
    call_costs = graph.call_costs()
    costs = [sum(call_costs[lo:hi]) for lo, hi in segments]
    m = len(costs)
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[k][j]: least cost of segments[:j] in k groups; cut[k][j]: start of
    # the last group.
    best = [[inf] * (m + 1) for _ in range(num_units + 1)]
    cut = [[0] * (m + 1) for _ in range(num_units + 1)]
    best[0][0] = 0.0
    for k in range(1, num_units + 1):
        for j in range(k, m - (num_units - k) + 1):
            for i in range(k - 1, j):
                value = best[k - 1][i] + float(prefix[j] - prefix[i]) ** 2
                if value < best[k][j]:
                    best[k][j], cut[k][j] = value, i
    bounds, j = [m], m
    for k in range(num_units, 0, -1):
        j = cut[k][j]
        bounds.append(j)
    bounds.reverse()
    return [(segments[a][0], segments[b - 1][1])
            for a, b in zip(bounds[:-1], bounds[1:])]


def _at_boundaries(graph, boundaries, cuts, head_start):
    if isinstance(boundaries, str) or not boundaries:
        raise ValueError(
            f"boundaries must be a non-empty list of layer names; got "
            f"{boundaries!r}."
        )
    cut_names = _short_list(graph.calls[q].op.name
                            for q, b in enumerate(cuts) if b is None)
    ends = set()
    for name in boundaries:
        found = [i for i, c in enumerate(graph.calls) if c.op.name == name]
        if not found:
            raise ValueError(
                f"boundary {name!r}: model '{graph.name}' has no layer of "
                f"that name (nested models are looked into; use the inner "
                f"layer's own name)."
            )
        if len(found) > 1:
            raise ValueError(
                f"boundary {name!r}: the layer is called {len(found)} times "
                f"in model '{graph.name}', so 'right after it' is ambiguous."
            )
        p = found[0]
        if p >= head_start:
            raise ValueError(
                f"boundary {name!r} lies in the head, which starts right "
                f"after {graph.describe(head_start - 1)} (the head runs "
                f"from the last cut point to the output and holds weights)."
            )
        if cuts[p] is not None:
            raise ValueError(
                f"boundary {name!r} is not a cut point: "
                f"{_bypass(graph, cuts[p], p)}. Cut points of "
                f"'{graph.name}': {cut_names}."
            )
        if p + 1 in ends:
            raise ValueError(f"boundary {name!r} is given twice.")
        ends.add(p + 1)
    ends = sorted(ends - {head_start})
    return list(zip([0] + ends, ends + [head_start]))


def _bypass(graph, bypass, p):
    """Why chain call `p`'s output is no cut point, from `cuts()`'s
    `(producer, user)` for it."""
    around, user = (graph.describe(q) for q in bypass)
    if bypass[0] == p:
        return f"it passes several tensors on, read as far as {user}"
    return f"{around} feeds {user} around it"


def _why_not_cut(model, layers):
    """`(layer, reason)` for the first of `layers` (called once each in
    `model`, the chain order) whose output is no cut point, or None."""
    graph = _Graph(_check_model(model), model.name)
    cuts = graph.cuts()
    for layer in layers:
        found = [p for p, c in enumerate(graph.calls[:-1]) if c.op is layer]
        if len(found) == 1 and cuts[found[0]] is not None:
            return layer, _bypass(graph, cuts[found[0]], found[0])
    return None


def _short_list(names, limit=12):
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit
                    else "")


def _check_owners(models):
    """Each freeze unit must own a weight: a weight read by several units
    belongs to the first (`ownership.variable_owners`), so a unit that only
    calls a layer again (a shared block cut apart by `boundaries`) would
    have nothing to freeze, which `variable_owners` refuses, naming it."""
    held = [{id(v) for v in ownership.part_variables(m)}
            for m in models[:-1]]
    if len(set().union(*held)) < sum(map(len, held)):  # a shared weight
        ownership.variable_owners(models, set().union(*held, {
            id(v) for v in ownership.part_variables(models[-1])}))
