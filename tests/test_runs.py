"""Run folders: never reused, found by name or as the latest, written atomically."""

from __future__ import annotations

import io
import json
import multiprocessing
import zipfile
from pathlib import Path

import pytest

from cnnctl.errors import RunError
from cnnctl.runs import (
    STATE_MEMBER,
    Run,
    atomic_write,
    create_run,
    describe,
    find_run,
    list_runs,
    set_status,
    write_text,
)


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
    assert (
        "no runs in" in info.value.format_message()
        and "cnnctl train configs/fashion_mnist.yaml" in info.value.format_message()  # offline
    )


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


def _run_with_checkpoint(root: Path, small_config: Path, data: bytes) -> Run:
    """A run folder with one finished epoch whose checkpoints/last.keras holds `data`."""
    run = create_run(root, "small")
    write_text(run.config, small_config.read_text())
    write_text(run.metrics_csv, "epoch,loss\n1,0.5\n")
    write_text(run.classes, json.dumps([str(n) for n in range(10)]))
    run.model.write_bytes(b"")
    run.last.write_bytes(data)
    set_status(run, "interrupted")
    return run


def _checkpoint(members: dict[str, bytes]) -> bytes:
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return stream.getvalue()


@pytest.mark.parametrize(
    ("cut", "members", "status"),
    [
        (None, {"model.weights.h5": b"w" * 5000, STATE_MEMBER: b"{}"}, "interrupted"),
        (3000, {"model.weights.h5": b"w" * 5000, STATE_MEMBER: b"{}"}, "damaged"),
        (None, {"model.weights.h5": b"w" * 5000}, "damaged"),
    ],
    ids=["whole", "truncated", "no-state"],
)
def test_a_truncated_checkpoint_marks_the_run_damaged(tmp_path, small_config, cut, members, status):
    data = _checkpoint(members)
    run = _run_with_checkpoint(tmp_path / "runs", small_config, data[:cut])
    summary = describe(run)
    assert summary.status == status
    if status == "damaged":
        assert summary.problem == "checkpoints/last.keras is truncated or not a cnnctl checkpoint"


def test_runs_reads_no_keras():
    import subprocess
    import sys

    code = (
        "import sys, cnnctl.runs; "
        "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_a_study_folder_without_study_json_counts_its_trials(tmp_path):
    from cnnctl.runs import describe_study, list_studies

    study = tmp_path / "old-tune"
    (study / "trial-000").mkdir(parents=True)
    (study / "trial-000" / "config.yaml").write_text("name: trial-000\n")
    (study / "trials.csv").write_text(
        "trial,state,value\n0,complete,0.5\n1,failed,\n2,pruned,0.1\n"
    )
    run = create_run(tmp_path, "plain")
    write_text(run.config, "name: plain\n")
    assert list_studies(tmp_path) == [study]  # not the run, not the study's own trials
    summary = describe_study(study)
    assert (summary.trials_done, summary.best_value, summary.kind) == (2, None, "study")
