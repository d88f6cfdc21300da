"""Argument checks shared by every layer of freezeout_tf.

Each check raises `ValueError` naming the argument, the bad value and what
is allowed, and returns nothing for a good value. They import nothing but
the standard library (no TensorFlow, Keras or NumPy), so the command line
can refuse a bad option before TensorFlow loads. NumPy scalars pass as the
Python numbers they stand for; a `bool` is never taken for a number.

Messages come in two forms:

* `"{name} must be {allowed}; got {value!r}."` (the default);
* `"{call}({name}={value!r}): must be {allowed}."` with `call=`, for the
  arguments of a class or method the user called by that name
  (`AdaptiveFreeze`, `cache_frozen_prefix`, ...).

Constants: `HOW_SCALES`, the schedule's scalings (`schedule.SCALINGS`
implements them); `TIED_OWNERS`, who owns a variable read by a freeze unit
and the head (`ownership.variable_owners`).
"""

import math
import numbers

__all__ = [
    "HOW_SCALES",
    "TIED_OWNERS",
    "check_bool",
    "check_choice",
    "check_frozen_from_start",
    "check_how_scale",
    "check_int",
    "check_number",
    "check_positive_int",
    "check_rate",
    "check_t_0",
    "check_tied_owner",
    "check_total_steps",
    "is_int",
]

HOW_SCALES = ("linear", "squared", "cubic")
TIED_OWNERS = ("first", "head")


def _refuse(name, value, allowed, call=None):
    if call is None:
        raise ValueError(f"{name} must be {allowed}; got {value!r}.")
    raise ValueError(f"{call}({name}={value!r}): must be {allowed}.")


def is_int(value):
    """Whether `value` is an integer: a Python or NumPy int, not a bool.

    Args:
        value: anything.

    Returns:
        bool.

    Example:

    >>> is_int(3), is_int(3.0), is_int(True)
    (True, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name, value, low=None, high=None, *, allowed=None, call=None):
    """Checks that `value` is an integer with `low <= value <= high`.

    Args:
        name: the argument's name, for the message.
        value: the value to check.
        low: the inclusive lower bound (None: unbounded).
        high: the inclusive upper bound (None: unbounded).
        allowed: what the message says is allowed (by default from the
            bounds: "an integer >= 1", "an integer in [0, 4]").
        call: name of the callable the value was given to, for the message
            form `call(name=value): must be ...`.

    Raises:
        ValueError: `value` is not such an integer.

    Example:

    >>> check_int("window", 2, low=1)
    >>> check_int("window", 0, low=1, call="AdaptiveFreeze")
    Traceback (most recent call last):
    ...
    ValueError: AdaptiveFreeze(window=0): must be an integer >= 1.
    """
    if (is_int(value) and (low is None or value >= low)
            and (high is None or value <= high)):
        return
    if allowed is None:
        allowed = _bounds("an integer", "an integer", low, high)
    _refuse(name, value, allowed, call)


def check_positive_int(name, value, allowed="a positive integer", call=None):
    """Checks that `value` is an integer >= 1.

    Args:
        name: the argument's name, for the message.
        value: the value to check.
        allowed: what the message says is allowed.
        call: as in `check_int`.

    Raises:
        ValueError: `value` is not a positive integer.

    Example:

    >>> check_positive_int("num_units", 0)
    Traceback (most recent call last):
    ...
    ValueError: num_units must be a positive integer; got 0.
    """
    check_int(name, value, low=1, allowed=allowed, call=call)


def _bounds(in_range, bounded, low, high, low_open=False, high_open=False):
    """What a bounded check allows, for its message: `in_range` (e.g. "a
    number") with both bounds, `bounded` ("a finite number") with one or
    none."""
    if low is not None and high is not None:
        return (f"{in_range} in {'(' if low_open else '['}{low}, {high}"
                f"{')' if high_open else ']'}")
    if low is not None:
        return f"{bounded} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{bounded} {'<' if high_open else '<='} {high}"
    return bounded


def check_number(name, value, low=None, high=None, *, low_open=False,
                 high_open=False, allowed=None, call=None):
    """Checks that `value` is a finite real number between the bounds.

    Args:
        name: the argument's name, for the message.
        value: the value to check.
        low: the lower bound (None: unbounded).
        high: the upper bound (None: unbounded).
        low_open: whether `low` itself is excluded.
        high_open: whether `high` itself is excluded.
        allowed: what the message says is allowed (by default from the
            bounds: "a number in (0, 1]", "a finite number > 0").
        call: as in `check_int`.

    Raises:
        ValueError: `value` is not a number, not finite (nan or infinite),
            or out of bounds.

    Example:

    >>> check_number("t_0", 0.5, 0, 1, low_open=True)
    >>> check_number("t_0", 1.5, 0, 1, low_open=True)
    Traceback (most recent call last):
    ...
    ValueError: t_0 must be a number in (0, 1]; got 1.5.
    >>> check_number("threshold", float("nan"), 0, low_open=True)
    Traceback (most recent call last):
    ...
    ValueError: threshold must be a finite number > 0; got nan.
    """
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    if allowed is None:
        allowed = _bounds("a number", "a finite number", low, high,
                          low_open, high_open)
    _refuse(name, value, allowed, call)


def check_rate(name, value, call=None):
    """Checks that `value` is a number in `[0, 1)` (a dropout rate).

    Args:
        name: the argument's name, for the message.
        value: the value to check.
        call: as in `check_int`.

    Raises:
        ValueError: `value` is not a number in `[0, 1)`.

    Example:

    >>> check_rate("dropout", 1.0)
    Traceback (most recent call last):
    ...
    ValueError: dropout must be a number in [0, 1); got 1.0.
    """
    check_number(name, value, 0, 1, high_open=True, call=call)


def check_bool(name, value, call=None):
    """Checks that `value` is `True` or `False` (not 0, 1 or None).

    Args:
        name: the argument's name, for the message.
        value: the value to check.
        call: as in `check_int`.

    Raises:
        ValueError: `value` is not a bool.

    Example:

    >>> check_bool("adaptive_batch_logs", 1, call="FreezeOut")
    Traceback (most recent call last):
    ...
    ValueError: FreezeOut(adaptive_batch_logs=1): must be True or False.
    """
    if not isinstance(value, bool):
        _refuse(name, value, "True or False", call)


def check_choice(name, value, choices, meaning="", call=None):
    """Checks that `value` is one of `choices`.

    Args:
        name: the argument's name, for the message.
        value: the value to check.
        choices: the allowed values, in the order the message lists them.
        meaning: said after the choices in the message, e.g.
            `" (the scaling of t_i)"`.
        call: as in `check_int`.

    Raises:
        ValueError: `value` is not one of `choices`.

    Example:

    >>> check_choice("criterion", "median", ("rank", "pace"),
    ...              call="AdaptiveFreeze")
    Traceback (most recent call last):
    ...
    ValueError: AdaptiveFreeze(criterion='median'): must be one of 'rank', 'pace'.
    """
    # A bool is no choice but True or False (True == 1 would pass).
    if not any(isinstance(value, bool) is isinstance(c, bool) and value == c
               for c in choices):
        _refuse(name, value,
                f"one of {', '.join(map(repr, choices))}{meaning}", call)


def check_t_0(t_0):
    """Checks the FreezeOut schedule's `t_0`: a number in `(0, 1]`.

    Args:
        t_0: the fraction of training, before scaling, after which the
            first unit freezes.

    Raises:
        ValueError: `t_0` is not a number in `(0, 1]`.

    Example:

    >>> check_t_0(0.0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: t_0 must be a number in (0, 1] (the fraction ...); got 0.0.
    """
    check_number(
        "t_0", t_0, 0, 1, low_open=True,
        allowed="a number in (0, 1] (the fraction of training, before "
                "scaling, after which the first unit freezes)")


def check_how_scale(how_scale):
    """Checks that `how_scale` names a scaling of the schedule
    (`HOW_SCALES`).

    Args:
        how_scale: `"linear"`, `"squared"` or `"cubic"`.

    Raises:
        ValueError: `how_scale` is none of them.

    Example:

    >>> check_how_scale("quartic")
    Traceback (most recent call last):
    ...
    ValueError: how_scale must be one of 'linear', 'squared', 'cubic'; got 'quartic'.
    """
    check_choice("how_scale", how_scale, HOW_SCALES)


def check_total_steps(total_steps):
    """Checks that `total_steps` is a positive integer.

    Args:
        total_steps: the number of training steps of the whole run.

    Raises:
        ValueError: `total_steps` is not a positive integer.

    Example:

    >>> check_total_steps(0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: total_steps must be a positive integer (the number ...); got 0.
    """
    check_positive_int(
        "total_steps", total_steps,
        "a positive integer (the number of training steps of the whole run)",
    )


def check_frozen_from_start(frozen_from_start, num_units=None):
    """Checks that `0 <= frozen_from_start <= num_units`.

    Args:
        frozen_from_start: how many freeze units, from the first, stay
            frozen from step 0.
        num_units: the model's freeze units (None: not known yet).

    Raises:
        ValueError: `frozen_from_start` is not an integer in that range.

    Example:

    >>> check_frozen_from_start(5, num_units=4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: frozen_from_start must be an integer >= 0 of at most 4 (...); got 5.
    """
    limit = "" if num_units is None else f" of at most {num_units}"
    check_int(
        "frozen_from_start", frozen_from_start, 0, num_units,
        allowed=f"an integer >= 0{limit} (how many freeze units, from the "
                f"first, stay frozen from step 0)")


def check_tied_owner(tied_owner):
    """Checks that `tied_owner` is one of `TIED_OWNERS`.

    Args:
        tied_owner: who owns a variable read by a freeze unit and the head
            (a tied embedding): `"first"`, the first freeze unit that reads
            it, or `"head"`.

    Raises:
        ValueError: `tied_owner` is neither.

    Example:

    >>> check_tied_owner("head")
    >>> check_tied_owner("last")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: tied_owner must be one of 'first', 'head' (...); got 'last'.
    """
    check_choice(
        "tied_owner", tied_owner, TIED_OWNERS,
        " (the first freeze unit that reads a tied variable, or the head)")
