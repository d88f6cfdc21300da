"""freezeout_tf.recipes.training: the factories and the resume protocol, directly."""

import json
import os

import keras
import numpy as np
import pytest

from freezeout_tf.recipes import checkpoint, training, training_log
from freezeout_tf.models import VGG_CONFIGS, densenet_bc_num_units

OPTIONS = {"epochs": 2, "t_0": 0.8}


def _build():
    keras.utils.set_random_seed(0)
    return training.build_model("densenet", 10, 4, num_classes=10)


def _compile(model):
    training.compile_model(model, training.make_optimizer("sgd", 0.1))


def _start(files, options=OPTIONS, resume=False):
    return training.start_or_resume(
        files, options, resume=resume, steps_per_epoch=2,
        build=_build, compile=_compile,
    )


def _train_one_epoch(files):
    """A new run of one epoch of 2 steps, checkpointed as the script does."""
    start = _start(files)
    training.open_log(files, OPTIONS, resume=False, initial_epoch=0,
                      steps_per_epoch=2)
    x = np.zeros((8, 32, 32, 3), "float32")
    y = np.zeros(8, "int64")
    start.model.fit(x, y, batch_size=4, epochs=1, verbose=0,
                    callbacks=[checkpoint.EpochCheckpoint(files.checkpoint)])


def test_factories():
    assert [training.vgg_config(d) for d in (11, 13, 16, 19)] == list("ABDE")
    with pytest.raises(ValueError, match="11, 13, 16, 19; got 12"):
        training.vgg_config(12)
    model = _build()
    assert model.num_units == densenet_bc_num_units(10)
    assert model.head.layers[-1].activation is keras.activations.linear
    with pytest.raises(ValueError, match="'resnet'"):
        training.build_model("resnet", 10, 4, num_classes=10)
    assert type(training.make_optimizer("adamw", 1e-3)).__name__ == "AdamW"
    with pytest.raises(ValueError, match="'rmsprop'"):
        training.make_optimizer("rmsprop", 0.1)
    assert sorted(VGG_CONFIGS) == ["A", "B", "D", "E"]


def test_new_run_then_resume(tmp_path):
    files = training.RunFiles(str(tmp_path / "out"), "run")
    _train_one_epoch(files)
    saved = json.loads(open(files.options).read())
    assert saved == OPTIONS

    # A new run over it is refused; so is a resume with other options.
    with pytest.raises(training.RunError, match="exists"):
        _start(files)
    with pytest.raises(training.RunError, match="--epochs 2 -> 3"):
        _start(files, dict(OPTIONS, epochs=3), resume=True)

    start = _start(files, resume=True)
    assert (start.resumed, start.restarted, start.initial_epoch) == (True, False, 1)
    # A killed checkpoint write left its temporary file: open_log clears it.
    torn_tmp = checkpoint.temporary_path(files.checkpoint)
    open(torn_tmp, "wb").close()
    log = training.open_log(files, OPTIONS, resume=True, initial_epoch=1,
                            steps_per_epoch=2)
    assert not os.path.exists(torn_tmp)
    assert training_log.read_log(log.path)[-1]["resume"] == 1
    assert json.loads(open(files.options).read()) == OPTIONS  # not rewritten


def test_resume_without_a_run_or_a_checkpoint(tmp_path):
    files = training.RunFiles(str(tmp_path), "run")
    with pytest.raises(training.RunError, match="no checkpoint"):
        _start(files, resume=True)
    training.write_json_atomic(files.options, OPTIONS)  # started, then killed
    start = _start(files, resume=True)
    assert (start.resumed, start.restarted, start.initial_epoch) == (False, True, 0)


@pytest.mark.parametrize("damage", ["torn", "foreign"])
def test_a_torn_or_foreign_checkpoint_is_refused_and_kept(damage, tmp_path):
    files = training.RunFiles(str(tmp_path), "run")
    training.write_json_atomic(files.options, OPTIONS)
    if damage == "torn":
        _build().save(files.checkpoint)
        data = open(files.checkpoint, "rb").read()
        open(files.checkpoint, "wb").write(data[: len(data) // 2])
        match = "torn"
    else:
        keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save(
            files.checkpoint
        )
        match = "not a FreezeOutModel"
    before = open(files.checkpoint, "rb").read()
    with pytest.raises(checkpoint.CheckpointError, match=match):
        _start(files, resume=True)
    assert open(files.checkpoint, "rb").read() == before


def test_stop_after_and_atomic_json(tmp_path):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    history = model.fit(np.ones((4, 1)), np.ones((4, 1)), epochs=5, verbose=0,
                        callbacks=[training.StopAfter(2)])
    assert len(history.history["loss"]) == 2
    path = str(tmp_path / "o.json")
    training.write_json_atomic(path, {"a": 1})
    with pytest.raises(ValueError):  # strict JSON: no NaN token
        training.write_json_atomic(path, {"a": float("nan")})
    assert json.load(open(path)) == {"a": 1}  # the old file is intact


@pytest.mark.parametrize("stop_after", [None, 2])
def test_run_callbacks(stop_after, tmp_path):
    files = training.RunFiles(str(tmp_path), "run")
    log = training_log.MetricsLog(files.log)
    run = training.run_callbacks(
        files, log, num_units=3, epochs=4, steps_per_epoch=10, t_0=0.5,
        how_scale="linear", scale_lr=False, stop_after=stop_after)
    kinds = [type(c).__name__ for c in run.callbacks]
    assert kinds[:6] == ["FreezeOut", "StopOnDivergence", "MetricsLogger",
                         "FreezeOutSummaries", "TensorBoard", "EpochCheckpoint"]
    freezeout, divergence, logger, summaries, board, ckpt = run.callbacks[:6]
    assert (freezeout.t_0, freezeout.how_scale, freezeout.scale_lr) == (
        0.5, "linear", False)
    assert run.divergence is divergence and divergence.log is log
    assert (logger.log, logger.epochs, logger.num_units) == (log, 4, 3)
    assert summaries.log_dir == os.path.join(files.tensorboard, "freezeout")
    assert summaries.total_steps == 40 and summaries.scale_lr is False
    assert board.log_dir == files.tensorboard
    assert ckpt.path == files.checkpoint
    if stop_after is None:
        assert len(run.callbacks) == 6
    else:  # after the checkpoint, so the last epoch is saved
        (stop,) = run.callbacks[6:]
        assert isinstance(stop, training.StopAfter) and stop.last == 2
    assert not os.listdir(tmp_path)  # nothing written before fit
