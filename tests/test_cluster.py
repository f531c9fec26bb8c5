"""A multi-worker run when a worker dies or is preempted: no hang, one line, an exact resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import keras
import pytest
from test_distribute import free_ports, tf_config

from cnnctl.config import load_config
from cnnctl.errors import ConfigError
from cnnctl.runs import Run
from cnnctl.training.checkpoint import STATE_MEMBER
from cnnctl.training.cluster import lost_line, lost_tasks

CNNCTL = [sys.executable, "-m", "cnnctl.cli"]
TIMEOUT = 20  # train.distribute_timeout of these runs, seconds
HANG = 240  # far above it: a worker still running after this long hangs
CLUSTER = f"""\
name: small
data: {{dataset: mnist, limit: 2000}}
model:
  input_shape: [28, 28, 1]
  layers:
    - {{type: Conv2D, filters: 4, kernel_size: [3, 3], activation: relu}}
    - {{type: MaxPooling2D, pool_size: [4, 4]}}
    - Flatten
    - {{type: Dense, units: 10, activation: softmax}}
train: {{epochs: 3, batch_size: 32, distribute: multi_worker, distribute_timeout: {TIMEOUT}}}
"""
COLUMNS = ("loss", "accuracy", "val_loss", "val_accuracy")


def start(args: list[str], folder: Path, env: dict[str, str]) -> list[subprocess.Popen]:
    """Two workers of one cluster on free loopback ports, each logging stderr to wN.err."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    return [
        subprocess.Popen(
            [*CNNCTL, "train", *args],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=open(folder / f"w{index}.err", "w"),  # noqa: SIM115
            env={**env, "TF_CONFIG": tf_config(index, workers)},
        )
        for index in range(2)
    ]


def finish(processes: list[subprocess.Popen]) -> list[int]:
    try:
        return [process.wait(timeout=HANG) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def epoch_saved(folder: Path, epoch: int) -> None:
    """Wait until the chief's checkpoint holds `epoch` finished epochs."""
    last = folder / "runs/small/checkpoints/last.keras"
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        try:
            with zipfile.ZipFile(last) as archive:
                if json.loads(archive.read(STATE_MEMBER))["epoch"] >= epoch:
                    return
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            pass
        time.sleep(0.1)
    pytest.fail(f"epoch {epoch} never saved")


def metrics(folder: Path) -> list[dict[str, str]]:
    with open(folder / "runs/small/metrics.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def run_status(folder: Path) -> dict:
    return json.loads((folder / "runs/small/run.json").read_text())


def same_metrics(rows: list[dict[str, str]], reference: list[dict[str, str]]) -> None:
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    for row, expected in zip(rows, reference, strict=True):
        for column in COLUMNS:
            assert float(row[column]) == pytest.approx(float(expected[column]), rel=1e-4, abs=1e-4)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir) -> list[dict[str, str]]:
    """metrics.csv of the same two-worker run, never interrupted."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    (folder / "cluster.yaml").write_text(CLUSTER)
    env = {
        **os.environ,
        "CNNCTL_OFFLINE": "1",
        "CNNCTL_DATA_DIR": str(data_dir),
        "KERAS_HOME": str(folder / "keras-home"),
    }
    assert finish(start(["cluster.yaml"], folder, env)) == [0, 0]
    return metrics(folder)


@pytest.fixture
def cluster_config(write) -> Path:
    return write("cluster.yaml", CLUSTER)


@pytest.mark.slow
def test_a_killed_worker_stops_the_other_in_time_and_a_restart_resumes_exactly(
    cluster_config, offline_scratch, uninterrupted
):
    folder = offline_scratch
    workers = start([str(cluster_config)], folder, dict(os.environ))
    epoch_saved(folder, 1)
    time.sleep(0.3)  # into epoch 2
    workers[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    assert workers[0].wait(timeout=HANG) == 1
    latency = time.monotonic() - killed
    finish(workers)
    print(f"worker 0 exited {latency:.1f} s after worker 1 was killed")  # shown with pytest -s
    assert latency < TIMEOUT + 5  # the timeout, plus writing run.json and leaving Python
    error = (folder / "w0.err").read_text()
    assert "Error: worker 1 (127.0.0.1:" in error
    assert (
        "was lost in epoch 2; 1 of 3 epochs are saved in runs/small; "
        "restart every worker with: cnnctl train --resume runs/small"
    ) in error
    assert error.strip().splitlines()[-1].startswith("Error: worker 1")  # one line, no hint
    assert "Traceback" not in error
    assert run_status(folder)["status"] == "interrupted" and run_status(folder)["epochs_done"] == 1

    assert finish(start(["--resume", "runs/small"], folder, dict(os.environ))) == [0, 0]
    same_metrics(metrics(folder), uninterrupted)
    assert run_status(folder)["status"] == "finished"
    keras.saving.load_model(folder / "runs/small/model.keras")


@pytest.mark.slow
def test_sigterm_on_one_worker_stops_both_at_the_same_step_and_resume_completes(
    cluster_config, offline_scratch, uninterrupted
):
    folder = offline_scratch
    workers = start([str(cluster_config)], folder, dict(os.environ))
    epoch_saved(folder, 1)
    time.sleep(0.3)
    workers[0].send_signal(signal.SIGTERM)
    assert finish(workers) == [130, 130]
    for index in range(2):
        error = (folder / f"w{index}.err").read_text()
        assert "stopped; 1 of 3 epochs are saved in runs/small" in error, error
    assert run_status(folder)["status"] == "interrupted"

    assert finish(start(["--resume", "runs/small"], folder, dict(os.environ))) == [0, 0]
    same_metrics(metrics(folder), uninterrupted)
    keras.saving.load_model(folder / "runs/small/model.keras")


TF_MESSAGE = """Collective ops is aborted by: Error reported from /job:worker/task:1: The following
tasks are unhealthy (stopped sending heartbeats):
/job:worker/replica:0/task:1
The tasks have crashed."""


def test_the_lost_worker_is_the_one_tensorflow_names():
    spec = json.loads(tf_config(0, ["127.0.0.1:1", "127.0.0.1:2"]))
    assert lost_tasks(TF_MESSAGE, spec) == ["worker 1 (127.0.0.1:2)"]


def test_without_a_name_the_lost_worker_is_the_one_whose_port_refuses():
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    gone = free_ports(1)[0]
    with listening:
        alive = listening.getsockname()[1]
        spec = json.loads(tf_config(0, ["127.0.0.1:1", f"127.0.0.1:{alive}", f"127.0.0.1:{gone}"]))
        assert lost_tasks("Collective has timed out during execution.", spec) == [
            f"worker 2 (127.0.0.1:{gone})"
        ]


def test_a_worker_that_hangs_is_not_named_but_the_timeout_is():
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    with listening:  # a stopped (SIGSTOP) worker's port still accepts connections
        spec = json.loads(tf_config(0, ["127.0.0.1:1", f"127.0.0.1:{listening.getsockname()[1]}"]))
        text = "Collective has timed out during execution."
        line = lost_line(text, spec, Run(Path("runs/x")), 2, 5)
    assert line == (
        "a worker did not answer within train.distribute_timeout in epoch 3; "
        "2 of 5 epochs are saved in runs/x; "
        "restart every worker with: cnnctl train --resume runs/x"
    )


def test_distribute_timeout_must_be_positive(small_config):
    with pytest.raises(ConfigError, match="train.distribute_timeout"):
        load_config(small_config, ["train.distribute_timeout=0"])
    assert load_config(small_config).train.distribute_timeout == 300


PAIRS = """\
name: pairs
task: segmentation
seed: 7
data: {{path: {path}, cache: none, validation: 0.25}}
model:
  input_shape: [64, 64, 1]
  layers:
    - {{type: Conv2D, filters: 4, kernel_size: 3, padding: same, activation: relu}}
    - type: Skip
      layers:
        - MaxPooling2D
        - {{type: Conv2D, filters: 8, kernel_size: 3, padding: same, activation: relu}}
        - {{type: UpSampling2D, size: 2}}
    - {{type: Conv2D, filters: 11, kernel_size: 1, activation: softmax}}
train: {{epochs: 3, batch_size: 8, distribute: multi_worker, distribute_timeout: 60}}
"""


@pytest.mark.slow
def test_two_workers_train_a_unet_on_streamed_pairs_each_decoding_its_share(
    offline_scratch, scenes_csv
):
    import shutil

    from cnnctl.data.dataset import load_dataset
    from cnnctl.data.order import shuffled
    from cnnctl.data.stream import worker_share
    from cnnctl.tasks import task_named

    folder, scenes = offline_scratch, scenes_csv.parent
    data = folder / "scenes"  # 48 training and 16 test pairs of the fashion scenes
    for split, count in (("train", 48), ("test", 16)):
        for kind in ("images", "masks"):
            (data / kind / split).mkdir(parents=True)
            for path in sorted((scenes / kind / split).glob("*.png"))[:count]:
                shutil.copy(path, data / kind / split / path.name)
    shutil.copy(scenes / "classes.txt", data / "classes.txt")
    (folder / "pairs.yaml").write_text(PAIRS.format(path=data))
    # One training image will fail to decode (its header reads, its pixels do not): picked so
    # that the chief's (worker 0's) share of the shuffled batches holds it in some epochs only.
    config = load_config(folder / "pairs.yaml")
    dataset = load_dataset(config.data, (64, 64, 1), 7, task=task_named("segmentation"))
    n = len(dataset.x_train)
    shares = [set(worker_share(shuffled(n, 7, e), 8, 2, 0).numpy().tolist()) for e in range(3)]
    position = next(p for p in range(n) if 0 < sum(p in share for share in shares) < 3)
    broken = Path(dataset.files["train"][position])
    raw = broken.read_bytes()
    broken.write_bytes(raw[: raw.index(b"IDAT") + 12])
    assert finish(start(["pairs.yaml"], folder, dict(os.environ))) == [0, 0]

    run = folder / "runs" / "pairs"
    assert [p.name for p in (folder / "runs").iterdir()] == ["pairs"]  # the chief's alone
    keras.saving.load_model(run / "model.keras")
    with open(run / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert all(0 < float(row["mean_iou"]) <= 1 and float(row["val_mean_iou"]) > 0 for row in rows)
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert 0 < test["mean_iou"] <= 1 and 0 < test["pixel_accuracy"] <= 1

    # The chief decoded only its share: the broken image is reported in exactly the epochs
    # whose share of the chief holds it (the other worker decodes it in the others).
    with open(run / "skipped.csv", newline="") as stream:
        listed = [row for row in csv.DictReader(stream) if row["split"] == "training"]
    assert {row["path"] for row in listed} == {str(broken)}
    expected = [e + 1 for e in range(3) if position in shares[e]]
    assert sorted(int(row["epoch"]) for row in listed) == expected
