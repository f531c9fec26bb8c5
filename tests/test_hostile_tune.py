"""Hostile tune journals (issue 25, 6): read defensively before Optuna, values checked on the way
back (a planted `filters: 999999` never reaches best.yaml)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_tune import TUNED

from cnnctl.cli import main

GOOD = b'{"op_code": 0, "worker_id": "w", "study_name": "tiny-tune", "directions": [1]}\n'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x00\xffgarbage\n", "journal.log:1: damaged tune journal (not valid JSON"),
        (GOOD + b'{"op_code": 4, "trial_id": 0', "journal.log:2: damaged tune journal (a line cut"),
        (GOOD + b'{"op_code": 4, "v": ' + b"9" * 5001 + b"}\n", "journal.log:2: damaged tune"),
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", "journal.log:1: damaged tune journal (refused"),
        (b"[1]\n", "journal.log:1: damaged tune journal (not an Optuna record)"),
        (None, "the tune journal is too large (314,572,802 > limit 268,435,456)"),
    ],
    ids=["garbage", "cut", "digits", "deep", "not-a-record", "huge"],
)
def test_a_damaged_journal_is_one_line_naming_it(runner, write, body, message):
    config = write("tune.yaml", TUNED)
    journal = Path("runs/tiny-tune/journal.log")
    journal.parent.mkdir(parents=True)
    if body is None:
        journal.touch()
        os.truncate(journal, 300 * 2**20 + 2)  # sparse: refused by its size, never read
    else:
        journal.write_bytes(body)
    result = runner.invoke(main, ["tune", str(config)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and str(journal) in result.stderr
    assert "internal error" not in result.output and "tune.metric" not in result.output
    assert not list(Path("runs").glob("*/trial-*"))


def test_values_read_back_from_a_journal_are_checked_against_the_space(write):
    from cnnctl.config import load_config
    from cnnctl.tune.report import Watcher

    tune = load_config(write("tune.yaml", TUNED)).tune

    def trial(number: int, value: float, filters: object, rate: float = 1e-3) -> SimpleNamespace:
        params = {"train.optimizer.learning_rate": rate, "model.layers.0.filters": filters}
        return SimpleNamespace(
            number=number, value=value, params=params, state=SimpleNamespace(name="COMPLETE")
        )

    watcher = SimpleNamespace(tune=tune)
    planted = [trial(0, 0.5, 4), trial(1, 0.99, 999999), trial(2, 0.98, 2, rate=5.0)]
    planted.append(trial(3, 0.97, 4, rate=float("nan")))
    assert Watcher._best(watcher, planted).number == 0
