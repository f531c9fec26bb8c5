"""task: regression end to end on small fashion scenes (real Keras): two targets, standardized,
train -> evaluate -> predict -> export -> predict and evaluate with the exported file; bad
targets refused before the run folder exists."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from cnnctl.cli import main
from cnnctl.review.compare import read_run
from cnnctl.runs import Run

CONFIG = """\
name: {name}
task: regression
data:
  path: {path}
  label_column: {column}
  validation: 0.2
  standardize_targets: true
model:
  input_shape: [64, 64, 1]
  layers:
    - {{type: Conv2D, filters: 8, kernel_size: 3, activation: relu}}
    - {{type: MaxPooling2D, pool_size: 4}}
    - Flatten
    - {{type: Dense, units: {units}{activation}}}
train:
  epochs: 2
  batch_size: 32
  loss: {loss}
"""


def _config(path: Path, column="[count, half]", units=2, activation="", loss="mse") -> str:
    return CONFIG.format(
        name="count", path=path, column=column, units=units, activation=activation, loss=loss
    )


def _csv_with(scenes_csv: Path, path: Path, change=None) -> Path:
    """The scenes' labels.csv (absolute paths) with a second target, half = count / 2."""
    rows = list(csv.DictReader(open(scenes_csv)))
    for row in rows:
        row["path"] = str(scenes_csv.parent / row["path"])
        row["half"] = str(int(row["count"]) / 2)
    if change is not None:
        change(rows)
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, scenes_csv) -> Path:
    """A run trained once for this module's tests; returns its runs folder."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("regression")
    data = _csv_with(scenes_csv, root / "labels.csv")
    (root / "count.yaml").write_text(_config(data, loss="huber"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNCTL_CACHE_DIR", str(root / "cache"))
        patch.setenv("CNNCTL_OFFLINE", "1")
        patch.chdir(root)
        result = CliRunner().invoke(main, ["train", "count.yaml", "--runs-dir", str(root / "runs")])
    assert result.exit_code == 0, result.output
    return root / "runs"


def test_train_evaluate_predict_export_and_predict_with_the_export(runner, trained, scenes_csv):
    run = trained / "count"
    stats = json.loads((run / "target_stats.json").read_text())
    assert len(stats["mean"]) == 2 and stats["mean"][1] == pytest.approx(stats["mean"][0] / 2)
    compared = read_run(Run(run))  # compare's and the report's headline: the task's own
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert (compared.headline, compared.direction, compared.test) == ("mae", "min", test["mae"])
    done = runner.invoke(main, ["evaluate", "count", "--runs-dir", str(trained)])
    assert done.exit_code == 0, done.output
    assert "median AE" in done.output
    report = json.loads((run / "evaluation.json").read_text())
    assert report["task"] == "regression"
    assert {"mae", "rmse", "r2", "median_ae"} <= set(report["per_target"]["half"])
    for figure in ("scatter", "residuals", "errors"):
        assert (run / f"{figure}.png").stat().st_size > 0
    worst = list(csv.DictReader(open(run / "misclassified.csv")))
    assert float(worst[0]["abs_error"]) >= float(worst[-1]["abs_error"])
    images = [str(scenes_csv.parent / "images" / "test" / f"0000{i}.png") for i in range(4)]
    keras_rows = runner.invoke(main, ["predict", "--runs-dir", str(trained), "--json", *images])
    assert keras_rows.exit_code == 0, keras_rows.output
    values = np.asarray(
        [[t["probability"] for t in item["top"]] for item in json.loads(keras_rows.stdout)]
    )
    # in the targets' own units (counts of 1 to 3, and their halves), not standardized ones
    assert values.shape == (4, 2) and 0.3 < values[:, 0].mean() < 4.5
    table = runner.invoke(main, ["predict", "--runs-dir", str(trained), *images])
    assert table.exit_code == 0, table.output
    header = [cell for cell in table.stdout.splitlines()[0].split() if cell.isalpha()]
    assert header[:3] == ["image", "target", "value"]  # a count is no class or probability
    exported = runner.invoke(
        main, ["export", "count", "--runs-dir", str(trained), "--format", "tflite"]
    )
    assert exported.exit_code == 0, exported.output
    record = json.loads((run / "export" / "export.json").read_text())
    assert record["exports"][0]["target_stats"] == stats and record["exports"][0]["task"] == (
        "regression"
    )
    tflite = run / "export" / "model.tflite"
    tflite_rows = runner.invoke(main, ["predict", "--model", str(tflite), "--json", *images])
    assert tflite_rows.exit_code == 0, tflite_rows.output
    again = np.asarray(
        [[t["probability"] for t in item["top"]] for item in json.loads(tflite_rows.stdout)]
    )
    assert np.abs(again - values).max() < 1e-3
    scored = runner.invoke(main, ["evaluate", "--model", str(tflite)])
    assert scored.exit_code == 0, scored.output
    assert json.loads((run / "evaluation-model.tflite.json").read_text())["mae"] == pytest.approx(
        report["mae"], abs=1e-3
    )


@pytest.mark.parametrize(
    "change, column, units, activation, message",
    [
        (
            lambda rows: rows[7].update(count="three"),
            "count",
            1,
            "",
            r"labels\.csv:9: column 'count' holds 'three', not a finite number",
        ),
        (
            lambda rows: rows[2].update(half="nan"),
            "[count, half]",
            2,
            "",
            r"labels\.csv:4: column 'half' holds 'nan', not a finite number",
        ),
        (
            lambda rows: rows[400].update(half="inf"),
            "[count, half]",
            2,
            "",
            r"labels\.csv:402: column 'half' holds 'inf'",
        ),
        (lambda rows: rows[3].update(count=""), "count", 1, "", r"labels\.csv:5: empty count"),
        (None, "[count, size]", 2, "", r"labels\.csv: no column 'size'"),
        (None, "[count, half]", 1, "", r"bad\.yaml:\d+:\d+: model\.layers\[3\]: .* 2 targets"),
        (
            None,
            "count",
            1,
            ", activation: softmax",
            r"bad\.yaml:\d+:\d+: model\.layers\[3\]: .*softmax",
        ),
    ],
    ids=["not-a-number", "nan", "inf", "empty-cell", "no-column", "head-size", "activation"],
)
def test_bad_targets_are_exit_2_naming_the_place_and_write_no_run(
    runner, write, tmp_path, scenes_csv, change, column, units, activation, message
):
    data = _csv_with(scenes_csv, tmp_path / "labels.csv", change)
    write("bad.yaml", _config(data, column=column, units=units, activation=activation))
    result = runner.invoke(main, ["train", "bad.yaml"])
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output), result.output
    assert not (tmp_path / "runs").exists()


def test_a_loss_for_classes_is_refused_at_its_line(runner, write, tmp_path, scenes_csv):
    write("bad.yaml", _config(scenes_csv, column="count", units=1, loss="binary_crossentropy"))
    result = runner.invoke(main, ["train", "bad.yaml"])
    assert result.exit_code == 2
    assert "bad.yaml:18:9: train.loss: binary_crossentropy does not fit task: regression" in (
        result.output
    )
    assert "use loss: mse or mae or huber" in result.output


@pytest.mark.slow
def test_tune_minimizes_the_validation_mae(runner, write, tmp_path, scenes_csv):
    """tune on a regression run: val_mae is logged, its goal is minimize, the best trial is the
    lowest."""
    data = _csv_with(scenes_csv, tmp_path / "labels.csv")
    search = (
        "tune:\n  metric: val_mae\n  trials: 2\n  sampler: random\n  parameters:\n"
        "    train.optimizer.learning_rate: {type: choice, values: [0.01, 0.0001]}\n"
    )
    write("tune.yaml", _config(data).replace("epochs: 2", "epochs: 1") + search)
    done = runner.invoke(main, ["tune", "tune.yaml"])
    assert done.exit_code == 0, done.output
    assert "val_mae (minimize)" in done.output
    study = json.loads((tmp_path / "runs" / "count-tune" / "study.json").read_text())
    rows = list(csv.DictReader(open(tmp_path / "runs" / "count-tune" / "trials.csv")))
    assert study["direction"] == "minimize" and len(rows) == 2
    assert study["best"]["value"] == pytest.approx(min(float(r["value"]) for r in rows))


def test_a_bare_copy_of_the_tflite_export_reads_its_task_from_inside_the_file(
    runner, trained, scenes_csv, tmp_path
):
    """model.tflite copied alone carries its record in the flatbuffer's metadata: targets and
    their names, not 'class 0, prob 2.284'."""
    from bare_copies import copies, predict_rows

    run = trained / "count"
    if not (run / "export" / "model.tflite").is_file():
        done = runner.invoke(
            main, ["export", "count", "--runs-dir", str(trained), "--format", "tflite"]
        )
        assert done.exit_code == 0, done.output
    beside, bare = copies(run / "export" / "model.tflite", tmp_path)
    images = [str(scenes_csv.parent / "images" / "test" / f"0000{i}.png") for i in range(4)]
    want, _ = predict_rows(runner, beside, images)
    got, warned = predict_rows(runner, bare, images)
    assert got == want and "warning" not in warned
    assert [t["label"] for t in got[0]["top"]] == json.loads((run / "classes.json").read_text())
