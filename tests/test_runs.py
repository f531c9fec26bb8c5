"""Run folders: never reused, found by name or as the latest, written atomically."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from cnnctl.errors import RunError
from cnnctl.runs import atomic_write, create_run, find_run, list_runs, set_status, write_text


def _create(root: str) -> str:
    return create_run(Path(root), "same").name


def test_second_run_of_a_name_gets_a_suffix(tmp_path):
    assert [create_run(tmp_path, "exp").name for _ in range(3)] == ["exp", "exp-2", "exp-3"]


def test_runs_started_at_the_same_moment_get_different_folders(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        names = pool.map(_create, [str(tmp_path)] * 8)
    assert sorted(names) == sorted(["same"] + [f"same-{n}" for n in range(2, 9)])


def test_latest_run_is_the_last_started(tmp_path):
    for name, started in [("b", 3.0), ("a", 5.0), ("c", 1.0)]:
        run = create_run(tmp_path, name)
        write_text(run.config, "name: x\n")
        set_status(run, "finished", started=started)
    assert [run.name for run in list_runs(tmp_path)] == ["c", "b", "a"]
    assert find_run(None, tmp_path).name == "a"
    assert find_run("b", tmp_path).name == "b"
    assert find_run(str(tmp_path / "c"), tmp_path).name == "c"


def test_no_runs_yet(tmp_path):
    with pytest.raises(RunError) as info:
        find_run(None, tmp_path / "runs")
    assert info.value.exit_code == 2
    assert "no runs in" in info.value.format_message() and "cnnctl train configs/mnist.yaml" in info.value.format_message()


def test_unknown_run_suggests_a_near_name(tmp_path):
    write_text(create_run(tmp_path, "mnist").config, "name: mnist\n")
    with pytest.raises(RunError, match="mnsit: no such run \\(did you mean 'mnist'\\?\\)"):
        find_run("mnsit", tmp_path)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("old")

    def half_write(tmp: Path) -> None:
        tmp.write_text("new but incompl")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, half_write)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]  # no temporary file left


def test_status_file_keeps_start_time(tmp_path):
    run = create_run(tmp_path, "x")
    set_status(run, "running", started=10.0)
    set_status(run, "finished")
    status = json.loads(run.run_json.read_text())
    assert status["status"] == "finished" and status["started"] == 10.0
