"""The package's folders are its layers: imports only run down them.

Read from the sources (ast), so nothing here depends on what a test process
happens to have imported already. The layers, lowest first, as
freezeout_tf/__init__.py's docstring states them; a module may import its
own group's modules and any module of a lower layer, never a module of its
own layer's other groups (the splitter does not import the cost estimates)
nor of a higher layer.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

from freezeout_tf._moved import MOVED

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "freezeout_tf"

# Layers, lowest first; each a list of groups, each group a tuple of module
# prefixes under freezeout_tf.
LAYERS = [
    [("schedule", "validation", "_lazy", "_moved")],
    [("_internals",)],
    [("core.schedule_state", "core.unit_mode", "core.side_inputs",
      "core.macs")],
    [("split",), ("estimates",), ("adaptive",)],
    [("core.model", "core.optimizer", "core.prefix_cache")],
    [("callbacks",), ("models",)],
    [("recipes",)],
    [("tools",), ("cli",)],
    # The old module paths, kept for one release (freezeout_tf/_moved.py):
    # each imports only `_moved`, which imports its new module by name.
    [tuple(MOVED)],
]
# Upward imports allowed, each deferred into the function that needs it:
# the guard's behavioural probe runs the optimizer hooks it guards.
DEFERRED_UPWARD = {
    ("freezeout_tf._internals.keras_internals", "freezeout_tf.core.optimizer"),
    ("freezeout_tf._internals.keras_internals",
     "freezeout_tf.core.schedule_state"),
}


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name):
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _place(name):
    """(layer index, group) of module `name`, or None."""
    short = name[len("freezeout_tf."):]
    for index, groups in enumerate(LAYERS):
        for group in groups:
            if any(short == p or short.startswith(p + ".") for p in group):
                return index, group
    return None


def _imports(tree):
    """(imported module, deferred, type-checking only) for each import of
    freezeout_tf in `tree`: `from a.b import c` names module `a.b.c` when
    that is a module, else `a.b`."""
    found = []

    def visit(node, deferred, typing_only):
        for child in ast.iter_child_nodes(node):
            child_deferred = deferred or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef))
            child_typing = typing_only or (
                isinstance(child, ast.If)
                and getattr(child.test, "id", "") == "TYPE_CHECKING")
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append((alias.name, deferred, typing_only))
            elif isinstance(child, ast.ImportFrom) and child.module:
                for alias in child.names:
                    sub = f"{child.module}.{alias.name}"
                    found.append((sub if _is_module(sub) else child.module,
                                  deferred, typing_only))
            visit(child, child_deferred, child_typing)

    visit(tree, False, False)
    return [item for item in found if item[0].split(".")[0] == "freezeout_tf"]


def _sources():
    return {_module_name(path): ast.parse(path.read_text(), str(path))
            for path in sorted(PACKAGE.rglob("*.py"))}


def _packages(sources):
    return {name for name in sources
            if (ROOT.joinpath(*name.split(".")) / "__init__.py").is_file()}


def layer_violations(sources):
    """Each import that runs up the layers or across groups of one layer."""
    packages = _packages(sources)
    found = []
    for name, tree in sources.items():
        if name in packages:
            continue  # see test_packages_only_re_export_their_own_modules
        here = _place(name)
        if here is None:
            continue  # test_every_module_is_placed_in_a_layer fails
        for target, deferred, _ in _imports(tree):
            there = _place(target)
            if there is None:
                # `freezeout_tf` or `freezeout_tf.core` (two layers): a
                # module imports a name from the module defining it.
                found.append(f"{name} imports {target}, in no one layer")
                continue
            if there[1] == here[1] or there[0] < here[0]:
                continue
            if deferred and (name, target) in DEFERRED_UPWARD:
                continue
            found.append(f"{name} (layer {here[0]}) imports {target} "
                         f"(layer {there[0]})")
    return found


def test_every_module_is_placed_in_a_layer():
    packages = _packages(_sources())
    unplaced = [name for name in _sources()
                if name not in packages and _place(name) is None]
    assert unplaced == []


def test_imports_only_run_down_the_layers():
    assert layer_violations(_sources()) == []


def test_the_check_sees_an_upward_import():
    # What the splitter did before the MAC counting moved below it: a check
    # that let it through would pass whatever the package imports.
    sources = _sources()
    sources["freezeout_tf.split.functional"].body.insert(
        0, ast.parse("from freezeout_tf.estimates import speedup").body[0])
    sources["freezeout_tf.schedule"].body.insert(
        0, ast.parse("import freezeout_tf.core.model").body[0])
    assert layer_violations(sources) == [
        "freezeout_tf.schedule (layer 0) imports freezeout_tf.core.model "
        "(layer 4)",
        "freezeout_tf.split.functional (layer 3) imports "
        "freezeout_tf.estimates.speedup (layer 3)",
    ]


def _cycle(graph):
    """One import cycle of `graph` (module -> modules), or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [node])
            if cycle:
                return cycle
    return None


def test_no_import_cycle_when_modules_load():
    sources = _sources()
    graph = {name: sorted({target for target, deferred, typing_only
                           in _imports(tree)
                           if not deferred and not typing_only})
             for name, tree in sources.items()}
    assert _cycle(graph) is None
    graph["freezeout_tf.core.macs"].append("freezeout_tf.split.functional")
    assert _cycle(graph) is not None  # what it would report


def test_packages_only_re_export_their_own_modules():
    """A package's `__init__` imports (for static tools) only its own
    modules, lazily otherwise, and lists each name once in `__all__`."""
    sources = _sources()
    for name in _packages(sources):
        tree = sources[name]
        runtime = [t for t, _, typing_only in _imports(tree)
                   if not typing_only and t != "freezeout_tf._lazy"]
        static = [t for t, _, typing_only in _imports(tree) if typing_only]
        if name == "freezeout_tf.models":
            continue  # eager (layer 5), checked by the layer test's rules
        assert runtime == [], name
        if name != "freezeout_tf":
            assert all(t.startswith(name + ".") for t in static), name
        exported = next(ast.literal_eval(node.value) for node in tree.body
                        if isinstance(node, ast.Assign)
                        and getattr(node.targets[0], "id", "") == "__all__")
        assert len(exported) == len(set(exported)), name
        typed = {alias.asname or alias.name
                 for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module != "freezeout_tf._lazy"
                 and node.module != "typing"
                 for alias in node.names}
        assert typed == set(exported), name


def _run(code):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_importing_the_package_loads_neither_tensorflow_nor_keras():
    done = _run(
        "import sys\n"
        "import freezeout_tf, freezeout_tf.core, freezeout_tf.split, "
        "freezeout_tf.recipes, freezeout_tf.tools\n"
        "from freezeout_tf import schedule\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("package", [
    "freezeout_tf", "freezeout_tf.core", "freezeout_tf.split",
    "freezeout_tf.adaptive", "freezeout_tf.estimates",
    "freezeout_tf.callbacks", "freezeout_tf.recipes", "freezeout_tf.tools",
    "freezeout_tf._internals"])
def test_every_exported_name_resolves(package):
    import importlib

    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        assert value is not None, (package, name)
        assert name in dir(module)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        getattr(module, "nothing_here")
