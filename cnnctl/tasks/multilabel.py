"""Multi-label classification: each image has any number of L labels; the model gives L
independent probabilities (a sigmoid each), and a label is present at or above its threshold.

Thresholds are chosen per label on the validation split after training (the one giving that
label's best F1), or fixed by eval.threshold, and kept in the run's thresholds.json.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from cnnctl import report as figures
from cnnctl.errors import ConfigError, DataError
from cnnctl.escape import safe
from cnnctl.runs.results import EvaluationResult, Guess, Prediction
from cnnctl.tasks.base import Report, Task, check_vector_head, column_names

if TYPE_CHECKING:
    from cnnctl.config import Config, TrainConfig

THRESHOLDS_FILE = "thresholds.json"
CANDIDATES = np.round(np.arange(0.05, 0.96, 0.01), 2)  # thresholds tried on validation
MAX_DROP_POINTS = 1.0  # a quantized file may lose at most this much micro-F1 (points)


class Multilabel(Task):
    name = "multilabel"
    headline = ("micro_f1", "max")  # at the thresholds chosen on validation
    prediction_columns = ("label", "prob")
    needs_test_outputs = True

    def __init__(self) -> None:
        self.thresholds: np.ndarray | None = None  # one per label; None: 0.5 each

    # --------------------------------------------------------------------------- labels

    def check_source(self, kind: str, where: str) -> None:
        if kind != "path_csv":
            kind = kind.replace("_", " ")
            raise ConfigError(
                f"{where}: task: multilabel reads a CSV of image paths, not a {kind}"
                " (class folders cannot say that one image has several labels)",
                "write a CSV with the header  path,split,tags  (tags: names separated by spaces), "
                "and set data.path to it and data.label_column: tags",
            )

    def read_labels(
        self,
        cells: Sequence[tuple[str, ...]],
        lines: Sequence[int],
        splits: Sequence[str],
        columns: Sequence[str],
        path: str,
    ) -> tuple[np.ndarray, tuple[str, ...]]:
        """Names separated by spaces (or commas); the names are those of the training rows."""
        if len(columns) != 1:
            raise DataError(
                f"{path}: data.label_column lists {len(columns)} columns; task: multilabel reads "
                "one column of names separated by spaces",
                "give one column name",
            )
        rows = [row[0].replace(",", " ").split() for row in cells]
        train = [r for r, s in zip(rows, splits, strict=False) if s == "train"] or rows
        names = tuple(sorted({name for row in train for name in row}))
        number = {name: i for i, name in enumerate(names)}
        labels = np.zeros((len(rows), len(names)), dtype=np.float32)
        for i, row in enumerate(rows):
            for name in row:
                if name not in number:
                    raise DataError(
                        f"{path}:{lines[i]}: label '{name}' is in no training row",
                        f"labels of the training rows: {' '.join(names[:10])}"
                        f"{' ...' if len(names) > 10 else ''}",
                    )
                labels[i, number[name]] = 1.0
        return labels, names

    def encode_labels(self, y: np.ndarray, origin: str) -> np.ndarray:
        if y.ndim != 2 or not np.issubdtype(y.dtype, np.number) or not np.isin(y, (0, 1)).all():
            raise DataError(
                f"{origin}: multilabel labels must be rows of 0s and 1s (one per label); got "
                f"{y.dtype} shaped {y.shape}",
                "task: multilabel reads a CSV of image paths with a column of label names",
            )
        return y.astype(np.float32)

    def output_names(
        self, given: Sequence[str] | None, labels: Sequence[np.ndarray], origin: str
    ) -> tuple[str, ...]:
        return column_names(given, labels, origin, "label")

    def label_counts(self, y: np.ndarray, k: int) -> list[int]:
        return y.sum(axis=0).astype(int).tolist()

    def check_outputs(self, outputs: int, names: Sequence[str], y: np.ndarray, where: str) -> None:
        if outputs != len(names) or y.shape[1] != outputs:
            raise DataError(
                f"{where}: the model has {outputs} outputs but the data has {y.shape[1]} labels"
            )

    # --------------------------------------------------------------------------- the model

    def check_head(self, output_shape: tuple, outputs: int | None, config: Config) -> None:
        check_vector_head(output_shape, outputs, config, "labels", ("sigmoid",))

    def one_hot(self, train: TrainConfig) -> bool:
        return False

    def metric_hint(self) -> str:
        return "for multilabel use binary_accuracy, precision, recall or auc"

    # --------------------------------------------------------------------------- run state

    def fitted(
        self,
        validation: Callable[[], tuple[np.ndarray, np.ndarray]],
        names: Sequence[str],
        config: Config,
    ) -> dict[str, Any]:
        """Each label's threshold: eval.threshold, or the one maximizing its validation F1."""
        fixed = config.eval.threshold if config.eval is not None else None
        outputs, truth = validation()
        if fixed is not None:
            self.thresholds = np.full(len(names), fixed, dtype=np.float32)
        else:
            self.thresholds = np.asarray(
                [_best_threshold(outputs[:, i], truth[:, i]) for i in range(len(names))],
                dtype=np.float32,
            )
        f1 = _f1_per_label(outputs >= self.thresholds, truth > 0.5)
        data = {
            "chosen_on": "fixed by eval.threshold" if fixed is not None else "validation",
            "thresholds": {
                n: round(float(t), 4) for n, t in zip(names, self.thresholds, strict=True)
            },
            "validation_f1": {n: round(float(f), 4) for n, f in zip(names, f1, strict=True)},
            "validation_images": int(len(truth)),
        }
        return {THRESHOLDS_FILE: data}

    kept_files = (THRESHOLDS_FILE,)

    def restore(self, kept: Mapping[str, Any]) -> None:
        if THRESHOLDS_FILE not in kept:
            return
        try:
            saved = kept[THRESHOLDS_FILE]["thresholds"]
            self.thresholds = np.asarray([float(v) for v in saved.values()], dtype=np.float32)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise DataError(f"{THRESHOLDS_FILE}: not a thresholds file ({error})") from None

    def _cut(self, count: int) -> np.ndarray:
        if self.thresholds is not None and len(self.thresholds) == count:
            return self.thresholds
        return np.full(count, 0.5, dtype=np.float32)

    def test_metrics(self, outputs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        summary = _summary(outputs >= self._cut(outputs.shape[1]), truth > 0.5)
        return {k: summary[k] for k in ("micro_f1", "macro_f1", "subset_accuracy")}

    # --------------------------------------------------------------------------- scoring

    def score(self, outputs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        """Binary cross-entropy and accuracy (at 0.5, as Keras), and micro-F1 at the thresholds."""
        p = np.clip(outputs, 1e-7, 1 - 1e-7)
        loss = float(-(truth * np.log(p) + (1 - truth) * np.log(1 - p)).mean()) if len(p) else 0.0
        accuracy = float(((outputs >= 0.5) == (truth > 0.5)).mean()) if len(p) else 0.0
        return {"binary_accuracy": accuracy, "loss": loss, **self.test_metrics(outputs, truth)}

    def report(
        self,
        outputs: np.ndarray,
        truth: np.ndarray,
        names: list[str],
        files: Sequence[str] | None,
        images: np.ndarray,
    ) -> Report:
        cut = self._cut(len(names))
        predicted, present = outputs >= cut, truth > 0.5
        precision, recall, f1 = _prf(predicted, present)
        curves = {n: _pr_curve(outputs[:, i], present[:, i]) for i, n in enumerate(names)}
        ap = np.asarray(
            [_average_precision(outputs[:, i], present[:, i]) for i in range(len(names))]
        )
        per_label = {
            n: {
                "precision": round(float(precision[i]), 4),
                "recall": round(float(recall[i]), 4),
                "f1": round(float(f1[i]), 4),
                "ap": round(float(ap[i]), 4),
                "threshold": round(float(cut[i]), 4),
                "support": int(present[:, i].sum()),
            }
            for i, n in enumerate(names)
        }
        fields = {
            "per_label": per_label,
            **_summary(predicted, present),
            "mAP": round(float(ap.mean()), 4) if len(ap) else 0.0,
            "label_names": names,
        }
        worst = _most_wrong(outputs, predicted, present, names, files)
        shown = {"pr_curves": lambda path: figures.save_pr_curves(curves, path)}
        if worst:
            shown["errors"] = lambda path: figures.save_error_grid(images, worst, path)
        return Report(fields, worst, shown)

    def evaluation_table(self, result: EvaluationResult) -> Group:
        details = result.details
        table = Table(show_edge=False)
        table.add_column("label", overflow="ellipsis", max_width=20, no_wrap=True)
        for column in ("precision", "recall", "f1", "AP", "thresh", "support"):
            table.add_column(column, justify="right")
        for name, row in details["per_label"].items():
            table.add_row(
                safe(name),
                *(f"{row[k]:.3f}" for k in ("precision", "recall", "f1", "ap")),
                f"{row['threshold']:.2f}",
                str(row["support"]),
            )
        footer = Text(
            f"micro F1 {details['micro_f1']:.4f}  macro F1 {details['macro_f1']:.4f}  "
            f"mAP {details['mAP']:.4f}  Hamming loss {details['hamming_loss']:.4f}  "
            f"subset accuracy {details['subset_accuracy']:.4f}"
        )
        header, saved = figures.evaluation_lines(result)
        return Group(header, table, footer, saved)

    def prediction(
        self, path: Path | str, output: np.ndarray, names: list[str], k: int | None
    ) -> Prediction:
        """Every label at or above its threshold, most probable first; with --top-k, the k
        most probable whatever their thresholds."""
        if k is None:
            above = np.flatnonzero(output >= self._cut(len(output)))
            order = above[np.argsort(output[above])[::-1]]
        else:
            order = np.argsort(output)[::-1][:k]
        return Prediction(
            str(path), [Guess(names[i], int(i), round(float(output[i]), 6)) for i in order]
        )

    def parity(
        self, expected: np.ndarray, got: np.ndarray, truth: np.ndarray, tolerance: float | None
    ) -> dict[str, Any]:
        """Float files must match Keras and give the same labels at the thresholds; quantized
        ones must keep its micro-F1."""
        cut = self._cut(expected.shape[1])
        keras_f1 = _summary(expected >= cut, truth > 0.5)["micro_f1"]
        export_f1 = _summary(got >= cut, truth > 0.5)["micro_f1"]
        check = {
            "images": int(len(truth)),
            "max_abs_diff": float(np.abs(expected - got).max()) if len(got) else 0.0,
            "label_agreement": float(((expected >= cut) == (got >= cut)).mean())
            if len(got)
            else 1.0,
            "keras_micro_f1": round(keras_f1, 6),
            "export_micro_f1": round(export_f1, 6),
            "micro_f1_drop_points": round(100 * (keras_f1 - export_f1), 3),
        }
        if tolerance is None:
            check["max_drop_points"] = MAX_DROP_POINTS
            check["passed"] = check["micro_f1_drop_points"] <= MAX_DROP_POINTS
        else:
            check["max_abs_diff_allowed"] = tolerance
            check["passed"] = check["max_abs_diff"] <= tolerance and check["label_agreement"] == 1.0
        return check

    def parity_summary(self, check: dict[str, Any]) -> str:
        return (
            f"max abs diff {check['max_abs_diff']:.2e}, "
            f"label agreement {100 * check['label_agreement']:.2f}%, "
            f"micro-F1 {100 * check['keras_micro_f1']:.2f}% -> "
            f"{100 * check['export_micro_f1']:.2f}% on {check['images']:,} test images"
        )


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    top = np.asarray(top, dtype=float)
    return np.divide(top, bottom, out=np.zeros_like(top), where=np.asarray(bottom) > 0)


def _prf(predicted: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, ...]:
    """Precision, recall and F1 per label (columns)."""
    tp = (predicted & present).sum(axis=0)
    precision = _ratio(tp, predicted.sum(axis=0))
    recall = _ratio(tp, present.sum(axis=0))
    return precision, recall, _ratio(2 * precision * recall, precision + recall)


def _f1_per_label(predicted: np.ndarray, present: np.ndarray) -> np.ndarray:
    return _prf(predicted, present)[2]


def _summary(predicted: np.ndarray, present: np.ndarray) -> dict[str, float]:
    """Micro and macro F1, Hamming loss and exact-match accuracy over all labels."""
    tp = float((predicted & present).sum())
    micro = 2 * tp / max(float(predicted.sum() + present.sum()), 1.0)
    f1 = _f1_per_label(predicted, present)
    n = len(present)
    return {
        "micro_f1": round(micro, 6),
        "macro_f1": round(float(f1.mean()) if f1.size else 0.0, 6),
        "hamming_loss": round(float((predicted != present).mean()) if n else 0.0, 6),
        "subset_accuracy": round(float((predicted == present).all(axis=1).mean()) if n else 0.0, 6),
    }


def _best_threshold(scores: np.ndarray, present: np.ndarray) -> float:
    """The candidate threshold with the best F1 for one label (the middle one of ties)."""
    present = present > 0.5
    predicted = scores[:, None] >= CANDIDATES[None, :]
    tp = (predicted & present[:, None]).sum(axis=0)
    f1 = _ratio(2 * tp, predicted.sum(axis=0) + present.sum())
    best = np.flatnonzero(f1 == f1.max())
    return float(CANDIDATES[best[len(best) // 2]])


def _pr_curve(scores: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    hits = present[order].astype(float)
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / max(hits.sum(), 1.0)
    return precision, recall


def _average_precision(scores: np.ndarray, present: np.ndarray) -> float:
    """The mean of the precision at each positive's rank (0 where the label never occurs)."""
    if not present.any():
        return 0.0
    precision, _ = _pr_curve(scores, present)
    return float(precision[present[np.argsort(-scores, kind="stable")]].mean())


def _most_wrong(
    outputs: np.ndarray,
    predicted: np.ndarray,
    present: np.ndarray,
    names: list[str],
    files: Sequence[str] | None,
) -> list[dict[str, Any]]:
    """One row per image with a wrong label, most wrong labels first (then highest loss)."""
    p = np.clip(outputs, 1e-7, 1 - 1e-7)
    loss = -(present * np.log(p) + (~present) * np.log(1 - p)).mean(axis=1)
    wrong = (predicted != present).sum(axis=1)
    rows = []
    for index in sorted(np.flatnonzero(wrong), key=lambda i: (-wrong[i], -loss[i])):
        rows.append(
            {
                "index": int(index),
                **({"path": files[index]} if files else {}),
                "true": " ".join(names[j] for j in np.flatnonzero(present[index])) or "-",
                "predicted": " ".join(names[j] for j in np.flatnonzero(predicted[index])) or "-",
                "wrong_labels": int(wrong[index]),
                "loss": round(float(loss[index]), 6),
            }
        )
    return rows
