#!/usr/bin/env python
"""Train a network on CIFAR-10/100 with FreezeOut: ``freezeout-train``, from a
source checkout.

The command is ``freezeout_tf.cli`` (``python scripts/train_cifar.py --help``).
"""

import os
import sys

# Run from a source checkout without installing: the package beside scripts/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from freezeout_tf.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="train_cifar.py"))
