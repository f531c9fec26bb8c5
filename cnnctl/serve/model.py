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

from cnnctl import report
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
    keras_model: Any = None  # the Keras model, for Grad-CAM (None: an exported file, no gradients)

    @property
    def runtime(self) -> str:
        return RUNTIMES.get(self.source.model_file.suffix.lower(), "keras")

    def rows(
        self,
        outputs: np.ndarray,
        paths: list[str],
        top_k: int | None,
        images: np.ndarray | None = None,
    ) -> list[dict[str, Any]]:
        """What `predict --format json` prints for these outputs (the task's rows). With the
        decoded `images`, a task whose outputs are masks adds each one's coloured `overlay`
        (predict's NAME.overlay.png, at the model's input size) as a PNG data URL."""
        task = self.source.task
        rows = []
        for i, (path, output) in enumerate(zip(paths, outputs, strict=True)):
            item = task.prediction(path, output, self.names, top_k)
            row = item.to_json()
            if images is not None and item.mask is not None:
                row["overlay"] = overlay_png(images[i], item.mask, len(self.names))
            rows.append(row)
        return rows

    def explain(self, image: np.ndarray, name: str) -> dict[str, Any]:
        """POST /v1/explain: what `cnnctl explain` says of one image with its defaults (Grad-CAM
        of the task's first target), its overlay PNG as a data URL."""
        import base64

        from cnnctl.scoring.explain import explain_one

        item, png = explain_one(self.keras_model, self.source, self.names, image, name)
        row = item.to_json()
        del row["files"]
        return {**row, "overlay": "data:image/png;base64," + base64.b64encode(png).decode()}

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
            "explain": self.keras_model is not None,
        }

    def banner(self) -> str:
        """The start-up line's account of the model."""
        shown = ", ".join(self.names[:10]) + (", ..." if len(self.names) > 10 else "")
        return (
            f"{self.source.model_file} ({self.runtime}, task {self.source.task.name}, "
            f"{len(self.names)} outputs: {shown}; tta {self.source.tta})"
        )


def overlay_png(image: np.ndarray, mask: np.ndarray, classes: int) -> str:
    """The image tinted by its mask, as predict colours its overlays: a PNG data URL."""
    import base64
    import io

    from PIL import Image

    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(report.overlay(pixels, mask, classes), "RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


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
        None if source.exported else model,
    )


def _as_numpy(function: Any) -> Callable[[np.ndarray], Any]:
    """A traced Keras model (any batch size: eager calls cost milliseconds) on numpy batches."""
    import tensorflow as tf

    return lambda batch: function(tf.constant(batch, tf.float32)).numpy()
