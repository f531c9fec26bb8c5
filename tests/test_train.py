"""Training into a run folder: files, metrics, best model, resume, reproducibility."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import keras
import pytest

from cnnctl.config import load_config
from cnnctl.errors import ConfigError, Interrupted, RunError, TrainingFailed
from cnnctl.runs import Run, describe
from cnnctl.training.fit import resume_run, train_run
from cnnctl.training.state import read_state


def rows(run) -> list[dict[str, str]]:
    with open(run.metrics_csv) as stream:
        return list(csv.DictReader(stream))


def test_train_writes_the_run_folder(small_config):
    result = train_run(load_config(small_config), Path("runs"), None)
    run = result.run
    assert run.path == Path("runs/small")
    for path in (
        run.config,
        run.classes,
        run.model,
        run.last,
        run.metrics_csv,
        run.metrics_json,
        run.curves,
    ):
        assert path.is_file(), path
    assert json.loads(run.classes.read_text()) == list("0123456789")
    table = rows(run)
    assert [r["epoch"] for r in table] == ["1", "2"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"} <= set(table[0])
    assert float(table[1]["loss"]) < float(table[0]["loss"])
    summary = json.loads(run.metrics_json.read_text())
    assert summary["epochs_done"] == 2 and summary["test"]["accuracy"] > 0.8
    assert summary["best_epoch"] in (1, 2) and summary["train_images_per_second"] > 0
    assert keras.saving.load_model(run.model).count_params() > 0


def test_best_model_is_the_best_epoch_by_val_loss(small_config):
    result = train_run(load_config(small_config, ["train.epochs=3"]), Path("runs"), None)
    table = rows(result.run)
    best = min(range(3), key=lambda i: float(table[i]["val_loss"])) + 1
    assert result.best_epoch == best
    assert read_state(result.run.last).best_epoch == best


def test_same_seed_gives_identical_losses(small_config):
    first = train_run(load_config(small_config), Path("runs"), None)
    second = train_run(load_config(small_config), Path("runs"), None)
    assert second.run.name == "small-2"
    assert [r["loss"] for r in rows(first.run)] == [r["loss"] for r in rows(second.run)]


def test_resume_with_more_epochs_continues_the_same_folder(small_config):
    result = train_run(load_config(small_config), Path("runs"), None)
    saved = rows(result.run)
    lines = result.run.metrics_csv.read_text().splitlines(keepends=True)
    result.run.metrics_csv.write_text("".join(lines[:-1]))  # killed after the checkpoint's write
    resumed = resume_run(result.run, None, ("train.epochs=3",))
    assert resumed.run.path == result.run.path
    assert [r["epoch"] for r in rows(resumed.run)] == ["1", "2", "3"]
    assert rows(resumed.run)[:2] == saved  # the row left out comes back from the checkpoint
    assert load_config(result.run.effective_config).train.epochs == 3
    assert load_config(result.run.config).train.epochs == 2  # as the run began: never rewritten
    assert result.run.status_field("resumes")[0]["config"] == "config.resume-1.yaml"
    assert resumed.test["accuracy"] > 0.8


def test_metrics_csv_lists_an_epoch_only_once_its_checkpoint_is_whole(small_config):
    class CheckpointsUnwritable(keras.callbacks.Callback):
        def on_train_begin(self, logs=None) -> None:
            Path("runs/small/checkpoints").rmdir()
            Path("runs/small/checkpoints").write_text("in the way")

    with pytest.raises(TrainingFailed, match="could not save epoch 1"):
        train_run(load_config(small_config), Path("runs"), callbacks=[CheckpointsUnwritable()])
    assert Path("runs/small/model.keras").is_file()
    assert not Path("runs/small/metrics.csv").exists()  # so a resume never lacks a listed epoch


def test_a_stop_asked_after_the_last_step_still_stops_before_the_test(small_config):
    class CtrlCAtTheEnd(keras.callbacks.Callback):
        def on_train_end(self, logs=None) -> None:  # no step is left for the stop to act at
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted, match="2 of 2 epochs are saved in runs/small"):
        train_run(load_config(small_config), Path("runs"), callbacks=[CtrlCAtTheEnd()])
    assert describe(Run(Path("runs/small"))).status == "interrupted"
    resumed = resume_run(Run(Path("runs/small")))  # nothing left to train: only the test
    assert resumed.epochs_done == 2 and resumed.test["accuracy"] > 0.8


def test_resume_refuses_other_config_changes(small_config):
    result = train_run(load_config(small_config, ["train.epochs=1"]), Path("runs"), None)
    with pytest.raises(ConfigError, match="the config differs from the run's in train.batch_size"):
        resume_run(result.run, None, ("train.batch_size=16",))


def test_resume_refuses_fewer_epochs(small_config):
    result = train_run(load_config(small_config), Path("runs"), None)
    with pytest.raises(ConfigError, match=r"train.epochs can only be raised \(was 2\)"):
        resume_run(result.run, None, ("train.epochs=1",))
    with pytest.raises(RunError, match=r"already finished \(2 of 2 epochs\)") as refused:
        resume_run(result.run, None)  # a finished run: say so, and how to add epochs
    assert "cnnctl train --resume runs/small --epochs 7" in refused.value.hint
    assert [r["epoch"] for r in rows(result.run)] == ["1", "2"]


def test_resume_refuses_a_run_another_process_is_training(small_config):
    import subprocess
    import sys

    result = train_run(load_config(small_config, ["train.epochs=1"]), Path("runs"), None)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        result.run.run_json.write_text(json.dumps({"status": "running", "pid": other.pid}))
        with pytest.raises(
            RunError, match=rf"runs/small: is still being trained \(pid {other.pid}\)"
        ):
            resume_run(result.run, None)
    finally:
        other.kill()


def test_tensorboard_needs_its_package(small_config, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorboard" else real(name, *a),
    )
    with pytest.raises(
        ConfigError,
        match="--set train.tensorboard=true: train.tensorboard: needs the tensorboard package",
    ):
        train_run(load_config(small_config, ["train.tensorboard=true"]), Path("runs"), None)
    assert not Path("runs").exists()


def test_class_weight_weighs_the_loss_and_names_unknown_classes(small_config):
    plain = train_run(load_config(small_config, ("train.epochs=1",)), Path("runs"), None)
    weighted = train_run(
        load_config(small_config, ("train.epochs=1", "train.class_weight={'3': 10.0}")),
        Path("runs"),
        None,
    )
    balanced = train_run(
        load_config(small_config, ("train.epochs=1", "train.class_weight=balanced")),
        Path("runs"),
        None,
    )
    assert weighted.rows[0]["loss"] > 1.5 * plain.rows[0]["loss"]  # class 3 counts ten times
    assert balanced.test["accuracy"] > 0.8
    with pytest.raises(ConfigError, match=r"train.class_weight.threee: no class named 'threee'"):
        train_run(
            load_config(small_config, ("train.class_weight={'threee': 2}",)), Path("runs"), None
        )
    assert sorted(p.name for p in Path("runs").iterdir()) == ["small", "small-2", "small-3"]
