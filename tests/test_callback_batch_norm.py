"""FreezeOut warns when a unit freezes before its BatchNorm's moving
statistics could have left their initial values (docs/guides/callback.md,
"BatchNorm at the freeze step"). The README's CNN quickstart is run both
ways in test_readme.py."""

import math
import re
import warnings

import keras
import pytest

from conftest import LOSS, tiny_data, tiny_model
from freezeout_tf import AdaptiveFreeze, FreezeOut
from freezeout_tf.callbacks.freezeout import BatchNormLagWarning, settling_steps


def _batch_norms(model):
    return [layer for unit in model.freeze_units for layer in unit.layers
            if isinstance(layer, keras.layers.BatchNormalization)]


def _fit(model, callback, epochs=2):
    x, y = tiny_data()
    model.compile(keras.optimizers.SGD(0.1), LOSS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=16, epochs=epochs, verbose=0,
                  callbacks=[callback])
    return [str(w.message) for w in caught
            if w.category is BatchNormLagWarning]


def test_settling_steps_by_hand():
    # 0.99 ** 458 = 0.0101, 0.99 ** 459 = 0.00995
    assert settling_steps(0.99) == 459 and settling_steps(0.9) == 44
    assert settling_steps(0.1) == 2 and settling_steps(0.0) == 1
    assert settling_steps(1.0) == math.inf


def test_a_scheduled_freeze_before_the_statistics_settle_warns_once():
    # 8 steps; unit 0 freezes at 0.512 * 8 -> step 5, long before 459.
    (message,) = _fit(tiny_model(), FreezeOut(t_0=0.8))
    assert "\n" not in message
    assert re.match(r"FreezeOut: unit 0 freezes after 5 steps \(4 units in "
                    r"all\), but its BatchNormalization '\w+' "
                    r"\(momentum=0\.99\) needs about 459 ", message)
    # The fix must settle within the 5 steps: 0.39 ** 5 = 0.009 <= 0.01
    # (and 0.40 ** 5 = 0.0102 would not).
    assert message.endswith("Fix: BatchNormalization(momentum=0.39) (about 5 "
                            "steps), or train longer.")


def test_statistics_that_settle_in_time_or_are_pretrained_do_not_warn():
    model = tiny_model()
    for layer in _batch_norms(model):
        layer.momentum = 0.1  # settled after 2 steps
    assert _fit(model, FreezeOut(t_0=0.8)) == []
    model = tiny_model()
    for layer in _batch_norms(model):  # as after pretraining
        layer.moving_variance.assign(layer.moving_variance * 0 + 2.0)
    assert _fit(model, FreezeOut(t_0=0.8)) == []


def test_an_adaptive_freeze_before_the_statistics_settle_warns():
    model = tiny_model()
    callback = FreezeOut(t_0=None, adaptive=AdaptiveFreeze(
        window=2, threshold=0.05, interval=2))
    messages = _fit(model, callback, epochs=6)
    frozen = model.schedule_state.host_freeze_steps()[:-1] < 24
    assert frozen.sum() >= 1  # decided in the train step, seen at an epoch end
    (message,) = messages
    assert message.startswith("FreezeOut: unit 0 freezes after ")
