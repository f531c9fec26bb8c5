"""tf.distribute: the strategy a config asks for, and only the chief writing the run folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from cnnctl.config import load_config
from cnnctl.errors import ConfigError
from cnnctl.training.distribute import is_chief
from cnnctl.training.fit import train_run

CNNCTL = [sys.executable, "-m", "cnnctl.cli"]


def tf_config(
    index: int, workers: list[str], chief: str | None = None, kind: str = "worker"
) -> str:
    cluster = {"worker": workers, **({"chief": [chief]} if chief else {})}
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


@pytest.mark.parametrize(
    ("config", "chief"),
    [
        (None, True),
        (tf_config(0, ["a:1", "b:2"]), True),
        (tf_config(1, ["a:1", "b:2"]), False),
        (tf_config(0, ["a:1"], chief="c:3"), False),
        (tf_config(0, ["a:1"], chief="c:3", kind="chief"), True),
    ],
    ids=["alone", "worker-0", "worker-1", "worker-with-chief", "chief"],
)
def test_who_is_chief(monkeypatch, config, chief):
    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", config)
    assert is_chief() is chief


def test_a_worker_that_is_not_chief_writes_nothing(small_config, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", tf_config(1, ["localhost:1", "localhost:2"]))
    result = train_run(
        load_config(small_config, ["data.limit=500", "train.epochs=1"]), Path("runs"), None
    )
    assert result.epochs_done == 1 and not Path("runs").exists()


def test_multi_worker_needs_tf_config(small_config, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="multi_worker needs TF_CONFIG"):
        train_run(load_config(small_config, ["train.distribute=multi_worker"]), Path("runs"), None)
    assert not Path("runs").exists()


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_on_loopback_train_one_run(small_config):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = [
        subprocess.Popen(
            [
                *CNNCTL,
                "train",
                str(small_config),
                "--set",
                "train.distribute=multi_worker",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TF_CONFIG": tf_config(index, workers)},
        )
        for index in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
    assert [p.name for p in Path("runs").iterdir()] == [
        "small"
    ]  # exactly one run folder, the chief's
    summary = json.loads(outputs[0][0])
    assert (
        summary["epochs_done"] == 2 and summary["test"]["accuracy"] > 0.85
    )  # single process: about 0.9
    assert outputs[1][0].strip() == ""  # the other worker reports nothing and wrote nothing
    keras.saving.load_model(Path("runs/small/model.keras"))


def test_a_bad_tf_config_is_named(runner, small_config, monkeypatch):
    from cnnctl.cli import main

    monkeypatch.setenv("TF_CONFIG", "{not json")
    result = runner.invoke(
        main, ["train", str(small_config), "--set", "train.distribute=multi_worker"]
    )
    assert (
        result.exit_code == 2 and "TF_CONFIG: not valid JSON with cluster and task" in result.stderr
    )
