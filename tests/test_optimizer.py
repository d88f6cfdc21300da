"""One optimizer step per unit against NumPy: the per-unit learning rate
reaches the weights (Δw = -lr · m_i(step) · g_i for SGD), weight decay
included, and a frozen unit does not move at all."""

import keras
import numpy as np
import tensorflow as tf

from freezeout_tf import FreezeOutModel, original_sgd, schedule

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
TOTAL, STEP, NUM_UNITS = 100, 40, 4
# Linear t_0=0.3: unit 0 freezes at step 31; at step 40 units 1..3 and the
# head all train, each with its own multiplier.
FRACTIONS = schedule.freeze_fractions(NUM_UNITS, 0.3, "linear")


def dense_model():
    """Dense units (no BatchNormalization or dropout: the plain tape's
    gradient does not depend on the training mode)."""
    keras.utils.set_random_seed(0)
    model = FreezeOutModel(
        [keras.Sequential([keras.layers.Dense(6, activation="tanh")])
         for _ in range(NUM_UNITS)],
        keras.Sequential([keras.layers.Dense(3)]),
    )
    model.build((None, 5))
    return model


def one_step(optimizer, prepare=None):
    """Takes one FreezeOut step at `STEP` of a `TOTAL`-step schedule.

    Returns, per trainable variable: its value before and after the step,
    its plain-tape gradient and its unit's multiplier m_i(STEP)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5)).astype("float32")
    y = rng.integers(0, 3, 16)
    model = dense_model()
    model.compile(optimizer, LOSS)
    model.schedule_state.set(TOTAL, FRACTIONS)
    model.batches_taken.assign(STEP)
    variables = model.trainable_variables
    model.optimizer.build(variables)
    if prepare is not None:
        prepare(model.optimizer, variables)
    with tf.GradientTape() as tape:
        loss = LOSS(y, model(x, training=True))
    grads = [g.numpy() for g in tape.gradient(loss, variables)]
    before = [v.numpy().copy() for v in variables]
    model.train_on_batch(x, y)
    after = [v.numpy() for v in variables]
    m = schedule.lr_multipliers(STEP, TOTAL, FRACTIONS)
    mults = [m[u] for u in model.variable_units(variables)]
    return before, after, grads, mults


def test_schedule_gives_units_different_multipliers():
    m = schedule.lr_multipliers(STEP, TOTAL, FRACTIONS)
    assert m[0] == 0.0  # unit 0 frozen
    assert len(set(np.round(m[1:], 6))) == NUM_UNITS  # all others differ
    assert np.all(m[1:] > 0)


def check(after, want):
    assert len(after) == len(want) == 2 * (NUM_UNITS + 1)
    for a, w in zip(after, want):
        np.testing.assert_allclose(a, w, rtol=2e-5, atol=1e-7)


def test_sgd_step_is_minus_lr_times_multiplier_times_gradient():
    lr = 0.1
    before, after, grads, mults = one_step(keras.optimizers.SGD(lr))
    check(after, [w - lr * m * g for w, g, m in zip(before, grads, mults)])
    # The frozen unit 0 (kernel and bias) did not move at all.
    assert mults[0] == mults[1] == 0.0
    assert np.array_equal(after[0], before[0])


def test_original_sgd_step_with_nesterov_momentum_and_l2():
    lr, mom, l2 = 0.1, 0.9, 1e-4
    velocity = []

    def prepare(opt, variables):
        rng = np.random.default_rng(1)
        for v in variables:
            s = rng.normal(size=v.shape).astype("float32")
            opt.momentums[opt._get_variable_index(v)].assign(s)
            velocity.append(s)

    before, after, grads, mults = one_step(original_sgd(lr), prepare)
    want = []
    for w, g, m, vel in zip(before, grads, mults, velocity):
        if m == 0:  # frozen: neither the weight nor its velocity moves
            want.append(w)
            continue
        g = g + l2 * w
        vel = mom * vel - lr * m * g
        want.append(w + mom * vel - lr * m * g)
    check(after, want)


def test_adamw_step_with_decoupled_weight_decay():
    lr, wd, b1, b2, eps, iterations = 1e-2, 0.1, 0.9, 0.999, 1e-7, 4
    moments = []

    def prepare(opt, variables):
        # Moments and an iteration count of a run under way, so that the
        # step depends on the gradient's size, not only its sign.
        opt.iterations.assign(iterations)
        rng = np.random.default_rng(1)
        for v in variables:
            i = opt._get_variable_index(v)
            mo = 0.1 * rng.normal(size=v.shape).astype("float32")
            ve = 0.01 * rng.uniform(size=v.shape).astype("float32")
            opt._momentums[i].assign(mo)
            opt._velocities[i].assign(ve)
            moments.append((mo, ve))

    opt = keras.optimizers.AdamW(lr, weight_decay=wd, beta_1=b1, beta_2=b2,
                                 epsilon=eps)
    before, after, grads, mults = one_step(opt, prepare)
    t = iterations + 1
    want = []
    for w, g, m, (mo, ve) in zip(before, grads, mults, moments):
        if m == 0:
            want.append(w)
            continue
        # As optimizer.py documents: the decay is lr * m_i * wd, applied
        # before the Adam step (Keras' order), on the same variables.
        w = w - w * (lr * m * wd)
        mo = mo + (g - mo) * (1 - b1)
        ve = ve + (g * g - ve) * (1 - b2)
        alpha = lr * m * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        want.append(w - mo * alpha / (np.sqrt(ve) + eps))
    check(after, want)
