"""The training command line: DenseNet-BC, Wide ResNet or VGG on CIFAR-10/100.

The Keras 3 / TensorFlow counterpart of the original FreezeOut training
script: every option of the original works under its original name and a
hyphenated one (``--t_0`` / ``--t-0``, ...). Three ways to run it, the same
command::

    freezeout-train ...                 # the console script (pip install)
    python -m freezeout_tf.cli ...
    python scripts/train_cifar.py ...   # from a source checkout

Examples::

    # the original's default run: DenseNet-BC L=76 k=12 on CIFAR-100, which
    # tensorflow-datasets downloads (161 MiB) and prepares on first use under
    # --data-dir (default ~/tensorflow_datasets)
    freezeout-train --output-dir runs/densenet76

    # a one-minute demo on synthetic data (no download needed)
    freezeout-train --dataset synthetic -L 10 -k 4 --epochs 3

    # continue it after an interruption, at the exact step
    freezeout-train --dataset synthetic -L 10 -k 4 --epochs 3 --resume

Outputs, under ``--output-dir``: ``NAME.keras`` (checkpoint after every
epoch, with optimizer state, replaced atomically), ``NAME.jsonl`` (metrics
log, JSON lines, appended), ``NAME.args.json`` (the options of the run,
checked on ``--resume``) and ``tensorboard/NAME/`` (TensorBoard event files).
``NAME`` is ``--save-weights`` or derived from the options.

Exit status: 0 done; 2 bad input (an option, or files that do not allow the
run, such as a torn checkpoint on ``--resume``) or a data set that could not
be downloaded (no network, a proxy that refuses, a checksum mismatch: within
seconds, see ``freezeout_tf.recipes.download``), refused with one line before
anything is written under ``--output-dir``; 3 the training loss became
non-finite: the run stopped in that epoch, and its last good checkpoint is
kept; 130 Ctrl-C: one line names the last checkpoint and the command that
continues the run (the same options and ``--resume``).

Modules: ``options``, the parser and the checks of every value (standard
library only, so a bad option is refused before TensorFlow loads);
``train``, ``main``: the run, which is ``freezeout_tf.recipes.training``, and what
it prints.

Layer: 7, the top. Imports only the standard library until the options are
checked, then `recipes`, `estimates` and `callbacks`.
"""

from typing import TYPE_CHECKING

from freezeout_tf._lazy import lazy_exports

__all__ = ["main", "options", "train"]

_NAMES = {"main": "freezeout_tf.cli.train"}
_SUBMODULES = ["options", "train"]

__getattr__, __dir__ = lazy_exports(__name__, _NAMES, _SUBMODULES)

if TYPE_CHECKING:  # what static tools (the API reference, IDEs) read
    from freezeout_tf.cli import options, train
    from freezeout_tf.cli.train import main
