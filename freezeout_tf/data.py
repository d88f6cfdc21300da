"""Moved to `freezeout_tf.recipes.data` (see `freezeout_tf._moved`)."""

from freezeout_tf._moved import alias_module

alias_module(__name__)
