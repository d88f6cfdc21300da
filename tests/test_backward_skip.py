"""The core claim, read from the traced graph: a frozen unit costs no
backward compute. In the train step, traced as `fit` traces it after a
`fit` with FreezeOut, the branch of every `If` on a frozen flag (a
predicate computed from the schedule's freeze steps) that runs while the
unit is frozen holds no gradient op, and every gradient op of a unit sits
in a branch that runs only while a unit is active: for a CNN, a KerasHub
transformer and the step with the frozen prefix cached
(`cache_frozen_prefix`).

The test reads properties, not today's op layout: which `If` ops exist and
how the step nests them may change; a frozen branch doing backward work,
or a unit's backward outside any active branch, may not."""

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


def step_graph(model, batch):
    """The train step traced as `fit` traces it (no AutoGraph), for one
    batch: a FuncGraph, whose captures say which state a predicate reads."""
    step = tf.function(model.train_step, autograph=False)
    return step.get_concrete_function(batch).graph


def _reads_freeze_steps(graph, if_op, state):
    """Whether the `If` op's predicate is computed from the schedule's
    freeze steps: a unit's frozen flag (`step >= freeze_steps[u]`), true
    while frozen. Other conds (the cache's) are not classified."""
    captured = {internal.op.name: external
                for external, internal in graph.captures}
    todo, seen = [if_op.inputs[0].op], set()
    while todo:
        op = todo.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        source = captured.get(op.name)
        if source is not None and source is state.freeze_steps.handle:
            return True
        todo.extend(t.op for t in op.inputs)
    return False


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


def assert_frozen_units_cost_no_backward(model, batch):
    graph = step_graph(model, batch)
    library = {f.signature.name: f
               for f in graph.as_graph_def().library.function}
    flags = [op for op in graph.get_operations()
             if op.type in IFS
             and _reads_freeze_steps(graph, op, model.schedule_state)]
    assert len(flags) >= model.num_units  # a backward cond per unit
    # `tf.cond(frozen, frozen_fn, active_fn)`: the then-branch runs while
    # the unit is frozen (with every cond nested in it).
    frozen_fns = _closure(library, [op.get_attr("then_branch").name
                                    for op in flags])
    active_fns = _closure(library, [op.get_attr("else_branch").name
                                    for op in flags])
    names = unit_names(model)
    in_frozen = sorted(f"{n.name} ({n.op}) in {fn}" for fn in frozen_fns
                       for n in library[fn].node_def if is_gradient(n))
    assert not in_frozen, (
        "a frozen branch holds gradient ops:\n" + "\n".join(in_frozen[:20]))
    placed = {}  # unit -> {"active": n, "elsewhere": [op names]}
    functions = [(None, graph.as_graph_def().node)] + [
        (fn, f.node_def) for fn, f in library.items()]
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
        ds = with_example_ids(
            tf.data.Dataset.from_tensor_slices((x, y))).batch(4)
        model.fit(ds, epochs=2, verbose=0, shuffle=False,
                  callbacks=[FreezeOut(t_0=0.5, frozen_from_start=1)])
        return model, next(iter(ds))
    model.fit(x, y, batch_size=4, epochs=2, verbose=0,
              callbacks=[FreezeOut(t_0=0.5)])
    return model, (tf.constant(x[:4]), tf.constant(y[:4]))


def test_cnn_frozen_branches_hold_no_gradient_op():
    model, batch = fit_cnn()
    placed = assert_frozen_units_cost_no_backward(model, batch)
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
    batch = ({n: tf.constant(v[:4]) for n, v in x.items()},
             tf.constant(y[:4]))
    assert_frozen_units_cost_no_backward(model, batch)


def test_cached_step_frozen_branches_hold_no_gradient_op():
    model, batch = fit_cnn(cache=True)
    assert model.prefix_cache.num_cached_units >= 1  # the cache was used
    assert_frozen_units_cost_no_backward(model, batch)


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
    model, batch = fit_cnn()
    with pytest.raises(AssertionError, match="(?s)a frozen branch holds "
                       "gradient ops.*Conv2DBackprop"):
        assert_frozen_units_cost_no_backward(model, batch)
