"""The private TensorFlow internal FreezeOut relies on, and a guard for it.

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

__all__ = ["TensorFlowInternalsError", "check", "constants_by_value"]

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
            "Supported: tensorflow>=2.16,<2.22."
        )
    _checked = True
