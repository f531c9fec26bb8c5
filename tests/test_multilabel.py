"""task: multilabel end to end on small fashion scenes (real Keras): train -> evaluate -> predict
-> export -> predict and evaluate with the exported file; thresholds chosen on validation only;
bad input refused before the run folder exists."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cnnctl.cli import main
from cnnctl.config import load_config
from cnnctl.review.compare import read_run
from cnnctl.runs import Run
from cnnctl.tasks.multilabel import Multilabel, _best_threshold

REPO = Path(__file__).resolve().parents[1]
CONFIG = """\
name: {name}
task: multilabel
data:
  path: {path}
  label_column: {column}
  validation: 0.2
model:
  input_shape: [64, 64, 1]
  layers:
    - {{type: Conv2D, filters: 8, kernel_size: 3, activation: relu}}
    - {{type: MaxPooling2D, pool_size: 4}}
    - Flatten
    - {{type: Dense, units: {units}, activation: {activation}}}
train:
  epochs: 2
  batch_size: 32
"""


def _config(path: Path, name: str = "ml", column="tags", units=10, activation="sigmoid") -> str:
    return CONFIG.format(name=name, path=path, column=column, units=units, activation=activation)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, scenes_csv) -> Path:
    """A run trained once for this module's tests; returns its runs folder."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("multilabel")
    (root / "ml.yaml").write_text(_config(scenes_csv))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNCTL_CACHE_DIR", str(root / "cache"))
        patch.setenv("CNNCTL_OFFLINE", "1")
        patch.chdir(root)
        result = CliRunner().invoke(main, ["train", "ml.yaml", "--runs-dir", str(root / "runs")])
    assert result.exit_code == 0, result.output
    return root / "runs"


def test_train_evaluate_predict_export_and_predict_with_the_export(runner, trained, scenes_csv):
    run = trained / "ml"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"micro_f1", "macro_f1", "subset_accuracy"} <= set(metrics["test"])
    compared = read_run(Run(run))  # compare's and the report's headline: the task's own
    assert (compared.headline, compared.test) == ("micro_f1", metrics["test"]["micro_f1"])
    done = runner.invoke(main, ["evaluate", "ml", "--runs-dir", str(trained)])
    assert done.exit_code == 0, done.output
    assert "micro F1" in done.output and "Hamming loss" in done.output
    report = json.loads((run / "evaluation.json").read_text())
    details = report  # the task's fields sit beside the common ones
    assert report["task"] == "multilabel" and len(details["per_label"]) == 10
    assert {"precision", "recall", "f1", "ap", "threshold"} <= set(details["per_label"]["bag"])
    assert {"micro_f1", "macro_f1", "mAP", "hamming_loss", "subset_accuracy"} <= set(details)
    assert (run / "pr_curves.png").stat().st_size > 0
    worst = list(csv.DictReader(open(run / "misclassified.csv")))
    assert worst and int(worst[0]["wrong_labels"]) >= int(worst[-1]["wrong_labels"])
    images = [str(scenes_csv.parent / "images" / "test" / f"0000{i}.png") for i in range(4)]
    keras_rows = runner.invoke(main, ["predict", "--runs-dir", str(trained), "--json", *images])
    assert keras_rows.exit_code == 0, keras_rows.output
    thresholds = json.loads((run / "thresholds.json").read_text())["thresholds"]
    for item in json.loads(keras_rows.stdout):
        assert all(t["probability"] >= thresholds[t["label"]] for t in item["top"])
    exported = runner.invoke(main, ["export", "ml", "--runs-dir", str(trained), "--format", "onnx"])
    assert exported.exit_code == 0, exported.output
    assert "label agreement 100.00%" in exported.output
    onnx = run / "export" / "model.onnx"
    onnx_rows = runner.invoke(main, ["predict", "--model", str(onnx), "--json", *images])
    assert onnx_rows.exit_code == 0, onnx_rows.output
    labels = [[t["label"] for t in item["top"]] for item in json.loads(onnx_rows.stdout)]
    assert labels == [[t["label"] for t in item["top"]] for item in json.loads(keras_rows.stdout)]
    scored = runner.invoke(main, ["evaluate", "--model", str(onnx)])
    assert scored.exit_code == 0, scored.output
    assert json.loads((run / "evaluation-model.onnx.json").read_text())["micro_f1"] == (
        pytest.approx(details["micro_f1"], abs=1e-6)
    )


def test_a_bare_exported_file_keeps_its_task_and_thresholds(runner, trained, scenes_csv, tmp_path):
    """An exported file copied with its export.json, far from its run, predicts as the run does."""
    import shutil

    run = trained / "ml"
    if not (run / "export" / "model.onnx").is_file():
        done = runner.invoke(main, ["export", "ml", "--runs-dir", str(trained), "--format", "onnx"])
        assert done.exit_code == 0, done.output
    for name in ("model.onnx", "export.json"):
        shutil.copy(run / "export" / name, tmp_path / name)
    record = json.loads((tmp_path / "export.json").read_text())["exports"][0]
    assert record["task"] == "multilabel" and "thresholds.json" in record["kept"]
    images = [str(scenes_csv.parent / "images" / "test" / f"0000{i}.png") for i in range(4)]
    bare = runner.invoke(
        main, ["predict", "--model", str(tmp_path / "model.onnx"), "--json", *images]
    )
    in_run = runner.invoke(main, ["predict", "--runs-dir", str(trained), "--json", *images])
    assert bare.exit_code == 0 == in_run.exit_code, bare.output
    labels = [[t["label"] for t in item["top"]] for item in json.loads(bare.stdout)]
    assert labels == [[t["label"] for t in item["top"]] for item in json.loads(in_run.stdout)]


def test_top_k_shows_the_most_probable_labels_whatever_their_thresholds(
    runner, trained, scenes_csv
):
    images = [str(scenes_csv.parent / "images" / "test" / f"0000{i}.png") for i in range(3)]
    done = runner.invoke(
        main, ["predict", "--runs-dir", str(trained), "--json", "--top-k", "4", *images]
    )
    assert done.exit_code == 0, done.output
    for item in json.loads(done.stdout):
        probabilities = [t["probability"] for t in item["top"]]
        assert len(probabilities) == 4 and probabilities == sorted(probabilities, reverse=True)


def test_runs_shows_the_task_and_its_headline_metric(runner, trained):
    done = runner.invoke(main, ["runs", str(trained), "--json"])
    assert done.exit_code == 0, done.output
    (row,) = [r for r in json.loads(done.stdout) if r["name"] == "ml"]
    metrics = json.loads((trained / "ml" / "metrics.json").read_text())
    assert row["task"] == "multilabel" and row["headline"] == "micro_f1"
    assert row["test_value"] == metrics["test"]["micro_f1"]
    table = runner.invoke(main, ["runs", str(trained)], env={"COLUMNS": "120"})
    assert f"micro-F1 {row['test_value']:.4f}" in table.output and "multilabel" in table.output


def test_thresholds_are_chosen_on_the_validation_split_only(trained):
    from cnnctl.data.dataset import dataset_for
    from cnnctl.modelfile.load import load_model

    run = trained / "ml"
    saved = json.loads((run / "thresholds.json").read_text())
    config = load_config(run / "config.yaml")
    dataset = dataset_for(config)
    assert saved["chosen_on"] == "validation"
    assert saved["validation_images"] == len(dataset.y_val) != len(dataset.y_test)
    outputs = load_model(run / "model.keras").predict(dataset.x_val, verbose=0)
    again = [_best_threshold(outputs[:, i], dataset.y_val[:, i]) for i in range(10)]
    assert list(saved["thresholds"].values()) == pytest.approx(again, abs=1e-6)


def test_eval_threshold_fixes_every_label(write, scenes_csv):
    text = _config(scenes_csv) + "eval:\n  threshold: 0.5\n"
    config = load_config(write("fixed.yaml", text))
    truth = np.eye(3, dtype=np.float32)
    kept = Multilabel().fitted(lambda: (truth * 0.3, truth), ["a", "b", "c"], config)
    assert kept["thresholds.json"]["thresholds"] == {"a": 0.5, "b": 0.5, "c": 0.5}
    assert kept["thresholds.json"]["chosen_on"] == "fixed by eval.threshold"


def _csv_with(scenes_csv: Path, path: Path, change) -> Path:
    """A copy of the scenes' labels.csv (absolute paths) with `change(rows)` applied."""
    rows = list(csv.DictReader(open(scenes_csv)))
    for row in rows:
        row["path"] = str(scenes_csv.parent / row["path"])
    change(rows)
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _last_test_row(rows):
    return max(i for i, row in enumerate(rows) if row["split"] == "test")


@pytest.mark.parametrize(
    "change, column, units, activation, message",
    [
        (
            lambda rows: rows[_last_test_row(rows)].update(tags="bag hat"),
            "tags",
            10,
            "sigmoid",
            r"labels\.csv:481: label 'hat' is in no training row",
        ),
        (
            lambda rows: rows[4].update(tags=""),
            "tags",
            10,
            "sigmoid",
            r"labels\.csv:6: empty tags",
        ),
        (None, "tagz", 10, "sigmoid", r"labels\.csv: no column 'tagz'"),
        (None, "tags", 5, "sigmoid", r"bad\.yaml:\d+:\d+: model\.layers\[3\]: .* 10 labels"),
        (None, "tags", 10, "softmax", r"bad\.yaml:\d+:\d+: model\.layers\[3\]: .*softmax"),
    ],
    ids=["unknown-label-in-test", "empty-cell", "no-column", "head-size", "head-activation"],
)
def test_bad_input_is_exit_2_naming_the_place_and_writes_no_run(
    runner, write, tmp_path, scenes_csv, change, column, units, activation, message
):
    data = _csv_with(scenes_csv, tmp_path / "labels.csv", change or (lambda rows: None))
    write("bad.yaml", _config(data, column=column, units=units, activation=activation))
    result = runner.invoke(main, ["train", "bad.yaml"])
    assert result.exit_code == 2, result.output
    assert __import__("re").search(message, result.output), result.output
    assert not (tmp_path / "runs").exists()


def test_a_folder_of_classes_is_refused_showing_the_csv_header(runner, write, tmp_path):
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    write("folder.yaml", _config(Path("photos")))
    result = runner.invoke(main, ["train", "folder.yaml"])
    assert result.exit_code == 2, result.output
    assert (
        "folder.yaml:4:9: data.path: task: multilabel reads a CSV of image paths" in result.output
    )
    assert "path,split,tags" in result.output
    assert not (tmp_path / "runs").exists()


def test_streamed_files_carry_label_rows(runner, write, tmp_path, scenes_csv):
    """data.cache: none decodes files while training: the multi-hot rows travel with them."""
    write(
        "stream.yaml",
        _config(scenes_csv)
        .replace("epochs: 2", "epochs: 1")
        .replace("  validation: 0.2\n", "  validation: 0.2\n  cache: none\n"),
    )
    result = runner.invoke(main, ["train", "stream.yaml"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "ml" / "thresholds.json").is_file()


@pytest.mark.parametrize(
    ("config", "setting", "said"),
    [
        ("scenes_multilabel.yaml", "model.layers.9.activation=softmax", "needs sigmoid"),
        ("scenes_count.yaml", "model.layers.7.activation=relu", "remove its activation"),
    ],
)
def test_validate_checks_the_heads_activation_before_any_data_is_read(
    runner, config, setting, said
):
    """The labels' count needs the CSV; the head's shape and activation do not."""
    done = runner.invoke(main, ["validate", str(REPO / "configs" / config), "--set", setting])
    assert done.exit_code == 2, done.output
    assert "last layer's activation" in done.output and said in done.output


def test_a_bare_copy_of_the_export_keeps_its_task_and_thresholds_from_inside_the_file(
    runner, trained, scenes_csv, tmp_path
):
    """model.onnx copied alone reads its task, names and thresholds from the record inside it:
    the same rows as with its export.json; a file with no record at all says it reads its
    outputs as a classifier's, and how to fix it."""
    from bare_copies import copies, predict_rows, without_record

    run = trained / "ml"
    if not (run / "export" / "model.onnx").is_file():
        done = runner.invoke(main, ["export", "ml", "--runs-dir", str(trained), "--format", "onnx"])
        assert done.exit_code == 0, done.output
    beside, bare = copies(run / "export" / "model.onnx", tmp_path)
    images = [str(scenes_csv.parent / "images" / "test" / f"0000{i}.png") for i in range(4)]
    want, _ = predict_rows(runner, beside, images)
    got, warned = predict_rows(runner, bare, images)
    assert got == want and "warning" not in warned
    names = json.loads((run / "classes.json").read_text())
    assert {t["label"] for row in got for t in row["top"]} <= set(names)

    old = without_record(bare, tmp_path / "old" / "model.onnx")
    _, warned = predict_rows(runner, old, images)
    assert (
        f"warning: {old}: no export.json beside it and no cnnctl record inside; its outputs are "
        "read as a classifier's probabilities (to be sure: copy its export.json beside it, or "
        "re-export it with this version of cnnctl)"
    ) in warned.replace("\n", " ")
