"""Per-epoch rules as pure functions, and as they show in metrics.csv of a real run."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import pytest

from cnnctl.config import EarlyStoppingConfig, LRSchedule, load_config
from cnnctl.errors import ConfigError
from cnnctl.training.fit import train_run
from cnnctl.training.schedule import early_stop_step, improved, plateau_step, scheduled_lr


def test_improved_respects_mode_and_min_delta():
    assert improved(0.5, None, "min")
    assert improved(0.4, 0.5, "min") and not improved(0.45, 0.5, "min", min_delta=0.1)
    assert improved(0.9, 0.8, "max") and not improved(0.7, 0.8, "max")


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"type": "step", "step_epochs": 2, "factor": 0.5}, [1.0, 1.0, 0.5, 0.5, 0.25]),
        ({"type": "exponential", "factor": 0.5}, [1.0, 0.5, 0.25, 0.125, 0.0625]),
        ({"type": "cosine"}, [1.0, 0.904508, 0.654508, 0.345492, 0.095492]),
        ({"type": "cosine", "warmup_epochs": 1}, [0.5, 1.0, 0.853553, 0.5, 0.146447]),
        ({"type": "exponential", "factor": 0.1, "min_lr": 0.05}, [1.0, 0.1, 0.05, 0.05, 0.05]),
    ],
    ids=["step", "exponential", "cosine", "cosine-warmup", "min-lr"],
)
def test_fixed_schedules(schedule, expected):
    rule = LRSchedule(**schedule)
    assert [round(scheduled_lr(rule, 1.0, e, 5), 6) for e in range(5)] == expected


def test_plateau_and_early_stopping_count_like_keras():
    plateau, state, lr = LRSchedule(type="reduce_on_plateau", patience=2, factor=0.5), {}, 1.0
    lrs = []
    for value in [1.0, 0.9, 0.95, 0.95, 0.95, 0.95]:
        lr = plateau_step(plateau, state, value, lr)
        lrs.append(lr)
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]
    rule, state = EarlyStoppingConfig(patience=2), {}
    stops = [early_stop_step(rule, state, v, e + 1) for e, v in enumerate([1.0, 0.9, 0.95, 0.95])]
    assert stops == [False, False, False, True] and state["best_epoch"] == 2


FOUR_EPOCHS = ["data.limit=1000", "train.epochs=4"]


def lr_column(run) -> list[float]:
    with open(run.metrics_csv) as stream:
        return [float(row["lr"]) for row in csv.DictReader(stream)]


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("{type: step, step_epochs: 2, factor: 0.5}", [1e-3, 1e-3, 5e-4, 5e-4]),
        ("{type: exponential, factor: 0.5}", [1e-3, 5e-4, 2.5e-4, 1.25e-4]),
        ("{type: cosine}", [1e-3, 8.535534e-4, 5e-4, 1.464466e-4]),
        # min_delta 10 makes every epoch after the first a plateau
        (
            "{type: reduce_on_plateau, patience: 1, factor: 0.5, min_delta: 10}",
            [1e-3, 1e-3, 5e-4, 2.5e-4],
        ),
    ],
    ids=["step", "exponential", "cosine", "plateau"],
)
def test_schedules_show_in_metrics_csv(small_config, schedule, expected):
    config = load_config(small_config, [*FOUR_EPOCHS, f"train.lr_schedule={schedule}"])
    result = train_run(config, Path("runs"), None)
    assert lr_column(result.run) == pytest.approx(expected, rel=1e-5)


def test_early_stopping_stops_at_the_expected_epoch(small_config):
    config = load_config(
        small_config,
        [
            *FOUR_EPOCHS,
            "train.epochs=10",
            "train.early_stopping={monitor: val_loss, patience: 2, min_delta: 10}",
        ],
    )
    result = train_run(config, Path("runs"), None)
    assert len(lr_column(result.run)) == 3  # epoch 1 sets the best; 2 and 3 fail to beat it by 10
    assert result.summary()["stopped_early"] == 3 and result.epochs_done == 3


def test_gradient_clipping_and_tensorboard(small_config):
    config = load_config(
        small_config,
        [
            "data.limit=500",
            "train.epochs=1",
            "train.tensorboard=true",
            "train.optimizer={type: Adam, clipnorm: 1.0}",
        ],
    )
    result = train_run(config, Path("runs"), None)
    assert any((result.run.path / "tensorboard").rglob("events.out.tfevents.*"))
    saved = json.loads(zipfile.ZipFile(result.run.model).read("config.json"))
    assert (
        saved["compile_config"]["optimizer"]["config"]["clipnorm"] == 1.0
    )  # clipping is on in the model


def test_label_smoothing_is_in_the_saved_loss_and_the_model_reloads(small_config):
    from cnnctl.modelfile.load import load_model

    config = load_config(
        small_config, ["data.limit=500", "train.epochs=1", "train.label_smoothing=0.1"]
    )
    result = train_run(config, Path("runs"), None)
    saved = json.loads(zipfile.ZipFile(result.run.model).read("config.json"))
    assert saved["compile_config"]["loss"]["config"]["label_smoothing"] == 0.1
    assert load_model(result.run.model).loss.get_config()["label_smoothing"] == 0.1
    assert 0 < result.summary()["test"]["accuracy"] <= 1


def test_label_smoothing_needs_a_loss_that_has_it(small_config):
    with pytest.raises(ConfigError) as error:
        load_config(
            small_config,
            ["train.loss=sparse_categorical_crossentropy", "train.label_smoothing=0.1"],
        )
    assert "label_smoothing works with loss: categorical_crossentropy" in str(error.value)
