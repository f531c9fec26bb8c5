"""Score a run's model on a split of its data: metrics, per-class report, confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cnnctl import report
from cnnctl.config import Config, Source, load_config, validate_config
from cnnctl.data import load_dataset
from cnnctl.errors import DataError, RunError
from cnnctl.modelfile import load_model
from cnnctl.runs import Run, atomic_write, rows_to_csv, write_json, write_text
from cnnctl.runtimes import is_exported, load_exported

SPLITS = ("test", "validation", "train")
TOP_K = 3


def evaluate_run(run: Run | None, split: str = "test", model_file: Path | None = None,
                 data: str | None = None, legacy_h5: bool = False) -> dict[str, Any]:
    """Evaluate a model on a split of its data; write the report files beside the model.

    The model is the run's model.keras unless `model_file` is given; the data is
    the run's unless `data` names a config file or a data path.
    """
    if run is None and is_exported(model_file):
        return evaluate_exported(Path(model_file), split, data)
    # TensorFlow, imported here: exported files are scored without it.
    from cnnctl.data.pipeline import eval_batches

    folder = run if run is not None else Run(Path(model_file).parent)
    model_file = Path(model_file) if model_file is not None else folder.model
    if not model_file.is_file():
        raise RunError(f"{model_file}: no model to evaluate", "train the run first, or resume it")
    model = load_model(model_file, legacy_h5=legacy_h5)
    config = _config_for(folder, model, data)
    dataset = load_dataset(config)
    names = folder.class_names() if folder.classes.is_file() else list(dataset.class_names)
    x, y = dataset.split(split)
    if model.output_shape[-1] != len(names) or y.max(initial=0) >= len(names):
        raise DataError(f"{model_file}: the model has {model.output_shape[-1]} outputs but the data "
                        f"has {max(len(names), int(y.max(initial=0)) + 1)} classes")
    one_hot = "sparse" not in str(getattr(model, "loss", ""))
    batches = eval_batches(x, y, batch_size=256, num_classes=len(names), one_hot=one_hot)
    metrics = model.evaluate(batches, verbose=0, return_dict=True)
    probabilities = model.predict(batches, verbose=0)
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(y, predicted, len(names))
    result = {
        "model": str(model_file),
        "data": dataset.origin,
        "split": split,
        "examples": int(len(y)),
        "metrics": {key: round(float(value), 6) for key, value in metrics.items()},
        **class_report(matrix, names),
        "confusion_matrix": matrix.tolist(),
        "class_names": names,
    }
    wrong = misclassified(y, probabilities, names, dataset.files.get(split))
    write_json(folder.evaluation, result)
    write_text(folder.path / "misclassified.csv", rows_to_csv(wrong) if wrong else "index,true,predicted\n")
    atomic_write(folder.confusion, lambda tmp: report.save_confusion(matrix, names, tmp))
    if wrong:
        atomic_write(folder.path / "errors.png", lambda tmp: report.save_error_grid(x, wrong, tmp))
    return result


def _config_for(folder: Run, model: Any, data: str | None) -> Config:
    """The config whose data to evaluate on: `--data` (a config or a data path), else the run's."""
    if data is not None and Path(data).suffix in (".yaml", ".yml"):
        return load_config(Path(data))
    if data is not None:
        if folder.config.is_file():
            return load_config(folder.config, ["data.dataset=null", f"data.path={json.dumps(data)}"])
        plain = {"data": {"path": data}, "model": {"input_shape": list(model.input_shape[1:]), "layers": ["Flatten"]}}
        return validate_config(plain, Source(f"--data {data}"), "evaluation")
    if not folder.config.is_file():
        raise RunError(f"{folder.path}: no config.yaml beside the model to find its data",
                       "pass --data with a config file or a data path")
    return load_config(folder.config)


def misclassified(truth: np.ndarray, probabilities: np.ndarray, names: list[str],
                  files: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """One row per wrong prediction (its file where images came from files), highest loss first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != truth)
    loss = -np.log(np.clip(probabilities[wrong, truth[wrong]], 1e-12, 1.0))
    rows = []
    for index, value in sorted(zip(wrong.tolist(), loss.tolist(), strict=True), key=lambda item: -item[1]):
        top = np.argsort(probabilities[index])[::-1][:TOP_K]
        where = {"index": index, **({"path": files[index]} if files else {})}
        rows.append({**where, "true": names[truth[index]], "predicted": names[predicted[index]],
                     "top": "; ".join(f"{names[i]} {probabilities[index, i]:.4f}" for i in top),
                     "loss": round(value, 6)})
    return rows


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """Counts: rows are true classes, columns predicted classes."""
    return np.bincount(truth * k + predicted, minlength=k * k).reshape(k, k)


def class_report(matrix: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per class, with macro and weighted averages."""
    true_positive = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1)
    precision = np.divide(true_positive, matrix.sum(axis=0), out=np.zeros_like(true_positive),
                          where=matrix.sum(axis=0) > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(true_positive),
                   where=(precision + recall) > 0)
    per_class = {
        name: {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
               "support": int(s)}
        for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
    }
    weights = support / max(support.sum(), 1)
    averages = {
        "macro avg": {"precision": round(float(precision.mean()), 4), "recall": round(float(recall.mean()), 4),
                      "f1": round(float(f1.mean()), 4), "support": int(support.sum())},
        "weighted avg": {"precision": round(float(precision @ weights), 4),
                         "recall": round(float(recall @ weights), 4),
                         "f1": round(float(f1 @ weights), 4), "support": int(support.sum())},
    }
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    pairs = [(int(off[i, j]), names[i], names[j]) for i, j in zip(*np.nonzero(off), strict=True)]
    confused = [{"true": t, "predicted": p, "count": c} for c, t, p in sorted(pairs, reverse=True)[:5]]
    return {"per_class": per_class, "averages": averages, "most_confused": confused}


def evaluate_exported(model_file: Path, split: str = "test",
                      data: str | None = None) -> dict[str, Any]:
    """Score an exported .onnx / .tflite file in its own runtime; the JSON goes beside the file.

    The run folder (the file's folder, or the one above `export/`) gives data and class names.
    """
    model = load_exported(model_file)
    folder = next((Run(p) for p in (model_file.parent, model_file.parent.parent)
                   if (p / "config.yaml").is_file()), Run(model_file.parent))
    dataset = load_dataset(_config_for(folder, model, data))
    names = folder.class_names() if folder.classes.is_file() else list(dataset.class_names)
    x, y = dataset.split(split)
    if model.output_shape[-1] != len(names) or y.max(initial=0) >= len(names):
        raise DataError(f"{model_file}: the model has {model.output_shape[-1]} outputs but the "
                        f"data has {max(len(names), int(y.max(initial=0)) + 1)} classes")
    probabilities = model.predict(x.astype(np.float32), batch_size=256)
    predicted = probabilities.argmax(axis=1)
    true = probabilities[np.arange(len(y)), y]
    loss = float(-np.log(np.clip(true, 1e-7, 1.0)).mean()) if len(y) else 0.0
    matrix = confusion_matrix(y, predicted, len(names))
    result = {
        "model": str(model_file), "data": dataset.origin, "split": split, "examples": int(len(y)),
        "metrics": {"accuracy": round(float((predicted == y).mean()), 6), "loss": round(loss, 6)},
        **class_report(matrix, names),
        "confusion_matrix": matrix.tolist(),
        "class_names": names,
    }
    write_json(model_file.with_name(f"{model_file.name}.evaluation.json"), result)
    return result
