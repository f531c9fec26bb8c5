"""Image files -> what the model says of each (the task's rows), through the same model file
that evaluate scores."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cnnctl.data.images import ImageError, expand_paths, load_image
from cnnctl.errors import DataError
from cnnctl.limits import EVAL_BATCH
from cnnctl.runs.results import Predictions
from cnnctl.scoring.source import ScoringSource
from cnnctl.startup import cpu_count

CHUNK = 512  # images decoded per step; small enough to overlap decoding with the model
# Model inputs up to this many pixels (64 x 64) are decoded with Pillow on a thread pool: for
# small images tf.data's per-file work costs more than the decoding (2,000 28x28 PNGs: 0.63 s
# against 0.30 s on one thread), and TensorFlow's decode graph need not be traced.
SMALL_INPUT = 64 * 64


def predict_images(
    source: ScoringSource,
    inputs: list[str],
    top_k: int | None = None,
    batch_size: int = EVAL_BATCH,
    invert: bool = False,
) -> Predictions:
    """What `source`'s model says of every image named by `inputs` (files, folders, globs).

    Each row is the task's (top-k classes for classification); TTA is the source's.
    """
    paths, failures = expand_paths(inputs)
    result = Predictions(failures=failures, columns=source.task.prediction_columns)
    if not paths:
        return result
    model = source.load(compile=False)
    model_path, task = source.model_file, source.task
    _, height, width, channels = model.input_shape
    names = source.output_names(model)

    if not source.exported and height * width > SMALL_INPUT:
        # Large inputs: TensorFlow is loaded, decode in parallel inside tf.data.
        return _predict_streamed(model, source, paths, names, top_k, batch_size, invert, result)
    model = _scorer(source, model, len(paths), batch_size)

    def read(path: Path) -> np.ndarray | ImageError:
        try:
            return load_image(path, height, width, channels, invert)
        except ImageError as error:
            return error

    def decode(paths: list[Path]) -> tuple[np.ndarray, list[Path]]:
        images, kept = [], []
        for path, image in zip(paths, readers.map(read, paths), strict=True):
            if isinstance(image, ImageError):
                result.failures.append((str(path), str(image)))
            else:
                images.append(image)
                kept.append(path)
        return (
            np.stack(images).astype(np.float32)
            if images
            else np.zeros((0, height, width, channels))
        ), kept

    def classify(batch: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                _run(model, batch[i : i + batch_size], model_path)
                for i in range(0, len(batch), batch_size)
            ]
            or [np.zeros((0, len(names)))]
        )

    # Pillow and the runtimes release the GIL: files decode on every core while the model runs
    # on the chunk before.
    with ThreadPoolExecutor(max_workers=1) as runner, ThreadPoolExecutor(cpu_count()) as readers:
        pending = None
        for start in range(0, len(paths) + CHUNK, CHUNK):
            decoded = decode(paths[start : start + CHUNK]) if start < len(paths) else None
            if pending is not None:
                kept, future = pending
                result.items.extend(
                    task.prediction(p, row, names, top_k)
                    for p, row in zip(kept, future.result(), strict=True)
                )
            pending = None if decoded is None else (decoded[1], runner.submit(classify, decoded[0]))
    return result


def _predict_streamed(
    model,
    source: ScoringSource,
    paths: list[Path],
    names: list[str],
    top_k: int | None,
    batch_size: int,
    invert: bool,
    result: Predictions,
) -> Predictions:
    """Decode and classify as one stream; files TensorFlow cannot decode are retried with Pillow."""
    from cnnctl.data.stream import decode_batches, files_for

    model_path = source.model_file
    _, height, width, channels = model.input_shape
    files = files_for(paths, (height, width, channels))
    whole = source.inference(model)  # one image at a time, for the files retried below
    model = _scorer(source, model, len(paths), batch_size)
    found: dict[int, np.ndarray] = {}
    for positions, images in decode_batches(files, batch_size):
        probabilities = _run(model, 255.0 - images if invert else images, model_path)
        found.update(zip(positions.tolist(), probabilities, strict=True))
    retry = [i for i in range(len(paths)) if i not in found]
    for i in retry:
        try:
            image = load_image(paths[i], height, width, channels, invert)
        except ImageError as error:
            result.failures.append((str(paths[i]), str(error)))
            continue
        found[i] = _run(whole, image[None].astype(np.float32), model_path)[0]
    result.items.extend(
        source.task.prediction(paths[i], found[i], names, top_k) for i in sorted(found)
    )
    return result


def _scorer(source: ScoringSource, model: Any, images: int, batch_size: int) -> Any:
    """The model as batch -> outputs, in inference mode: traced where more than one batch
    makes the trace pay (a graph runs fused kernels, eager calls do not), else as it is."""
    if not source.exported and images > batch_size:
        return source.traced(model)
    return source.inference(model)


def _run(model, batch, model_path: Path) -> np.ndarray:
    """One call of the model (or of its traced function) on a batch.

    Out of memory here comes from the input or the model, not from training's batch size: say so.
    """
    try:
        return np.asarray(model(batch))  # `source.inference` or `traced`: inference mode
    except Exception as error:
        if not isinstance(error, MemoryError) and type(error).__name__ != "ResourceExhaustedError":
            raise
        raise DataError(
            f"{model_path}: out of memory running this model on {len(batch)} images",
            "lower --batch-size, or check the model's size",
        ) from None
