"""``python -m freezeout_tf.cli``: the training command (``freezeout-train``)."""

import sys

from freezeout_tf.cli.train import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m freezeout_tf.cli"))
