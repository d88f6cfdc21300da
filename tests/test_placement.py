"""GPU readiness, checked on CPU: every branch of the train step is decided
on the host (freezeout_tf.core.schedule_state, "Host placement")."""

import os
import subprocess
import sys

import keras
import pytest
import tensorflow as tf

from conftest import LOSS, tiny_data, tiny_model
from freezeout_tf import AdaptiveFreeze
from freezeout_tf.core.schedule_state import HOST

CONDS = ("If", "StatelessIf")
# The adaptive criterion's integer state, created on the host.
ADAPTIVE_HOST = ("decided", "seen", "checks", "interval_steps", "target",
                 "interval")


def predicate_ancestry(op):
    """The ops the predicate of the `If` op `op` is computed from, and the
    placeholders (captured tensors) it starts at."""
    ops, placeholders, todo = [], [], [op.inputs[0].op]
    seen = set()
    while todo:
        node = todo.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        if node.type == "Placeholder":
            placeholders.append(node)
            continue
        ops.append(node)
        todo.extend(t.op for t in node.inputs)
        todo.extend(node.control_inputs)
    return ops, placeholders


@pytest.mark.parametrize("criterion", [None, "rank", "pace"])
def test_every_cond_predicate_is_computed_from_host_placed_state(criterion):
    model = tiny_model()
    adaptive = model.adaptive_state
    if criterion is not None:  # as FreezeOut(adaptive=...) installs it
        model.gradient_observers.append(adaptive.observer(
            AdaptiveFreeze(criterion, interval=2), model.schedule_state))
    # AdamW: per-unit conds for the updates and for the weight decay too.
    model.compile(keras.optimizers.AdamW(1e-2, weight_decay=0.1), LOSS)
    model.optimizer.build(model.trainable_variables)
    x, y = tiny_data(n=8)
    step = tf.function(model.train_step, autograph=False)
    graph = step.get_concrete_function((tf.constant(x), tf.constant(y))).graph
    conds = [op for op in graph.get_operations() if op.type in CONDS]
    # A backward branch per unit, an update and a decay branch per unit and
    # for the head.
    assert len(conds) >= 3 * model.num_units + 2 + (criterion is not None)
    captured = {internal.op.name: external
                for external, internal in graph.captures}
    state = model.schedule_state
    host_state = {id(model.batches_taken.value.handle),
                  id(state.freeze_steps.handle)}
    host_state.update(id(getattr(adaptive, name).value.handle)
                      for name in ADAPTIVE_HOST)
    for cond in conds:
        ops, placeholders = predicate_ancestry(cond)
        assert ops, cond.name
        for op in ops:  # the requested placement, as traced
            if op.type == "ReadVariableOp" and not op.device:
                # TensorFlow clears the device scope of a variable read: it
                # runs where the variable lives (checked below).
                continue
            assert tf.DeviceSpec.from_string(op.device) == \
                tf.DeviceSpec.from_string(HOST), (cond.name, op.name,
                                                  op.type, op.device)
        # Made from the clock and the freeze steps only, both on the host.
        sources = {id(captured[p.name]) for p in placeholders}
        assert sources and sources <= host_state, cond.name


def test_host_flags_match_the_schedule():
    model = tiny_model()
    state = model.schedule_state
    state.freeze_prefix(2)
    model.batches_taken.assign(5)
    assert [bool(f) for f in state.frozen_flags()] == [True, True,
                                                       False, False]
    assert bool(state.frozen(5, 1)) and not bool(state.frozen(5, 2))
    assert int(state.step()) == 5


def test_schedule_variables_stay_on_the_host_where_the_model_is_built():
    """A model built under another device (here a second logical CPU,
    standing in for a GPU) keeps its clock and freeze steps on the host and
    its weights on that device (a fresh process: logical devices must be
    set before TensorFlow starts)."""
    worker = os.path.join(os.path.dirname(__file__), "_placement_worker.py")
    out = subprocess.run([sys.executable, worker], capture_output=True,
                         text=True, timeout=300, cwd=os.path.dirname(
                             os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    devices = dict(line.split(" ", 1) for line in out.stdout.splitlines()
                   if line.startswith(("clock ", "freeze_steps ", "kernel ",
                                        "adaptive.")))
    assert devices["clock"].endswith("/device:CPU:0"), devices
    assert devices["freeze_steps"].endswith("/device:CPU:0"), devices
    assert devices["kernel"].endswith("/device:CPU:1"), devices
    for name in ADAPTIVE_HOST:
        assert devices[f"adaptive.{name}"].endswith("/device:CPU:0"), devices
