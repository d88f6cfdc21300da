"""The shared argument checks (freezeout_tf.validation)."""

import fractions
import os
import subprocess
import sys

import numpy as np
import pytest

from freezeout_tf import schedule, validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_imports_only_the_standard_library():
    # Loaded alone (not through the package, whose __init__ may load more):
    # the command line checks options with it before TensorFlow loads.
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('v', sys.argv[1])\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "heavy = {'numpy', 'tensorflow', 'keras'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    path = os.path.join(ROOT, "freezeout_tf", "validation.py")
    out = subprocess.run([sys.executable, "-c", code, path],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.uint8(1)])
def test_positive_int_accepts(value):
    validation.check_positive_int("n", value)


@pytest.mark.parametrize("value", [0, -2, True, 1.0, np.float32(2), "3", None])
def test_positive_int_refuses_naming_the_value(value):
    with pytest.raises(ValueError) as info:
        validation.check_positive_int("n", value)
    assert str(info.value) == f"n must be a positive integer; got {value!r}."


def test_int_bounds_and_the_two_message_forms():
    validation.check_int("k", 0, 0, 4)
    validation.check_int("k", 4, 0, 4)
    with pytest.raises(ValueError,
                       match=r"^k must be an integer in \[0, 4\]; got 5\.$"):
        validation.check_int("k", 5, 0, 4)
    with pytest.raises(ValueError, match=r"^k must be an integer <= 4; got 5\.$"):
        validation.check_int("k", 5, high=4)
    with pytest.raises(ValueError, match=r"^f\(k=1\): must be an integer >= 2\.$"):
        validation.check_int("k", 1, low=2, call="f")
    with pytest.raises(ValueError, match=r"^k must be even; got 1\.$"):
        validation.check_int("k", 1, low=2, allowed="even")


@pytest.mark.parametrize("value", [0.5, 1, np.float32(0.25), np.float64(1.0),
                                   fractions.Fraction(1, 3)])
def test_number_accepts_real_numbers_in_range(value):
    validation.check_number("x", value, 0, 1, low_open=True)


@pytest.mark.parametrize("value", [0, 0.0, 1.5, float("nan"), float("inf"),
                                   True, "0.5", None, np.float32("nan")])
def test_number_refuses(value):
    with pytest.raises(ValueError) as info:
        validation.check_number("x", value, 0, 1, low_open=True)
    assert str(info.value) == f"x must be a number in (0, 1]; got {value!r}."


def test_number_open_and_one_sided_bounds():
    validation.check_number("x", 0.0, low=0)
    with pytest.raises(ValueError, match=r"a finite number > 0; got 0\.0"):
        validation.check_number("x", 0.0, low=0, low_open=True)
    with pytest.raises(ValueError, match=r"a finite number < 1; got 1"):
        validation.check_number("x", 1, high=1, high_open=True)
    with pytest.raises(ValueError, match=r"a finite number; got inf"):
        validation.check_number("x", float("inf"))
    validation.check_rate("dropout", 0)
    with pytest.raises(ValueError, match=r"\[0, 1\); got 1\.0"):
        validation.check_rate("dropout", 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\); got -0\.1"):
        validation.check_rate("dropout", -0.1)


def test_bool_and_choice_refuse_look_alikes():
    validation.check_bool("b", False)
    for value in (0, 1, None, "True", np.bool_(True)):
        with pytest.raises(ValueError, match="must be True or False"):
            validation.check_bool("b", value)
    validation.check_choice("c", 1, (1, 2))
    validation.check_choice("c", np.str_("cubic"), validation.HOW_SCALES)
    with pytest.raises(ValueError, match=r"c must be one of 1, 2; got True\."):
        validation.check_choice("c", True, (1, 2))
    with pytest.raises(ValueError, match=r"one of 'a' \(letters\); got \['a'\]"):
        validation.check_choice("c", ["a"], ("a",), " (letters)")


def test_schedule_checks():
    validation.check_t_0(1)
    validation.check_t_0(np.float32(0.3))
    for bad in (0, 1.01, True, float("nan"), "0.5"):
        with pytest.raises(ValueError, match=r"t_0 must be a number in \(0, 1\]"):
            validation.check_t_0(bad)
    for name in validation.HOW_SCALES:
        validation.check_how_scale(name)
    with pytest.raises(ValueError, match="'linear', 'squared', 'cubic'; got 'Cubic'"):
        validation.check_how_scale("Cubic")
    with pytest.raises(ValueError, match="total_steps must be a positive integer"):
        validation.check_total_steps(2.0)
    validation.check_frozen_from_start(0)
    validation.check_frozen_from_start(4, num_units=4)
    with pytest.raises(ValueError, match="an integer >= 0 of at most 4 .*got 5"):
        validation.check_frozen_from_start(5, num_units=4)
    with pytest.raises(ValueError, match=r"an integer >= 0 \(how many .*got -1"):
        validation.check_frozen_from_start(-1)


def test_the_scaling_names_are_the_schedules():
    assert tuple(schedule.SCALINGS) == validation.HOW_SCALES


def test_schedule_exports_no_validators_but_still_checks():
    assert not [n for n in schedule.__all__ if n.startswith("check_")]
    with pytest.raises(ValueError, match="t_0 must be"):
        schedule.freeze_fractions(4, t_0=True)
    with pytest.raises(ValueError, match="frozen_from_start .* of at most 4"):
        schedule.freeze_fractions(4, frozen_from_start=5)


def test_tied_owner():
    from freezeout_tf import ownership

    assert ownership.TIED_OWNERS is validation.TIED_OWNERS
    validation.check_tied_owner("first")
    with pytest.raises(ValueError, match="one of 'first', 'head' .*got 'last'"):
        validation.check_tied_owner("last")
