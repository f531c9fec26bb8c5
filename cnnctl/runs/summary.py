"""One line of `cnnctl runs`: read from a run folder without TensorFlow, whatever state it is in."""

from __future__ import annotations

import contextlib
import csv
import io
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cnnctl.errors import CnnctlError, RunError
from cnnctl.limits import read_bounded, read_json
from cnnctl.runs.folder import STATE_MEMBER, Run
from cnnctl.runs.status import running_pid


@dataclass
class RunSummary:
    """One line of `cnnctl runs`: what the run trained, how far it got, how good its model is."""

    name: str
    path: str
    status: str
    dataset: str | None = None
    epochs: int | None = None
    epochs_done: int = 0
    monitor: str | None = None  # the value that chose model.keras
    best_value: float | None = None  # that value at the saved epoch
    best_epoch: int | None = None
    stopped_early: int | None = None
    test_accuracy: float | None = None
    task: str = "classification"
    headline: str = "accuracy"  # the test figure that sums the run up (the task's)
    test_value: float | None = None  # that figure
    problem: str | None = None
    kind: str = "run"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StudySummary:
    """One study line of `cnnctl runs`: trials done and the best value of a `cnnctl tune` study."""

    name: str
    path: str
    trials_done: int = 0  # complete or pruned
    metric: str | None = None
    best_value: float | None = None
    best_trial: int | None = None
    kind: str = "study"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def describe_study(folder: Path) -> StudySummary:
    """A study folder's line, from trials.csv and study.json (written by `cnnctl tune`)."""
    summary = StudySummary(name=folder.name, path=str(folder))
    with contextlib.suppress(CnnctlError, ValueError, csv.Error):
        text = read_bounded(folder / "trials.csv", RunError).decode()
        states = [row.get("state") for row in csv.DictReader(io.StringIO(text))]
        summary.trials_done = sum(state in ("complete", "pruned") for state in states)
    with contextlib.suppress(CnnctlError):
        data = read_json(folder / "study.json", RunError)
        data = data if isinstance(data, dict) else {}
        best = data.get("best")
        if isinstance(data.get("metric"), str):
            summary.metric = data["metric"]
        if isinstance(best, dict) and isinstance(best.get("value"), (int, float)):
            summary.best_value = float(best["value"])
            summary.best_trial = best.get("trial") if isinstance(best.get("trial"), int) else None
    return summary


def describe(run: Run) -> RunSummary:
    """One line of `cnnctl runs`.

    What the run trained, how far it got, how good its saved model is.
    """
    from cnnctl.config import load_config, mode_of

    summary = RunSummary(name=run.name, path=str(run.path), status="unknown")
    problems = []
    try:
        run.check_inside(run.config, run.effective_config)
        config = load_config(run.effective_config)  # hardened: no alias bombs, bounded size
        summary.dataset = config.data.dataset or config.data.path
        summary.task = config.task
        summary.epochs = config.train.epochs
        summary.monitor = config.train.checkpoint.monitor
        mode = mode_of(summary.monitor, config.train.checkpoint.mode)
    except CnnctlError:
        problems.append("unreadable config.yaml")
        mode = "min"
    rows = []
    with contextlib.suppress(CnnctlError, ValueError, csv.Error):
        run.check_inside(run.metrics_csv)
        rows = list(csv.DictReader(io.StringIO(read_bounded(run.metrics_csv, RunError).decode())))
    summary.epochs_done = len(rows)
    finished = _read_dict(run, run.metrics_json)
    if isinstance(
        finished.get("best_value"), (int, float)
    ):  # what chose model.keras, as training saw it
        summary.monitor = str(finished.get("monitor") or summary.monitor)
        summary.best_value, summary.best_epoch = (
            float(finished["best_value"]),
            finished.get("best_epoch"),
        )
        summary.stopped_early = finished.get("stopped_early")
        test = finished.get("test")
        test = test if isinstance(test, dict) else {}
        if isinstance(finished.get("headline"), str):  # runs of earlier versions: accuracy
            summary.headline = finished["headline"]
        if isinstance(test.get(summary.headline), (int, float)):
            summary.test_value = float(test[summary.headline])
        if isinstance(test.get("accuracy"), (int, float)):
            summary.test_accuracy = float(test["accuracy"])
    elif summary.monitor:
        _best_so_far(summary, rows, mode)
    status = run.status_field("status")
    if run.run_json.exists() and not isinstance(status, str):
        problems.append("unreadable run.json")
    summary.status = status if isinstance(status, str) else "unknown"
    if summary.status == "running" and running_pid(run) is None:
        summary.status = "interrupted"  # killed without a chance to say so
    missing = [p.name for p in (run.model, run.last, run.classes) if not p.is_file()]
    if missing and rows:
        problems.append(f"missing {', '.join(missing)}")
    elif rows and not checkpoint_is_whole(run.last):
        problems.append("checkpoints/last.keras is truncated or not a cnnctl checkpoint")
    if problems:
        summary.status, summary.problem = "damaged", "; ".join(problems)
    return summary


def checkpoint_is_whole(path: Path) -> bool:
    """A cheap check, no TensorFlow: a regular file, a zip to its end, with the resume state inside.

    A truncated zip loses its central directory (at the end), so `is_zipfile` fails on it.
    """
    try:
        if not path.is_file() or not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            archive.getinfo(STATE_MEMBER)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return False
    return True


def _read_dict(run: Run, path: Path) -> dict[str, Any]:
    with contextlib.suppress(CnnctlError):
        data = run.read_json(path)
        return data if isinstance(data, dict) else {}
    return {}


def _best_so_far(summary: RunSummary, rows: list[dict[str, str]], mode: str) -> None:
    """The monitored value of the best epoch so far, as the checkpoint callback chose it."""
    values = []
    for row in rows:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            values.append((float(row[summary.monitor]), int(row["epoch"])))
    if values:
        pick = max if mode == "max" else min
        summary.best_value, summary.best_epoch = pick(values, key=lambda v: v[0])


def epoch_rows(run: Run) -> list[dict[str, float]]:
    """metrics.csv as numbers, one dict a finished epoch; cells that are not numbers left out.

    Read through the limits (bounded bytes and rows); an unreadable file gives no rows.
    """
    from cnnctl.limits import limit

    rows: list[dict[str, float]] = []
    with contextlib.suppress(CnnctlError, ValueError, csv.Error):
        run.check_inside(run.metrics_csv)
        text = read_bounded(run.metrics_csv, RunError).decode()
        for number, row in enumerate(csv.DictReader(io.StringIO(text))):
            if number >= limit("csv_rows"):
                break
            values = {}
            for key, cell in row.items():
                with contextlib.suppress(TypeError, ValueError):
                    values[str(key)] = float(cell)
            if "epoch" in values:
                values["epoch"] = int(values["epoch"])
                rows.append(values)
    return rows
