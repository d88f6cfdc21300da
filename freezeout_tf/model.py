"""`FreezeOutModel`: a chain of freeze units and a head, with a train step
that skips the backward pass of frozen units inside one traced graph.

How the frozen prefix is cut out of the backward pass without retracing:
each unit's forward runs under a `tf.switch_case` on in-graph flags
computed from the optimizer's iteration counter.

* Frozen: `tf.stop_gradient(unit(x, training=False))`: BatchNorm uses and
  keeps its moving statistics, and the branch has no gradient.
* First active unit (the one right after the frozen prefix):
  `unit(tf.stop_gradient(x), training=True)`: nothing before it trains, so
  its input gradient is not computed.
* Active: `unit(x, training=True)`.

The gradient of a `tf.switch_case` is again a switch that runs only the taken
branch's gradient, so for a frozen unit no backward op of that unit executes
(its weight "gradients" are zero-filled placeholders that the optimizer
never applies or all-reduces; see `freezeout_tf.optimizer`). Since frozen
units always form a prefix, the backward stops at one boundary."""

import keras
import tensorflow as tf
from keras.src.losses import loss as loss_module

from freezeout_tf import optimizer as fo_optimizer
from freezeout_tf.schedule_state import ScheduleState


@keras.saving.register_keras_serializable(package="freezeout_tf")
class FreezeOutModel(keras.Model):
    """A chain of freeze units followed by a head that never freezes.

    Train it with `fit(..., callbacks=[FreezeOut(...)])`. Without the
    callback it trains like a plain Keras model. `evaluate` and `predict`
    run the plain forward pass.

    Args:
        freeze_units: ordered list of Keras layers (or models), one per freeze
            unit; unit 0 is the first in the forward pass. Available as
            `model.freeze_units`.
        head: a Keras layer (or model) applied after the last unit; never
            frozen. Available as `model.head`.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:

    >>> units = [keras.Sequential([keras.layers.Conv2D(8, 3, padding="same"),
    ...                            keras.layers.BatchNormalization(),
    ...                            keras.layers.ReLU()]) for _ in range(4)]
    >>> head = keras.Sequential([keras.layers.GlobalAveragePooling2D(),
    ...                          keras.layers.Dense(10)])
    >>> model = FreezeOutModel(units, head)
    >>> model.compile(original_sgd(), "sparse_categorical_crossentropy")
    >>> model.fit(ds, epochs=10, callbacks=[FreezeOut()])
    """

    def __init__(self, freeze_units, head, **kwargs):
        super().__init__(**kwargs)
        freeze_units = list(freeze_units)
        if not freeze_units:
            raise ValueError("freeze_units must hold at least one layer.")
        for i, unit in enumerate(freeze_units + [head]):
            if not isinstance(unit, keras.layers.Layer):
                name = "head" if i == len(freeze_units) else f"unit {i}"
                raise ValueError(
                    f"Each freeze unit and the head must be a Keras layer or "
                    f"model; {name} is {unit!r}."
                )
        self.freeze_units = freeze_units
        self.head = head
        self.schedule_state = ScheduleState(len(freeze_units))
        # Python-side count of train_step traces: 1 for a whole run.
        self.train_step_traces = 0

    @classmethod
    def from_sequential(cls, sequential, num_head_layers=1, **kwargs):
        """Makes a `FreezeOutModel` from a `keras.Sequential`.

        Each layer of `sequential` becomes one freeze unit, except the last
        `num_head_layers`, which form the head. Group layers into blocks
        (nested `keras.Sequential`s) first if a unit should hold several.

        Args:
            sequential: a `keras.Sequential`.
            num_head_layers: how many trailing layers make up the head.
            **kwargs: passed to the constructor (e.g. `name`).
        """
        layers = list(sequential.layers)
        if not 1 <= num_head_layers < len(layers):
            raise ValueError(
                f"num_head_layers must be between 1 and {len(layers) - 1} "
                f"for a Sequential of {len(layers)} layers; got "
                f"{num_head_layers!r}."
            )
        head_layers = layers[-num_head_layers:]
        head = head_layers[0] if num_head_layers == 1 else keras.Sequential(
            head_layers, name="head"
        )
        return cls(layers[:-num_head_layers], head, **kwargs)

    @classmethod
    def from_model(cls, model, num_units=None, boundaries=None, **kwargs):
        """Splits a functional `keras.Model` into freeze units and a head.

        The result shares the layers and weights of `model`. See
        `freezeout_tf.functional.split_model` for how the cut points are
        found and grouped.

        Args:
            model: a single-input, single-output functional `keras.Model`.
            num_units: group the segments into this many units of about
                equal forward cost; by default one unit per segment.
            boundaries: names of layers right after which to cut, instead of
                `num_units`.
            **kwargs: passed to the constructor (e.g. `name`).
        """
        from freezeout_tf.functional import split_model

        units, head = split_model(model, num_units=num_units,
                                  boundaries=boundaries)
        return cls(units, head, **kwargs)

    @property
    def num_units(self):
        return len(self.freeze_units)

    def build(self, input_shape):
        x = keras.KerasTensor(input_shape)
        for layer in self.freeze_units + [self.head]:
            x = layer(x)
        self.built = True

    def call(self, inputs, training=None):
        x = inputs
        for unit in self.freeze_units:
            x = unit(x, training=training)
        return self.head(x, training=training)

    # The variables FreezeOut trains.

    def _unit_variable_ids(self):
        """For each unit and the head, ids of its originally-trainable
        variables. `layer._trainable_variables` keeps a variable even after
        `layer.trainable = False`, which the FreezeOut callback sets on frozen
        units; so the set, and the optimizer's slots, never change."""
        ids = []
        for unit in self.freeze_units + [self.head]:
            unit_ids = set()
            for layer in unit._flatten_layers(include_self=True):
                unit_ids.update(id(v) for v in layer._trainable_variables)
            ids.append(unit_ids)
        return ids

    @property
    def trainable_variables(self):
        """All variables of the units and head that FreezeOut trains,
        including those of units frozen so far (their `trainable` flag is
        False, but they keep their optimizer slots so that saving, loading
        and resuming see one fixed variable list)."""
        unit_ids = set().union(*self._unit_variable_ids())
        return [v for v in self.weights if id(v) in unit_ids]

    def variable_units(self, variables):
        """Unit index of each variable (the head is `num_units`)."""
        unit_ids = self._unit_variable_ids()
        units = []
        for v in variables:
            owner = [u for u, ids in enumerate(unit_ids) if id(v) in ids]
            if not owner:
                raise ValueError(f"Variable {v.path} belongs to no unit.")
            units.append(owner[0])
        return units

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Without a distribution strategy Keras (TF backend) defers creating
        # the model, metric and optimizer variables to the first trace of the
        # train function, which tf.function then traces a second time. Build
        # everything up front, as Keras does under a strategy, so that the
        # train function is traced exactly once per run.
        if self._distribute_strategy is not None:
            return super()._maybe_symbolic_build(iterator, data_batch)
        self._distribute_strategy = tf.distribute.get_strategy()
        try:
            super()._maybe_symbolic_build(iterator, data_batch)
        finally:
            self._distribute_strategy = None

    # The train step.

    def _forward(self, x, step):
        """Forward pass with frozen units in inference mode and cut out of
        the backward pass; active units and the head in training mode."""
        state = self.schedule_state
        for i, unit in enumerate(self.freeze_units):

            def frozen(unit=unit, x=x):
                return tf.stop_gradient(unit(x, training=False))

            def first_active(unit=unit, x=x):
                # Nothing before this unit trains: do not compute the
                # gradient with respect to its input.
                return unit(tf.stop_gradient(x), training=True)

            def active(unit=unit, x=x):
                return unit(x, training=True)

            if i == 0:
                x = tf.cond(state.frozen(step, 0), frozen, first_active)
            else:
                # 0: frozen, 1: first active unit, 2: after an active unit.
                branch = tf.where(
                    state.frozen(step, i), 0,
                    tf.where(state.frozen(step, i - 1), 1, 2),
                )
                x = tf.switch_case(branch, [frozen, first_active, active])
        return self.head(x, training=True)

    def compute_freezeout_gradients(self, x, y, sample_weight=None):
        """Loss, predictions and gradients of one training step.

        The gradients are those of `self.trainable_variables`; for units
        frozen at the current step no backward op runs and their entries are
        zeros that the optimizer skips.

        Returns:
            `(loss, y_pred, gradients)`, `loss` unscaled.
        """
        step = self.optimizer.iterations
        variables = self.trainable_variables
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch([v.value for v in variables])
            y_pred = self._forward(x, step)
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                training=True,
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, [v.value for v in variables])
        return loss, y_pred, gradients

    def train_step(self, data):
        self.train_step_traces += 1
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        fo_optimizer.attach_schedule(
            self.optimizer, variables, self.variable_units(variables),
            self.schedule_state,
        )
        loss, y_pred, gradients = self.compute_freezeout_gradients(
            x, y, sample_weight
        )
        # As Keras' own train_step: track the loss for the progress bar.
        self._loss_tracker.update_state(
            loss_module.unscale_loss_for_distribution(loss),
            sample_weight=tf.shape(tf.nest.flatten(x)[0])[0],
        )
        self.optimizer.apply(gradients, variables)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def get_config(self):
        config = super().get_config()
        config.update(
            freeze_units=[
                keras.saving.serialize_keras_object(u)
                for u in self.freeze_units
            ],
            head=keras.saving.serialize_keras_object(self.head),
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        units = []
        for unit_config in config.pop("freeze_units"):
            unit = keras.saving.deserialize_keras_object(
                unit_config, custom_objects=custom_objects
            )
            # keras.Sequential.from_config drops its own `trainable` flag;
            # restore it so a loaded model shows which units were frozen.
            trainable = unit_config.get("config", {}).get("trainable")
            if trainable is not None:
                unit.trainable = trainable
            units.append(unit)
        head = keras.saving.deserialize_keras_object(
            config.pop("head"), custom_objects=custom_objects
        )
        return cls(units, head, **config)
