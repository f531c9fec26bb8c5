"""What people read: tables rendered into a plain Console, asserted as text at several widths."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cnnctl import report
from cnnctl.runs import Run, RunSummary
from cnnctl.runs.results import EvaluationResult, Guess, Prediction, TrainResult
from cnnctl.tasks import task_named

LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def render(renderable, width: int | None, terminal: bool = True) -> list[str]:
    """Render as a terminal of `width` columns would show it (or unbounded, as a pipe gets it)."""
    out = io.StringIO()
    Console(
        file=out,
        width=width or 100_000,
        color_system=None,
        force_terminal=terminal,
        soft_wrap=not terminal,
    ).print(renderable)
    return out.getvalue().splitlines()


def predictions(
    count: int = 4, folder: str = "examples/fashion_mnist/some/deeper/folder"
) -> list[Prediction]:
    return [
        Prediction(
            f"{folder}/{i:04d}_{LABELS[i % 10].replace('/', '-')}.png",
            [
                Guess(LABELS[(i + k) % 10], (i + k) % 10, p)
                for k, p in enumerate((0.91, 0.06, 0.03))
            ],
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("width", [60, 80, 200])
def test_predict_table_keeps_class_and_probability_at_every_width(width):
    lines = render(report.predictions_table(predictions(), width), width)
    assert max(map(len, lines)) <= width
    rows = lines[2:]  # header, rule
    assert len(rows) == 4  # one line per image
    for i, line in enumerate(rows):
        assert LABELS[i % 10] in line and "0.910" in line
        assert f"{i:04d}_" in line  # the file name survives when the path is cut


def test_predict_table_drops_the_runners_up_before_anything_else():
    assert "next" in render(report.predictions_table(predictions(), 200), 200)[0]
    assert "next" not in render(report.predictions_table(predictions(), 60), 60)[0]


def test_predict_table_in_a_pipe_is_never_cut():
    items = predictions(folder="a/" + "very-long-folder-name/" * 6)
    lines = render(report.predictions_table(items, None), None, terminal=False)
    assert all(items[i].path in lines[i + 2] for i in range(4))
    assert "Trouser 0.06, Pullover 0.03" in lines[2]


def test_predict_table_shows_paths_relative_to_the_folder_given(tmp_path):
    from pathlib import Path

    lines = render(
        report.predictions_table(predictions(folder="examples/fm"), 200, Path("examples/fm")), 200
    )
    assert lines[2].lstrip().startswith("0000_T-shirt-top.png")


def summary(name: str, **extra) -> RunSummary:
    values = dict(
        status="finished",
        dataset="fashion_mnist",
        epochs=10,
        epochs_done=10,
        monitor="val_loss",
        best_value=0.2709,
        best_epoch=7,
        test_accuracy=0.9149,
        test_value=0.9149,
    )
    return RunSummary(name=name, path=f"runs/{name}", **{**values, **extra})


@pytest.mark.parametrize("width", [60, 80])
def test_runs_table_fits_the_terminal_without_breaking_words(width):
    runs = [
        summary("fashion_mnist_accurate-12"),
        summary("early", stopped_early=4, status="finished"),
    ]
    lines = render(report.runs_table(runs, width), width)
    assert max(map(len, lines)) <= width
    assert len(lines) == 4  # header, rule, one line per run
    assert all(word in " ".join(lines) for word in ("finished", "status"))


def test_runs_table_shows_the_monitored_value_of_the_saved_epoch():
    lines = render(report.runs_table([summary("a")], 200), 200)
    assert "val_loss 0.2709" in lines[2] and "0.9149" in lines[2]
    early = render(report.runs_table([summary("b", stopped_early=4)], 200), 200)
    assert "early, 4" in early[2]


def test_training_summary_says_it_stopped_early(tmp_path):
    result = TrainResult(
        run=Run(tmp_path),
        epochs_done=4,
        epochs=10,
        monitor="val_loss",
        best_epoch=2,
        best_value=0.3,
        test={"accuracy": 0.9},
        seconds=1.0,
        images_per_second=10.0,
        stopped_early=4,
        rows=[{"epoch": 2, "loss": 0.3}],
    )
    text = "\n".join(render(report.training_summary(result), 80))
    assert "stopped early at epoch 4 of 10" in text and "best epoch 2 by val_loss (0.3000)" in text


def test_epoch_line_stays_one_line_in_a_pipe():
    row = {
        "epoch": 3,
        "loss": 0.21,
        "accuracy": 0.931,
        "val_loss": 0.25,
        "val_accuracy": 0.912,
        "lr": 0.001,
        "seconds": 12.3,
        "train_seconds": 11.0,
    }
    out = io.StringIO()
    display = report.TrainingDisplay(Console(file=out, width=40, color_system=None))
    display.epoch(row, 10, best=True)
    assert out.getvalue().count("\n") == 1 and out.getvalue().rstrip().endswith("best")


def test_evaluation_table_names_where_the_report_went():
    result = EvaluationResult(
        model="runs/a/model.keras",
        data="mnist",
        split="train",
        examples=1,
        metrics={"accuracy": 1.0},
        details={
            "per_class": {"0": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}},
            "averages": {
                k: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
                for k in ("macro avg", "weighted avg")
            },
            "most_confused": [],
            "confusion_matrix": [[1]],
            "class_names": ["0"],
        },
        saved=["runs/a/evaluation-train.json"],
    )
    text = "\n".join(render(task_named("classification").evaluation_table(result), 80))
    assert (
        "train split (1 image of mnist)" in text
        and "saved in runs/a: evaluation-train.json" in text
    )


def test_plural():
    assert (report.plural(1, "unreadable file"), report.plural(2, "prediction")) == (
        "1 unreadable file",
        "2 predictions",
    )


@pytest.mark.parametrize("epochs", [1, 3], ids=["one-epoch", "three-epochs"])
def test_curves_have_whole_epoch_ticks(epochs):
    rows = [{"epoch": e, "loss": 1 / e, "val_loss": 1.1 / e} for e in range(1, epochs + 1)]
    fig = report.curves_figure(rows)
    ticks = [t for t in fig.axes[0].get_xticks() if 0.5 <= t <= epochs + 0.5]
    assert ticks and all(float(t).is_integer() for t in ticks)


@pytest.mark.parametrize("chose", [True, False], ids=["validation-is-test", "held-out"])
def test_training_summary_says_when_the_test_set_chose_the_epoch(tmp_path, chose):
    result = TrainResult(
        run=Run(tmp_path),
        epochs_done=10,
        epochs=10,
        monitor="val_loss",
        best_epoch=9,
        best_value=0.24,
        test={"accuracy": 0.9149},
        seconds=1.0,
        images_per_second=10.0,
        rows=[{"epoch": 9, "loss": 0.3}],
        test_chose_epoch=chose,
    )
    text = " ".join(render(report.training_summary(result), 200))
    assert ("the test set chose the epoch" in text) is chose
    assert result.summary()["validation_is_test"] is chose


def test_epoch_lines_keep_their_columns_from_epoch_9_to_10():
    rows = [{"epoch": n, "loss": 0.1, "val_loss": 0.2, "seconds": 1.0} for n in (9, 10)]
    lines = [report.epoch_line(row, 10, improved=False).plain for row in rows]
    assert lines[0].index("loss") == lines[1].index("loss")


def test_export_lines_end_at_their_value_in_a_pipe():
    from cnnctl.scoring.export import export_table

    record = {
        "path": "runs/a/export/model.onnx",
        "format": "onnx",
        "quantize": None,
        "size_bytes": 2048,
        "input": {"shape": [None, 28, 28, 1]},
        "preprocessing": "float32 pixels 0..255",
        "check": {
            "images": 10,
            "max_abs_diff": 1e-7,
            "top1_agreement": 1.0,
            "keras_accuracy": 0.9,
            "export_accuracy": 0.9,
            "accuracy_drop_points": 0.0,
        },
    }
    lines = render(export_table(record), 100_000)
    assert lines and all(line == line.rstrip() for line in lines)
    assert lines[0].split() == ["file", "runs/a/export/model.onnx"]
