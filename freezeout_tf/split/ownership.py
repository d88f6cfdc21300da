"""Which part (freeze unit or head) owns each trained variable.

Parts share layers: a causal LM's `ReversibleEmbedding` is called in unit 0
(the token lookup) and in the head (the output projection). So a variable
belongs to a part by the calls that *read* it, not by the layers a part
holds:

* A variable held by the layers of one part only belongs to it (no probe).
* A variable held by the layers of several parts belongs to the parts that
  read it, found generically: each such part runs once, eagerly, on zero
  inputs of batch 1 under a `tf.GradientTape`, which records the variables
  read. An untied reversible
  embedding (Llama 3: `embeddings` in the lookup, `reverse_embeddings` in
  the projection) so splits by variable.
* Read by one freeze unit and the head (a tied embedding: GPT-2, Gemma):
  `tied_owner="first"` (default) gives it to the unit, so it freezes with
  the bottom of the network, as fine-tuning recipes (LoRA, layer freezing)
  leave embeddings fixed, and the frozen prefix's backward stays
  skippable; the head's gradient of it stops when the unit freezes.
  `tied_owner="head"` gives it to the head, so it trains to the end; the
  lookup's gradient then needs the hidden-state gradient through every
  block, so frozen units still pass their input gradient down (only their
  weight gradients are skipped).
* Read by several freeze units (an encoder-decoder's token embedding,
  read by the encoder's lookup, the decoder's lookup and the output
  projection; ALBERT's one shared block): the first unit that reads it
  owns it, the later ones read it as the head reads a tied embedding. Its
  owner freezes before them, so no unit updates it after that. A unit
  that would then own nothing (a shared block's later call cut off on its
  own) is refused: it would have nothing to freeze.

A part's gradient of a variable it reads but does not own (a *foreign*
read) is added to the owner's gradient by `FreezeOutModel`'s train step.
"""

from typing import List, NamedTuple

import keras
import tensorflow as tf

from freezeout_tf import validation
from freezeout_tf.core import macs
from freezeout_tf.validation import TIED_OWNERS  # variable_owners' choices

__all__ = ["Ownership", "TIED_OWNERS", "part_variables", "read_by",
           "set_trained", "trained_flags", "variable_owners"]


class Ownership(NamedTuple):
    """`variable_owners`' answer, per part (the freeze units, then the head).

    Attributes:
        owned: for each part, the variables it owns.
        foreign: for each part, the variables it reads but another part
            owns (their gradients go to the owner).
    """

    owned: List[list]
    foreign: List[list]


def part_variables(part):
    """The variables of `part`'s layers that can be trained, in order, each
    once. `layer._trainable_variables` keeps a variable even after
    `layer.trainable = False` (which the FreezeOut callback sets on frozen
    units), so the list never changes during a run.

    Example:

    >>> part = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> [v.name for v in ownership.part_variables(part)]
    ['kernel', 'bias']
    """
    seen, variables = set(), []
    for layer in part._flatten_layers(include_self=True):
        for v in layer._trainable_variables:
            if id(v) not in seen:
                seen.add(id(v))
                variables.append(v)
    return variables


def trained_flags(parts, trained):
    """For each part, whether each of its `part_variables` is in `trained`
    (a list of variables): what a saved model records, as Keras saves no
    variable's `trainable` flag."""
    ids = {id(v) for v in trained}
    return [[id(v) in ids for v in part_variables(p)] for p in parts]


def set_trained(parts, flags):
    """Sets each of the parts' `part_variables` trainable as `flags` (from
    `trained_flags`) says, before a loaded model fixes what it trains.
    Nothing without flags (a model saved before they were recorded).

    Raises:
        ValueError: the parts do not have the variables the flags count.
    """
    if flags is None:
        return
    for index, (part, part_flags) in enumerate(zip(parts, flags)):
        variables = part_variables(part)
        if len(variables) != len(part_flags):
            raise ValueError(
                f"Part {index} ({part.name!r}) has {len(variables)} "
                f"variables, the saved model {len(part_flags)}.")
        for v, flag in zip(variables, part_flags):
            v.trainable = flag


def _zeros_for(part, free):
    inputs = []
    for t in part.inputs:
        shape = tuple(free if d is None else d for d in t.shape[1:])
        inputs.append(keras.ops.zeros((1,) + shape, dtype=t.dtype))
    return inputs[0] if len(inputs) == 1 else inputs


def read_by(part, variables):
    """Ids of those of `variables` that `part` reads.

    Runs `part` (a functional model) once, eagerly, on zeros of batch 1
    (a `None` dimension as `macs.with_free_dimension` chooses), under a
    `tf.GradientTape` that records the variables read: which ones is
    decided by the ops run, not by the zero values. The tape records the
    TensorFlow variables created trainable (a Keras variable's `trainable`
    set later, as LoRA does on a kernel, does not change that); under a
    distribution strategy it may record a replica's component.

    Args:
        part: a functional `keras.Model` (a freeze unit or the head).
        variables: Keras variables to look for.

    Returns:
        set of `id(v)` of the variables read.

    Example:

    >>> dense, other = keras.layers.Dense(2), keras.layers.Dense(2)
    >>> part = keras.Sequential([keras.Input((3,)), dense])
    >>> other.build((None, 3))
    >>> ownership.read_by(part, [dense.kernel, other.kernel]) == {
    ...     id(dense.kernel)}
    True
    """
    def probe(free):
        with tf.GradientTape() as tape:
            part(_zeros_for(part, free), training=False)
        return {id(w) for w in tape.watched_variables()}

    read = macs.with_free_dimension(probe)
    return {id(v) for v in variables
            if read.intersection(_tf_variable_ids(v))}


def _tf_variable_ids(variable):
    """Ids of the TensorFlow variable behind a Keras variable, and of its
    per-replica components under a distribution strategy."""
    value = variable.value
    return {id(value)} | {id(c) for c in getattr(value, "values", ())}


def variable_owners(parts, trained, tied_owner="first"):
    """The owner of each trained variable and each part's foreign reads.

    Args:
        parts: the freeze units then the head (Keras layers or models).
        trained: set of ids of the variables FreezeOut trains.
        tied_owner: one of `TIED_OWNERS`, for a variable read by one unit
            and the head.

    Returns:
        An `Ownership`: for each part, the list of its variables (`owned`)
        and the list of the variables it reads but another part owns
        (`foreign`), each in `part_variables` order.

    Raises:
        ValueError: `tied_owner` is not allowed, or a freeze unit would own
            no variable, each one it reads belonging to an earlier unit.

    Example:

    >>> shared = keras.layers.Dense(4)  # called by the unit and the head
    >>> unit = keras.Sequential([keras.Input((4,)), shared])
    >>> head = keras.Sequential([keras.Input((4,)), shared,
    ...                          keras.layers.Dense(2)])
    >>> trained = {id(v) for v in unit.weights + head.weights}
    >>> owners = ownership.variable_owners([unit, head], trained)
    >>> [len(o) for o in owners.owned], [len(f) for f in owners.foreign]
    ([2, 2], [0, 2])
    """
    validation.check_tied_owner(tied_owner)
    head = len(parts) - 1
    held = [[v for v in part_variables(p) if id(v) in trained]
            for p in parts]
    holders = {}
    for index, variables in enumerate(held):
        for v in variables:
            holders.setdefault(id(v), []).append(index)
    shared = {k for k, where in holders.items() if len(where) > 1}
    readers = {k: [index] for k, (index, *_) in holders.items()}
    if shared:
        for k in shared:
            readers[k] = []
        for index, variables in enumerate(held):
            candidates = [v for v in variables if id(v) in shared]
            if candidates:
                for k in read_by(parts[index], candidates):
                    readers[k].append(index)
    owner = {}
    for variables in held:
        for v in variables:
            if id(v) in owner:
                continue
            where = readers[id(v)] or holders[id(v)][:1]
            owner[id(v)] = (head if tied_owner == "head" and head in where
                            else where[0])
    owned = [[] for _ in parts]
    foreign = [[] for _ in parts]
    placed = set()
    for index, variables in enumerate(held):
        for v in variables:
            if owner[id(v)] == index and id(v) not in placed:
                owned[index].append(v)
                placed.add(id(v))
            elif index in readers[id(v)] and owner[id(v)] != index:
                foreign[index].append(v)
    for index in range(head):
        earlier = [v for v in foreign[index] if owner[id(v)] < index]
        if earlier and not owned[index]:
            raise ValueError(
                f"Unit {index} owns no variable: each one it reads "
                f"({', '.join(v.path for v in earlier[:4])}) belongs to "
                f"unit {owner[id(earlier[0])]}, the first unit that reads "
                f"it, so unit {index} would have nothing to freeze. Keep "
                f"the layers that read them in one unit."
            )
    return Ownership(owned=owned, foreign=foreign)
