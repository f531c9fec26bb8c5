"""What `cnnctl tune` shows and writes.

A line per finished trial, trials.csv, best.yaml, plots, a table.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from cnnctl.config import Config, TuneConfig, dump_config
from cnnctl.config.yamlfile import read_config_file
from cnnctl.errors import CnnctlError, first_line
from cnnctl.report import Column, fitted_table
from cnnctl.runs import atomic_write, rows_to_csv, write_json, write_text
from cnnctl.tune.space import decode, fits, own_config, trial_config


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
    left_out: list[str] = field(default_factory=list)  # --set values best.yaml leaves out

    def summary(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "folder": str(self.folder),
            "metric": self.metric,
            "direction": self.direction,
            "trials": self.target,
            "best": self.best,
            "best_config": str(self.folder / "best.yaml") if self.best else None,
            "left_out_of_best_config": self.left_out,
            "rows": self.rows,
            "notes": self.notes,
        }


class Watcher:
    """Prints one line per finished trial and keeps trials.csv and best.yaml up to date."""

    def __init__(
        self,
        study: Any,
        config: Config,
        name: str,
        folder: Path,
        console: Console,
        config_file: Path | None = None,
        overrides: tuple[str, ...] = (),
    ) -> None:
        self.study, self.config, self.name, self.folder, self.console = (
            study,
            config,
            name,
            folder,
            console,
        )
        self.tune: TuneConfig = config.tune
        self.names = dict(
            zip(config.tune.parameters, _short(list(config.tune.parameters)), strict=True)
        )
        self.width = console.width if console.is_terminal else None  # a pipe: whole lines
        self.seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        # best.yaml is the config file as written plus the best values; the --set values the
        # search ran with (a smaller data.limit, fewer epochs) are named apart, not baked in.
        self.own: dict | None = None
        with contextlib.suppress(CnnctlError):
            data = read_config_file(config_file)[0] if config_file else None
            self.own = data if isinstance(data, dict) else None
        self.left_out = [
            text
            for text in overrides
            if not text.startswith("tune.")
            and text.partition("=")[0].strip() not in self.tune.parameters
        ]

    def poll(self) -> None:
        trials = sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number)
        new = [t for t in trials if t.state.is_finished() and t.number not in self.seen]
        for trial in new:
            self.seen.add(trial.number)
            for line in self.lines(trial, trials):
                self.console.print(line, soft_wrap=True)
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

    def lines(self, trial: Any, trials: list[Any]) -> list[Text]:
        """A finished trial: one line; at a terminal, fitted to its width.

        In a pipe the line is whole. At a terminal, the seconds and then the best-so-far go
        first, the parameters are cut at the edge, and a note goes on a line of its own.
        """
        state = _state(trial)
        head = Text(f"trial {trial.number:>3}  ")
        head.append(
            f"{state:<8}", style={"complete": "green", "pruned": "yellow"}.get(state, "red")
        )
        value = _value(trial)
        head.append(f"  {self.tune.metric} {_metric(value)}" if value != "" else "")
        best = self._best(trials)
        best_text = f"  best {_metric(best.value)} (trial {best.number})" if best else ""
        seconds = f"  {_seconds(trial):.1f} s" if _seconds(trial) != "" else ""
        params = "  " + " ".join(
            f"{self.names[k]}={_param(v)}" for k, v in self._params(trial).items()
        )
        note = _note(trial, self.folder)
        whole = Text.assemble(head, best_text, seconds, params.rstrip())
        if self.width is None:
            return [whole.append(f"  ({note})", style="dim") if note else whole]
        for parts in ((best_text, seconds), (best_text, ""), ("", "")):
            line = Text.assemble(head, *parts, params.rstrip())
            if line.cell_len <= self.width:
                break
        line.truncate(self.width, overflow="ellipsis")
        return [line, Text(f"      {note}", style="dim")] if note else [line]

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
        if best is not None:
            write_text(self.folder / "best.yaml", self.best_yaml(best))
        # What `cnnctl runs` shows of the study, without reading Optuna's journal.
        summary = {"study": self.name, "metric": self.tune.metric, "direction": self.tune.direction}
        summary["best"] = {"trial": best.number, "value": best.value} if best else None
        write_json(self.folder / "study.json", summary)

    def best_yaml(self, best: Any) -> str:
        """The config to train: the file's own (no defaults, no --set) with the best values."""
        params, name = self._params(best), f"{self.name}-best"
        path = self.folder / "best.yaml"
        lines = [
            f"The best trial of study {self.name}: trial {best.number}, "
            f"{self.tune.metric} {_metric(best.value)}.",
            "Its values:",
            *(f"  {key}: {_param(value)}" for key, value in params.items()),
        ]
        body = None
        if self.own is not None:
            with contextlib.suppress(CnnctlError):
                body = own_config(self.own, params, name)
        if body is None:  # the file is not valid without its --set values: keep them
            body = dump_config(trial_config(self.config, params, name))
            if self.left_out:
                lines.append(f"It includes the search's --set {' '.join(self.left_out)}.")
        elif self.left_out:
            sets = [word for text in self.left_out for word in ("--set", text)]
            lines += [
                "The search also ran with these --set values, left out of this file:",
                f"  {' '.join(self.left_out)}",
                f"To train as the trials did: {shlex.join(['cnnctl', 'train', str(path), *sets])}",
            ]
        lines.append(f"Train it with: cnnctl train {path}")
        return "".join(f"# {line}\n" for line in lines) + body

    def result(self, target: int) -> TuneResult:
        trials = sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number)
        rows = self.rows(trials)
        write_text(self.folder / "trials.csv", rows_to_csv(rows) or "trial\n")
        self._write_best(trials)
        best = self._best(trials)
        best_row = next(
            (row for row in rows if best is not None and row["trial"] == best.number), None
        )
        result = TuneResult(
            self.name, self.folder, self.tune.metric, self.tune.direction, target, rows, best_row
        )
        result.left_out = self.left_out if best is not None and self.own is not None else []
        return result


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


def _metric(value: Any) -> str:
    """A metric's value as every cnnctl table shows it: four decimals (`0.8100`)."""
    return f"{value:.4f}" if isinstance(value, (int, float)) else str(value)


def _param(value: Any) -> str:
    """A parameter's value: floats to 4 significant digits (a learning rate is `0.0001234`)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _short(keys: list[str]) -> list[str]:
    """A short unique name for each dotted key that still says what it is.

    The shortest unique tail, but a list item keeps its list's name and index:
    `learning_rate`, `batch_size`, `layers.0.filters`, `layers.3.rate`.
    """
    names = []
    for key in keys:
        parts = key.split(".")
        indexes = [i for i, part in enumerate(parts) if part.isdigit()]
        least = len(parts) - max(indexes[0] - 1, 0) if indexes else 1
        for n in range(least, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if sum(k == tail or k.endswith("." + tail) for k in keys) == 1:
                break
        names.append(tail)
    return names


def varying_parameters(study: Any) -> list[str]:
    """The parameters that took more than one value over the completed trials."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    names = sorted({key for trial in complete for key in trial.params})
    return [
        key
        for key in names
        if len({json.dumps(t.params.get(key), sort_keys=True) for t in complete}) > 1
    ]


def history_axes(study: Any, metric: str) -> Any:
    """Optuna's optimization history, its values named by the metric, a tick per whole trial."""
    from matplotlib.ticker import MaxNLocator
    from optuna.visualization import matplotlib as plots

    axes = plots.plot_optimization_history(study, target_name=metric)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return axes


def importances_axes(study: Any, metric: str) -> Any:
    """Optuna's parameter importances, of the parameters that varied only."""
    from optuna.visualization import matplotlib as plots

    return plots.plot_param_importances(study, params=varying_parameters(study), target_name=metric)


def save_plots(study: Any, folder: Path, metric: str) -> list[str]:
    """history.png and importances.png; returns notes for what was not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    varied = varying_parameters(study)
    notes = []
    for file, draw, least in (
        ("history.png", history_axes, 1),
        ("importances.png", importances_axes, 2),
    ):
        if len(complete) < least:
            notes.append(f"{file}: not drawn; it needs {least} or more completed trials")
            continue
        if file == "importances.png" and len(varied) < 2:  # one parameter ranks first alone
            notes.append(
                f"{file}: not drawn; it needs 2 or more parameters that took different values "
                f"(varied: {', '.join(varied) or 'none'})"
            )
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figure = draw(study, metric).figure
                atomic_write(
                    folder / file,
                    lambda tmp, f=figure: f.savefig(tmp, dpi=100, bbox_inches="tight"),
                )
        except Exception as error:  # whatever Optuna or matplotlib refuse: a note, not a failure
            notes.append(f"{file}: not drawn ({first_line(error)})")
        finally:
            plt.close("all")
    return notes


def summary_table(result: TuneResult, top: int = 10, width: int | None = None) -> Table:
    """The best trials, best first; at a terminal, fitted to its width.

    Seconds and state go first, then parameters from the last; nothing is cut in a pipe.
    """
    keys = (
        [
            k
            for k in result.rows[0]
            if k not in ("trial", "state", "value", "seconds", "run", "host", "note")
        ]
        if result.rows
        else []
    )
    columns = [
        Column("trial", "right"),
        Column("state", drop=len(keys) + 1),
        Column(result.metric, "right"),
        Column("seconds", "right", drop=len(keys) + 2),
        *(Column(name, "right", drop=i + 1) for i, name in enumerate(_short(keys))),
    ]
    scored = [r for r in result.rows if r["value"] != ""]
    scored.sort(key=lambda r: r["value"], reverse=result.direction == "maximize")
    rows = [
        [
            str(row["trial"]),
            row["state"],
            _metric(row["value"]),
            f"{row['seconds']:.1f}" if row["seconds"] != "" else "",
            *(_param(row[k]) for k in keys),
        ]
        for row in (scored + [r for r in result.rows if r["value"] == ""])[:top]
    ]
    table = fitted_table(columns, [[Text(cell) for cell in row] for row in rows], width)
    table.title = f"study {result.study}: {result.metric} ({result.direction})"
    table.title_justify = "left"
    notes = []
    if len(result.rows) > top:
        notes.append(f"{len(result.rows) - top} more trials")
    if len(table.columns) < len(columns):
        notes.append(f"{len(columns) - len(table.columns)} columns left out at this width")
    if notes:
        table.caption = f"{'; '.join(notes)}: all in {result.folder / 'trials.csv'}"
        table.caption_justify = "left"
    return table


def study_summary(result: TuneResult, width: int | None = None) -> Group:
    """The trials table, the study's notes, and how to train the best trial's config."""
    parts: list[Any] = [summary_table(result, width=width)]
    parts += [Text(note, style="dim") for note in result.notes]
    if result.best:
        parts.append(
            Text(
                f"best: trial {result.best['trial']}; train it with: "
                f"cnnctl train {result.folder / 'best.yaml'}"
            )
        )
        if result.left_out:
            parts.append(
                Text(
                    f"  (without the search's --set {' '.join(result.left_out)}: "
                    "its first lines say how to add them)",
                    style="dim",
                )
            )
    return Group(*parts)
