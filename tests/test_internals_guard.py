"""The guard of the private internals (freezeout_tf._internals:
keras_internals, tf_internals): its behavioural probe, its version ranges,
and its list of every private name the package uses."""

import ast
import pathlib
import re

import keras
import pytest
import tensorflow as tf
from packaging.requirements import Requirement

from conftest import tf_with
from freezeout_tf._internals import keras_internals, tf_internals

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "freezeout_tf"
GUARDS = {"keras_internals": keras_internals, "tf_internals": tf_internals}
# Import paths whose modules are not public API.
PRIVATE_MODULES = ("tensorflow.python", "keras.src",
                   "tensorflow_datasets.core")


@pytest.fixture
def unchecked(monkeypatch):
    monkeypatch.setattr(keras_internals, "_checked", False)


def test_probe_finds_the_hooks_routing_updates_on_this_keras():
    assert keras_internals.update_routing_problems() == []


def test_probe_raises_when_apply_bypasses_the_update_hook(monkeypatch,
                                                          unchecked):
    # As if Keras' apply() called update_step itself instead of going
    # through _distributed_tf_update_step.
    def bypass(self, grads, variables, learning_rate):
        for grad, var in zip(grads, variables):
            self.update_step(grad, var, learning_rate)

    monkeypatch.setattr(keras.optimizers.SGD, "_backend_update_step", bypass)
    with pytest.raises(keras_internals.KerasInternalsError,
                       match=rf"Keras {keras.__version__}: optimizer\.apply "
                       "never called FreezeOut's _distributed_tf_update_step "
                       "hook; a frozen variable moved"):
        keras_internals.check()
    assert not keras_internals._checked


def test_probe_raises_when_weight_decay_bypasses_its_hook(monkeypatch,
                                                          unchecked):
    # As if Keras decayed the weights without calling _apply_weight_decay
    # on the instance (here: the class's own method, not FreezeOut's hook).
    plain = keras.optimizers.SGD._backend_apply_gradients

    def decay_elsewhere(self, grads, variables):
        keras.optimizers.SGD._apply_weight_decay(self, variables)
        return plain(self, grads, variables)

    monkeypatch.setattr(keras.optimizers.SGD, "_backend_apply_gradients",
                        decay_elsewhere)
    with pytest.raises(keras_internals.KerasInternalsError,
                       match="a frozen variable moved.*_apply_weight_decay"):
        keras_internals.check()


def test_probe_raises_when_the_hooks_skip_every_update(monkeypatch,
                                                       unchecked):
    monkeypatch.setattr(keras.optimizers.SGD, "_backend_update_step",
                        lambda self, grads, variables, lr: None)
    monkeypatch.setattr(keras_internals, "_PROBE",
                        dict(keras_internals._PROBE, weight_decay=None))
    with pytest.raises(keras_internals.KerasInternalsError,
                       match="an active variable did not move"):
        keras_internals.check()


def _pyproject_specifiers():
    # The [project] dependencies list, read without tomllib (Python 3.11+;
    # the project supports 3.10).
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.M | re.S)
    found = {}
    for line in re.findall(r'^\s*"([^"]+)",?\s*$', block.group(1), re.M):
        req = Requirement(line)
        found[req.name] = req.specifier
    return found


def test_supported_ranges_are_pyprojects():
    specs = _pyproject_specifiers()
    assert specs["keras"] == Requirement(
        "keras" + keras_internals.SUPPORTED_KERAS).specifier
    assert specs["tensorflow"] == Requirement(
        "tensorflow" + keras_internals.SUPPORTED_TENSORFLOW).specifier
    assert keras_internals.TESTED_KERAS.startswith(
        keras_internals.SUPPORTED_KERAS + " ")


def _keras_hub_specifiers():
    # keras-hub in each extra of pyproject.toml that asks for it.
    text = (ROOT / "pyproject.toml").read_text()
    return {extra: Requirement(req).specifier for extra, req in re.findall(
        r'^(\w+) = \[.*"(keras-hub[^"]*)"', text, re.M)}


def test_oldest_ci_lane_installs_the_lower_bounds():
    pins = {}
    for line in (ROOT / ".ci" / "constraints-oldest.txt").read_text(
            ).splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            pins[req.name] = next(iter(req.specifier)).version
    specs = _pyproject_specifiers()
    hub = _keras_hub_specifiers()
    assert set(hub) == {"test", "hub", "notebooks"}
    assert len(set(hub.values())) == 1, hub  # one keras-hub range
    specs["keras-hub"] = hub["hub"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    shown = {"tensorflow": "TensorFlow", "keras": "Keras",
             "keras-hub": "keras-hub"}
    for name in ("keras", "tensorflow", "keras-hub"):
        lower = next(s.version for s in specs[name] if s.operator == ">=")
        assert pins[name].startswith(lower), (name, pins[name], lower)
        # The README names the oldest releases CI tests, and the ranges.
        assert f"{shown[name]} {pins[name]}" in readme, name
    assert "`tensorflow" + keras_internals.SUPPORTED_TENSORFLOW + "`" in readme
    assert "`keras" + keras_internals.SUPPORTED_KERAS + "`" in readme
    assert f"`keras-hub{hub['hub']}`" in readme
    assert pins["keras"] in keras_internals.TESTED_KERAS


def test_guard_error_names_the_supported_range(monkeypatch, unchecked):
    monkeypatch.setattr(keras_internals, "problems",
                        lambda: ["x.y is missing"])
    with pytest.raises(keras_internals.KerasInternalsError) as err:
        keras_internals.check()
    assert f"Supported Keras: {keras_internals.SUPPORTED_KERAS}" in str(
        err.value)
    assert f"keras{keras_internals.SUPPORTED_KERAS}" in str(err.value)


def test_the_check_leaves_pythons_random_sequence_as_it_was(unchecked):
    # Its sample layers draw default seeds; drawn from the caller's
    # sequence they shifted the dropout seeds of a model loaded after the
    # first FreezeOutModel of a process (issue 24's drifting resume).
    import random
    random.seed(7)
    want = [random.random() for _ in range(3)]
    random.seed(7)
    keras_internals.check()
    assert keras_internals._checked
    assert [random.random() for _ in range(3)] == want


def _project_private_names(trees):
    """Private names the package defines itself (functions, classes,
    module and class constants, `self._x` attributes)."""
    names = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            targets = (node.targets if isinstance(node, ast.Assign) else
                       [node.target] if isinstance(node, ast.AnnAssign)
                       else [])
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        names.add(sub.id)
                    elif (isinstance(sub, ast.Attribute)
                          and isinstance(sub.value, ast.Name)
                          and sub.value.id in ("self", "cls")):
                        names.add(sub.attr)
    return names


# A named tuple's own methods: public API with a leading underscore (so
# that they cannot clash with a field's name), not a framework internal.
_NAMED_TUPLE_API = frozenset({"_replace", "_asdict", "_fields", "_make"})


def _is_private(attr):
    return attr.startswith("_") and attr not in _NAMED_TUPLE_API and (
        attr == "__internal__" or not attr.endswith("__"))


def private_uses():
    """`(module, name, line)` of each private framework name the package
    uses: an attribute `x._name` the package does not define itself (or any
    `super()._name`: overriding a framework's private method), `__internal__`,
    and imports from non-public framework modules."""
    trees = {path: ast.parse(path.read_text(), str(path))
             for path in sorted(PACKAGE.rglob("*.py"))}
    own = _project_private_names(trees)
    uses = []
    for path, tree in trees.items():
        module = path.stem
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                via_super = (isinstance(node.value, ast.Call)
                             and getattr(node.value.func, "id", "") == "super")
                if via_super or node.attr not in own:
                    uses.append((module, node.attr, node.lineno))
            elif (isinstance(node, ast.ImportFrom) and node.module
                  and node.module.startswith(PRIVATE_MODULES)):
                uses.append((module, node.module, node.lineno))
            elif isinstance(node, ast.Import):
                uses.extend((module, alias.name, node.lineno)
                            for alias in node.names
                            if alias.name.startswith(PRIVATE_MODULES))
    return uses


def test_every_private_framework_name_is_listed_in_a_guard_module():
    listed = {}
    for guard, mod in GUARDS.items():
        for name, (modules, breaks) in mod.PRIVATE_NAMES.items():
            assert breaks, (guard, name)
            listed.setdefault(name, set()).update(modules)
    missing = [
        f"{module}.py:{line} (in freezeout_tf/) uses the private name "
        f"{name!r}: add {module!r} to its entry in PRIVATE_NAMES of "
        f"freezeout_tf/_internals/keras_internals.py (Keras) or "
        f"tf_internals.py "
        f"(TensorFlow, tensorflow-datasets), or add an entry {name!r}: "
        f"(({module!r},), 'what breaks if it changes')"
        for module, name, line in private_uses()
        if module not in GUARDS and module not in listed.get(name, ())
    ]
    assert not missing, "\n".join(missing)


def test_the_scan_sees_a_private_name():
    # The scan itself: a name listed nowhere would be reported.
    uses = {(module, name) for module, name, _ in private_uses()}
    assert ("functional", "_nodes_by_depth") in uses
    assert ("optimizer", "tensorflow.python.distribute") in uses
    assert ("model", "_maybe_symbolic_build") in uses  # via super()


def test_every_listed_name_is_used_where_listed():
    # The list does not go stale either: each scanned entry is still used.
    uses = {(module, name) for module, name, _ in private_uses()}
    for mod in GUARDS.values():
        for name, (modules, _) in mod.PRIVATE_NAMES.items():
            if name.startswith("("):
                continue  # not an attribute or module: not scanned
            for module in modules:
                assert (module, name) in uses, (name, module)


def test_guard_detects_a_renamed_parameter(monkeypatch, unchecked):
    # As if Keras renamed _var_key's parameter: the signature check itself
    # must see it (issue 34: problems() was only ever replaced wholesale).
    monkeypatch.setattr(keras.optimizers.SGD, "_var_key",
                        lambda self, var: id(var), raising=False)
    assert keras_internals.problems() == [
        "optimizer._var_key('var',) does not take ('variable',)"]
    with pytest.raises(keras_internals.KerasInternalsError,
                       match=rf"Keras {keras.__version__}: optimizer\._var_key"
                       r"\('var',\) does not take \('variable',\)"):
        keras_internals.check()


def test_guard_detects_a_missing_attribute(monkeypatch, unchecked):
    # A stand-in Keras object: MultiHeadAttention whose __init__ no longer
    # sets _attention_axes.
    class WithoutAxes(keras.layers.MultiHeadAttention):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            object.__delattr__(self, "_attention_axes")

    monkeypatch.setattr(keras.layers, "MultiHeadAttention", WithoutAxes)
    assert keras_internals.problems() == [
        "multi_head_attention._attention_axes is missing"]
    with pytest.raises(keras_internals.KerasInternalsError,
                       match="multi_head_attention._attention_axes is "
                       "missing"):
        keras_internals.check()


def test_probe_blames_freezeout_not_keras_for_wrong_frozen_flags(
        monkeypatch, unchecked):
    # Issue 34: an off-by-one in the project's own part_flags surfaced as
    # "freezeout_tf does not support Keras 3.15.1".
    from freezeout_tf.core.schedule_state import ScheduleState

    def off_by_one(self, step):
        return tf.unstack(tf.cast(step, tf.int64) > self.freeze_steps,
                          num=self.num_units + 1)

    monkeypatch.setattr(ScheduleState, "part_flags", off_by_one)
    with pytest.raises(keras_internals.FreezeOutInternalError,
                       match=r"freezeout_tf's own code is wrong, not Keras .*"
                       r"part_flags gave the frozen flags \[False, False\].*"
                       r"expected \[True, False\].*bug of freezeout_tf"):
        keras_internals.check()
    assert not keras_internals._checked


def test_probe_blames_freezeout_when_its_hook_updates_a_frozen_unit(
        monkeypatch, unchecked):
    # The hook itself inverted (freezeout_tf.core.optimizer): Keras called
    # it as expected, so the fault is the project's.
    from freezeout_tf.core import optimizer as fo_optimizer

    plain_cond = tf.cond

    def inverted(pred, true_fn, false_fn, name=None):
        return plain_cond(tf.logical_not(pred), true_fn, false_fn, name=name)

    monkeypatch.setattr(fo_optimizer, "tf", tf_with(cond=inverted))
    with pytest.raises(keras_internals.FreezeOutInternalError,
                       match="updated the frozen variable; .*skipped the "
                       "active variable"):
        keras_internals.check()

