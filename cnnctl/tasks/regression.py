"""Regression: each image has T numbers (targets); the model gives T values, no activation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Group
from rich.table import Table

from cnnctl import report as figures
from cnnctl.errors import ConfigError, DataError
from cnnctl.escape import safe
from cnnctl.runs.results import EvaluationResult, Guess, Prediction
from cnnctl.tasks.base import Report, Task, check_vector_head, column_names

if TYPE_CHECKING:
    from cnnctl.config import Config, TrainConfig

WORST_SHOWN = 100  # rows of the largest errors kept in the report
MAX_MAE_RISE = 0.05  # a quantized file may raise the MAE by at most this fraction


class Regression(Task):
    name = "regression"
    headline = ("mae", "min")
    prediction_columns = ("target", "value")
    needs_test_outputs = True  # the headline MAE whatever train.metrics compiled

    # --------------------------------------------------------------------------- labels

    def check_source(self, kind: str, where: str) -> None:
        if kind != "path_csv":
            raise ConfigError(
                f"{where}: task: regression reads a CSV of image paths with number columns, not "
                f"a {kind.replace('_', ' ')}",
                "write a CSV with the header  path,split,count  and set data.label_column: count "
                "(or a list of columns: [x, y])",
            )

    def read_labels(
        self,
        cells: Sequence[tuple[str, ...]],
        lines: Sequence[int],
        splits: Sequence[str],
        columns: Sequence[str],
        path: str,
    ) -> tuple[np.ndarray, tuple[str, ...]]:
        """One float per label column; a cell that is not a finite number names its row."""
        values = np.zeros((len(cells), len(columns)), dtype=np.float32)
        for i, row in enumerate(cells):
            for j, cell in enumerate(row):
                try:
                    value = float(cell)
                except ValueError:
                    value = None
                if value is None or not math.isfinite(value):
                    raise DataError(
                        f"{path}:{lines[i]}: column '{columns[j]}' holds '{cell[:40]}', not a "
                        "finite number",
                        "regression targets are numbers such as 3 or 0.25",
                    )
                values[i, j] = value
        return values, tuple(columns)

    def encode_labels(self, y: np.ndarray, origin: str) -> np.ndarray:
        if not np.issubdtype(y.dtype, np.number) or y.ndim not in (1, 2):
            raise DataError(
                f"{origin}: regression targets must be numbers, one row per image; got {y.dtype} "
                f"shaped {y.shape}"
            )
        y = y.reshape(len(y), -1).astype(np.float32)
        if not np.isfinite(y).all():
            row = int(np.flatnonzero(~np.isfinite(y).all(axis=1))[0])
            raise DataError(f"{origin}: target of example {row} is {y[row].tolist()}, not finite")
        return y

    def output_names(
        self, given: Sequence[str] | None, labels: Sequence[np.ndarray], origin: str
    ) -> tuple[str, ...]:
        return column_names(given, labels, origin, "target")

    def label_counts(self, y: np.ndarray, k: int) -> list[int]:
        return [len(y)] * k

    def check_outputs(self, outputs: int, names: Sequence[str], y: np.ndarray, where: str) -> None:
        if outputs != len(names) or y.shape[1] != outputs:
            raise DataError(
                f"{where}: the model has {outputs} outputs but the data has {y.shape[1]} targets"
            )

    # --------------------------------------------------------------------------- the model

    def check_head(self, output_shape: tuple, outputs: int | None, config: Config) -> None:
        check_vector_head(output_shape, outputs, config, "targets", (None,))

    def one_hot(self, train: TrainConfig) -> bool:
        return False

    def metric_hint(self) -> str:
        return "for regression use mae, mse or root_mean_squared_error"

    def target_scaling(self, y: np.ndarray, config: Config) -> dict[str, Any] | None:
        """The training targets' mean and standard deviation, where data.standardize_targets."""
        if not config.data.standardize_targets:
            return None
        std = y.std(axis=0)
        return {
            "mean": [round(float(v), 8) for v in y.mean(axis=0)],
            "std": [round(float(v), 8) if v > 1e-8 else 1.0 for v in std],
            "images": int(len(y)),
        }

    # --------------------------------------------------------------------------- scoring

    def test_metrics(self, outputs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        return {"mae": float(np.abs(outputs - truth).mean()) if len(truth) else 0.0}

    def score(self, outputs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        """The mean squared and absolute errors, named as such: which loss the network was
        trained with (mse, mae or huber) an exported file does not say."""
        error = outputs - truth
        n = len(truth)
        return {
            "mse": float((error**2).mean()) if n else 0.0,
            "mae": float(np.abs(error).mean()) if n else 0.0,
        }

    def report(
        self,
        outputs: np.ndarray,
        truth: np.ndarray,
        names: list[str],
        files: Sequence[str] | None,
        images: np.ndarray,
    ) -> Report:
        error = outputs - truth
        spread = ((truth - truth.mean(axis=0)) ** 2).sum(axis=0)
        per_target = {}
        for i, name in enumerate(names):
            e = error[:, i]
            per_target[name] = {
                "mae": round(float(np.abs(e).mean()), 6),
                "rmse": round(float(np.sqrt((e**2).mean())), 6),
                "r2": round(float(1 - (e**2).sum() / spread[i]), 6) if spread[i] > 0 else 0.0,
                "median_ae": round(float(np.median(np.abs(e))), 6),
            }
        fields = {
            "per_target": per_target,
            "mae": round(float(np.abs(error).mean()), 6),
            "rmse": round(float(np.sqrt((error**2).mean())), 6),
            "target_names": names,
        }
        worst = _largest_errors(outputs, truth, names, files)
        shown = {
            "scatter": lambda path: figures.save_scatter(truth, outputs, names, path),
            "residuals": lambda path: figures.save_residuals(error, names, path),
        }
        if worst:
            shown["errors"] = lambda path: figures.save_error_grid(images, worst, path)
        return Report(fields, worst, shown)

    def evaluation_table(self, result: EvaluationResult) -> Group:
        table = Table(show_edge=False)
        table.add_column("target", overflow="ellipsis", max_width=24, no_wrap=True)
        for column in ("MAE", "RMSE", "R²", "median AE"):
            table.add_column(column, justify="right")
        for name, row in result.details["per_target"].items():
            table.add_row(
                safe(name), *(f"{row[k]:.4f}" for k in ("mae", "rmse", "r2", "median_ae"))
            )
        header, saved = figures.evaluation_lines(result)
        return Group(header, table, saved)

    def prediction(
        self, path: Path | str, output: np.ndarray, names: list[str], k: int | None
    ) -> Prediction:
        """Every target's value (`probability` holds the value)."""
        return Prediction(
            str(path), [Guess(names[i], i, round(float(v), 6)) for i, v in enumerate(output)]
        )

    def parity(
        self, expected: np.ndarray, got: np.ndarray, truth: np.ndarray, tolerance: float | None
    ) -> dict[str, Any]:
        """Float files must match Keras within `tolerance` (relative to the values' size);
        quantized ones must keep its MAE."""
        keras_mae = float(np.abs(expected - truth).mean()) if len(truth) else 0.0
        export_mae = float(np.abs(got - truth).mean()) if len(truth) else 0.0
        scale = max(1.0, float(np.abs(expected).max(initial=0)))
        check = {
            "images": int(len(truth)),
            "max_abs_diff": float(np.abs(expected - got).max()) if len(got) else 0.0,
            "keras_mae": round(keras_mae, 6),
            "export_mae": round(export_mae, 6),
        }
        if tolerance is None:
            allowed = keras_mae * (1 + MAX_MAE_RISE) + 1e-6
            check["max_mae_allowed"] = round(allowed, 6)
            check["passed"] = export_mae <= allowed
        else:
            check["max_abs_diff_allowed"] = tolerance * scale
            check["passed"] = check["max_abs_diff"] <= tolerance * scale
        return check

    def parity_summary(self, check: dict[str, Any]) -> str:
        return (
            f"max abs diff {check['max_abs_diff']:.2e}, MAE {check['keras_mae']:.4f} -> "
            f"{check['export_mae']:.4f} on {check['images']:,} test images"
        )


def _largest_errors(
    outputs: np.ndarray, truth: np.ndarray, names: list[str], files: Sequence[str] | None
) -> list[dict[str, Any]]:
    """The images with the largest absolute error (summed over targets), largest first."""
    error = np.abs(outputs - truth).sum(axis=1)
    rows = []
    for index in np.argsort(-error, kind="stable")[:WORST_SHOWN]:
        rows.append(
            {
                "index": int(index),
                **({"path": files[index]} if files else {}),
                "true": " ".join(f"{v:.4g}" for v in truth[index]),
                "predicted": " ".join(f"{v:.4g}" for v in outputs[index]),
                "abs_error": round(float(error[index]), 6),
            }
        )
    return rows
