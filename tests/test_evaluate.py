"""Evaluate: metrics, per-class report, misclassified examples, figures; --model and --data."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from cnnctl.cli import main
from cnnctl.tasks.classification import class_report, confusion_matrix


def test_evaluate_writes_report_files(runner, run_copy):
    result = runner.invoke(main, ["evaluate", "--runs-dir", str(run_copy), "--json"])
    assert result.exit_code == 0, result.output
    evaluation = json.loads(result.stdout)  # nothing but JSON on stdout
    folder = run_copy / "small"
    assert evaluation["examples"] == 2000 and evaluation["split"] == "test"
    assert set(evaluation["metrics"]) == {"loss", "accuracy"}
    assert set(evaluation["per_class"]) == set("0123456789")
    assert evaluation["averages"]["weighted avg"]["support"] == 2000
    matrix = np.array(evaluation["confusion_matrix"])
    assert matrix.sum() == 2000 and np.trace(matrix) / 2000 == pytest.approx(
        evaluation["metrics"]["accuracy"], abs=1e-4
    )
    rows = list(csv.DictReader(open(folder / "misclassified.csv")))
    assert len(rows) == 2000 - np.trace(matrix)
    losses = [float(r["loss"]) for r in rows]
    assert losses == sorted(losses, reverse=True) and all(r["true"] != r["predicted"] for r in rows)
    assert rows[0]["top"].startswith(rows[0]["predicted"] + " ")
    top_pair = evaluation["most_confused"][0]
    assert matrix[int(top_pair["true"]), int(top_pair["predicted"])] == top_pair["count"]
    for name in ("confusion_matrix.png", "errors.png", "evaluation.json"):
        assert (folder / name).stat().st_size > 1000


def test_table_fits_in_80_columns(runner, run_copy):
    result = runner.invoke(main, ["evaluate", "--runs-dir", str(run_copy)], terminal_width=80)
    assert result.exit_code == 0
    table = [line for line in result.stdout.splitlines() if "│" in line or "avg" in line]
    assert len(table) >= 12 and max(len(line) for line in table) <= 80
    assert "weighted avg" in result.stdout and "most confused:" in result.stdout


def test_splits_and_model_file(runner, run_copy):
    train = runner.invoke(
        main, ["evaluate", "small", "--runs-dir", str(run_copy), "--split", "train", "--json"]
    )
    assert json.loads(train.stdout)["examples"] == 4000
    by_file = runner.invoke(
        main, ["evaluate", "--model", str(run_copy / "small" / "model.keras"), "--json"]
    )
    assert by_file.exit_code == 0, by_file.output
    assert json.loads(by_file.stdout)["examples"] == 2000


def test_data_path_of_another_dataset(runner, run_copy, tmp_path, mnist_test_set):
    x, y = mnist_test_set
    np.savez(tmp_path / "other.npz", x_train=x[:10], y_train=y[:10], x_test=x[:500], y_test=y[:500])
    result = runner.invoke(
        main, ["evaluate", "--runs-dir", str(run_copy), "--data", "other.npz", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["examples"] == 500
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(run_copy / "small" / "model.keras", lonely / "m.keras")
    result = runner.invoke(
        main, ["evaluate", "--model", str(lonely / "m.keras"), "--data", "other.npz", "--json"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["evaluate", "--model", str(lonely / "m.keras")])
    assert (
        result.exit_code == 2
        and "m.keras: is not in a run folder, so its data is unknown" in result.stderr
    )


def test_tta_scores_the_mean_of_each_image_and_its_mirror(
    runner, run_copy, mnist_test_set, tmp_path
):
    from PIL import Image

    from cnnctl.modelfile.load import load_model

    model = load_model(run_copy / "small" / "model.keras", compile=False)
    x, y = mnist_test_set[0][8000:, ..., None].astype("float32"), mnist_test_set[1][8000:]
    mirrored = (model.predict(x, verbose=0) + model.predict(x[:, :, ::-1], verbose=0)) / 2
    plain = runner.invoke(main, ["evaluate", "--runs-dir", str(run_copy), "--json"])
    flip = runner.invoke(
        main, ["evaluate", "--runs-dir", str(run_copy), "--tta", "horizontal_flip", "--json"]
    )
    assert flip.exit_code == 0, flip.output
    scored = json.loads(flip.stdout)
    assert scored["tta"] == "horizontal_flip" and json.loads(plain.stdout)["tta"] == "none"
    assert scored["metrics"]["accuracy"] == pytest.approx(
        (mirrored.argmax(1) == y).mean(), abs=1e-4
    )
    assert scored["metrics"]["accuracy"] != json.loads(plain.stdout)["metrics"]["accuracy"]
    # the run's config chooses it for evaluate and predict when no --tta is given
    config = run_copy / "small" / "config.yaml"
    config.write_text(config.read_text().replace("  tta: none", "  tta: horizontal_flip"))
    by_config = runner.invoke(main, ["evaluate", "--runs-dir", str(run_copy), "--json"])
    assert json.loads(by_config.stdout)["metrics"] == scored["metrics"]
    Image.fromarray(mnist_test_set[0][8000]).save(tmp_path / "digit.png")
    predicted = runner.invoke(
        main, ["predict", str(tmp_path / "digit.png"), "--runs-dir", str(run_copy), "--json"]
    )
    assert predicted.exit_code == 0, predicted.output
    top = json.loads(predicted.stdout)[0]["top"][0]
    assert top["probability"] == pytest.approx(float(mirrored[0].max()), abs=1e-5)
    assert top["index"] == int(mirrored[0].argmax())


def test_class_report_by_hand():
    matrix = confusion_matrix(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    report = class_report(matrix, ["a", "b", "c"])
    assert report["per_class"]["b"] == {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2}
    assert report["per_class"]["c"]["f1"] == 0.0
    assert report["averages"]["macro avg"]["recall"] == 0.5
    assert report["most_confused"][0] == {"true": "c", "predicted": "a", "count": 1}


def test_confusion_figure_is_readable_at_100_classes(tmp_path):
    from cnnctl.report import save_confusion

    matrix = np.random.default_rng(0).integers(0, 20, (100, 100)) + np.eye(100, dtype=int) * 100
    save_confusion(matrix, [f"class_{i}" for i in range(100)], tmp_path / "cm.png")
    from PIL import Image

    assert min(Image.open(tmp_path / "cm.png").size) >= 2000  # 100 labels need room
