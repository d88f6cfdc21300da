"""Side inputs: tensors a freeze unit reads besides the hidden state.

A chain of freeze units passes one tensor, the *hidden state*, from each
unit to the next. Transformers need more: every encoder block reads the
padding mask, an embedding unit reads token and segment ids. Those tensors
come from the model's inputs and are handed, unchanged and never
differentiated, to each unit that names them.

The convention (docs/design.md, "Side inputs"):

* A model with side inputs has several named inputs (`input_names`), fed as
  a dict (or as a list in that order) to `fit`, `evaluate` and `predict`.
* Each freeze unit and the head is then a functional `keras.Model` whose
  inputs are named: the one named `HIDDEN` receives the previous unit's
  output, every other one the model input of the same name. The first unit
  has no `HIDDEN` input: it starts the chain from the model's inputs.
* A tensor made once and read beside the hidden state by several later
  blocks (DeBERTa's relative embeddings) is *carried*: the parts after the
  one that makes it take it as an input named `HIDDEN_<j>`, and each part
  that passes it on returns a dict by input name (`HIDDEN` and those).
* A model with one plain input has no side inputs, and its units take the
  hidden state as their only argument, as before; unless the split needs
  them (a mask computed from it, ESM's; a carried tensor): then its one
  input is named as above.
"""

import keras

__all__ = ["HIDDEN", "arguments", "check_side_inputs", "is_chain_name",
           "part_input_names", "side_values", "zero_side_inputs"]

# The input name that carries the hidden state into a unit.
HIDDEN = "freezeout_hidden"


def part_input_names(part):
    """Names of the inputs of a unit or head (a functional model), in order;
    `None` for a layer without named inputs."""
    inputs = getattr(part, "inputs", None)
    if not isinstance(part, keras.Model) or not inputs:
        return None
    return tuple(t.name for t in inputs)


def check_side_inputs(parts, input_names):
    """Checks that units and head follow the side-input convention.

    Args:
        parts: the freeze units, then the head.
        input_names: the model's input names, or None for a single plain
            input.

    Returns:
        per part, the tuple of its input names, or None (plain call).

    Raises:
        ValueError: naming the part and what is wrong.
    """
    if input_names is None:
        return [None] * len(parts)
    if isinstance(input_names, str) or not input_names:
        raise ValueError(
            f"input_names must be a non-empty list of the model's input "
            f"names; got {input_names!r}."
        )
    input_names = list(input_names)
    if HIDDEN in input_names or len(set(input_names)) != len(input_names):
        raise ValueError(
            f"input_names must be distinct and must not use the reserved "
            f"name {HIDDEN!r}; got {input_names!r}."
        )
    names = []
    for i, part in enumerate(parts):
        label = "the head" if i == len(parts) - 1 else f"unit {i}"
        own = part_input_names(part)
        if own is None:
            raise ValueError(
                f"With input_names, each unit and the head must be a "
                f"functional keras.Model with named inputs; {label} is "
                f"{type(part).__name__} {part.name!r}."
            )
        unknown = [n for n in own if not is_chain_name(n)
                   and n not in input_names]
        if unknown:
            raise ValueError(
                f"{label} ({part.name!r}) has inputs {unknown} that are "
                f"neither {HIDDEN!r} nor one of input_names {input_names}."
            )
        if (i == 0) == (HIDDEN in own):
            want = ("must not take" if i == 0 else "must take")
            raise ValueError(
                f"{label} ({part.name!r}) {want} an input named {HIDDEN!r} "
                f"(the first unit starts the chain from the model's inputs; "
                f"every later part receives the hidden state); its inputs "
                f"are {list(own)}."
            )
        names.append(own)
    return names


def side_values(inputs, input_names):
    """The model's inputs as a dict by name (`None` without side inputs).

    Args:
        inputs: what `fit`/`predict` hand the model: a dict by name, or a
            list or tuple in the order of `input_names`.
        input_names: the model's input names, or None.
    """
    if input_names is None:
        return None
    if isinstance(inputs, dict):
        missing = [n for n in input_names if n not in inputs]
        if missing:
            raise ValueError(
                f"The model's inputs are {list(input_names)}; the data has "
                f"no {missing} (it has {sorted(inputs)})."
            )
        return {n: inputs[n] for n in input_names}
    if isinstance(inputs, (list, tuple)) and len(inputs) == len(input_names):
        return dict(zip(input_names, inputs))
    if len(input_names) == 1 and not isinstance(inputs, (list, tuple)):
        return {input_names[0]: inputs}  # one input, given as it is
    raise ValueError(
        f"The model takes {len(input_names)} inputs {list(input_names)}, as "
        f"a dict by name or a list in that order; got "
        f"{type(inputs).__name__}."
    )


def is_chain_name(name):
    """Whether an input name is the hidden state's (`HIDDEN`) or a carried
    tensor's (`HIDDEN` + `_<j>`: `freezeout_tf.split.functional`), the inputs a
    part takes from the part before it.

    Example:

    >>> is_chain_name(HIDDEN), is_chain_name(HIDDEN + "_0")
    (True, True)
    >>> is_chain_name("padding_mask")
    False
    """
    return name == HIDDEN or (name.startswith(HIDDEN + "_")
                              and name[len(HIDDEN) + 1:].isdigit())


def arguments(names, hidden, side):
    """What to call a part with: the hidden state alone (`names` None), or
    a dict of its named inputs. `hidden` is the previous part's output: one
    tensor, or a dict by input name when it passes carried tensors on.

    Example:

    >>> arguments(None, "h", None)
    'h'
    >>> arguments((HIDDEN, "padding_mask"), "h", {"padding_mask": "m",
    ...                                          "token_ids": "t"})
    {'freezeout_hidden': 'h', 'padding_mask': 'm'}
    """
    if names is None:
        return hidden
    if not isinstance(hidden, dict):
        hidden = {HIDDEN: hidden}
    return {n: hidden[n] if is_chain_name(n) else side[n] for n in names}


def zero_side_inputs(parts, input_names, shapes=None, length=32):
    """Zeros for one example of each model input, for counting costs.

    Args:
        parts: the freeze units and the head (functional models).
        input_names: the model's input names.
        shapes: optional dict of shapes without the batch dimension, by
            input name; else each input's declared shape.
        length: stands in for a `None` dimension (a sequence length).

    Returns:
        dict of tensors by input name, in each input's declared dtype.
    """
    specs = {}
    for part in parts:
        for t in part.inputs:
            specs.setdefault(t.name, t)
    values = {}
    for name in input_names:
        spec = specs[name]
        shape = (shapes or {}).get(name, tuple(spec.shape)[1:])
        shape = tuple(length if d is None else d for d in shape)
        values[name] = keras.ops.zeros((1,) + shape, dtype=spec.dtype)
    return values
