"""The core claim, read from the traced graph: a frozen unit costs no
backward compute. In the train function Keras traces for `fit`, the branch
of a unit's backward `If` that runs while the unit is frozen holds no
gradient op, and every gradient op of a unit sits in a branch that runs
only while it is active: for a CNN, a KerasHub transformer and the step
with the frozen prefix cached (`cache_frozen_prefix`).

The test reads properties, not today's op layout: which `If` ops exist and
how the step nests them may change; a frozen branch doing backward work,
or a unit's backward outside any active branch, may not."""

import inspect
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tf_with
from hub_models import bert_classifier, text_data
from freezeout_tf import FreezeOut, FreezeOutModel, with_example_ids
from freezeout_tf.core import model as model_module

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
IFS = ("If", "StatelessIf")
# Op types only a gradient makes (besides the tape's name scope, below).
GRADIENT_TYPES = re.compile(r"Backprop|Grad$|GradV\d$|GradGrad$")


def train_graph(model):
    """The GraphDef of the train function `fit` traced (Keras keeps the
    tf.function in the closure of `model.train_function`)."""
    fn = inspect.getclosurevars(model.train_function).nonlocals[
        "multi_step_on_iterator"]
    concrete = fn._list_all_concrete_functions()
    assert len(concrete) == 1, "one trace for the whole run"
    return concrete[0].graph.as_graph_def()


def _called(node):
    """Names of the functions a node calls (If branches, PartitionedCall)."""
    names = []
    for value in node.attr.values():
        if value.HasField("func"):
            names.append(value.func.name)
        names.extend(f.name for f in value.list.func)
    return names


def _closure(library, names):
    """The functions `names` run, with every function they call."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen or name not in library:
            continue
        seen.add(name)
        for node in library[name].node_def:
            todo.extend(_called(node))
    return seen


def is_gradient(node):
    return (node.name.startswith("gradient_tape/")
            or "/gradient_tape/" in node.name
            or bool(GRADIENT_TYPES.search(node.op)))


def unit_names(model):
    """For each unit, the names of its layers that no other part has (the
    tape names a gradient op after the forward op's layer scopes)."""
    parts = list(model.freeze_units) + [model.head]
    names = [{layer.name for layer in part._flatten_layers()
              if not isinstance(layer, keras.layers.InputLayer)}
             for part in parts]
    own = [n - set().union(*(o for j, o in enumerate(names) if j != i))
           for i, n in enumerate(names)]
    flat = set().union(*own)
    # A scope `x_1` is layer `x` uniquified, or a layer named `x_1`: names
    # that could be read either way attribute nothing.
    clash = {n for a in flat for b in flat if a != b
             and re.fullmatch(re.escape(a) + r"(_\d+)+", b) for n in (a, b)}
    own = [n - clash for n in own]
    assert all(own), own
    return own[:-1]


def unit_of(op_name, names):
    """The unit whose layer scope the gradient op's name passes through."""
    parts = op_name.split("/")
    for i, own in enumerate(names):
        for name in own:
            pattern = re.compile(re.escape(name) + r"(_\d+)*")
            if any(pattern.fullmatch(p) for p in parts):
                return i
    return None


def assert_frozen_units_cost_no_backward(model):
    graph = train_graph(model)
    library = {f.signature.name: f for f in graph.library.function}
    ifs = [n for f in library.values() for n in f.node_def if n.op in IFS]
    ifs += [n for n in graph.node if n.op in IFS]
    # Every If of the step branches on a frozen flag (`tf.cond(frozen,
    # frozen_fn, active_fn)`): its then-branch runs while frozen.
    frozen_fns = _closure(library, [n.attr["then_branch"].func.name
                                    for n in ifs])
    active_fns = _closure(library, [n.attr["else_branch"].func.name
                                    for n in ifs])
    names = unit_names(model)
    in_frozen = sorted(f"{n.name} ({n.op}) in {fn}" for fn in frozen_fns
                       for n in library[fn].node_def if is_gradient(n))
    assert not in_frozen, (
        "a frozen branch holds gradient ops:\n" + "\n".join(in_frozen[:20]))
    placed = {}  # unit -> {"active": n, "elsewhere": [op names]}
    functions = [(None, graph.node)] + [(fn, f.node_def)
                                        for fn, f in library.items()]
    for fn, nodes in functions:
        for node in nodes:
            if not is_gradient(node):
                continue
            unit = unit_of(node.name, names)
            if unit is None:
                continue
            where = "active" if fn in active_fns - frozen_fns else "elsewhere"
            placed.setdefault(unit, {"active": [], "elsewhere": []})[
                where].append(f"{node.name} ({node.op}) in {fn}")
    for unit in range(model.num_units):
        got = placed.get(unit, {"active": [], "elsewhere": []})
        # Each unit's backward is in the graph (the check sees something) ...
        assert got["active"], f"unit {unit}: no gradient op in a branch"
        # ... and only in branches that run while the unit is active.
        assert not got["elsewhere"], (
            f"unit {unit}'s gradient ops run unconditionally:\n"
            + "\n".join(got["elsewhere"][:20]))
    return placed


def named_cnn(num_units=3, seed=0):
    """Conv + BN + ReLU units with names of their own (u0_conv, ...)."""
    keras.utils.set_random_seed(seed)
    units = [keras.Sequential([
        keras.layers.Conv2D(4, 3, padding="same", use_bias=False,
                            name=f"u{i}_conv"),
        keras.layers.BatchNormalization(name=f"u{i}_bn"),
        keras.layers.ReLU(name=f"u{i}_relu"),
    ], name=f"u{i}") for i in range(num_units)]
    head = keras.Sequential([keras.layers.GlobalAveragePooling2D(name="pool"),
                             keras.layers.Dense(3, name="logits")],
                            name="head")
    model = FreezeOutModel(units, head)
    model.build((None, 8, 8, 3))
    return model


def cnn_data(n=16):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, 8, 8, 3)).astype("float32"),
            rng.integers(0, 3, n).astype("int32"))


def fit_cnn(cache=False):
    model = named_cnn()
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), LOSS)
    x, y = cnn_data()
    if cache:
        model.cache_frozen_prefix(len(x), max_bytes=2**20)
        ds = with_example_ids(tf.data.Dataset.from_tensor_slices((x, y)))
        model.fit(ds.batch(4), epochs=2, verbose=0, shuffle=False,
                  callbacks=[FreezeOut(t_0=0.5, frozen_from_start=1)])
    else:
        model.fit(x, y, batch_size=4, epochs=2, verbose=0,
                  callbacks=[FreezeOut(t_0=0.5)])
    return model


def test_cnn_frozen_branches_hold_no_gradient_op():
    model = fit_cnn()
    placed = assert_frozen_units_cost_no_backward(model)
    # The CNN's kernels' gradients are among them.
    for unit in range(model.num_units):
        assert any("Conv2DBackpropFilter" in op
                   for op in placed[unit]["active"]), unit


def test_transformer_frozen_branches_hold_no_gradient_op():
    model = FreezeOutModel.from_model(bert_classifier(num_layers=2))
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    x, y = text_data(8)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0,
              callbacks=[FreezeOut(t_0=0.5)])
    assert model.num_units >= 2
    assert_frozen_units_cost_no_backward(model)


def test_cached_step_frozen_branches_hold_no_gradient_op():
    model = fit_cnn(cache=True)
    assert model.prefix_cache.num_cached_units >= 1  # the cache was used
    assert_frozen_units_cost_no_backward(model)


def full_backward_times_zero(pred, true_fn, false_fn, name=None):
    """`tf.cond(frozen, frozen_fn, active_fn)` made to run the active branch
    while frozen and multiply its results by zero: the same values, the
    full backward's cost (issue 34's mutation)."""
    def times_zero():
        return tf.nest.map_structure(lambda t: t * tf.zeros((), t.dtype),
                                     false_fn())
    return tf.cond(pred, times_zero, false_fn, name=name)


def test_the_check_fails_when_the_frozen_branch_runs_the_backward(
        monkeypatch):
    monkeypatch.setattr(model_module, "tf",
                        tf_with(cond=full_backward_times_zero))
    model = fit_cnn()
    with pytest.raises(AssertionError, match="(?s)a frozen branch holds "
                       "gradient ops.*Conv2DBackprop"):
        assert_frozen_units_cost_no_backward(model)
