"""Per-unit learning rates on stock Keras optimizers, and the original recipe.

FreezeOut needs two things from the optimizer that Keras does not offer:
each variable's learning rate is the base rate times its unit's multiplier,
and a frozen unit's variables get *no* update of any kind: not the gradient
step, not momentum or Adam moments, not (decoupled) weight decay. A zero
learning rate is not enough: SGD momentum would still move the weight and
decay the velocity.

`attach_schedule` does this on any Keras optimizer (SGD, Adam, AdamW, ...)
by wrapping, on that one instance, the two places where Keras' TF optimizer
loops over variables: `_distributed_tf_update_step` (which calls the
optimizer's own `update_step(gradient, variable, learning_rate)` for each
variable) and `_apply_weight_decay(variables)`. The variables are grouped by
unit and each unit's updates run under one `tf.cond` on the unit's in-graph
frozen flag, with the learning rate times the unit's multiplier; so a frozen
variable's update, its slots and its weight decay are skipped at run time,
without retracing.

Under a `tf.distribute` strategy it also wraps `_all_reduce_sum_gradients`,
where the TF optimizer sums the gradients over replicas: each unit's
gradients are all-reduced under a `tf.cond` on its frozen flag, so a frozen
unit sends nothing over the wire (see `_unit_all_reduce`).
"""

import keras
import tensorflow as tf
from tensorflow.python.distribute import values as tf_dist_values

__all__ = ["SGDWithL2", "attach_schedule", "check_supported", "original_sgd"]

_ATTACHED = "_freezeout_attached"


def _base_optimizer(optimizer):
    # LossScaleOptimizer (mixed_float16) delegates the real updates.
    return getattr(optimizer, "inner_optimizer", optimizer)


def check_supported(optimizer):
    """Refuses optimizer options under which frozen variables would move.

    Raises:
        ValueError: naming the option, its value and what to use instead.
    """
    opt = _base_optimizer(optimizer)
    if getattr(opt, "use_ema", False):
        raise ValueError(
            f"{type(opt).__name__}(use_ema=True) is not supported with "
            "FreezeOutModel: the moving average is written into every "
            "variable, frozen ones included, so frozen units would move. "
            "Use use_ema=False."
        )
    steps = getattr(opt, "gradient_accumulation_steps", None)
    if steps not in (None, 1):
        raise ValueError(
            f"{type(opt).__name__}(gradient_accumulation_steps={steps!r}) is "
            "not supported with FreezeOutModel: accumulated updates are "
            "applied outside the per-unit skip of frozen units. Use a larger "
            "batch instead, or gradient_accumulation_steps=None."
        )


def attach_schedule(optimizer, variables, variable_units, state):
    """Makes `optimizer` follow the FreezeOut schedule held in `state`.

    Idempotent: attaching again to the same optimizer only refreshes the
    variable-to-unit map.

    Args:
        optimizer: a Keras optimizer (or a `LossScaleOptimizer` around one).
        variables: the Keras variables the optimizer trains.
        variable_units: for each of `variables`, the index of its unit
            (the head is `state.num_units`).
        state: the `ScheduleState` the model's train step reads too.
    """
    opt = _base_optimizer(optimizer)
    unit_of = {opt._var_key(v): u for v, u in zip(variables, variable_units)}
    if getattr(opt, _ATTACHED, None) is not None:
        getattr(opt, _ATTACHED)["unit_of"] = unit_of
        return
    hooks = {"unit_of": unit_of}
    setattr(opt, _ATTACHED, hooks)
    plain_update_step = opt.update_step

    def skip_frozen(frozen, fn):
        # One cond per unit (not per variable): a cheaper trace and graph.
        def run():
            fn()
            return tf.constant(True)

        tf.cond(frozen, lambda: tf.constant(False), run)

    def distributed_update_step(distribution, grads_and_vars, learning_rate):
        step = state.step()
        # Every unit's flag and multiplier in one vector op each, not a
        # dozen scalar ops per unit (each op costs the executor and the
        # trace about as much as a small kernel).
        flags = state.part_flags(step)
        multipliers = state.multipliers(step, flags)
        for unit, pairs in _by_unit(opt, grads_and_vars, hooks["unit_of"]):

            def update(unit=unit, pairs=pairs):
                lr = tf.cast(learning_rate, tf.float32) * multipliers[unit]
                for grad, var in pairs:
                    distribution.extended.update(
                        var, lambda v, g, lr: plain_update_step(g, v, lr),
                        args=(grad, lr), group=False,
                    )

            # Frozen: no gradient step, no slot update.
            skip_frozen(flags[unit], update)

    def apply_weight_decay(variables):
        if opt.weight_decay is None:
            return

        def distributed(distribution, variables):
            step = state.step()
            flags = state.part_flags(step)
            multipliers = state.multipliers(step, flags)
            decayed = [
                (None, v.value if isinstance(v, keras.Variable) else v)
                for v in variables
                if opt._use_weight_decay(v)
            ]
            for unit, pairs in _by_unit(opt, decayed, hooks["unit_of"]):

                def decay(unit=unit, pairs=pairs):
                    rate = (
                        tf.cast(opt.learning_rate, tf.float32)
                        * multipliers[unit]
                        * opt.weight_decay
                    )
                    for _, var in pairs:
                        distribution.extended.update(
                            var,
                            lambda v: v.assign_sub(v * tf.cast(rate, v.dtype)),
                            group=False,
                        )

                skip_frozen(flags[unit], decay)

        # As Keras does: per-variable updates go through the strategy.
        tf.__internal__.distribute.interim.maybe_merge_call(
            distributed, opt._distribution_strategy, variables
        )

    plain_all_reduce = opt._all_reduce_sum_gradients

    def all_reduce_sum_gradients(grads_and_vars):
        return _unit_all_reduce(
            opt, plain_all_reduce, grads_and_vars, hooks["unit_of"], state
        )

    opt._distributed_tf_update_step = distributed_update_step
    opt._apply_weight_decay = apply_weight_decay
    opt._all_reduce_sum_gradients = all_reduce_sum_gradients


def _by_unit(opt, pairs, unit_of):
    """Groups `(gradient, variable)` pairs by unit, in unit order."""
    groups = {}
    for grad, var in pairs:
        groups.setdefault(unit_of[opt._var_key(var)], []).append((grad, var))
    return sorted(groups.items(), key=lambda item: item[0])


def _unit_all_reduce(opt, plain_all_reduce, grads_and_vars, unit_of, state):
    """Sums gradients over replicas, one unit at a time, skipping frozen units.

    Keras' TF optimizer all-reduces every gradient in one batch. Here the
    gradients are grouped by unit and each group is reduced under
    `tf.cond(frozen, skip, reduce)`: a frozen unit launches no collective (its
    gradient stays the local zero placeholder, which the wrapped `update_step`
    ignores). All replicas and workers read the same frozen flags (same
    iteration counter, same schedule), so they all take the same branch.

    Where the all-reduce goes through `merge_call` (every strategy except
    XLA on GPUs), the conds are placed in the cross-replica context: a
    `merge_call` inside a `tf.cond` branch in replica context is rejected by
    `MirroredStrategy` (the branch is a separate graph), as Keras' own
    `LossScaleOptimizer` notes. So one `merge_call` (as in plain Keras) hands
    the per-replica gradients over, and each unit's `batch_reduce_to` runs
    inside its cond. Without `merge_call` (XLA on GPUs) the collectives are
    launched per replica, so the cond stays in replica context.
    """
    grads_and_vars = list(grads_and_vars)
    if (
        not tf.distribute.has_strategy()
        or tf.distribute.in_cross_replica_context()
    ):
        return plain_all_reduce(grads_and_vars)
    replica_context = tf.distribute.get_replica_context()
    strategy = replica_context.strategy
    step = state.step()
    groups = {}  # unit -> indices of its non-None gradients
    for i, (g, v) in enumerate(grads_and_vars):
        if g is not None:
            groups.setdefault(unit_of[opt._var_key(v)], []).append(i)
    grads = [g for g, _ in grads_and_vars]
    if not groups:
        return plain_all_reduce(grads_and_vars)
    total = tf.distribute.ReduceOp.SUM

    if strategy.extended._use_merge_call():

        def merge_fn(distribution, per_replica):
            local = distribution.experimental_local_results
            out = dict(per_replica)
            for unit, idx in sorted(groups.items()):

                def skip(idx=idx):
                    return [list(local(per_replica[i])) for i in idx]

                def reduce(idx=idx):
                    reduced = distribution.extended.batch_reduce_to(
                        total, [(per_replica[i], per_replica[i]) for i in idx]
                    )
                    return [list(local(r)) for r in reduced]

                results = tf.cond(state.frozen(step, unit), skip, reduce)
                for i, values in zip(idx, results):
                    out[i] = tf_dist_values.PerReplica(tuple(values))
            return out

        present = {i: g for i, g in enumerate(grads) if g is not None}
        reduced = replica_context.merge_call(merge_fn, args=(present,))
        reduced = [reduced.get(i) for i in range(len(grads))]
    else:
        reduced = list(grads)
        for unit, idx in sorted(groups.items()):

            def skip(idx=idx):
                return [grads[i] for i in idx]

            def reduce(idx=idx):
                return replica_context.all_reduce(
                    total, [grads[i] for i in idx]
                )

            results = tf.cond(state.frozen(step, unit), skip, reduce)
            for i, g in zip(idx, results):
                reduced[i] = g
    return [
        (None if g is None else r, v)
        for r, (g, v) in zip(reduced, grads_and_vars)
    ]


@keras.saving.register_keras_serializable(package="freezeout_tf")
class SGDWithL2(keras.optimizers.SGD):
    """SGD with L2 weight decay added to the gradient, as in PyTorch.

    Keras' own `weight_decay` is decoupled (the variable shrinks by
    `lr * wd`, outside the momentum). PyTorch's SGD, which FreezeOut's
    original recipe uses, adds `l2 * variable` to the gradient *before* the
    momentum. This class does the latter.

    Args:
        learning_rate: base learning rate.
        momentum: momentum (Keras convention: velocity = m * v - lr * g).
        nesterov: whether to use Nesterov momentum.
        l2: coefficient of the L2 term added to every gradient.
        **kwargs: passed to `keras.optimizers.SGD`.

    Example:

    >>> opt = SGDWithL2(0.1, momentum=0.9, nesterov=True, l2=1e-4)
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, nesterov=True,
                 l2=1e-4, **kwargs):
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            nesterov=nesterov,
            **kwargs,
        )
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0; got {l2!r}.")
        self.l2 = l2

    def update_step(self, gradient, variable, learning_rate):
        gradient = tf.cast(gradient, variable.dtype)
        gradient = gradient + tf.cast(self.l2, variable.dtype) * variable
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["l2"] = self.l2
        return config


def original_sgd(learning_rate=0.1):
    """The original FreezeOut recipe (docs/algorithm.md §3).

    SGD, Nesterov momentum 0.9, L2 weight decay 1e-4 added to the gradient,
    base learning rate 0.1. Use it with the `FreezeOut` callback, which
    supplies the per-unit cosine schedule; add no other LR schedule.

    Example:

    >>> opt = original_sgd()
    >>> opt.nesterov, float(opt.momentum), opt.l2
    (True, 0.9, 0.0001)
    """
    return SGDWithL2(learning_rate, momentum=0.9, nesterov=True, l2=1e-4)
