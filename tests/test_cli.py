"""The command line as a user meets it: real commands, real data, short errors."""

from __future__ import annotations

import json
import os
import re
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
    code = (
        "import sys; from cnnctl.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported TF'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Train convolutional neural networks described in YAML" in done.stdout


def test_validate_prints_layers_and_parameter_count(runner):
    result = runner.invoke(main, ["validate", str(REPO / "configs" / "mnist.yaml")])
    assert result.exit_code == 0, result.output
    assert (
        "693,962" in result.stdout
        and "(Conv2D)" in result.stdout
        and "(None, 13, 13, 32)" in result.stdout
    )


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "folder_example", "tune"])
def test_shipped_configs_are_valid(runner, name):
    result = runner.invoke(main, ["validate", str(REPO / "configs" / f"{name}.yaml")])
    assert result.exit_code == 0, result.output


BAD_CASES = [
    ("data:\n  dataset: mnist\n model: {}\n", ["validate", "x.yaml"], "x.yaml:3:2: invalid YAML"),
    (SMALL + "extra: 1\n", ["validate", "x.yaml"], "x.yaml:21:1: extra: unknown key"),
    (
        SMALL.replace("type: Conv2D", "type: Conv2d"),
        ["validate", "x.yaml"],
        "x.yaml:8:13: model.layers[0].type: unknown layer type 'Conv2d' (did you mean 'Conv2D'?)",
    ),
    (
        SMALL.replace("filters: 8", "filter: 8"),
        ["validate", "x.yaml"],
        "x.yaml:9:7: model.layers[0].filter: unknown argument of Conv2D (did you mean 'filters'?)",
    ),
    (
        SMALL.replace("epochs: 2", "epochs: ten"),
        ["train", "x.yaml"],
        "x.yaml:19:11: train.epochs: Input should be a valid integer (got 'ten')",
    ),
    (None, ["train", "missing.yaml"], "missing.yaml: no such config file"),
    (SMALL.replace("dataset: mnist", "dataset: fashion_mnist"), ["train", "x.yaml"], None),
    (None, ["evaluate"], "Error: no runs in runs/ yet"),
    (None, ["predict", "x.yaml"], "Error: no runs in runs/ yet"),
    (None, ["train", "x.yaml", "--set", "train.epochs"], "--set train.epochs: expected KEY=VALUE"),
    (None, ["train", "--resume", "nope"], "nope: no such run"),
]


@pytest.mark.parametrize(
    ("text", "args", "expected"),
    BAD_CASES,
    ids=[
        "yaml-syntax",
        "unknown-top-key",
        "unknown-layer",
        "misspelled-arg",
        "wrong-type",
        "missing-config",
        "missing-dataset",
        "evaluate-no-run",
        "predict-no-run",
        "bad-set",
        "resume-unknown",
    ],
)
def test_user_mistakes_are_short_errors_with_exit_2(
    runner, write, monkeypatch, tmp_path, text, args, expected
):
    write("x.yaml", text if text is not None else SMALL)
    if expected is None:  # the built-in Fashion-MNIST, made unreachable on purpose
        monkeypatch.setenv("KERAS_HOME", str(tmp_path / "nothing"))
        monkeypatch.setattr("cnnctl.data.sources.BUILTINS", _without_system_folders())
        expected = "dataset 'fashion_mnist' not found offline"
    result = runner.invoke(main, args)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert "Traceback" not in result.output
    quoted = re.compile(r"\s+\d* \| ")  # an invalid YAML line and its caret come with the error
    assert 1 <= len([x for x in result.stderr.strip().splitlines() if not quoted.match(x)]) <= 2
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
    assert (run["name"], run["status"], run["epochs_done"], run["epochs"]) == (
        "small",
        "finished",
        2,
        2,
    )
    assert run["test_accuracy"] == summary["test"]["accuracy"]
    table = runner.invoke(main, ["runs"]).stdout
    assert "small" in table and "2/2" in table and "finished" in table


def test_a_user_types_the_commands(small_config, tmp_path, mnist_test_set):
    """End to end through real subprocesses, the way a person runs cnnctl."""
    env = {**os.environ}
    done = subprocess.run(
        [*CNNCTL, "train", str(small_config), "--epochs", "1", "--name", "typed"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "run saved to runs/typed" in done.stdout and "test:" in done.stdout
    # TensorFlow's start-up chatter is silenced; what is left is ours: the test data is a subset of
    # MNIST
    assert (
        done.stderr.strip().startswith("warning: ")
        and "differ from the official mnist files" in done.stderr
    )
    assert len(done.stderr.strip().splitlines()) <= 2, done.stderr
    Image.fromarray(mnist_test_set[0][9000]).save(tmp_path / "digit.png")
    done = subprocess.run(
        [*CNNCTL, "predict", "digit.png"], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "digit.png" in done.stdout and str(mnist_test_set[1][9000]) in done.stdout


# --------------------------------------------------------------------------- rough edges a new user
# met


def digit_png(mnist_test_set, path: Path, index: int = 0) -> Path:
    Image.fromarray(mnist_test_set[0][index]).save(path)
    return path


def test_predict_in_a_pipe_prints_one_full_line_per_image(
    runner, run_copy, tmp_path, mnist_test_set
):
    folder = tmp_path / "pictures" / ("a-rather-long-folder-name-" * 3)
    folder.mkdir(parents=True)
    for i in range(3):
        digit_png(mnist_test_set, folder / f"digit-{i}.png", i)
    result = runner.invoke(
        main,
        ["predict", str(tmp_path / "pictures"), "--runs-dir", str(run_copy)],
        env={"COLUMNS": "60"},
    )
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()[2:]
    assert len(rows) == 3 and all(f"digit-{i}.png" in row for i, row in enumerate(rows))
    assert all(
        row.lstrip().startswith("a-rather-long-folder-name-" * 3) for row in rows
    )  # relative
    assert "predicting with" in result.stderr and "small/model.keras" in result.stderr


def test_an_empty_run_is_resumed_from_the_start_and_skipped_by_default(
    runner, run_copy, small_config
):
    empty = run_copy / "e"  # what Ctrl-C before the end of the first epoch leaves
    empty.mkdir()
    (empty / "checkpoints").mkdir()
    (empty / "config.yaml").write_text((run_copy / "small" / "config.yaml").read_text())
    (empty / "classes.json").write_text((run_copy / "small" / "classes.json").read_text())
    (empty / "run.json").write_text('{"status": "interrupted", "started": 9999999999}')
    result = runner.invoke(main, ["evaluate", "--runs-dir", str(run_copy), "--json"])
    assert result.exit_code == 0, result.output
    assert f"evaluating {run_copy / 'small' / 'model.keras'}" in result.stderr
    result = runner.invoke(main, ["train", "--resume", str(empty)])
    assert result.exit_code == 0, result.output
    assert "had no finished epoch: trained it from the start, in the same folder" in result.stderr
    assert (empty / "model.keras").is_file() and not (run_copy / "e-2").exists()


def test_json_stdout_holds_only_json_when_keras_downloads(write, tmp_path):
    config = write("c.yaml", SMALL.replace("dataset: mnist", "dataset: cifar10"))
    env = {
        **os.environ,
        "CNNCTL_DATA_DIR": str(tmp_path / "none"),
        "KERAS_HOME": str(tmp_path / "kh"),
    }
    env.pop("CNNCTL_OFFLINE", None)
    done = subprocess.run(
        [*CNNCTL, "datasets", "check", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert "Downloading data from" in done.stderr  # Keras tried (and this machine has no internet)
    assert done.stdout == "" or json.loads(done.stdout)
    assert done.returncode in (0, 2), done.stderr


def test_predict_output_into_a_new_folder(runner, run_copy, tmp_path, mnist_test_set):
    png = digit_png(mnist_test_set, tmp_path / "d.png")
    result = runner.invoke(
        main, ["predict", str(png), "--runs-dir", str(run_copy), "--output", "new/dir/p.csv"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 1 prediction to new/dir/p.csv" in result.stderr
    assert Path("new/dir/p.csv").read_text().startswith("path,label,probability")


def test_evaluate_keeps_the_test_report_and_names_what_it_scored(runner, run_copy):
    first = runner.invoke(main, ["evaluate", "--runs-dir", str(run_copy)])
    assert first.exit_code == 0, first.output
    test_report = (run_copy / "small" / "evaluation.json").read_text()
    other = runner.invoke(main, ["evaluate", "--runs-dir", str(run_copy), "--split", "train"])
    assert other.exit_code == 0, other.output
    assert "on the train split of its run's data" in other.stderr
    assert (run_copy / "small" / "evaluation.json").read_text() == test_report
    assert (
        json.loads((run_copy / "small" / "evaluation-train.json").read_text())["split"] == "train"
    )
    assert (run_copy / "small" / "confusion_matrix-train.png").is_file()


def test_evaluate_explains_missing_models_and_builtin_data(runner, run_copy):
    missing = runner.invoke(main, ["evaluate", "--model", "nonexist.keras"])
    assert missing.exit_code == 2 and "nonexist.keras: no such model file" in missing.stderr
    assert "train the run first" not in missing.stderr
    builtin = runner.invoke(main, ["evaluate", "--runs-dir", str(run_copy), "--data", "cifar100"])
    assert builtin.exit_code == 2 and "dataset 'cifar100' not found offline" in builtin.stderr
    assert "--set" not in builtin.stderr


def test_global_options_work_after_the_command(runner, run_copy, tmp_path):
    listed = runner.invoke(main, ["runs", "--runs-dir", str(run_copy), "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["name"] for r in json.loads(listed.stdout)] == ["small"]
    failed = runner.invoke(
        main, ["predict", "--debug", "--runs-dir", str(run_copy), str(tmp_path / "none.png")]
    )
    assert failed.exit_code == 2 and "none.png" in failed.stderr


def test_runs_best_is_the_monitored_value_of_the_saved_epoch(runner, run_copy):
    summary = json.loads((run_copy / "small" / "metrics.json").read_text())
    listed = json.loads(runner.invoke(main, ["runs", str(run_copy), "--json"]).stdout)[0]
    assert listed["monitor"] == "val_loss" and listed["best_value"] == summary["best_value"]
    assert listed["best_epoch"] == summary["best_epoch"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "name: x\ndata: {dataset: mnist}\nmodle: {input_shape: [28, 28, 1], layers: "
            "[Flatten]}\n",
            "c.yaml:3:1: modle: unknown key (did you mean 'model'?), and `model:` is missing",
        ),
        (
            SMALL + "  optimizer: adamm\n",
            "c.yaml:21:14: train.optimizer.type: unknown optimizer type 'adamm' (did you mean "
            "'Adam'?)",
        ),
    ],
    ids=["top-level-typo", "optimizer-case"],
)
def test_config_typos_get_the_right_suggestion(runner, write, text, message):
    result = runner.invoke(main, ["validate", str(write("c.yaml", text))])
    assert result.exit_code == 2 and message in result.stderr, result.stderr


def test_small_rough_edges(runner, run_copy, tmp_path, mnist_test_set):
    assert runner.invoke(main, ["runs", "/nonexistent"]).exit_code == 2
    (run_copy / "small" / "run.json").write_text("[1, 2")
    damaged = json.loads(runner.invoke(main, ["runs", str(run_copy), "--json"]).stdout)[0]
    assert damaged["status"] == "damaged" and "run.json" in damaged["problem"]
    conflict = runner.invoke(main, ["predict", "x.png", "--format", "csv", "--json"])
    assert conflict.exit_code == 2 and "--json and --format csv disagree" in conflict.stderr
    (tmp_path / "empty.png").write_bytes(b"")
    png = digit_png(mnist_test_set, tmp_path / "d.png")
    result = runner.invoke(
        main, ["predict", str(png), str(tmp_path / "empty.png"), "--runs-dir", str(run_copy)]
    )
    assert result.exit_code == 1 and "empty.png: empty file" in result.stderr
    assert "1 unreadable file\n" in result.stderr
    for n in range(7):
        (run_copy / f"r{n}").mkdir()
        (run_copy / f"r{n}" / "config.yaml").write_text("x")
    nosuch = runner.invoke(main, ["evaluate", "nosuch", "--runs-dir", str(run_copy)])
    assert nosuch.exit_code == 2 and ", …" in nosuch.stderr


def test_validate_numbers_layers_as_the_config_does(runner, write):
    result = runner.invoke(main, ["validate", str(write("c.yaml", SMALL))])
    assert result.exit_code == 0, result.output
    rows = [line.split("│") for line in result.stdout.splitlines() if line.startswith("│")]
    assert any(row[1].strip() == "+" and "normalize" in row[2] for row in rows)
    assert any(row[1].strip() == "0" and "(Conv2D)" in row[2] for row in rows)


def test_resuming_a_finished_run_is_refused_before_tensorflow_starts(run_copy):
    """One message, with how to add epochs, and no 3.7 s of TensorFlow start-up before it."""
    run = next(p for p in run_copy.iterdir() if (p / "config.yaml").is_file())
    code = (
        "import sys; from cnnctl.cli import main\n"
        f"try: main(['--runs-dir', {str(run_copy)!r}, 'train', '--resume', {run.name!r}])\n"
        "except SystemExit as e: code = e.code\n"
        "assert 'tensorflow' not in sys.modules, 'imported TF'\nsys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "already finished" in done.stderr and "--epochs" in done.stderr
    assert not done.stderr.startswith("resuming")  # said once, as the refusal


def test_runs_before_any_training_is_an_empty_list_and_how_to_start(runner, tmp_path):
    result = runner.invoke(main, ["--runs-dir", str(tmp_path / "none"), "runs", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    assert "cnnctl train configs/fashion_mnist.yaml" in result.stderr


def test_help_lists_every_command_whole_and_every_option_says_what_it_does(runner):
    listing = runner.invoke(main, ["--help"], terminal_width=80).output
    commands = listing.split("Commands:")[1].strip().splitlines()
    assert len(commands) >= 9 and not any(line.rstrip().endswith("...") for line in commands)
    for command in ("predict", "evaluate", "export", "train", "tune"):
        text = runner.invoke(main, [command, "--help"], terminal_width=100).output
        options = [line for line in text.splitlines() if line.lstrip().startswith("--")]
        bare = [line for line in options if not line.lstrip().split("  ", 1)[1:]]
        assert not [b for b in bare if "[default" in b or b.strip().endswith("RANGE")], bare
    assert "--run RUN" in runner.invoke(main, ["predict", "--help"]).output


def test_evaluate_scores_a_folder_given_to_it_whole(runner, run_copy, mnist_test_set, tmp_path):
    """A labelled folder without a test/ part is scored whole, not its held-out 20%."""
    from PIL import Image

    x, y = mnist_test_set
    folder = tmp_path / "mine"
    for label in range(10):
        (folder / str(label)).mkdir(parents=True)
        for i in np.flatnonzero(y == label)[:3]:
            Image.fromarray(x[i]).save(folder / str(label) / f"{i}.png")
    result = runner.invoke(
        main, ["--runs-dir", str(run_copy), "evaluate", "--data", str(folder), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["examples"] == 30
    assert report["saved"][0].endswith("evaluation-mine.json")
    assert "mine (all of it" in result.stderr


def test_validate_checks_the_head_against_a_folders_classes(runner, write, tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "pets" / name).mkdir(parents=True)
    config = write(
        "pets.yaml",
        "data:\n  path: pets\nmodel:\n  input_shape: [28, 28, 1]\n"
        "  layers: [Flatten, {type: Dense, units: 3, activation: softmax}]\n",
    )
    result = runner.invoke(main, ["validate", str(config)])
    assert result.exit_code == 2, result.output
    assert "pets.yaml:5:" in result.output and "the data has 2 classes" in result.output
    fixed = runner.invoke(main, ["validate", str(config), "--set", "model.layers.1.units=2"])
    assert fixed.exit_code == 0, fixed.output


def test_train_says_what_it_trains_before_epoch_1_and_times_epoch_1_apart(runner, small_config):
    result = runner.invoke(main, ["train", str(small_config), "--json"])
    assert result.exit_code == 0, result.output
    first = next(line for line in result.stderr.splitlines() if line.startswith("data: "))
    assert re.match(
        r"data: 4,000 train, 2,000 validation, 2,000 test images of .*; 10 classes; "
        r"model: [\d,]+ parameters$",
        first,
    ), first
    summary = json.loads(result.stdout)
    assert summary["first_epoch_seconds"] > 0 and summary["train_images_per_second"] > 0


def test_validate_says_when_input_shape_was_inferred(runner, write):
    config = write(
        "plain.yaml",
        "data:\n  dataset: mnist\nmodel:\n  layers: [Flatten, {type: Dense, units: 10}]\n",
    )
    result = runner.invoke(main, ["validate", str(config)])
    assert result.exit_code == 0, result.output
    assert "model.input_shape: [28, 28, 1] (inferred from data.dataset: mnist)" in result.output
