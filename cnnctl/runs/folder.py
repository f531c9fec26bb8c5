"""The run folder: its paths, its name, finding it; the folder is a boundary nothing leaves.

runs/<name>/  config.yaml  classes.json  model.keras  checkpoints/  metrics.csv ...
A new run always gets a new folder; a resume adds to its own folder and never rewrites
`config.yaml` (a changed config is recorded beside it, see `training.fit`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnctl.errors import CnnctlError, RunError
from cnnctl.limits import inside, read_json
from cnnctl.suggest import suggest

# The quick start's config: it trains offline (Fashion-MNIST from Debian), unlike mnist.yaml.
FIRST_CONFIG = "configs/fashion_mnist.yaml"
STATE_MEMBER = "cnnctl_state.json"  # the resume state's member inside checkpoints/last.keras


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

    def resume_configs(self) -> list[Path]:
        """config.resume-1.yaml, -2, ...: the config of each resume that changed values."""
        found = []
        for n in range(1, 10_000):
            path = self.path / f"config.resume-{n}.yaml"
            if not path.is_file():
                return found
            found.append(path)
        return found

    @property
    def effective_config(self) -> Path:
        """The config the run's latest epochs trained with.

        config.yaml is what the run started with and is never rewritten; a resume that
        changed a value (more epochs) wrote its config beside it.
        """
        resumed = self.resume_configs()
        return resumed[-1] if resumed else self.config

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
            *self.resume_configs(),
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


def list_studies(root: Path) -> list[Path]:
    """Study folders of `cnnctl tune` under `root`, by name: a journal or trials.csv, no config."""
    if not root.is_dir():
        return []
    return sorted(
        path
        for path in root.iterdir()
        if path.is_dir()
        and not (path / "config.yaml").exists()
        and any((path / name).is_file() for name in ("journal.log", "trials.csv"))
    )


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
                f"no runs {what}in {root}/ yet", f"train one first: cnnctl train {FIRST_CONFIG}"
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
        f"runs in {root}/: {shown}" if names else f"train one first: cnnctl train {FIRST_CONFIG}",
    )


def clean_leftovers(run: Run) -> None:
    """Remove temporary files a killed process left behind."""
    for folder in (run.path, run.checkpoints):
        if not inside(run.path, folder):
            continue  # never delete outside the run folder
        for tmp in folder.glob(".*.tmp*"):
            with contextlib.suppress(OSError):
                if inside(run.path, tmp.parent):
                    tmp.unlink()
