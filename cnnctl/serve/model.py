"""What `cnnctl serve` serves: one model file, loaded once, warmed up, with its task and names.

For a run, its ONNX export is served when `cnnctl export` checked it against the run's current
model (an exported file runs without TensorFlow); else the run's Keras model. A file given with
`--model` is served as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnctl.modelfile.exported import exported_record
from cnnctl.scoring.source import ScoringSource

RUNTIMES = {".onnx": "onnxruntime", ".tflite": "litert", ".keras": "keras", ".h5": "keras"}


@dataclass
class ServedModel:
    """A loaded model: `score(images)` -> the task's outputs, `rows` -> predict's JSON rows."""

    source: ScoringSource
    score: Callable[[np.ndarray], np.ndarray]
    input_shape: tuple[int, int, int]  # height, width, channels
    names: list[str]
    export_check: dict[str, Any] | None  # the parity check export.json records for this file

    @property
    def runtime(self) -> str:
        return RUNTIMES.get(self.source.model_file.suffix.lower(), "keras")

    def rows(self, outputs: np.ndarray, paths: list[str], top_k: int) -> list[dict[str, Any]]:
        """What `predict --format json` prints for these outputs (the task's rows)."""
        task = self.source.task
        return [
            task.prediction(path, row, self.names, top_k).to_json()
            for path, row in zip(paths, outputs, strict=True)
        ]

    def describe(self) -> dict[str, Any]:
        """GET /v1/model: what is served, and how."""
        height, width, channels = self.input_shape
        return {
            "task": self.source.task.name,
            "class_names": self.names,
            "input_shape": [None, height, width, channels],
            "file": str(self.source.model_file),
            "format": self.source.model_file.suffix.lower().lstrip("."),
            "runtime": self.runtime,
            "run": str(self.source.run.path) if self.source.run is not None else None,
            "export_parity": self.export_check,
            "tta": self.source.tta,
        }

    def banner(self) -> str:
        """The start-up line's account of the model."""
        shown = ", ".join(self.names[:10]) + (", ..." if len(self.names) > 10 else "")
        return (
            f"{self.source.model_file} ({self.runtime}, task {self.source.task.name}, "
            f"{len(self.names)} outputs: {shown}; tta {self.source.tta})"
        )


def served_source(source: ScoringSource, explicit: bool) -> ScoringSource:
    """The run's checked ONNX export in place of its Keras model, where there is one."""
    if explicit or source.run is None or source.exported:
        return source
    onnx = source.run.path / "export" / f"{source.model_file.stem}.onnx"
    record = _export_record(onnx)
    if record is None or not (record.get("check") or {}).get("passed"):
        return source
    with contextlib.suppress(OSError):  # a model trained (or resumed) after the export: stale
        if os.path.getmtime(onnx) >= os.path.getmtime(source.model_file):
            return dataclasses.replace(source, model_file=onnx)
    return source


def _export_record(path: Path) -> dict[str, Any] | None:
    """export.json's record of `path` (None: not recorded, or not a regular file)."""
    return (exported_record(path) or None) if path.is_file() else None


def load_served(source: ScoringSource, max_batch_size: int) -> ServedModel:
    """Load the source's model, check its names, and warm it up at the batch sizes it will see."""
    model = source.load(compile=False)
    _, height, width, channels = model.input_shape
    names = source.output_names(model)
    score = model if source.exported else _as_numpy(source.traced(model))
    for size in (1, max_batch_size):  # the first calls build kernels and allocate: not a user's
        score(np.zeros((size, height, width, channels), np.float32))
    record = _export_record(source.model_file) if source.exported else None
    check = record.get("check") if isinstance(record, dict) else None
    return ServedModel(
        source,
        lambda batch: np.asarray(score(batch)),
        (height, width, channels),
        names,
        check if isinstance(check, dict) else None,
    )


def _as_numpy(function: Any) -> Callable[[np.ndarray], Any]:
    """A traced Keras model (any batch size: eager calls cost milliseconds) on numpy batches."""
    import tensorflow as tf

    return lambda batch: function(tf.constant(batch, tf.float32)).numpy()
