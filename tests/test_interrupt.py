"""Killed or interrupted training loses nothing: the run resumes where it stopped."""

from __future__ import annotations

import csv
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest

from cnnctl.runs import Run, describe

CNNCTL = [sys.executable, "-m", "cnnctl.cli"]
LONGER = ["--set", "data.limit=8000", "--set", "train.epochs=5"]


def epochs_in(run: Path) -> list[int]:
    try:
        with open(run / "metrics.csv") as stream:
            return [int(row["epoch"]) for row in csv.DictReader(stream)]
    except FileNotFoundError:
        return []


def wait_for_epochs(process: subprocess.Popen, run: Path, count: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while len(epochs_in(run)) < count:
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "training too slow"
        time.sleep(0.05)


def start(small_config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*CNNCTL, "train", str(small_config), *LONGER, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_in_epoch_3_then_resume_gives_exactly_5_epochs(small_config):
    run = Path("runs/small")
    process = start(small_config)
    wait_for_epochs(process, run, 2)
    seconds = float(list(csv.DictReader(open(run / "metrics.csv")))[-1]["seconds"])
    time.sleep(seconds / 2)  # into the middle of epoch 3
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert epochs_in(run) == [1, 2]
    assert describe(Run(run)).status == "interrupted"

    done = subprocess.run(
        [*CNNCTL, "train", "--resume"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert epochs_in(run) == [1, 2, 3, 4, 5]
    models = sorted(run.rglob("*.keras"))
    assert [p.name for p in models] == ["last.keras", "model.keras"]
    for path in models:
        keras.saving.load_model(path)
    accuracy = float(re.search(r"test: accuracy ([0-9.]+)", done.stdout).group(1))
    assert accuracy > 0.9  # an uninterrupted run of this config reaches about 0.95
    assert describe(Run(run)).status == "finished"


@pytest.mark.parametrize(
    "sig",
    [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],  # same handler
    ids=["sigint", "sigterm"],
)
def test_interrupt_saves_and_prints_a_working_resume_command(small_config, sig):
    run = Path("runs/small")
    process = start(small_config)
    wait_for_epochs(process, run, 1)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert "\nstopped; " in "\n" + err and "Error: stopped" not in err  # asked for: not an error
    command = re.search(r"resume with: (cnnctl train --resume \S+)", err).group(1)
    done_epochs = epochs_in(run)
    assert 1 <= len(done_epochs) < 5
    keras.saving.load_model(run / "checkpoints" / "last.keras")
    assert describe(Run(run)).status == "interrupted"

    resumed = subprocess.run(
        [*CNNCTL, *command.split()[1:]], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert epochs_in(run) == [1, 2, 3, 4, 5]
