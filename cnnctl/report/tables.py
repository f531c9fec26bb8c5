"""What people read in a terminal: Rich tables and lines. Nothing here prints.

Functions return Rich renderables; the caller prints them.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cnnctl.escape import csv_cell, safe, safe_text
from cnnctl.runs import RunSummary, StudySummary
from cnnctl.runs.results import EvaluationResult, Prediction, TrainResult


def plural(count: int, noun: str) -> str:
    """`1 file`, `2 files`: counts people read."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


class TrainingDisplay:
    """What training shows: a progress bar on terminals, one line per epoch, warnings on stderr."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.errors = Console(
            stderr=True, highlight=False, soft_wrap=True
        )  # not results: also under --json

    def warn(self, message: str) -> None:
        self.errors.print(Text.assemble(("warning: ", "yellow"), message))

    def note(self, message: str) -> None:
        """A line for the person before the work starts (stderr, so --json stays clean)."""
        self.errors.print(Text(safe_text(message), style="dim"))

    def epoch(self, row: dict[str, float], epochs: int, best: bool) -> None:
        self.console.print(
            epoch_line(row, epochs, improved=best), soft_wrap=True
        )  # one line, never wrapped

    @contextlib.contextmanager
    def progress(self) -> Iterator[Progress]:
        with training_progress(self.console) as bar:
            yield bar


@dataclass(frozen=True)
class Column:
    header: str
    justify: str = "left"
    drop: int = 0  # 0: always shown; else dropped first when the table does not fit (highest first)


def fitted_table(
    columns: Sequence[Column], rows: Sequence[Sequence[Any]], width: int | None
) -> Table:
    """A table of `rows` that fits `width`.

    The least important columns go first; no cell ever wraps.
    """
    keep = list(range(len(columns)))
    while True:
        table = Table(show_edge=False)
        for i in keep:
            table.add_column(
                columns[i].header, justify=columns[i].justify, no_wrap=True, overflow="ellipsis"
            )
        for row in rows:
            table.add_row(*(row[i] for i in keep))
        droppable = sorted((i for i in keep if columns[i].drop), key=lambda i: -columns[i].drop)
        if width is None or not droppable:
            return table
        measuring = Console(width=10_000)
        if Measurement.get(measuring, measuring.options, table).maximum <= width:
            return table
        keep.remove(droppable[0])


def training_progress(console: Console) -> Progress:
    """A progress bar for the steps of the current epoch (shown on terminals only)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=console.quiet or not console.is_terminal,
    )


def _format(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def epoch_line(row: dict[str, float], epochs: int, improved: bool) -> Text:
    """`epoch 3/10  loss 0.2100 accuracy 0.9310 | val_loss ... 12.3s`, best epochs marked."""
    number = f"{int(row['epoch']):>{len(str(epochs))}}"  # epoch 9/10 lines up with 10/10
    text = Text(f"epoch {number}/{epochs} ", style="bold")
    names = [k for k in row if k not in ("epoch", "lr", "seconds", "train_seconds")]
    train = sorted((k for k in names if not k.startswith("val_")), key=lambda k: k != "loss")
    for key in [*train, *(f"val_{k}" for k in train if f"val_{k}" in row)]:
        text.append(f" {key} ", style="dim")
        text.append(f"{row[key]:.4f}")
    text.append(f"  {row['seconds']:.1f}s", style="dim")
    if improved:
        text.append("  best", style="green")
    return text


def layers_table(model: Any, config_layers: int | None = None) -> Table:
    """Layers, output shapes and parameter counts, like `model.summary()`.

    With `config_layers`, the last that many layers are numbered as model.layers[i] of
    the config (as errors name them); layers cnnctl added in front (augmentation,
    Rescaling) are marked `+`.
    """
    table = Table(title=f"Model: {model.name}", title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("layer")
    table.add_column("output shape")
    table.add_column("params", justify="right")
    added = len(model.layers) - config_layers if config_layers is not None else 0
    for index, layer in enumerate(model.layers):
        shape = tuple(layer.output.shape) if hasattr(layer, "output") else "?"
        number = "+" if index < added else str(index - added)
        table.add_row(
            number,
            safe(f"{layer.name} ({type(layer).__name__})"),
            str(shape),
            f"{layer.count_params():,}",
        )
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    table.caption = f"total params: {model.count_params():,}  (trainable: {trainable:,})"
    table.caption_justify = "left"
    return table


def training_summary(result: TrainResult) -> Group:
    """The end of `cnnctl train`: where the run went, its best epoch and test results."""
    summary = result.summary()
    lines = [Text.assemble(("run saved to ", "dim"), (safe_text(summary["run"]), "bold"))]
    if result.stopped_early:
        lines.append(
            Text(
                f"stopped early at epoch {result.stopped_early} of {result.epochs} "
                "(train.early_stopping)",
                style="yellow",
            )
        )
    if summary.get("best_epoch"):
        lines.append(
            Text(
                f"best epoch {summary['best_epoch']} by {summary['monitor']} "
                f"({summary['best_value']:.4f}); "
                f"{summary['train_images_per_second']:,.0f} train images/s"
                + (
                    f" (after epoch 1, {summary['first_epoch_seconds']:.1f} s with tracing)"
                    if len(result.rows) > 1 and summary["first_epoch_seconds"]
                    else ""
                )
            )
        )
    test = summary.get("test") or {}
    if test:
        parts = "  ".join(f"{k} {_format(v)}" for k, v in test.items())
        lines.append(Text.assemble(("test: ", "bold"), parts))
        if result.test_chose_epoch:
            lines.append(
                Text(
                    "note: validation was the test split (data.validation: test), so the test "
                    "set chose the epoch; for a held-out figure set data.validation: 0.1",
                    style="yellow",
                )
            )
    return Group(*lines)


def _saved_line(paths: Sequence[str]) -> str:
    """`FOLDER: a.json, b.csv, c.png`: the folder once, so the line rarely needs to wrap."""
    folders = {str(Path(p).parent) for p in paths}
    if len(folders) != 1:
        return ", ".join(paths)
    return f"{folders.pop()}: " + ", ".join(Path(p).name for p in paths)


def evaluation_lines(result: EvaluationResult) -> tuple[Text, Text]:
    """The lines every evaluation starts and ends with: what was scored with what overall
    figures, and where the report went. A task's table goes between them."""
    overall = "  ".join(f"{k} {_format(v)}" for k, v in result.metrics.items())
    header = Text.assemble(
        (f"{result.split} split", "bold"),
        f" ({plural(result.examples, 'image')} of {safe_text(result.data)})",
        f", with {result.tta} test-time augmentation\n" if result.tta != "none" else "\n",
        (overall, "bold"),
    )
    saved = (
        Text.assemble(("saved in ", "dim"), safe_text(_saved_line(result.saved)))
        if result.saved
        else Text(
            "not saved (the model is not in a run folder; pass --output DIR to keep the report)",
            style="dim",
        )
    )
    return header, saved


def predictions_table(
    predictions: Sequence[Prediction],
    width: int | None = None,
    base: Path | None = None,
    columns: tuple[str, str] = ("class", "prob"),
) -> Table:
    """One row per image: path, then its top classes with probabilities.

    Paths are shown relative to `base` (the folder the user gave). At a terminal's
    `width`, the runners-up go first and long paths lose their start, never the file
    name; class and probability always stay. With no width (a pipe, a file) nothing is cut.
    """
    paths = [safe_text(_relative(item.path, base)) for item in predictions]
    labels = [safe_text(item.top[0].label) if item.top else "-" for item in predictions]
    rest = [
        ", ".join(f"{safe_text(t.label)} {t.probability:.2f}" for t in item.top[1:])
        for item in predictions
    ]
    keep_rest = any(rest)
    if width is not None:
        fixed = max(map(len, labels), default=5) + 5 + 3 * 3  # class, prob, and cell padding
        room = width - fixed - (max(map(len, rest), default=0) + 3 if keep_rest else 0)
        if keep_rest and room < min(max(map(len, paths), default=0), 24):
            keep_rest, room = False, width - fixed
        paths = [_cut_left(path, max(room, 8)) for path in paths]
    table = Table(show_edge=False)
    table.add_column("image", no_wrap=True)
    table.add_column(columns[0], no_wrap=True)  # the task's words: class / target, prob / value
    table.add_column(columns[1], justify="right", no_wrap=True)
    if keep_rest:
        table.add_column("next", no_wrap=True, overflow="ellipsis", style="dim")
    for path, label, item, others in zip(paths, labels, predictions, rest, strict=True):
        cells = [Text(path), Text(label), f"{item.top[0].probability:.3f}" if item.top else ""]
        table.add_row(*cells, *([Text(others)] if keep_rest else []))
    return table


def _relative(path: str, base: Path | None) -> str:
    if base is None:
        return path
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return path


def _cut_left(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def runs_table(runs: Sequence[RunSummary], width: int | None = None) -> Table:
    """`cnnctl runs`: one row per run folder, oldest first; at a terminal, fitted to its width."""
    styles = {
        "finished": "green",
        "running": "cyan",
        "interrupted": "yellow",
        "damaged": "red",
        "failed": "red",
    }
    columns = [
        Column("run"),
        Column("data", drop=4),
        Column("epochs", "right", drop=1),
        Column("best (monitored)", "right", drop=3),
        Column("task", drop=5),
        Column("test", "right", drop=2),
        Column("status"),
    ]
    rows = []
    for run in runs:
        best = (
            f"{safe_text(run.monitor)} {run.best_value:.4f}"
            if run.best_value is not None and run.monitor
            else "-"
        )
        epochs = f"{run.epochs_done}/{run.epochs if run.epochs is not None else '?'}"
        status = run.status + (f" (early, {run.stopped_early})" if run.stopped_early else "")
        rows.append(
            [
                safe(run.name),
                safe(run.dataset or "?"),
                epochs,
                best,
                safe(run.task),
                f"{safe_text(_short(run.headline))} {run.test_value:.4f}"
                if run.test_value is not None
                else "-",
                safe(status, style=styles.get(run.status, "")),
            ]
        )
    return fitted_table(columns, rows, width)


def _short(metric: str) -> str:
    """A headline metric's name as a narrow table cell shows it."""
    return {"accuracy": "acc", "micro_f1": "micro-F1", "mean_iou": "mIoU"}.get(metric, metric)


def studies_table(studies: Sequence[StudySummary], width: int | None = None) -> Table:
    """`cnnctl runs`: one row per `cnnctl tune` study, and how to see its trials."""
    columns = [
        Column("study"),
        Column("trials done", "right"),
        Column("best", "right"),
        Column("folder", drop=1),
    ]
    rows = [
        [
            safe(study.name),
            str(study.trials_done),
            f"{safe_text(study.metric or '')} {study.best_value:.4f} (trial {study.best_trial})"
            if study.best_value is not None
            else "-",
            safe(study.path),
        ]
        for study in studies
    ]
    table = fitted_table(columns, rows, width)
    table.caption = f"a study's trials: cnnctl runs {safe_text(studies[0].path) if studies else ''}"
    table.caption_justify = "left"
    return table


def runs_listing(
    runs: Sequence[RunSummary], studies: Sequence[StudySummary], width: int | None = None
) -> Group:
    """`cnnctl runs`: the runs table, then the tune studies (each one row) when there are any."""
    parts: list[Any] = [runs_table(runs, width)] if runs or not studies else []
    return Group(*parts, *([studies_table(studies, width)] if studies else []))


def predictions_csv(predictions: Sequence[Prediction]) -> str:
    """path, label, probability, then label_2, probability_2, ... for the rest of the top k."""
    k = max(len(item.top) for item in predictions)
    header = ["path", "label", "probability"]
    header += [f"{name}_{n}" for n in range(2, k + 1) for name in ("label", "probability")]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for item in predictions:
        writer.writerow(
            [
                csv_cell(item.path),
                *(csv_cell(v) for t in item.top for v in (t.label, t.probability)),
            ]
        )
    return out.getvalue()


def checks_table(checks: Any) -> Group:
    """Images per class and split, then the warnings (leakage, unreadable files, checksums)."""
    counted = getattr(checks, "counted", "images")
    table = Table(show_edge=False, title=f"{counted} per class", title_justify="left")
    table.add_column("class", overflow="ellipsis", max_width=24)
    for split in checks.counts:
        table.add_column(split, justify="right")
    names = list(checks.class_names)
    rows = (
        list(enumerate(names))
        if len(names) <= 20
        else [*enumerate(names[:10]), (None, "..."), *list(enumerate(names))[-5:]]
    )
    for index, name in rows:
        table.add_row(
            safe(name),
            *("" if index is None else f"{counts[index]:,}" for counts in checks.counts.values()),
        )
    table.add_section()
    table.add_row("total", *(f"{sum(c):,}" for c in checks.counts.values()))
    return Group(table, *check_warnings(checks), *skipped_lines(checks.skipped))


SKIPPED_SHOWN = 20  # files listed by `datasets check`; --json lists them all


def skipped_lines(skipped: Sequence[tuple[str, str]]) -> list[Text]:
    """Each file left out, `path: reason` (the first SKIPPED_SHOWN, then how many more)."""
    lines = [Text(f"  {safe_text(path)}: {safe_text(reason)}") for path, reason in skipped]
    if len(lines) > SKIPPED_SHOWN:
        more = len(lines) - SKIPPED_SHOWN
        lines = [*lines[:SKIPPED_SHOWN], Text(f"  ... and {more:,} more (all in --json)")]
    return [Text("skipped:", style="yellow"), *lines] if lines else []


def check_warnings(checks: Any) -> list[Text]:
    return [Text.assemble(("warning: ", "yellow"), safe_text(line)) for line in checks.warnings]


def datasets_table(rows: Sequence[dict[str, Any]]) -> Table:
    """`cnnctl datasets`: each built-in, its shape and classes, and where it is."""
    table = Table(show_edge=False)
    for column in ("dataset", "shape", "classes", "found"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["name"],
            "x".join(map(str, row["shape"])),
            str(row["classes"]),
            safe(row["found"]) if row["found"] else Text(row["fallback"], style="dim"),
        )
    return table


def facts_table(facts: dict[str, Any]) -> Table:
    """`cnnctl info`: one fact per row."""
    table = Table(show_header=False, show_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in facts.items():
        if isinstance(value, dict):
            value = "\n".join(
                f"{k}: {', '.join(v) if isinstance(v, list) else v}" for k, v in value.items()
            )
        elif isinstance(value, list):
            value = ", ".join(value)
        table.add_row(key, Text("\n".join(safe_text(line) for line in str(value).split("\n"))))
    return table


def explain_table(items: Sequence[Any], folder: Path | None) -> Group:
    """One row per map `explain` wrote: image, output explained, its value, the figure."""
    table = Table(show_edge=False)
    for name, justify in (("image", "left"), ("explained", "left"), ("value", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    table.add_column("figure", overflow="fold")
    for item in items:
        figure = Path(item.files[0]).name if item.files else ""
        table.add_row(
            Text(safe_text(item.path)), Text(safe_text(item.label)), f"{item.value:.3f}", figure
        )
    method = items[0].method if items else ""
    layer = f" at {items[0].layer}" if items and items[0].layer else ""
    saved = Text(f"{method}{layer}; saved in {safe_text(str(folder))}", style="dim")
    return Group(table, saved)
