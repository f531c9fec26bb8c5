"""Image files -> top-k classes, through the same model file that evaluate scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnctl.data.images import ImageError, expand_paths, load_image
from cnnctl.modelfile import load_model

CHUNK = 1024  # images decoded and held in memory at once


@dataclass
class Predictions:
    """Top classes for each image that could be read, and why the others could not."""

    items: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)


def predict_images(inputs: list[str], model_path: Path, class_names: list[str] | None,
                   top_k: int = 3, batch_size: int = 256, invert: bool = False) -> Predictions:
    """Classify every image named by `inputs` (files, folders, globs), in batches."""
    paths, failures = expand_paths(inputs)
    result = Predictions(failures=failures)
    if not paths:
        return result
    model = load_model(model_path)
    _, height, width, channels = model.input_shape
    names = class_names or [str(i) for i in range(model.output_shape[-1])]
    for start in range(0, len(paths), CHUNK):
        images, kept = [], []
        for path in paths[start: start + CHUNK]:
            try:
                images.append(load_image(path, height, width, channels, invert))
                kept.append(path)
            except ImageError as error:
                result.failures.append((str(path), str(error)))
        if not images:
            continue
        probabilities = model.predict(np.stack(images).astype(np.float32), batch_size=batch_size, verbose=0)
        result.items.extend(_top(path, p, names, top_k) for path, p in zip(kept, probabilities, strict=True))
    return result


def _top(path: Path, probabilities: np.ndarray, names: list[str], k: int) -> dict[str, Any]:
    order = np.argsort(probabilities)[::-1][:k]
    return {"path": str(path), "top": [
        {"label": names[i], "index": int(i), "probability": round(float(probabilities[i]), 6)}
        for i in order
    ]}
