"""What FreezeOutModel.compile refuses, before any training."""

import keras
import pytest

from conftest import LOSS, tiny_model
from freezeout_tf._internals import keras_internals


@pytest.mark.parametrize("option, message", [
    ({"use_ema": True}, r"use_ema=True\) is not supported"),
    ({"gradient_accumulation_steps": 2},
     r"gradient_accumulation_steps=2\) is not supported"),
])
def test_optimizer_options_that_move_frozen_units_are_refused(option, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model.compile(keras.optimizers.SGD(0.1, **option), LOSS)


def test_guard_names_a_changed_private_internal(monkeypatch):
    assert keras_internals.problems() == []  # this Keras is as expected
    # A release that changes the signature of a method the hooks replace:
    owner = next(c for c in type(keras.optimizers.SGD()).__mro__
                 if "_all_reduce_sum_gradients" in c.__dict__)
    monkeypatch.setattr(owner, "_all_reduce_sum_gradients",
                        lambda self, gradients, variables: None)
    assert keras_internals.problems() == [
        "optimizer._all_reduce_sum_gradients('gradients', 'variables') "
        "does not take ('grads_and_vars',)"]
    monkeypatch.setattr(keras_internals, "_checked", False)
    with pytest.raises(keras_internals.KerasInternalsError,
                       match=rf"Keras {keras.__version__}.*_all_reduce_sum_gradients"
                             r".*Supported Keras: >=3\.8,<4"):
        tiny_model().compile(keras.optimizers.SGD(0.1), LOSS)
