"""The run folder: create it (never reuse one), find the latest, name the files inside.

runs/<name>/  config.yaml  classes.json  model.keras  checkpoints/  metrics.csv ...
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cnnctl.errors import CnnctlError, RunError
from cnnctl.escape import csv_cell
from cnnctl.limits import inside, read_bounded, read_json
from cnnctl.suggest import suggest

STATE_MEMBER = "cnnctl_state.json"  # the resume state's member inside checkpoints/last.keras


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
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Run:
    """Paths inside one run folder."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    config = property(lambda self: self.path / "config.yaml")
    classes = property(lambda self: self.path / "classes.json")
    model = property(lambda self: self.path / "model.keras")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last = property(lambda self: self.path / "checkpoints" / "last.keras")
    metrics_csv = property(lambda self: self.path / "metrics.csv")
    metrics_json = property(lambda self: self.path / "metrics.json")
    curves = property(lambda self: self.path / "curves.png")
    run_json = property(lambda self: self.path / "run.json")  # status, pid, start time
    evaluation = property(lambda self: self.path / "evaluation.json")
    confusion = property(lambda self: self.path / "confusion_matrix.png")

    def read_json(self, path: Path) -> Any:
        """A JSON file of the run, read through cnnctl's limits.

        It must lie inside the run folder.
        """
        if not path.exists():
            raise RunError(f"{path}: missing from the run folder", "was the run deleted by hand?")
        self.check_inside(path)
        return read_json(path, RunError)

    def check_inside(self, *paths: Path) -> None:
        """The run folder is a boundary.

        A file (or symlink) of the run that leads outside is refused.
        """
        for path in paths or self.known_files():
            if os.path.lexists(path) and not inside(self.path, path):
                raise RunError(
                    f"{path}: refused: it points outside the run folder {self.path}",
                    "a run folder's files must be inside it; remove the symlink",
                )

    def known_files(self) -> tuple[Path, ...]:
        return (
            self.config,
            self.classes,
            self.model,
            self.checkpoints,
            self.last,
            self.metrics_csv,
            self.metrics_json,
            self.curves,
            self.run_json,
            self.evaluation,
            self.confusion,
            self.path / "misclassified.csv",
            self.path / "errors.png",
        )

    def class_names(self) -> list[str]:
        names = self.read_json(self.classes)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise RunError(f"{self.classes}: expected a list of class names")
        return names

    def status_data(self) -> dict[str, Any]:
        """run.json as a dict; {} when it is missing, damaged or not a JSON object."""
        with contextlib.suppress(CnnctlError):
            data = self.read_json(self.run_json)
            if isinstance(data, dict):
                return data
        return {}

    def status_field(self, key: str) -> Any:
        """One value of run.json, None when absent or unreadable.

        For example status, pid, started, epochs...
        """
        return self.status_data().get(key)


def create_run(root: Path, name: str) -> Run:
    """A new, empty run folder: `root/name`, else `name-2`, `name-3`, ...

    `mkdir` either creates the folder or fails, so two runs started at the
    same instant still get different folders.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"{root}: cannot create the runs folder ({error.strerror})") from None
    for n in range(1, 10_000):
        path = root / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as error:
            raise RunError(
                f"{path}: cannot create the run folder ({error.strerror})",
                "choose a writable folder with --runs-dir",
            ) from None
        (path / "checkpoints").mkdir()
        return Run(path)
    raise RunError(f"{root}: too many runs named '{name}'", "pass --name to choose another name")


def list_runs(root: Path) -> list[Run]:
    """Run folders under `root`, oldest first (by start time)."""
    if not root.is_dir():
        return []
    runs = [Run(p) for p in root.iterdir() if (p / "config.yaml").is_file()]
    return sorted(runs, key=lambda run: (_started(run), run.name))


def _started(run: Run) -> float:
    with contextlib.suppress(ValueError, TypeError, KeyError, OverflowError):
        return float(run.status_data()["started"])
    with contextlib.suppress(OSError):
        return run.config.stat().st_mtime
    return 0.0


def run_of_model(model_file: Path) -> Run | None:
    """The run folder a model file belongs to: its own folder, or the one above `export/`."""
    for folder in (Path(model_file).parent, Path(model_file).parent.parent):
        if (folder / "config.yaml").is_file():
            return Run(folder)
    return None


def find_run(ref: str | None, root: Path, with_model: bool = False) -> Run:
    """The run named `ref` (a folder path, or a name under `root`), or the latest one.

    With `with_model`, "the latest" is the latest run that has a model to use: a run
    stopped before its first epoch ended has none.
    """
    if ref is None:
        runs = [run for run in list_runs(root) if run.model.is_file() or not with_model]
        if not runs:
            what = "with a model " if with_model and list_runs(root) else ""
            raise RunError(
                f"no runs {what}in {root}/ yet", "train one first: cnnctl train configs/mnist.yaml"
            )
        runs[-1].check_inside()
        return runs[-1]
    for path in (Path(ref), root / ref):
        if (path / "config.yaml").is_file():
            Run(path).check_inside()
            return Run(path)
    names = [run.name for run in list_runs(root)]
    shown = ", ".join(names[-5:]) + (", …" if len(names) > 5 else "")
    raise RunError(
        f"{ref}: no such run{suggest(ref, names)}",
        f"runs in {root}/: {shown}" if names else "train one first with cnnctl train",
    )


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place.

    A kill at any instant leaves either the old file or the new one, never half of one.
    """
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}"
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a run folder is for sharing
        write(tmp)
        with open(tmp, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    """UTF-8; a file name that is not UTF-8 (a lone surrogate in Python) is written escaped."""
    atomic_write(
        path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="backslashreplace")
    )


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """Rows of dicts as CSV text, columns in order of first appearance."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: csv_cell(value) for key, value in row.items()} for row in rows)
    return out.getvalue()


def clean_leftovers(run: Run) -> None:
    """Remove temporary files a killed process left behind."""
    for folder in (run.path, run.checkpoints):
        if not inside(run.path, folder):
            continue  # never delete outside the run folder
        for tmp in folder.glob(".*.tmp*"):
            with contextlib.suppress(OSError):
                if inside(run.path, tmp.parent):
                    tmp.unlink()


def set_status(run: Run, status: str, **extra: Any) -> None:
    data = {"status": status, "pid": os.getpid(), "updated": time.time()}
    data = {**run.status_data(), **data}
    data.setdefault("started", time.time())
    write_json(run.run_json, {**data, **extra})


def pid_alive(pid: Any) -> bool:
    """Whether a process with this pid exists on this machine (another user's counts)."""
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        return True
    except (OSError, ValueError, TypeError, OverflowError):
        return False
    return True


def running_pid(run: Run) -> int | None:
    """The pid of the process training `run` right now, if one is."""
    pid = run.status_field("pid")
    if (
        run.status_field("status") == "running"
        and type(pid) is int
        and pid != os.getpid()
        and pid_alive(pid)
    ):
        return pid
    return None


def describe(run: Run) -> RunSummary:
    """One line of `cnnctl runs`.

    What the run trained, how far it got, how good its saved model is.
    """
    from cnnctl.config import load_config, mode_of

    summary = RunSummary(name=run.name, path=str(run.path), status="unknown")
    problems = []
    try:
        run.check_inside(run.config)
        config = load_config(run.config)  # the hardened reader: no alias bombs, bounded size
        summary.dataset = config.data.dataset or config.data.path
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
        if isinstance(test, dict) and isinstance(test.get("accuracy"), (int, float)):
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
