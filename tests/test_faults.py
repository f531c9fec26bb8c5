"""Faults a run must survive: a full disk, an unwritable folder, a damaged run, NaN losses."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import keras
import pytest

from cnnctl.cli import main
from cnnctl.config import load_config
from cnnctl.errors import CnnctlError, RunError, TrainingFailed, explain
from cnnctl.runs import Run, describe
from cnnctl.startup import check_keras_version
from cnnctl.training.fit import resume_run, train_run
from cnnctl.training.state import read_state


def test_disk_full_while_saving_keeps_the_previous_checkpoint(small_config, monkeypatch):
    saves = {"n": 0}
    real_save = keras.Model.save

    def save_until_full(model, path, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] > 2:  # epoch 1 writes model.keras and last.keras; epoch 2 runs out of space
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(model, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save_until_full)
    with pytest.raises(TrainingFailed) as info:
        train_run(
            load_config(small_config, ["data.limit=1000", "train.epochs=3"]), Path("runs"), None
        )
    message = info.value.format_message()
    assert "runs/small: could not save epoch 2: No space left on device" in message
    assert "cnnctl train --resume runs/small" in message and info.value.exit_code == 1
    monkeypatch.setattr(keras.Model, "save", real_save)
    run = Run(Path("runs/small"))
    assert read_state(run.last).epoch == 1  # the old checkpoint, whole
    keras.saving.load_model(run.model)
    assert not list(run.path.rglob(".*tmp*"))  # no partial file left at any name
    assert describe(run).status == "failed"
    resumed = resume_run(run, None)
    assert resumed.epochs_done == 3


def test_unwritable_runs_folder_is_an_error_before_training(runner, small_config, tmp_path):
    (tmp_path / "a-file").write_text("")
    result = runner.invoke(main, ["train", str(small_config), "--runs-dir", "a-file/runs"])
    assert result.exit_code == 2
    assert (
        "a-file/runs: cannot create the runs folder" in result.stderr
        and "Traceback" not in result.output
    )


def test_damaged_run_is_reported_and_not_resumed(runner, trained, tmp_path):
    runs = Path(shutil.copytree(trained, tmp_path / "runs"))
    last = runs / "small" / "checkpoints" / "last.keras"
    last.write_bytes(last.read_bytes()[:1000])  # truncated by hand
    (runs / "small" / "model.keras").unlink()  # deleted by hand
    assert describe(Run(runs / "small")).status == "damaged"
    listed = runner.invoke(main, ["runs", str(runs)])
    assert "damaged" in listed.stdout
    result = runner.invoke(main, ["train", "--resume", "small", "--runs-dir", str(runs)])
    assert result.exit_code == 2
    assert (
        "last.keras: not a cnnctl checkpoint" in result.stderr and "Traceback" not in result.output
    )
    last.unlink()
    result = runner.invoke(main, ["train", "--resume", "small", "--runs-dir", str(runs)])
    assert (
        result.exit_code == 2
        and "last.keras: missing, though metrics.csv records finished epochs" in result.stderr
    )


def test_nan_loss_stops_with_the_epoch_and_a_fix(runner, small_config):
    result = runner.invoke(
        main,
        [
            "train",
            str(small_config),
            "--set",
            "data.limit=500",
            "--set",
            "train.optimizer={type: SGD, learning_rate: 1e30}",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "the loss became NaN (or infinite) in epoch 1" in result.stderr
    assert "lower train.optimizer.learning_rate" in result.stderr
    assert describe(Run(Path("runs/small"))).status == "failed"


def test_old_keras_is_refused():
    check_keras_version("3.14.0")
    with pytest.raises(CnnctlError, match="Keras 3.11.2 has known model-loading vulnerabilities"):
        check_keras_version("3.11.2")


@pytest.mark.parametrize(
    ("error", "code", "phrase"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "x"), 1, "x: no space left"),
        (PermissionError(errno.EACCES, "Permission denied", "/ro"), 2, "/ro: Permission denied"),
        (MemoryError(), 1, "out of memory"),
        (KeyboardInterrupt(), 130, "interrupted"),
        (
            ZeroDivisionError("division by zero"),
            1,
            "internal error: ZeroDivisionError: division by zero",
        ),
        (RunError("kept"), 2, "kept"),
    ],
    ids=["disk-full", "permission", "memory", "interrupt", "bug", "ours"],
)
def test_one_place_explains_every_error(error, code, phrase):
    explained = explain(error)
    assert explained.exit_code == code and phrase in explained.format_message()
