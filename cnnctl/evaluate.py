"""Score a run's model on a split of its data: metrics, per-class report, confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnctl import report
from cnnctl.config import load_config
from cnnctl.data import load_dataset
from cnnctl.data.pipeline import eval_batches
from cnnctl.errors import RunError
from cnnctl.modelfile import load_model
from cnnctl.runs import Run, atomic_write, write_json

SPLITS = ("test", "validation", "train")


def evaluate_run(run: Run, split: str = "test") -> dict[str, Any]:
    """Evaluate `run`'s best model; writes evaluation.json and confusion_matrix.png."""
    if not run.model.is_file():
        raise RunError(f"{run.model}: the run has no model yet", "train it first, or resume it")
    config = load_config(run.config)
    model = load_model(run.model)
    dataset = load_dataset(config)
    names = run.class_names()
    x, y = {"test": (dataset.x_test, dataset.y_test), "validation": (dataset.x_val, dataset.y_val),
            "train": (dataset.x_train, dataset.y_train)}[split]
    batches = eval_batches(x, y, batch_size=256, num_classes=len(names), one_hot=config.train.one_hot)
    metrics = model.evaluate(batches, verbose=0, return_dict=True)
    probabilities = model.predict(batches, verbose=0)
    matrix = confusion_matrix(y, probabilities.argmax(axis=1), len(names))
    result = {
        "run": str(run.path),
        "model": str(run.model),
        "data": dataset.origin,
        "split": split,
        "examples": int(len(y)),
        "metrics": {key: round(float(value), 6) for key, value in metrics.items()},
        **class_report(matrix, names),
        "confusion_matrix": matrix.tolist(),
        "class_names": names,
    }
    write_json(run.evaluation, result)
    atomic_write(run.confusion, lambda tmp: report.save_confusion(matrix, names, tmp))
    return result


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
