"""The command line as a user meets it: real commands, real data, short errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnctl.cli import main

from conftest import SMALL

REPO = Path(__file__).resolve().parents[1]
CNNCTL = [sys.executable, "-m", "cnnctl.cli"]


def test_help_answers_without_importing_tensorflow():
    code = "import sys; from cnnctl.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n" \
           "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported TF'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Train convolutional neural networks described in YAML" in done.stdout


def test_validate_prints_layers_and_parameter_count(runner):
    result = runner.invoke(main, ["validate", str(REPO / "configs" / "mnist.yaml")])
    assert result.exit_code == 0, result.output
    assert "693,962" in result.stdout and "(Conv2D)" in result.stdout and "(None, 13, 13, 32)" in result.stdout


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "folder_example"])
def test_shipped_configs_are_valid(runner, name):
    result = runner.invoke(main, ["validate", str(REPO / "configs" / f"{name}.yaml")])
    assert result.exit_code == 0, result.output


BAD_CASES = [
    ("data:\n  dataset: mnist\n model: {}\n", ["validate", "x.yaml"], "x.yaml:3:2: invalid YAML"),
    (SMALL + "extra: 1\n", ["validate", "x.yaml"], "x.yaml:21:1: extra: unknown key"),
    (SMALL.replace("type: Conv2D", "type: Conv2d"), ["validate", "x.yaml"],
     "x.yaml:8:13: model.layers[0].type: unknown layer type 'Conv2d' (did you mean 'Conv2D'?)"),
    (SMALL.replace("filters: 8", "filter: 8"), ["validate", "x.yaml"],
     "x.yaml:9:7: model.layers[0].filter: unknown argument of Conv2D (did you mean 'filters'?)"),
    (SMALL.replace("epochs: 2", "epochs: ten"), ["train", "x.yaml"],
     "x.yaml:19:11: train.epochs: Input should be a valid integer (got 'ten')"),
    (None, ["train", "missing.yaml"], "missing.yaml: no such config file"),
    (SMALL.replace("dataset: mnist", "dataset: fashion_mnist"), ["train", "x.yaml"], None),
    (None, ["evaluate"], "Error: no runs in runs/ yet"),
    (None, ["predict", "x.yaml"], "Error: no runs in runs/ yet"),
    (None, ["train", "x.yaml", "--set", "train.epochs"], "--set train.epochs: expected KEY=VALUE"),
    (None, ["train", "--resume", "nope"], "nope: no such run"),
]


@pytest.mark.parametrize(("text", "args", "expected"), BAD_CASES,
                         ids=["yaml-syntax", "unknown-top-key", "unknown-layer", "misspelled-arg", "wrong-type",
                              "missing-config", "missing-dataset", "evaluate-no-run", "predict-no-run", "bad-set",
                              "resume-unknown"])
def test_user_mistakes_are_short_errors_with_exit_2(runner, write, monkeypatch, tmp_path, text, args, expected):
    write("x.yaml", text if text is not None else SMALL)
    if expected is None:  # the built-in Fashion-MNIST, made unreachable on purpose
        monkeypatch.setenv("KERAS_HOME", str(tmp_path / "nothing"))
        monkeypatch.setattr("cnnctl.data.sources.BUILTINS", _without_system_folders())
        expected = "dataset 'fashion_mnist' not found offline"
    result = runner.invoke(main, args)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert "Traceback" not in result.output
    assert 1 <= len(result.stderr.strip().splitlines()) <= 2
    assert not Path("runs").exists() or not any(Path("runs").iterdir())  # nothing half-made


def _without_system_folders():
    from dataclasses import replace

    from cnnctl.data.sources import BUILTINS

    return {name: replace(b, system=()) for name, b in BUILTINS.items()}


def test_debug_shows_the_traceback(runner, write):
    write("x.yaml", SMALL.replace("type: Conv2D", "type: Conv2d"))
    plain = runner.invoke(main, ["validate", "x.yaml"])
    debug = runner.invoke(main, ["--debug", "validate", "x.yaml"])
    assert "Traceback" not in plain.output
    assert "Traceback (most recent call last)" in debug.stderr and debug.exit_code == 2


def test_train_evaluate_predict_agree_on_png_files(runner, small_config, mnist_test_set, tmp_path):
    """Predictions on PNG files give exactly evaluate's confusion matrix: same preprocessing."""
    train = runner.invoke(main, ["train", str(small_config), "--json"])
    assert train.exit_code == 0, train.output
    summary = json.loads(train.stdout)
    assert summary["test"]["accuracy"] > 0.85 and Path(summary["run"]) == Path("runs/small")

    evaluate = runner.invoke(main, ["evaluate", "--json"])
    assert evaluate.exit_code == 0, evaluate.output
    evaluation = json.loads(evaluate.stdout)
    assert json.loads(Path("runs/small/evaluation.json").read_text()) == evaluation
    assert Path("runs/small/confusion_matrix.png").is_file()
    assert evaluation["metrics"]["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=1e-4)

    x, y = mnist_test_set
    folder = tmp_path / "pngs"
    folder.mkdir()
    for index in range(8000, 10_000):  # the run's test split
        Image.fromarray(x[index]).save(folder / f"{index}_{y[index]}.png")
    predict = runner.invoke(main, ["predict", str(folder), "--json", "--top-k", "1"])
    assert predict.exit_code == 0, predict.output
    items = json.loads(predict.stdout)
    assert len(items) == 2000
    matrix = np.zeros((10, 10), dtype=int)
    for item in items:
        truth = int(Path(item["path"]).stem.split("_")[1])
        matrix[truth, int(item["top"][0]["label"])] += 1
    assert matrix.tolist() == evaluation["confusion_matrix"]

    listed = runner.invoke(main, ["runs", "--json"])
    assert listed.exit_code == 0
    [run] = json.loads(listed.stdout)
    assert (run["name"], run["status"], run["epochs_done"], run["epochs"]) == ("small", "finished", 2, 2)
    assert run["test_accuracy"] == summary["test"]["accuracy"]
    table = runner.invoke(main, ["runs"]).stdout
    assert "small" in table and "2/2" in table and "finished" in table


def test_a_user_types_the_commands(small_config, tmp_path, mnist_test_set):
    """End to end through real subprocesses, the way a person runs cnnctl."""
    env = {**os.environ}
    done = subprocess.run([*CNNCTL, "train", str(small_config), "--epochs", "1", "--name", "typed"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    assert "run saved to runs/typed" in done.stdout and "test:" in done.stdout
    # TensorFlow's start-up chatter is silenced; what is left is ours: the test data is a subset of MNIST
    assert done.stderr.strip().startswith("warning: ") and "differ from the official mnist files" in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2, done.stderr
    Image.fromarray(mnist_test_set[0][9000]).save(tmp_path / "digit.png")
    done = subprocess.run([*CNNCTL, "predict", "digit.png"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "digit.png" in done.stdout and str(mnist_test_set[1][9000]) in done.stdout
