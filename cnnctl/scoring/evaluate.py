"""Score a model on a split of some data and save the task's report beside its run.

One function scores a split (`score_split`); `evaluate_run` and training's end-of-run test
both call it. What the numbers, the worst examples and the figures are is the task's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnctl.config import BUILTIN_DATASETS, SPLITS, DataConfig, load_config
from cnnctl.data.dataset import Dataset, dataset_for, decoded, load_dataset, without
from cnnctl.errors import DataError, RunError
from cnnctl.limits import EVAL_BATCH
from cnnctl.runs import atomic_write, rows_to_csv, write_json, write_text
from cnnctl.runs.results import EvaluationResult
from cnnctl.scoring.source import ScoringSource
from cnnctl.tasks import Task


def evaluate_run(
    source: ScoringSource,
    split: str = "test",
    data: str | None = None,
    output: Path | None = None,
    offline: bool = False,
) -> EvaluationResult:
    """Score `source`'s model on a split of some data; save the report in its run folder
    (or `output`).

    The data is the run's unless `data` names a config file, a built-in dataset or a data
    path. The run's own test-split report is `evaluation.json`; any other split or data gets
    files of its own (`evaluation-<data>-<split>.json`), so it never replaces that one.
    """
    if split not in SPLITS:
        raise DataError(f"--split {split}: unknown split", f"choose one of: {', '.join(SPLITS)}")
    model = source.load()
    dataset = _dataset(source, model, data, offline)
    names = source.names or list(dataset.class_names)
    x, y = dataset.split(split)
    source.task.check_outputs(model.output_shape[-1], names, y, str(source.model_file))
    images, files = x, dataset.files.get(split)
    scored = score_split(model, source.task, x, y, one_hot=_one_hot(source, model))
    labels = y
    x, y, files = _drop(scored.failed, x, y, files)
    y = np.asarray(y)  # masks still in files: read once, here
    task_report = source.task.report(scored.outputs, y, names, files, x)
    _explain_gallery(model, source, x, task_report)
    result = EvaluationResult(
        model=str(source.model_file),
        data=dataset.origin,
        split=split,
        examples=int(len(y)),
        metrics={
            key: round(float(value), 6)
            for key, value in {
                **scored.metrics,
                **source.task.test_metrics(scored.outputs, y),
            }.items()
        },
        details=task_report.fields,
        task=source.task.name,
        tta=source.tta,
        skipped=_described(images, scored.failed, labels),
    )
    folder = output if output is not None else (source.run.path if source.run else None)
    if folder is not None:
        tag = "" if split == "test" else f"-{split}"
        tag = f"-{_slug(data)}{tag}" if data else tag
        tag = f"-{source.model_file.name}{tag}" if source.exported else tag  # never Keras' report
        result.saved = _save(Path(folder), tag, result, task_report)
    return result


class Scored:
    """A split's metrics, the model's outputs, and the positions of images left out."""

    def __init__(self, metrics: dict[str, float], outputs: np.ndarray, failed: list[int]):
        self.metrics, self.outputs, self.failed = metrics, outputs, failed


def score_split(
    model: Any,
    task: Task,
    x: Any,
    y: np.ndarray,
    one_hot: bool,
    batch_size: int = EVAL_BATCH,
    callbacks: Sequence[Any] = (),
    outputs: bool = True,
) -> Scored:
    """Metrics (and outputs) of `model` on images `x` with labels `y`, in batches.

    A Keras model reports its compiled metrics; an exported file carries none, so the task
    computes its own from the outputs. Images in files that fail to decode are left out.
    """
    from cnnctl.modelfile.exported import ExportedModel

    if isinstance(model, ExportedModel):  # no TensorFlow: decode with Pillow, score with numpy
        pixels, failed = decoded(x)
        y = without(y, failed)
        found = model.predict(pixels.astype(np.float32), batch_size=batch_size)
        return Scored(task.score(found, y), found, failed)
    from cnnctl.data.pipeline import eval_batches  # TensorFlow: only for Keras models
    from cnnctl.data.stream import eval_skipped

    batches = eval_batches(
        x, y, batch_size=batch_size, num_classes=model.output_shape[-1], one_hot=one_hot
    )
    metrics = model.evaluate(batches, verbose=0, return_dict=True, callbacks=list(callbacks))
    found = model.predict(batches, verbose=0) if outputs else np.zeros((0,))
    failed = eval_skipped(x)  # blanks of weight 0: already out of the metrics
    if failed and outputs:
        found = np.delete(found, failed, axis=0)
    return Scored(metrics, found, failed)


def _explain_gallery(model: Any, source: ScoringSource, x: Any, task_report: Any) -> None:
    """Grad-CAM maps of the examples the report's gallery shows (`Report.explain`).

    An exported file has no gradients, and a model without convolutions no layer to read:
    the gallery then shows the images alone.
    """
    if source.exported or not task_report.explain:
        return
    from cnnctl.scoring.explain import compute_maps

    index = np.asarray([i for i, _ in task_report.explain])
    weights = np.stack([w for _, w in task_report.explain])
    try:
        images = np.asarray(x[index], dtype=np.float32)
        maps, _ = compute_maps(model, source, images, weights, "gradcam")
    except DataError:  # no convolution, or an image that no longer decodes
        return
    task_report.maps.update(zip(index.tolist(), maps, strict=True))


def _one_hot(source: ScoringSource, model: Any) -> bool:
    """Whether labels go to the loss one-hot: the run's config says; a model compiled
    elsewhere says by its loss."""
    if source.config is not None:
        return source.task.one_hot(source.config.train)
    return "sparse" not in str(getattr(model, "loss", ""))


def _drop(failed: list[int], *values: Any) -> tuple[Any, ...]:
    """Each of `values` (arrays, images in files, a tuple of names, or None) without `failed`."""
    if not failed:
        return values
    kept = np.setdiff1d(np.arange(len(values[0])), failed)
    return tuple(
        v if v is None else v[kept] if hasattr(v, "shape") else tuple(v[i] for i in kept)
        for v in values
    )


def _described(x: Any, failed: list[int], y: Any = None) -> list[dict[str, str]]:
    """Path and reason of each image that failed to decode, for the report."""
    if not failed:
        return []
    from cnnctl.data.stream import failures

    return [{"path": path, "reason": reason} for path, reason in failures(x, failed, y)]


def _dataset(source: ScoringSource, model: Any, data: str | None, offline: bool) -> Dataset:
    """The data to score on: `--data` (a config, a built-in name or a data path), else the run's."""
    config = source.config
    if data is not None and Path(data).suffix in (".yaml", ".yml"):
        return dataset_for(load_config(Path(data)), offline)
    if data is None:
        if config is None:
            raise RunError(
                f"{source.model_file}: is not in a run folder, so its data is unknown",
                "pass --data with a config file, a built-in dataset name or a data path",
            )
        return dataset_for(config, offline)
    given = {"dataset": data} if data in BUILTIN_DATASETS else {"path": data}
    if config is not None:  # the run's way of reading data (sizes, splits), on other files
        section = config.data.model_copy(update={"dataset": None, "path": None, **given})
    else:
        section = DataConfig(**given)
    seed = config.seed if config else 42
    # Data given to evaluate is scored: a folder without a test split of its own is scored whole.
    return load_dataset(section, model.input_shape[1:], seed, offline, source.task, whole=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).stem or text).strip("_.")[:40] or "data"


def _save(folder: Path, tag: str, result: EvaluationResult, task_report: Any) -> list[str]:
    """evaluation, misclassified and the task's figures, each file named with `tag`."""
    folder.mkdir(parents=True, exist_ok=True)
    report_file = folder / f"evaluation{tag}.json"
    worst_file = folder / f"misclassified{tag}.csv"
    figures = {folder / f"{stem}{tag}.png": draw for stem, draw in task_report.figures.items()}
    result.saved = [str(report_file), str(worst_file), *map(str, figures)]
    write_json(report_file, result.to_json())
    worst = task_report.worst
    write_text(worst_file, rows_to_csv(worst) if worst else "index,true,predicted\n")
    for path, draw in figures.items():
        atomic_write(path, draw)
    return result.saved
