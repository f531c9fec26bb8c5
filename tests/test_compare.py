"""`cnnctl compare`: real runs side by side, what differs in their configs, curves overlaid."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from cnnctl.cli import main
from cnnctl.config.paths import flatten
from cnnctl.review.compare import compare_runs, comparison_view, resolve_runs

from conftest import SMALL

FILTERS = (4, 8, 12)  # the one value the three runs differ in


def run_config(filters: int) -> str:
    """SMALL on 1,000 digits for one epoch, its first layer `filters` wide."""
    text = SMALL.replace("limit: 4000", "limit: 1000").replace("epochs: 2", "epochs: 1")
    return text.replace("filters: 8", f"filters: {filters}")


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, data_dir) -> Path:
    """Three real runs of one config whose first layer differs in width: runs/small, -2, -3."""
    root = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as env:
        env.chdir(root)
        env.setenv("CNNCTL_OFFLINE", "1")
        env.setenv("CNNCTL_DATA_DIR", str(data_dir))
        for filters in FILTERS:
            (root / "small.yaml").write_text(run_config(filters))
            done = CliRunner().invoke(main, ["train", "small.yaml", "--runs-dir", "runs"])
            assert done.exit_code == 0, done.output
    return root / "runs"


@pytest.fixture
def runs(three_runs, tmp_path) -> Path:
    return Path(shutil.copytree(three_runs, tmp_path / "runs"))


def test_three_runs_differ_in_exactly_the_path_they_were_given(runner, runs):
    result = runner.invoke(main, ["compare", "small", "small-2", "small-3", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["differences"] == {
        "model.layers.0.filters": {"small": 4, "small-2": 8, "small-3": 12}
    }
    for row in data["runs"]:
        test = json.loads((runs / row["name"] / "metrics.json").read_text())["test"]
        assert (row["task"], row["headline"], row["direction"]) == (
            "classification",
            "accuracy",
            "max",
        )
        assert row["test"] == test["accuracy"] and row["epochs_done"] == 1
        assert row["monitor"] == "val_loss" and row["best_epoch"] == 1
    assert data["metric"] == "accuracy"
    assert Path(data["figure"]) == Path("runs/compare/compare.png")
    assert Path(data["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(Path("runs/compare/compare.json").read_text()) == data


def test_the_table_fits_80_columns_and_names_the_differing_path(runs):
    found = resolve_runs(("small", str(runs / "small-2"), "runs/small-3"), Path("runs"))
    comparison = compare_runs(found, "loss", None)
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(comparison_view(comparison, 80))
    text = out.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "test accuracy" in text and "what differs between their configs" in text
    lines = [line for line in text.splitlines() if line.lstrip().startswith("small")]
    assert len(lines) == 6  # each run in both tables
    assert "model.layers.0.filters" in text
    assert [line.split()[-1] for line in lines[3:]] == ["4", "8", "12"]


def test_curves_overlaid_validation_solid_training_dashed_a_colour_a_run(runs):
    from cnnctl.report import compare_figure
    from cnnctl.runs import Run, epoch_rows

    series = [(name, epoch_rows(Run(runs / name))) for name in ("small", "small-2")]
    series[1][1].append({**series[1][1][0], "epoch": 2})  # a second epoch: ticks stay whole
    figure = compare_figure(series, "loss")
    (ax,) = figure.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {
        f"{n} ({w})" for n in ("small", "small-2") for w in ("validation", "training")
    }
    assert lines["small (validation)"].get_linestyle() == "-"
    assert lines["small (training)"].get_linestyle() == "--"
    assert lines["small (training)"].get_color() == lines["small (validation)"].get_color()
    assert lines["small (validation)"].get_color() != lines["small-2 (validation)"].get_color()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [1.0, 2.0]
    assert ax.get_ylabel() == "loss"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["small"], "Error: compare needs two runs or more; got 1"),
        (["small", "small"], "Error: compare needs two runs or more; got 1"),
        (["small", "smal-2"], "Error: smal-2: no such run (did you mean 'small-2'?)"),
        (
            ["small", "small-2", "--metric", "f1"],
            "Error: --metric f1: no run logs it in metrics.csv\n"
            "  hint: the runs log: accuracy, loss",
        ),
    ],
    ids=["one-run", "the-same-run-twice", "misspelt", "unknown-metric"],
)
def test_mistakes_exit_2_with_one_line(runner, runs, args, message):
    result = runner.invoke(main, ["compare", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_validation_name_for_the_metric_is_accepted(runner, runs):
    result = runner.invoke(main, ["compare", "small", "small-2", "--metric", "val_loss", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["metric"] == "loss"


def test_flatten_reaches_into_lists_of_sections_by_index():
    data = {"model": {"layers": [{"type": "Conv2D", "kernel_size": [3, 3]}, "Flatten"]}, "x": []}
    assert flatten(data) == {
        "model.layers.0.type": "Conv2D",
        "model.layers.0.kernel_size": [3, 3],
        "model.layers.1": "Flatten",
        "x": [],
    }


STUDY = """\
name: tiny
data:
  dataset: mnist
  limit: 600
model:
  input_shape: [28, 28, 1]
  layers:
    - type: Conv2D
      filters: 4
      kernel_size: [3, 3]
      activation: relu
    - type: MaxPooling2D
      pool_size: [4, 4]
    - Flatten
    - type: Dense
      units: 10
      activation: softmax
train:
  epochs: 1
  batch_size: 64
tune:
  metric: val_accuracy
  trials: 3
  sampler: random
  parameters:
    train.optimizer.learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
"""


@pytest.mark.slow
def test_a_study_folder_gives_one_row_per_finished_trial(runner, write):
    config = write("tune.yaml", STUDY)
    done = subprocess.run(
        [sys.executable, "-m", "cnnctl.cli", "tune", str(config)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    shutil.rmtree("runs/tiny-tune/trial-002/checkpoints")  # a trial that did not finish
    Path("runs/tiny-tune/trial-002/run.json").write_text('{"status": "interrupted"}')
    result = runner.invoke(main, ["compare", "tiny-tune", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [row["name"] for row in data["runs"]] == ["trial-000", "trial-001"]
    assert list(data["differences"]) == ["train.optimizer.learning_rate"]
