"""The private TensorFlow internals FreezeOut relies on, and a guard.

`PRIVATE_NAMES` lists every private TensorFlow and tensorflow-datasets name
the package uses, with the modules that use it and what breaks if it
changes (the Keras ones are in `freezeout_tf._internals.keras_internals`); a test scans
the package and fails when a module uses one not listed for it. The one
whose failure would be silent, `FuncGraph.capture`, is also checked by
behaviour:

Each unit's backward pass is built inside a `tf.cond` branch. Every tensor
of the forward that a branch reads becomes an input of the branch function,
constants included, so Grappler cannot see, inside the branch, that an
exponent or a shape is a constant. It then keeps rewrites it does at the top
level undone: the gradient of GELU's `pow(x, 3)` (BERT's `gelu` with
`approximate=True`) stays a generic `Pow(x, 2)` over the whole activation
instead of a `Square`, about 7 ms per block per step on a BERT block of
hidden size 256 and sequence 128 on this project's CPU machine.

`constants_by_value()` makes the branch under construction copy small
constants of the outer graph into itself instead of taking them as inputs.
It relies on one internal: a `FuncGraph` routes every outer tensor an op
reads through its `capture` method (`FuncGraph._create_op_internal`).
`check()` verifies that on a tiny graph, and raises if a TensorFlow release
changes it, instead of silently losing the rewrite.
"""

import contextlib

import tensorflow as tf

__all__ = ["PRIVATE_NAMES", "TensorFlowInternalsError", "check",
           "constants_by_value"]

# name -> (modules using it, what breaks if it changes). Attribute names
# and module paths are matched by the scan test; entries in parentheses are
# listed for the reader.
PRIVATE_NAMES = {
    "(FuncGraph.capture)": (
        ("tf_internals",), "constants_by_value: Grappler's rewrites inside "
        "the backward branches (checked by check())"),
    "__internal__": (
        ("optimizer",), "tf.__internal__.distribute.interim.maybe_merge_call"
        ": the weight-decay hook's per-variable updates under a strategy"),
    "tensorflow.python.distribute": (
        ("optimizer",), "values.PerReplica: rebuilding the per-unit "
        "all-reduced gradients under MirroredStrategy"),
    "_use_merge_call": (
        ("optimizer",), "choosing where the per-unit all-reduce conds go "
        "(cross-replica or replica context)"),
    "_reduce_to": (
        ("distribute",), "the patch that lets Keras reduce nested logs "
        "under MirroredStrategy"),
    "(sys.modules namespaces)": (
        ("macs",), "count_macs rewrites, in every loaded module's "
        "namespace, the functions it counts (tf.matmul, tf.nn.conv2d, ...) "
        "and restores them; a namespace that holds them under another "
        "name is not counted"),
    "tensorflow_datasets.core.download": (
        ("download",), "downloader.MAX_RETRIES and _open_url: the bounded "
        "retries and timeout of a data set download"),
    "_open_url": (("download",), "the download timeout"),
    "tensorflow_datasets.core.download.download_manager": (
        ("download",), "the checksum-less download of a data set"),
    "tensorflow_datasets.core.download.util": (
        ("download",), "the same"),
    "tensorflow_datasets.core.utils": (
        ("download",), "tqdm_utils: silencing the progress bars"),
    "(url_infos)": (
        ("download",), "DatasetBuilder.url_infos: the sizes that the "
        "download estimate sums (0 if it goes away)"),
    "tensorflow.python.framework": (
        ("train",), "config.is_op_determinism_enabled / "
        "disable_op_determinism (only enabling is public): the CLI's main "
        "(freezeout_tf/cli/train.py) leaves op determinism as it found it"),
}

# Constants of at most this many elements are copied into a branch (the
# scalars and small shape vectors that gradient functions read).
_MAX_ELEMENTS = 16

_checked = False


class TensorFlowInternalsError(RuntimeError):
    """A private TensorFlow internal FreezeOut relies on has changed."""


def _small_outer_constant(tensor, graph):
    return (tf.is_symbolic_tensor(tensor) and tensor.graph is not graph
            and tensor.op.type == "Const"
            and tensor.shape.num_elements() is not None
            and tensor.shape.num_elements() <= _MAX_ELEMENTS)


@contextlib.contextmanager
def constants_by_value():
    """Within this context, ops created in the current function graph (a
    `tf.cond` branch being built) that read a small constant of an outer
    graph read a copy of it made in this graph, not a branch input."""
    graph = tf.compat.v1.get_default_graph()
    outer_capture = graph.capture
    copies = {}

    def capture(tensor, name=None, shape=None):
        if not _small_outer_constant(tensor, graph):
            return outer_capture(tensor, name, shape)
        # Keyed by id; the tensor is kept with its copy so the id stays its.
        if id(tensor) not in copies:
            copies[id(tensor)] = (tensor, tf.constant(
                tf.get_static_value(tensor), dtype=tensor.dtype))
        return copies[id(tensor)][1]

    graph.capture = capture  # this graph instance only
    try:
        yield
    finally:
        del graph.capture


def _branch_reads_a_constant():
    """True if, in a tiny cond, a branch built under `constants_by_value`
    multiplies by a constant op of its own (the internal works)."""
    seen = {}

    @tf.function(autograph=False)
    def probe(x, flag):
        factor = tf.constant(3.0)

        def branch():
            with constants_by_value():
                y = x * factor
            seen["input"] = y.op.inputs[1].op.type
            return y

        return tf.cond(flag, branch, lambda: x)

    probe.get_concrete_function(tf.TensorSpec([2], tf.float32),
                                tf.TensorSpec([], tf.bool))
    return seen.get("input") == "Const"


def _supported():
    # The one place the range is written (imported late: no cycle).
    from freezeout_tf._internals.keras_internals import SUPPORTED_TENSORFLOW

    return SUPPORTED_TENSORFLOW


def check():
    """Raises `TensorFlowInternalsError` if `constants_by_value` no longer
    works (once per process; cheap afterwards)."""
    global _checked
    if _checked:
        return
    if not _branch_reads_a_constant():
        raise TensorFlowInternalsError(
            f"freezeout_tf does not support TensorFlow {tf.__version__}: a "
            "cond branch no longer routes the outer tensors it reads through "
            "FuncGraph.capture, which FreezeOut uses to keep constants "
            "visible to Grappler in the per-unit backward branches. "
            f"Supported: tensorflow{_supported()}."
        )
    _checked = True
