"""SIGKILL at random instants while checkpoints are written: nothing at a final path is broken."""

from __future__ import annotations

import csv
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest

from cnnctl.training.state import read_state

CNNCTL = [sys.executable, "-m", "cnnctl.cli"]
# A network whose checkpoints (about 40 MB with optimizer state) take longer to write than its
# epochs
# take to train, so that most random instants fall inside a save.
HEAVY = """\
name: heavy
data: {dataset: mnist, limit: 256}
model:
  input_shape: [28, 28, 1]
  layers:
    - {type: Conv2D, filters: 8, kernel_size: 3, activation: relu}
    - Flatten
    - {type: Dense, units: 512, activation: relu}
    - {type: Dense, units: 10, activation: softmax}
train: {epochs: 1000, batch_size: 64}
"""


def temporaries(run: Path) -> set[Path]:
    return {p for p in run.rglob(".*") if ".tmp" in p.name}


def epochs_done(run: Path) -> int:
    try:
        with open(run / "metrics.csv") as stream:
            return len(list(csv.DictReader(stream)))
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_random_kills_never_leave_a_broken_checkpoint(write):
    config = write("heavy.yaml", HEAVY)
    run = Path("runs/heavy")
    chance = random.Random(7)
    leftovers_seen = 0
    for attempt in range(8):
        before = temporaries(run) if run.exists() else set()
        args = ["train", str(config)] if attempt == 0 else ["train", "--resume", "heavy"]
        process = subprocess.Popen(
            [*CNNCTL, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        start_epochs = epochs_done(run)
        deadline = time.time() + 120
        while epochs_done(run) <= start_epochs:  # wait until this process has finished an epoch
            assert process.poll() is None, process.stderr.read()
            assert time.time() < deadline
            time.sleep(0.02)
        assert not (before & temporaries(run)), (
            "leftovers of the last kill were not cleaned at start"
        )
        time.sleep(chance.uniform(0.0, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        leftovers_seen += bool(temporaries(run))
        for path in (run / "model.keras", run / "checkpoints" / "last.keras"):
            keras.saving.load_model(path)  # every file at its final path is whole
        saved = read_state(run / "checkpoints" / "last.keras").epoch
        assert 1 <= saved and epochs_done(run) <= saved  # metrics.csv lists only saved epochs
    assert leftovers_seen >= 1, "no kill landed inside a save; the test did not test anything"
