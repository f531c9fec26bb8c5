"""What the work returns to the command line.

Small typed records, rendered by `report`, dumped by --json.

Plain dataclasses (the only import is the run folder's `Run`), so any room may
produce them and `report` may read them without reaching up. `runs.RunSummary`
lives with the run folder it describes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cnnctl.runs.folder import Run


@dataclass
class TrainResult:
    """What a training run reports when it ends."""

    run: Run
    epochs_done: int
    epochs: int
    monitor: str
    best_epoch: int | None
    best_value: float | None
    test: dict[str, float]
    seconds: float
    images_per_second: float
    stopped_early: int | None = None
    written: bool = True  # False on a worker that is not the chief: it trained and wrote nothing
    rows: list[dict[str, float]] = field(default_factory=list)
    restarted: bool = False  # resumed before its first epoch ended: trained from the start again
    train_images: int = 0  # images of one training epoch
    test_chose_epoch: bool = False  # data.validation: test, so the test figures are not held out
    task: str = "classification"
    headline: str = "accuracy"  # the test figure that sums the run up (the task's)

    def summary(self) -> dict[str, Any]:
        best_row = next((r for r in self.rows if r["epoch"] == self.best_epoch), {})
        return {
            "run": str(self.run.path),
            "epochs_done": self.epochs_done,
            "epochs": self.epochs,
            "stopped_early": self.stopped_early,
            "monitor": self.monitor,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "best": best_row,
            "final": self.rows[-1] if self.rows else {},
            "task": self.task,
            "headline": self.headline,
            "test": self.test,
            "validation_is_test": self.test_chose_epoch,
            "wall_seconds": round(self.seconds, 2),
            "train_images_per_second": round(self.images_per_second, 1),  # from epoch 2 on
            "train_images": self.train_images,
            "first_epoch_seconds": self.rows[0].get("seconds") if self.rows else None,
        }


@dataclass
class EvaluationResult:
    """Scores of one model on one split of one dataset, and where they were saved."""

    model: str
    data: str
    split: str
    examples: int
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)  # the task's report (per class, ...)
    task: str = "classification"
    tta: str = "none"  # test-time augmentation the scores include
    skipped: list[dict[str, str]] = field(default_factory=list)  # path, reason: left out
    saved: list[str] = field(default_factory=list)  # the files written, empty when nothing was

    def to_json(self) -> dict[str, Any]:
        """evaluation.json: the common fields with the task's own beside them, at the top."""
        data = asdict(self)
        return {**{k: v for k, v in data.items() if k != "details"}, **data["details"]}


@dataclass
class Guess:
    label: str
    index: int
    probability: float


@dataclass
class Prediction:
    """The top classes of one image."""

    path: str
    top: list[Guess]
    # segmentation: the class of each pixel (what predict writes as a mask file); not in JSON
    mask: Any = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "top": [asdict(guess) for guess in self.top]}


@dataclass
class Predictions:
    """Top classes for each image that could be read, and why the others could not."""

    items: list[Prediction] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    columns: tuple[str, str] = ("class", "prob")  # the task's names for a row's label and value
