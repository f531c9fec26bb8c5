"""Single-label classification: each image is one of K classes; the model gives K probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from cnnctl import report as figures
from cnnctl.errors import ConfigError, DataError
from cnnctl.escape import safe, safe_text
from cnnctl.runs.results import EvaluationResult, Guess, Prediction
from cnnctl.suggest import suggest
from cnnctl.tasks.base import ExplainTarget, Report, Task

if TYPE_CHECKING:
    from cnnctl.config import Config, TrainConfig

TOP_K = 3  # classes listed for each wrong example
SHOWN = 25  # wrong examples in errors.png


DEFAULT_TOP_K = 3  # classes predict shows per image without --top-k


class Classification(Task):
    name = "classification"
    headline = ("accuracy", "max")

    def encode_labels(self, y: np.ndarray, origin: str) -> np.ndarray:
        if y.ndim == 2 and y.shape[1] > 1:
            y = y.argmax(axis=1)  # one-hot labels
        y = y.reshape(-1)
        if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
            raise DataError(
                f"{origin}: labels must be class indices 0, 1, 2, ...; got {y.dtype} {y[:5]}"
            )
        return y.astype(np.int64)

    def held_out(self, y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
        """The same fraction of each class (stratified), so a rare class is in both parts."""
        rng = np.random.default_rng(seed)
        held = np.zeros(len(y), dtype=bool)
        for label in np.unique(y):
            index = np.flatnonzero(y == label)
            take = int(round(len(index) * fraction))
            held[rng.permutation(index)[:take]] = True
        return held

    def output_names(
        self, given: Sequence[str] | None, labels: Sequence[np.ndarray], origin: str
    ) -> tuple[str, ...]:
        seen = max(int(y.max(initial=0)) for y in labels) + 1
        if given is None:
            return tuple(str(i) for i in range(seen))
        if len(given) < seen:
            raise DataError(f"{origin}: {len(given)} class names for labels up to {seen - 1}")
        return tuple(given)

    def check_head(self, output_shape: tuple, outputs: int | None, config: Config) -> None:
        """The network must end in one score per class; caught here, not in `fit`."""
        last = ("model", "layers", len(config.model.layers) - 1)
        if len(output_shape) != 2:
            raise ConfigError(
                f"{config.where(last)}: the network ends with shape {output_shape}, not one "
                "score per class",
                "add Flatten (or GlobalAveragePooling2D) and a Dense layer with "
                f"{outputs or 'one'} units{'' if outputs else ' per class'}",
            )
        if outputs is not None and output_shape[-1] != outputs:
            raise ConfigError(
                f"{config.where(last)}: the last layer gives {output_shape[-1]} outputs but the "
                f"data has {outputs} classes",
                f"set units: {outputs} on the last Dense layer",
            )

    def one_hot(self, train: TrainConfig) -> bool:
        return train.one_hot

    def class_weights(
        self, config: Config, y: np.ndarray, names: Sequence[str]
    ) -> dict[int, float] | None:
        """{class index: weight}: `balanced` from the training labels' counts, or the names given
        (checked against the data's classes; the others weigh 1)."""
        wanted = config.train.class_weight
        if wanted is None:
            return None
        if wanted == "balanced":
            counts = np.bincount(y, minlength=len(names))
            return {
                i: float(len(y) / (len(names) * count)) if count else 1.0
                for i, count in enumerate(counts)
            }
        weights = {i: 1.0 for i in range(len(names))}
        for name, weight in wanted.items():
            where = config.where(("train", "class_weight", name), at_key=True)
            if name not in names:
                raise ConfigError(
                    f"{where}: no class named '{name}' in the data{suggest(name, list(names))}",
                    f"classes: {', '.join(names[:10])}{', ...' if len(names) > 10 else ''}",
                )
            if not weight > 0 or not np.isfinite(weight):
                raise ConfigError(f"{where}: a class weight must be above 0, got {weight}")
            weights[list(names).index(name)] = float(weight)
        return weights

    def metric_hint(self) -> str:
        return "for classification use accuracy"

    def score(self, outputs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        """Accuracy and cross-entropy, as Keras' compiled metrics would give them."""
        true = outputs[np.arange(len(truth)), truth]
        loss = float(-np.log(np.clip(true, 1e-7, 1.0)).mean()) if len(truth) else 0.0
        accuracy = float((outputs.argmax(axis=1) == truth).mean()) if len(truth) else 0.0
        return {"accuracy": accuracy, "loss": loss}

    def report(
        self,
        outputs: np.ndarray,
        truth: np.ndarray,
        names: list[str],
        files: Sequence[str] | None,
        images: np.ndarray,
    ) -> Report:
        matrix = confusion_matrix(truth, outputs.argmax(axis=1), len(names))
        wrong = misclassified(truth, outputs, names, files)
        shown = {"confusion_matrix": lambda path: figures.save_confusion(matrix, names, path)}
        fields = {
            **class_report(matrix, names),
            "confusion_matrix": matrix.tolist(),
            "class_names": names,
        }
        # The gallery's maps explain the wrong class: where the model looked when it chose it.
        picked = np.eye(len(names), dtype=np.float32)
        explain = [(row["index"], picked[names.index(row["predicted"])]) for row in wrong[:SHOWN]]
        result = Report(fields, wrong, shown, explain)
        if wrong:
            shown["errors"] = lambda path: figures.save_error_grid(
                images, wrong, path, SHOWN, result.maps
            )
        return result

    def explain_targets(
        self, output: np.ndarray, names: list[str], chosen: int | None, k: int | None
    ) -> list[ExplainTarget]:
        """The predicted class, without --top-k (predict shows three)."""
        return super().explain_targets(output, names, chosen, k or 1)

    def prediction(
        self, path: Path | str, output: np.ndarray, names: list[str], k: int | None
    ) -> Prediction:
        order = np.argsort(output)[::-1][: k or DEFAULT_TOP_K]
        return Prediction(
            str(path), [Guess(names[i], int(i), round(float(output[i]), 6)) for i in order]
        )

    def evaluation_table(self, result: EvaluationResult) -> Group:
        """Overall metrics, then precision/recall/F1 per class, fitting in 80 columns."""
        details = result.details
        table = Table(title_justify="left", show_edge=False)
        table.add_column("class", overflow="ellipsis", max_width=24, no_wrap=True)
        for column in ("precision", "recall", "f1", "support"):
            table.add_column(column, justify="right")
        for name, row in details["per_class"].items():
            table.add_row(safe(name), *_cells(row))
        table.add_section()
        for name in ("macro avg", "weighted avg"):
            table.add_row(name, *_cells(details["averages"][name]))
        confused = ", ".join(
            f"{safe_text(c['true'])} as {safe_text(c['predicted'])} ({c['count']})"
            for c in details["most_confused"][:3]
        )
        footer = Text.assemble(("most confused: ", "dim"), confused or "none")
        header, saved = figures.evaluation_lines(result)
        return Group(header, table, footer, saved)

    def parity(
        self, expected: np.ndarray, got: np.ndarray, truth: np.ndarray, tolerance: float | None
    ) -> dict[str, Any]:
        """Float files must match Keras (and agree on every top class); quantized ones must
        keep its accuracy."""
        keras_accuracy = float((expected.argmax(1) == truth).mean())
        export_accuracy = float((got.argmax(1) == truth).mean())
        check = {
            "images": int(len(truth)),
            "max_abs_diff": float(np.abs(expected - got).max()) if len(got) else 0.0,
            "top1_agreement": float((expected.argmax(1) == got.argmax(1)).mean()),
            "keras_accuracy": round(keras_accuracy, 6),
            "export_accuracy": round(export_accuracy, 6),
            "accuracy_drop_points": round(100 * (keras_accuracy - export_accuracy), 3),
        }
        if tolerance is None:
            check["max_drop_points"] = MAX_DROP_POINTS
            check["passed"] = check["accuracy_drop_points"] <= MAX_DROP_POINTS
        else:
            check["max_abs_diff_allowed"] = tolerance
            check["passed"] = check["max_abs_diff"] <= tolerance and check["top1_agreement"] == 1.0
        return check

    def parity_rows(self, check: dict[str, Any]) -> list[tuple[str, str]]:
        return [
            ("max abs diff", f"{check['max_abs_diff']:.2e}"),
            ("top-1 agreement", f"{100 * check['top1_agreement']:.2f}%"),
            (
                "accuracy",
                f"{100 * check['keras_accuracy']:.2f}% (Keras) -> "
                f"{100 * check['export_accuracy']:.2f}% "
                f"(drop {check['accuracy_drop_points']:.2f} points)",
            ),
        ]

    def parity_summary(self, check: dict[str, Any]) -> str:
        return (
            f"max abs diff {check['max_abs_diff']:.2e}, "
            f"top-1 agreement {100 * check['top1_agreement']:.2f}%, "
            f"accuracy {100 * check['keras_accuracy']:.2f}% -> "
            f"{100 * check['export_accuracy']:.2f}% on {check['images']:,} test images"
        )


MAX_DROP_POINTS = 1.0  # a quantized file may lose at most this much accuracy (points)


def misclassified(
    truth: np.ndarray,
    probabilities: np.ndarray,
    names: list[str],
    files: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per wrong prediction (its file where images came from files), highest loss first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != truth)
    loss = -np.log(np.clip(probabilities[wrong, truth[wrong]], 1e-12, 1.0))
    rows = []
    for index, value in sorted(
        zip(wrong.tolist(), loss.tolist(), strict=True), key=lambda item: -item[1]
    ):
        top = np.argsort(probabilities[index])[::-1][:TOP_K]
        where = {"index": index, **({"path": files[index]} if files else {})}
        rows.append(
            {
                **where,
                "true": names[truth[index]],
                "predicted": names[predicted[index]],
                "top": "; ".join(f"{names[i]} {probabilities[index, i]:.4f}" for i in top),
                "loss": round(value, 6),
            }
        )
    return rows


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """Counts: rows are true classes, columns predicted classes."""
    return np.bincount(truth * k + predicted, minlength=k * k).reshape(k, k)


def class_report(matrix: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per class, with macro and weighted averages."""
    true_positive = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = _ratio(true_positive, predicted)
    recall = _ratio(true_positive, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    per_class = {
        name: _row(p, r, f, s)
        for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
    }
    weights = support / max(support.sum(), 1)
    total = support.sum()
    averages = {
        "macro avg": _row(precision.mean(), recall.mean(), f1.mean(), total),
        "weighted avg": _row(precision @ weights, recall @ weights, f1 @ weights, total),
    }
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    pairs = [(int(off[i, j]), names[i], names[j]) for i, j in zip(*np.nonzero(off), strict=True)]
    confused = [
        {"true": t, "predicted": p, "count": c} for c, t, p in sorted(pairs, reverse=True)[:5]
    ]
    return {"per_class": per_class, "averages": averages, "most_confused": confused}


def _cells(row: dict[str, Any]) -> list[str]:
    return [f"{row[k]:.3f}" for k in ("precision", "recall", "f1")] + [str(row["support"])]


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    return np.divide(top, bottom, out=np.zeros_like(top, dtype=float), where=bottom > 0)


def _row(precision: float, recall: float, f1: float, support: int) -> dict[str, Any]:
    return {
        "precision": round(float(precision), 4),
        "recall": round(float(recall), 4),
        "f1": round(float(f1), 4),
        "support": int(support),
    }
