"""Moved to `freezeout_tf.core.schedule_state` (see `freezeout_tf._moved`)."""

from freezeout_tf._moved import alias_module

alias_module(__name__)
