"""What `cnnctl tune` shows and writes.

A line per finished trial, trials.csv, best.yaml, plots, a table.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from cnnctl.config import Config, TuneConfig, dump_config
from cnnctl.errors import first_line
from cnnctl.runs import atomic_write, rows_to_csv, write_text
from cnnctl.tune.space import decode, fits, trial_config


@dataclass
class TuneResult:
    """A study's state when this command ends."""

    study: str
    folder: Path
    metric: str
    direction: str
    target: int
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "folder": str(self.folder),
            "metric": self.metric,
            "direction": self.direction,
            "trials": self.target,
            "best": self.best,
            "best_config": str(self.folder / "best.yaml") if self.best else None,
            "rows": self.rows,
            "notes": self.notes,
        }


class Watcher:
    """Prints one line per finished trial and keeps trials.csv and best.yaml up to date."""

    def __init__(
        self, study: Any, config: Config, name: str, folder: Path, console: Console
    ) -> None:
        self.study, self.config, self.name, self.folder, self.console = (
            study,
            config,
            name,
            folder,
            console,
        )
        self.tune: TuneConfig = config.tune
        self.seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}

    def poll(self) -> None:
        trials = sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number)
        new = [t for t in trials if t.state.is_finished() and t.number not in self.seen]
        for trial in new:
            self.seen.add(trial.number)
            self.console.print(self._line(trial, trials), soft_wrap=True)
        if new:
            write_text(self.folder / "trials.csv", rows_to_csv(self.rows(trials)) or "trial\n")
            self._write_best(trials)

    def _best(self, trials: list[Any]) -> Any:
        specs = self.tune.parameters
        complete = [
            t
            for t in trials
            if t.state.name == "COMPLETE"
            and isinstance(t.value, (int, float))
            and set(t.params) == set(specs)
            and all(fits(specs[key], raw) for key, raw in t.params.items())
        ]  # a trial whose values lie outside the search space never becomes best.yaml
        pick = max if self.tune.direction == "maximize" else min
        return pick(complete, key=lambda t: t.value) if complete else None

    def _line(self, trial: Any, trials: list[Any]) -> Text:
        state = _state(trial)
        line = Text(f"trial {trial.number:>3}  ")
        line.append(
            f"{state:<8}", style={"complete": "green", "pruned": "yellow"}.get(state, "red")
        )
        value = _value(trial)
        line.append(f"  {self.tune.metric} {_fmt(value)}" if value != "" else "")
        best = self._best(trials)
        if best is not None:
            line.append(f"  best {_fmt(best.value)} (trial {best.number})")
        line.append(f"  {_seconds(trial)} s  " if _seconds(trial) != "" else "  ")
        line.append(" ".join(f"{k}={_fmt(v)}" for k, v in self._params(trial).items()))
        note = _note(trial, self.folder)
        if note:
            line.append(f"  ({note})", style="dim")
        return line

    def _params(self, trial: Any) -> dict[str, Any]:
        specs = self.tune.parameters
        return {key: decode(specs[key], raw) for key, raw in trial.params.items() if key in specs}

    def rows(self, trials: list[Any]) -> list[dict[str, Any]]:
        """trials.csv: one row per trial, parameters as columns."""
        rows = []
        for trial in trials:
            params = self._params(trial)
            rows.append(
                {
                    "trial": trial.number,
                    "state": _state(trial),
                    "value": _value(trial),
                    "seconds": _seconds(trial),
                    **{
                        key: json.dumps(params[key])
                        if isinstance(params.get(key), (list, dict))
                        else params.get(key, "")
                        for key in self.tune.parameters
                    },
                    "run": trial.user_attrs.get("run", ""),
                    "host": trial.user_attrs.get("host", ""),
                    "note": _note(trial, self.folder),
                }
            )
        return rows

    def _write_best(self, trials: list[Any]) -> None:
        best = self._best(trials)
        if best is None:
            return
        config = trial_config(self.config, self._params(best), f"{self.name}-best")
        path = self.folder / "best.yaml"
        header = (
            f"# The best trial of study {self.name}: trial {best.number}, "
            f"{self.tune.metric} = {best.value:.6g}\n# Train it with: cnnctl train {path}\n"
        )
        write_text(path, header + dump_config(config))

    def result(self, target: int) -> TuneResult:
        trials = sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number)
        rows = self.rows(trials)
        write_text(self.folder / "trials.csv", rows_to_csv(rows) or "trial\n")
        self._write_best(trials)
        best = self._best(trials)
        best_row = next(
            (row for row in rows if best is not None and row["trial"] == best.number), None
        )
        return TuneResult(
            self.name, self.folder, self.tune.metric, self.tune.direction, target, rows, best_row
        )


def _state(trial: Any) -> str:
    return {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(
        trial.state.name, "running"
    )


def _value(trial: Any) -> Any:
    if trial.state.name == "COMPLETE":
        return trial.value
    if trial.state.name == "PRUNED" and trial.intermediate_values:
        return trial.intermediate_values[max(trial.intermediate_values)]
    return ""


def _seconds(trial: Any) -> Any:
    if trial.user_attrs.get("killed") or trial.user_attrs.get("interrupted"):
        return ""  # it ended when it was found dead, not when it stopped
    if trial.datetime_start and trial.datetime_complete:
        return round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
    return ""


def _note(trial: Any, folder: Path) -> str:
    attrs = trial.user_attrs
    if "error" in attrs:
        return str(attrs["error"])
    if attrs.get("killed") or (trial.state.name == "FAIL" and "interrupted" not in attrs):
        run = attrs.get("run", "")
        if run and not (folder / run).is_dir():  # killed between asking and making its folder
            return "killed before it made its folder; it will be run again"
        return f"killed; its folder is kept: {run}".strip()
    if attrs.get("interrupted"):
        return "interrupted; it will be run again"
    if trial.state.name == "PRUNED":
        return f"pruned after epoch {max(trial.intermediate_values, default=0)}"
    return ""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _short(keys: list[str]) -> list[str]:
    """The shortest unique tail of each dotted key: `learning_rate`, `0.filters`, `2.filters`."""
    names = []
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if sum(k == tail or k.endswith("." + tail) for k in keys) == 1:
                break
        names.append(tail)
    return names


def save_plots(study: Any, folder: Path) -> list[str]:
    """Optuna's optimization history and parameter importances as PNG.

    Returns notes for what was skipped.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    notes = []
    for file, draw, least in (
        ("history.png", plots.plot_optimization_history, 1),
        ("importances.png", plots.plot_param_importances, 2),
    ):
        if len(complete) < least:
            notes.append(f"{file}: not drawn; it needs {least} or more completed trials")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figure = draw(study).figure
                atomic_write(
                    folder / file,
                    lambda tmp, f=figure: f.savefig(tmp, dpi=100, bbox_inches="tight"),
                )
        except Exception as error:  # e.g. importances of parameters that never varied
            notes.append(f"{file}: not drawn ({first_line(error)})")
        finally:
            plt.close("all")
    return notes


def summary_table(result: TuneResult, top: int = 10) -> Table:
    """The best trials, best first."""
    keys = (
        [
            k
            for k in result.rows[0]
            if k not in ("trial", "state", "value", "seconds", "run", "host", "note")
        ]
        if result.rows
        else []
    )
    table = Table(
        title=f"study {result.study}: {result.metric} ({result.direction})", title_justify="left"
    )
    for column in ("trial", "state", result.metric, "seconds", *_short(keys)):
        table.add_column(column, justify="right" if column != "state" else "left")
    scored = [r for r in result.rows if r["value"] != ""]
    scored.sort(key=lambda r: r["value"], reverse=result.direction == "maximize")
    for row in (scored + [r for r in result.rows if r["value"] == ""])[:top]:
        table.add_row(*(Text(_fmt(row[k])) for k in ("trial", "state", "value", "seconds", *keys)))
    if len(result.rows) > top:
        table.caption = f"{len(result.rows) - top} more in {result.folder / 'trials.csv'}"
    return table


def study_summary(result: TuneResult) -> Group:
    """The trials table, the study's notes, and how to train the best trial's config."""
    parts: list[Any] = [summary_table(result)]
    parts += [Text(note, style="dim") for note in result.notes]
    if result.best:
        parts.append(
            Text(
                f"best: trial {result.best['trial']}; train it with: "
                f"cnnctl train {result.folder / 'best.yaml'}"
            )
        )
    return Group(*parts)
