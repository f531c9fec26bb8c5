"""Score a run's model on a split of its data: metrics, per-class report, confusion matrix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from cnnctl import report
from cnnctl.config import BUILTIN_DATASETS, SPLITS, Config, DataConfig, load_config
from cnnctl.data.dataset import Dataset, dataset_for, decoded, load_dataset
from cnnctl.errors import DataError, ModelFileError, RunError
from cnnctl.modelfile.exported import is_exported, load_exported
from cnnctl.modelfile.load import load_model
from cnnctl.runs import Run, atomic_write, rows_to_csv, run_of_model, write_json, write_text
from cnnctl.runs.results import EvaluationResult
from cnnctl.scoring.tta import with_tta

TOP_K = 3


def evaluate_run(
    run: Run | None,
    split: str = "test",
    model_file: Path | None = None,
    data: str | None = None,
    legacy_h5: bool = False,
    output: Path | None = None,
    offline: bool = False,
    tta: str | None = None,
) -> EvaluationResult:
    """Score a model on a split of some data; save the report in its run folder (or `output`).

    The model is the run's model.keras unless `model_file` is given; the data is the
    run's unless `data` names a config file, a built-in dataset or a data path. The
    run's own test-split report is `evaluation.json`; any other split or data gets
    files of its own (`evaluation-<data>-<split>.json`), so it never replaces that one.
    """
    if split not in SPLITS:
        raise DataError(f"--split {split}: unknown split", f"choose one of: {', '.join(SPLITS)}")
    model_file = Path(model_file) if model_file is not None else run.model
    folder = run if run is not None else run_of_model(model_file)
    if not model_file.is_file():
        if model_file.exists() or run is None:
            raise ModelFileError(
                f"{model_file}: no such model file",
                "give the path of a .keras, .onnx or .tflite file, or a run name (see cnnctl runs)",
            )
        raise RunError(
            f"{model_file}: the run has no model yet",
            f"resume it: cnnctl train --resume {run.path}",
        )
    exported = is_exported(
        model_file
    )  # .onnx / .tflite: scored in its own runtime, without TensorFlow
    model = load_exported(model_file) if exported else load_model(model_file, legacy_h5=legacy_h5)
    config = _run_config(folder)
    dataset = _dataset(config, model, data, offline, model_file)
    tta = tta or (config.model.tta if config is not None else "none")
    model = with_tta(model, tta)
    names = (
        folder.class_names()
        if folder is not None and folder.classes.is_file()
        else list(dataset.class_names)
    )
    x, y = dataset.split(split)
    if model.output_shape[-1] != len(names) or y.max(initial=0) >= len(names):
        raise DataError(
            f"{model_file}: the model has {model.output_shape[-1]} outputs but the data "
            f"has {max(len(names), int(y.max(initial=0)) + 1)} classes"
        )
    files, images = dataset.files.get(split), x
    if exported:
        x, failed = decoded(x)
        y, files = _drop(failed, y, files)
        metrics, probabilities = _score_exported(model, x, y)
    else:
        from cnnctl.data.stream import eval_skipped

        one_hot = config.train.one_hot if config is not None else _one_hot(model)
        metrics, probabilities = _score(model, x, y, len(names), one_hot)
        failed = eval_skipped(x)  # blanks of weight 0: already out of the metrics
        x, y, files, probabilities = _drop(failed, x, y, files, probabilities)
    matrix = confusion_matrix(y, probabilities.argmax(axis=1), len(names))
    result = EvaluationResult(
        model=str(model_file),
        data=dataset.origin,
        split=split,
        examples=int(len(y)),
        tta=tta,
        metrics={key: round(float(value), 6) for key, value in metrics.items()},
        **class_report(matrix, names),
        confusion_matrix=matrix.tolist(),
        class_names=names,
        skipped=_described(images, failed),
    )
    where = output if output is not None else (folder.path if folder is not None else None)
    if where is not None:
        tag = (
            ""
            if (data is None and split == "test")
            else f"-{_slug(data)}-{split}"
            if data
            else f"-{split}"
        )
        tag = f"-{model_file.name}{tag}" if exported else tag  # never the Keras model's report
        wrong = misclassified(y, probabilities, names, files)
        result.saved = _save(Path(where), tag, result, wrong, matrix, x)
    return result


def _score(model: Any, x: np.ndarray, y: np.ndarray, classes: int, one_hot: bool):
    """The model's compiled metrics and its probabilities, in one pipeline of batches."""
    from cnnctl.data.pipeline import EVAL_BATCH, eval_batches  # TensorFlow: only for Keras models

    batches = eval_batches(x, y, batch_size=EVAL_BATCH, num_classes=classes, one_hot=one_hot)
    metrics = model.evaluate(batches, verbose=0, return_dict=True)
    return metrics, model.predict(batches, verbose=0)


def _drop(failed: list[int], *values: Any) -> tuple[Any, ...]:
    """Each of `values` (arrays, images in files, a tuple of names, or None) without `failed`."""
    if not failed:
        return values
    kept = np.setdiff1d(np.arange(len(values[0])), failed)
    return tuple(
        v if v is None else v[kept] if hasattr(v, "shape") else tuple(v[i] for i in kept)
        for v in values
    )


def _described(x: Any, failed: list[int]) -> list[dict[str, str]]:
    """Path and reason of each image that failed to decode, for the report."""
    if not failed:
        return []
    from cnnctl.data.stream import failures

    return [{"path": path, "reason": reason} for path, reason in failures(x, failed)]


def _score_exported(model: Any, x: np.ndarray, y: np.ndarray):
    """Accuracy and cross-entropy of an exported file, computed here (it carries no metrics)."""
    probabilities = model.predict(x.astype(np.float32), batch_size=256)
    true = probabilities[np.arange(len(y)), y]
    loss = float(-np.log(np.clip(true, 1e-7, 1.0)).mean()) if len(y) else 0.0
    return {
        "accuracy": float((probabilities.argmax(axis=1) == y).mean()),
        "loss": loss,
    }, probabilities


def _run_config(folder: Run | None) -> Config | None:
    return load_config(folder.config) if folder is not None else None


def _dataset(
    config: Config | None, model: Any, data: str | None, offline: bool, model_file: Path
) -> Dataset:
    """The data to score on: `--data` (a config, a built-in name or a data path), else the run's."""
    if data is not None and Path(data).suffix in (".yaml", ".yml"):
        return dataset_for(load_config(Path(data)), offline)
    if data is None:
        if config is None:
            raise RunError(
                f"{model_file}: is not in a run folder, so its data is unknown",
                "pass --data with a config file, a built-in dataset name or a data path",
            )
        return dataset_for(config, offline)
    source = {"dataset": data} if data in BUILTIN_DATASETS else {"path": data}
    if config is not None:  # the run's way of reading data (sizes, splits), on other files
        section = config.data.model_copy(update={"dataset": None, "path": None, **source})
    else:
        section = DataConfig(**source)
    return load_dataset(section, model.input_shape[1:], config.seed if config else 42, offline)


def _one_hot(model: Any) -> bool:
    """Whether a model compiled outside cnnctl wants one-hot labels (its loss says so)."""
    return "sparse" not in str(getattr(model, "loss", ""))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).stem or text).strip("_.")[:40] or "data"


def _save(
    folder: Path,
    tag: str,
    result: EvaluationResult,
    wrong: list[dict[str, Any]],
    matrix: np.ndarray,
    x: np.ndarray,
) -> list[str]:
    """evaluation, misclassified, confusion_matrix and errors files, each named with `tag`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [
        folder / f"evaluation{tag}.json",
        folder / f"misclassified{tag}.csv",
        folder / f"confusion_matrix{tag}.png",
    ]
    result.saved = [str(f) for f in files] + ([str(folder / f"errors{tag}.png")] if wrong else [])
    write_json(files[0], result.to_json())
    write_text(files[1], rows_to_csv(wrong) if wrong else "index,true,predicted\n")
    atomic_write(files[2], lambda tmp: report.save_confusion(matrix, result.class_names, tmp))
    if wrong:
        atomic_write(folder / f"errors{tag}.png", lambda tmp: report.save_error_grid(x, wrong, tmp))
    return result.saved


def misclassified(
    truth: np.ndarray,
    probabilities: np.ndarray,
    names: list[str],
    files: tuple[str, ...] | None = None,
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
    precision = np.divide(
        true_positive,
        matrix.sum(axis=0),
        out=np.zeros_like(true_positive),
        where=matrix.sum(axis=0) > 0,
    )
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros_like(true_positive),
        where=(precision + recall) > 0,
    )
    per_class = {
        name: {
            "precision": round(float(p), 4),
            "recall": round(float(r), 4),
            "f1": round(float(f), 4),
            "support": int(s),
        }
        for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
    }
    weights = support / max(support.sum(), 1)
    averages = {
        "macro avg": {
            "precision": round(float(precision.mean()), 4),
            "recall": round(float(recall.mean()), 4),
            "f1": round(float(f1.mean()), 4),
            "support": int(support.sum()),
        },
        "weighted avg": {
            "precision": round(float(precision @ weights), 4),
            "recall": round(float(recall @ weights), 4),
            "f1": round(float(f1 @ weights), 4),
            "support": int(support.sum()),
        },
    }
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    pairs = [(int(off[i, j]), names[i], names[j]) for i, j in zip(*np.nonzero(off), strict=True)]
    confused = [
        {"true": t, "predicted": p, "count": c} for c, t, p in sorted(pairs, reverse=True)[:5]
    ]
    return {"per_class": per_class, "averages": averages, "most_confused": confused}
