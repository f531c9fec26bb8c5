"""MLflow tracking, read back through MLflow's own client: params, metric histories, artifacts;
a server that refuses leaves the run finished and pending, and `track sync` sends it."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cnnctl.cli import main
from cnnctl.config.paths import flatten
from cnnctl.track.mlflow_log import param_text, shown_uri

from conftest import SMALL

pytest.importorskip("mlflow", reason="the track extra: pip install 'cnnctl[track]'")

TINY = SMALL.replace("limit: 4000", "limit: 1000")  # 2 epochs on 1,000 digits


def client_for(run: Path):
    from mlflow import MlflowClient

    record = json.loads((run / "track.json").read_text())
    return MlflowClient(record["uri"]), record


def csv_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, data_dir) -> Path:
    """One run trained with --track mlflow into the default local store (runs/mlruns)."""
    root = tmp_path_factory.mktemp("tracked")
    (root / "small.yaml").write_text(TINY)
    with pytest.MonkeyPatch.context() as env:
        env.chdir(root)
        env.setenv("CNNCTL_OFFLINE", "1")
        env.setenv("CNNCTL_DATA_DIR", str(data_dir))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        done = CliRunner().invoke(main, ["train", "small.yaml", "--track", "mlflow"])
        assert done.exit_code == 0, done.output
    return root / "runs" / "small"


def test_the_run_lands_in_the_local_store_with_the_resolved_config_as_params(tracked):
    import mlflow

    client, record = client_for(tracked)
    assert record["status"] == "sent" and record["parent"] is None
    assert record["uri"] == f"sqlite:///{tracked.parent.resolve() / 'mlruns' / 'mlflow.db'}"
    mlflow.set_tracking_uri(record["uri"])
    (found,) = mlflow.search_runs(experiment_names=["cnnctl"], output_format="list")
    assert found.info.run_id == record["run_id"] and found.info.status == "FINISHED"
    assert found.info.run_name == "small"
    resolved = flatten(yaml.safe_load((tracked / "config.yaml").read_text()))
    assert found.data.params == {key: param_text(value) for key, value in resolved.items()}
    assert found.data.params["model.layers.0.filters"] == "8"
    assert found.data.params["train.optimizer"] == "adam"
    assert found.data.tags["cnnctl.headline"] == "test_accuracy"


def test_metric_histories_equal_metrics_csv_row_for_row(tracked):
    client, record = client_for(tracked)
    rows = csv_rows(tracked)
    assert len(rows) == 2
    for column in rows[0]:
        if column == "epoch":
            continue
        history = client.get_metric_history(record["run_id"], column)
        assert [(m.step, m.value) for m in history] == [
            (int(row["epoch"]), float(row[column])) for row in rows
        ], column
    test = json.loads((tracked / "metrics.json").read_text())["test"]
    for key, value in test.items():
        (logged,) = client.get_metric_history(record["run_id"], f"test_{key}")
        assert (logged.step, logged.value) == (2, value)


def test_the_run_folder_files_are_artifacts(tracked, tmp_path):
    client, record = client_for(tracked)
    names = {item.path for item in client.list_artifacts(record["run_id"])}
    expected = {"config.yaml", "classes.json", "model.keras", "metrics.csv", "metrics.json"}
    assert expected | {"curves.png", "run.json"} <= names
    assert "checkpoints" not in names and "track.json" not in names
    got = client.download_artifacts(record["run_id"], "model.keras", str(tmp_path))
    assert Path(got).read_bytes() == (tracked / "model.keras").read_bytes()


def test_without_mlflow_installed_one_line_names_the_pip_command(runner, write, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    config = write("small.yaml", TINY + "  track: mlflow\n")
    result = runner.invoke(main, ["train", str(config)])
    assert result.exit_code == 2
    assert result.output == (
        "Error: small.yaml:21:10: train.track: MLflow is not installed: "
        "pip install 'cnnctl[track]'\n"
    )
    assert not Path("runs").exists()
    synced = runner.invoke(main, ["track", "sync"])
    assert synced.exit_code == 2
    assert "MLflow is not installed: pip install 'cnnctl[track]'" in synced.output


def test_sync_of_a_run_never_tracked_says_how_to_track(runner, run_copy):
    result = runner.invoke(main, ["track", "sync", "small"])
    assert result.exit_code == 2
    assert "runs/small: was not tracked (no track.json)" in result.output
    assert "hint: train with --track mlflow" in result.output
    nothing = runner.invoke(main, ["track", "sync"])
    assert nothing.exit_code == 0 and "nothing pending in runs/" in nothing.output


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("https://alice:secret@mlflow.example:8443/x", "https://mlflow.example:8443/x"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////tmp/runs/mlruns/mlflow.db", "sqlite:////tmp/runs/mlruns/mlflow.db"),
    ],
    ids=["credentials-dropped", "plain", "local-store"],
)
def test_track_json_never_keeps_a_password_of_the_uri(uri, shown):
    assert shown_uri(uri) == shown


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(port: int, folder: Path) -> subprocess.Popen:
    """A real MLflow server on loopback, its store and artifacts in `folder`."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"),
            *("--port", str(port), "--workers", "1"),
            *("--backend-store-uri", f"sqlite:///{folder / 'server.db'}"),
            *("--artifacts-destination", str(folder / "artifacts")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "server.log", "w"),  # noqa: SIM115 - the server's lifetime
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        assert process.poll() is None, (folder / "server.log").read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise AssertionError("the MLflow server did not start: " + (folder / "server.log").read_text())


def test_a_server_that_never_answers_costs_a_warning_not_the_run(runner, write, monkeypatch):
    """A port that takes the connection and then says nothing: the request times out."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog; nothing ever answers
        port = silent.getsockname()[1]
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
        config = write("small.yaml", TINY.replace("epochs: 2", "epochs: 1"))
        started = time.monotonic()
        result = runner.invoke(main, ["train", str(config), "--track", "mlflow", "--json"])
        waited = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["epochs_done"] == 1  # stdout holds the JSON alone
    assert f"warning: MLflow at http://127.0.0.1:{port}: could not log runs/small" in result.stderr
    assert json.loads(Path("runs/small/track.json").read_text())["status"] == "pending"
    assert json.loads(Path("runs/small/run.json").read_text())["status"] == "finished"
    assert waited < 60


@pytest.mark.slow  # a minute: the server makes its database before it answers
def test_a_server_that_refuses_leaves_the_run_finished_and_sync_sends_it(
    runner, write, monkeypatch, tmp_path
):
    port = free_port()  # nothing listens there yet: connections are refused
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    config = write("small.yaml", TINY)
    result = runner.invoke(main, ["train", str(config), "--track", "mlflow"])
    assert result.exit_code == 0, result.output
    run = Path("runs/small")
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert (run / "model.keras").is_file()
    assert f"warning: MLflow at http://127.0.0.1:{port}: could not log runs/small" in result.stderr
    assert "send it later with: cnnctl track sync runs/small" in result.stderr
    record = json.loads((run / "track.json").read_text())
    assert record["status"] == "pending" and record["run_id"] is None

    refused = runner.invoke(main, ["track", "sync"])
    assert refused.exit_code == 2
    assert f"runs/small: MLflow at http://127.0.0.1:{port} did not take it" in refused.output

    server = start_server(port, tmp_path)
    try:
        synced = runner.invoke(main, ["track", "sync"])
        assert synced.exit_code == 0, synced.output
        record = json.loads((run / "track.json").read_text())
        assert record["status"] == "sent" and "error" not in record
        assert f"sent runs/small to http://127.0.0.1:{port} (run id {record['run_id']})" in (
            synced.output
        )
        import mlflow

        mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
        (found,) = mlflow.search_runs(experiment_names=["cnnctl"], output_format="list")
        assert found.info.run_id == record["run_id"] and found.info.status == "FINISHED"
        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        rows = csv_rows(run)
        history = client.get_metric_history(record["run_id"], "val_loss")
        assert [(m.step, m.value) for m in history] == [
            (int(r["epoch"]), float(r["val_loss"])) for r in rows
        ]
        names = {item.path for item in client.list_artifacts(record["run_id"])}
        assert {"model.keras", "metrics.csv", "curves.png"} <= names
        again = runner.invoke(main, ["track", "sync"])  # nothing pending any more
        assert again.exit_code == 0 and "nothing pending" in again.output
    finally:
        server.terminate()
        server.wait(timeout=30)


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
  track: mlflow
tune:
  metric: val_accuracy
  trials: 2
  sampler: random
  parameters:
    train.optimizer.learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
"""


@pytest.mark.slow
def test_tune_trials_nest_under_their_study_as_a_parent_run(write, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = write("tune.yaml", STUDY)
    done = subprocess.run(
        [sys.executable, "-m", "cnnctl.cli", "tune", str(config)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    study = Path("runs/tiny-tune")
    parent = json.loads((study / "track.json").read_text())
    mlflow.set_tracking_uri(parent["uri"])
    assert parent["uri"] == f"sqlite:///{Path('runs').resolve() / 'mlruns' / 'mlflow.db'}"
    found = mlflow.search_runs(experiment_names=["cnnctl"], output_format="list")
    (top,) = [r for r in found if r.info.run_id == parent["run_id"]]
    assert top.info.run_name == "tiny-tune" and top.info.status == "FINISHED"
    assert "best_val_accuracy" in top.data.metrics
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent["run_id"]]
    assert sorted(r.info.run_name for r in children) == ["trial-000", "trial-001"]
    for child in children:
        record = json.loads((study / child.info.run_name / "track.json").read_text())
        assert record["run_id"] == child.info.run_id and record["parent"] == parent["run_id"]
        assert child.data.params["train.optimizer.learning_rate"] == str(
            yaml.safe_load((study / child.info.run_name / "config.yaml").read_text())["train"][
                "optimizer"
            ]["learning_rate"]
        )
