"""The FreezeOut schedule as pure functions of the step (docs/algorithm.md §2-3).

Nothing here touches TensorFlow: these functions are the single source of
truth for *when* a unit freezes and *how fast* it learns. The in-graph
version used by the train step (`freezeout_tf.core.schedule_state`) is tested
against them step by step.

Units are numbered 0..n-1 in forward order; the head is unit n and never
freezes (its fraction is 1).
"""

import numpy as np

# The argument checks live in `freezeout_tf.validation` (shared by every
# layer); imported here for the functions below, not exported.
from freezeout_tf.validation import (
    check_frozen_from_start,
    check_how_scale,
    check_positive_int,
    check_t_0,
    check_total_steps,
)

__all__ = [
    "SCALINGS",
    "freeze_fractions",
    "freeze_steps",
    "lr_multipliers",
    "num_frozen",
    "scale",
]

# Named as `validation.HOW_SCALES` lists them (tests/test_validation.py).
SCALINGS = {
    "linear": lambda x: x,
    "squared": lambda x: x**2,
    "cubic": lambda x: x**3,
}


def scale(x, how_scale="cubic"):
    """Applies the named scaling (`linear`, `squared` or `cubic`) to `x`."""
    check_how_scale(how_scale)
    return SCALINGS[how_scale](np.asarray(x, dtype=np.float64))


def freeze_fractions(num_units, t_0=0.8, how_scale="cubic",
                     frozen_from_start=0):
    """Fraction of training after which each unit freezes.

    `t_i = scale(t_0 + (1 - t_0) * i / n)` for units `i = 0..n-1`, and the
    head (index `n`) gets `scale(1) = 1`, so it never freezes.

    With `frozen_from_start=k` (fine-tuning: the first `k` units stay
    frozen), units `k..n-1` get the schedule of `n - k` units, so unit `k`
    freezes at `scale(t_0)`; units `0..k-1` get unit `k`'s fraction as a
    placeholder. Pass the same `k` to `freeze_steps`, `lr_multipliers` and
    `num_frozen`: they freeze those units from step 0.

    Args:
        num_units: number of freeze units `n` (the head not included).
        t_0: fraction of training, *before* scaling, at which unit 0 (or
            unit `k`) freezes.
        how_scale: `"linear"`, `"squared"` or `"cubic"`.
        frozen_from_start: `k`, units frozen from the start; `0 <= k <= n`.

    Returns:
        float64 array of length `num_units + 1`, non-decreasing, last = 1.

    Example:

    >>> freeze_fractions(4, t_0=0.8, how_scale="linear")
    array([0.8 , 0.85, 0.9 , 0.95, 1.  ])
    >>> freeze_fractions(4, t_0=0.8, how_scale="linear", frozen_from_start=2)
    array([0.8, 0.8, 0.8, 0.9, 1. ])
    """
    check_positive_int("num_units", num_units)
    check_t_0(t_0)
    check_how_scale(how_scale)
    check_frozen_from_start(frozen_from_start, num_units)
    n = num_units - frozen_from_start
    if n == 0:
        return np.ones(num_units + 1)
    i = np.arange(n + 1, dtype=np.float64)
    own = scale(t_0 + (1.0 - t_0) * i / n, how_scale)
    return np.concatenate([np.full(frozen_from_start, own[0]), own])


def freeze_steps(total_steps, fractions, frozen_from_start=0):
    """First 0-based step at which each unit is frozen.

    A unit with fraction `t` trains while `step <= t * T` and is frozen from
    the first step with `step > t * T`, i.e. from `floor(t * T) + 1`. The head
    (`t = 1`) gets `T + 1`: it trains for the whole run. The first
    `frozen_from_start` units are frozen from step 0.

    Args:
        total_steps: total number of training steps `T` of the run.
        fractions: output of `freeze_fractions`.
        frozen_from_start: units frozen from step 0 (as given to
            `freeze_fractions`).

    Returns:
        int64 array, same length as `fractions`.
    """
    check_total_steps(total_steps)
    fractions = np.asarray(fractions, dtype=np.float64)
    check_frozen_from_start(frozen_from_start, len(fractions) - 1)
    steps = np.floor(fractions * total_steps).astype(np.int64) + 1
    steps[:frozen_from_start] = 0
    return steps


def lr_multipliers(step, total_steps, fractions, scale_lr=True,
                   frozen_from_start=0):
    """Per-unit multiplier of the base learning rate at a 0-based step.

    `m_i(j) = 1/2 * (1 + cos(pi * j / (t_i * T)))`, divided by `t_i` when
    `scale_lr` (so units that train for less time start faster), and 0 once
    the unit is frozen (`j > t_i * T`).

    Args:
        step: 0-based training step `j`, counted before the step is taken.
        total_steps: total number of training steps `T`.
        fractions: output of `freeze_fractions`.
        scale_lr: whether to divide the initial rate by `t_i`.
        frozen_from_start: units frozen from step 0 (multiplier 0).

    Returns:
        float64 array, same length as `fractions`.

    Example:

    >>> lr_multipliers(0, 100, [0.5, 1.0], scale_lr=True)
    array([2., 1.])
    """
    check_total_steps(total_steps)
    if step < 0:
        raise ValueError(f"step must be >= 0; got {step!r}.")
    fractions = np.asarray(fractions, dtype=np.float64)
    cosine = 0.5 * (1.0 + np.cos(np.pi * step / (fractions * total_steps)))
    initial = 1.0 / fractions if scale_lr else np.ones_like(fractions)
    frozen = step >= freeze_steps(total_steps, fractions, frozen_from_start)
    return np.where(frozen, 0.0, initial * cosine)


def num_frozen(step, total_steps, fractions, frozen_from_start=0):
    """How many units (a prefix, the head excluded) are frozen at `step`."""
    steps = freeze_steps(total_steps, fractions, frozen_from_start)[:-1]
    return int(np.sum(step >= steps))
