"""The project's own probes print no framework warning lines.

Splitting a KerasHub transformer probes the model with a stand-in sequence
length (`freezeout_tf.core.macs.with_free_dimension`). A stand-in longer
than the model's position embedding made TensorFlow's C++ runtime print
`W0000 ... INVALID_ARGUMENT: Expected size[0] in [0, 16], but got 32` to
file descriptor 2, where no Python handler can catch it: so the split runs
in a subprocess whose stderr is read, with TensorFlow's C++ logging at its
default level.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("keras_hub")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPLIT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import hub_models
    import freezeout_tf as fo

    for builder in ("bert_classifier", "gpt2_causal_lm"):
        model = fo.FreezeOutModel.from_model(getattr(hub_models, builder)(),
                                             num_units=2)
        print(builder, "units", model.num_units,
              "flops", fo.unit_flops(model)[0] > 0)
""")


def test_splitting_transformers_prints_no_framework_warning():
    # BERT and GPT-2 in one process: TensorFlow's start-up is paid once.
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="0")
    code = SPLIT.format(tests=os.path.join(ROOT, "tests"))
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "bert_classifier units 2 flops True" in done.stdout
    assert "gpt2_causal_lm units 2 flops True" in done.stdout
    # TensorFlow's own start-up lines (CPU features, no CUDA) are not ours.
    ours = [line for line in done.stderr.splitlines()
            if "INVALID_ARGUMENT" in line or "rendezvous" in line
            or "OP_REQUIRES" in line]
    assert ours == []
