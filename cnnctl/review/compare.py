"""`cnnctl compare`: several run folders side by side, read from their files alone.

Each run's task, data, epochs, headline test figure (the task's own), best validation value
and time; the config paths whose values differ between them; the chosen metric's curves
overlaid in compare.png. A study folder of `cnnctl tune` stands for its finished trials.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from cnnctl.config import Config, load_config
from cnnctl.config.paths import flatten, is_scalar
from cnnctl.errors import CnnctlError, RunError
from cnnctl.escape import safe, safe_text
from cnnctl.report import Column, fitted_table, plural
from cnnctl.runs import Run, describe, epoch_rows, find_run, list_runs, write_json
from cnnctl.runs.folder import list_studies
from cnnctl.tasks import task_named

# Trials of a study that trained to their end: finished, or stopped early by the pruner.
TRIAL_DONE = ("finished", "pruned")
LEFT_OUT = ("name",)  # differs between any two runs; the table names them already


@dataclass
class Compared:
    """One run as `compare` shows it."""

    name: str
    path: str
    status: str
    task: str | None = None
    data: str | None = None
    epochs_done: int = 0
    epochs: int | None = None
    headline: str | None = None  # the task's test metric
    direction: str = "max"
    test: float | None = None
    monitor: str | None = None
    best_value: float | None = None
    best_epoch: int | None = None
    seconds: float | None = None
    rows: list[dict[str, float]] = field(default_factory=list, repr=False)
    config: dict[str, Any] = field(default_factory=dict, repr=False)  # flattened

    def to_json(self) -> dict[str, Any]:
        keys = ("name", "path", "status", "task", "data", "epochs_done", "epochs", "headline")
        data = {key: getattr(self, key) for key in keys}
        return {
            **data,
            "direction": self.direction,
            "test": self.test,
            "monitor": self.monitor,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "seconds": self.seconds,
        }


@dataclass
class Comparison:
    runs: list[Compared]
    differences: dict[str, list[Any]]  # dotted path -> each run's value (None: not set)
    metric: str
    figure: Path | None = None

    def to_json(self) -> dict[str, Any]:
        names = [run.name for run in self.runs]
        return {
            "runs": [run.to_json() for run in self.runs],
            "differences": {
                path: dict(zip(names, values, strict=True))
                for path, values in self.differences.items()
            },
            "metric": self.metric,
            "figure": str(self.figure) if self.figure else None,
        }


def resolve_runs(refs: tuple[str, ...], root: Path) -> list[Run]:
    """Runs by name or path; a study folder (by name or path) gives its finished trials."""
    found: list[Run] = []
    for ref in refs:
        study = _study_folder(ref, root)
        if study is None:
            found.append(find_run(ref, root))
            continue
        trials = [
            run
            for run in list_runs(study)
            if run.name.startswith("trial-") and run.status_field("status") in TRIAL_DONE
        ]
        if not trials:
            raise RunError(
                f"{study}: the study has no finished trial yet",
                f"run trials first: cnnctl tune CONFIG --name {study.name}",
            )
        for run in sorted(trials, key=lambda r: r.name):
            run.check_inside()
            found.append(run)
    unique = list({run.path.resolve(): run for run in found}.values())
    if len(unique) < 2:
        raise RunError(
            f"compare needs two runs or more; got {len(unique)}",
            "name several runs (cnnctl runs lists them), or a study folder of cnnctl tune",
        )
    return unique


def _study_folder(ref: str, root: Path) -> Path | None:
    for path in (Path(ref), root / ref):
        if path.is_dir() and path in list_studies(path.parent):
            return path
    return None


def compare_runs(runs: list[Run], metric: str | None, output: Path | None) -> Comparison:
    """Read each run, find what differs, and draw compare.png into `output` (None: no figure)."""
    compared = [read_run(run) for run in runs]
    chosen = _metric(compared, metric)
    comparison = Comparison(compared, differences(compared), chosen)
    if output is not None:
        from cnnctl.report.figures import save_compare

        try:
            output.mkdir(parents=True, exist_ok=True)
            comparison.figure = output / "compare.png"
            save_compare([(run.name, run.rows) for run in compared], chosen, comparison.figure)
            write_json(output / "compare.json", comparison.to_json())
        except OSError as error:
            raise RunError(
                f"{output}: cannot write the comparison ({error.strerror or error})",
                "choose a writable folder with --output",
            ) from None
    return comparison


def read_run(run: Run) -> Compared:
    """One run folder as compare and the report show it (nothing needs to be finished)."""
    summary = describe(run)
    item = Compared(
        name=run.name,
        path=str(run.path),
        status=summary.status,
        data=summary.dataset,
        epochs_done=summary.epochs_done,
        epochs=summary.epochs,
        monitor=summary.monitor,
        best_value=summary.best_value,
        best_epoch=summary.best_epoch,
        rows=epoch_rows(run),
    )
    config: Config | None = None
    with contextlib.suppress(CnnctlError):
        config = load_config(run.effective_config)
    if config is not None:
        task = task_named(config.task)
        item.task, (item.headline, item.direction) = config.task, task.headline
        item.config = flatten(config.model_dump(mode="json", exclude_none=True))
    finished = _json(run, run.metrics_json)
    test = finished.get("test")
    if isinstance(test, dict) and isinstance(test.get(item.headline), (int, float)):
        item.test = float(test[item.headline])
    if isinstance(finished.get("wall_seconds"), (int, float)):
        item.seconds = float(finished["wall_seconds"])
    elif item.rows:  # unfinished: the epochs so far
        item.seconds = round(sum(row.get("seconds", 0.0) for row in item.rows), 2)
    return item


def _json(run: Run, path: Path) -> dict[str, Any]:
    with contextlib.suppress(CnnctlError):
        data = run.read_json(path)
        return data if isinstance(data, dict) else {}
    return {}


def differences(runs: list[Compared]) -> dict[str, list[Any]]:
    """The dotted paths whose values are not the same in every run, in config order."""
    paths = list(dict.fromkeys(path for run in runs for path in run.config))
    found = {}
    for path in paths:
        values = [run.config.get(path) for run in runs]
        if path not in LEFT_OUT and any(value != values[0] for value in values[1:]):
            found[path] = values
    return found


def _metric(runs: list[Compared], asked: str | None) -> str:
    """The metric to draw: the one asked for, else the task's headline where the runs log it,
    else the loss."""
    logged = list(dict.fromkeys(k for run in runs for row in run.rows for k in row))
    names = [k for k in logged if k not in ("epoch", "lr", "seconds", "train_seconds")]
    names = [k for k in names if not k.startswith("val_")] or names
    if asked is None:
        first = runs[0].headline
        return first if first in names else "loss"
    bare = asked.removeprefix("val_")
    if bare not in names and asked not in names:
        raise RunError(
            f"--metric {asked}: no run logs it in metrics.csv",
            f"the runs log: {', '.join(names) or 'nothing yet'}",
        )
    return bare if bare in names else asked


def comparison_view(comparison: Comparison, width: int | None) -> Group:
    """The runs table, then what differs between their configs, fitted to `width`."""
    runs = comparison.runs
    names = {run.headline for run in runs if run.headline}
    shared = next(iter(names)) if len(names) == 1 else None
    best = _best(runs)
    columns = [
        Column("run"),
        Column("test " + shared if shared else "test", "right"),
        Column("best validation", "right", drop=2),
        Column("epochs", "right", drop=3),
        Column("time", "right", drop=1),
        Column("task", drop=5),
        Column("data", drop=4),
    ]
    rows = []
    for i, run in enumerate(runs):
        test = "" if run.test is None else f"{run.test:.4f}"
        if test and not shared:
            test = f"{run.headline} {test}"
        validation = ""
        if run.best_value is not None:
            validation = f"{run.monitor} {run.best_value:.4f} (epoch {run.best_epoch})"
        epochs = f"{run.epochs_done}/{run.epochs}" if run.epochs else str(run.epochs_done)
        if run.status not in ("finished", "pruned"):
            epochs += f" {run.status}"
        rows.append(
            [
                safe(run.name, "bold" if i == best else ""),
                Text(test, style="green" if i == best else ""),
                safe(validation),
                epochs,
                _duration(run.seconds),
                safe(run.task or "?"),
                safe(run.data or "?"),
            ]
        )
    parts: list[Any] = [fitted_table(columns, rows, width)]
    if comparison.differences:
        parts.append(_differences_table(comparison, width))
    else:
        parts.append(Text("the configs are the same (apart from their names)", style="dim"))
    if comparison.figure is not None:
        parts.append(Text(f"curves of {comparison.metric}: {safe_text(comparison.figure)}"))
    return Group(*parts)


def _differences_table(comparison: Comparison, width: int | None) -> Table:
    """One row a run, one column a differing path; paths that do not fit are counted below."""
    paths = list(comparison.differences)
    columns = [Column("run")] + [Column(path, drop=len(paths) - i) for i, path in enumerate(paths)]
    rows = [
        [safe(run.name)] + [safe(_value(comparison.differences[p][i])) for p in paths]
        for i, run in enumerate(comparison.runs)
    ]
    table = fitted_table(columns, rows, width)
    table.title, table.title_justify = "what differs between their configs", "left"
    hidden = len(columns) - len(table.columns)
    if hidden:
        table.caption = f"{plural(hidden, 'more path')} differ: see --json or a wider terminal"
    return table


def _value(value: Any) -> str:
    return (
        "(not set)" if value is None else json.dumps(value) if not is_scalar(value) else str(value)
    )


def _best(runs: list[Compared]) -> int | None:
    """The run with the best headline figure, where they share one."""
    scored = [(run.test, i) for i, run in enumerate(runs) if run.test is not None]
    if len({run.headline for run in runs}) != 1 or len(scored) < 2:
        return None
    pick = max if runs[0].direction == "max" else min
    return pick(scored)[1]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"
