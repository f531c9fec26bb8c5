"""Checks before training.

Class counts per split, images shared between splits, unreadable files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from cnnctl.config import SPLITS
from cnnctl.data.dataset import Dataset
from cnnctl.errors import DataError
from cnnctl.escape import safe_text
from cnnctl.tasks import Task, task_named


@dataclass
class Checks:
    """What `cnnctl datasets check` reports; `warnings` never stop training, empty splits do."""

    class_names: tuple[str, ...]
    counts: dict[str, list[int]]
    duplicates: dict[str, int] = field(default_factory=dict)  # "train/test" -> images in both
    skipped: tuple[tuple[str, str], ...] = ()
    warnings: list[str] = field(default_factory=list)
    counted: str = "images"  # what `counts` counts: images, or pixels (segmentation)


def check_dataset(dataset: Dataset, task: Task | None = None) -> Checks:
    """Count, compare and vet the splits of `dataset`; raise DataError where a split is empty.

    `task` counts the examples of each output (default: of each class)."""
    task = task or task_named("classification")
    k = len(dataset.class_names)
    counts = {}
    for split in SPLITS:
        _, y = dataset.split(split)
        if len(y) == 0:
            raise DataError(
                f"{dataset.origin}: the {split} split is empty", "add images, or change the split"
            )
        counts[split] = task.label_counts(y, k)
    checks = Checks(
        dataset.class_names,
        counts,
        skipped=dataset.skipped,
        warnings=list(dataset.warnings),
        counted=task.counted,
    )
    digests = {split: _digests(dataset.split(split)[0]) for split in SPLITS}
    validation_is_test = dataset.x_val is dataset.x_test
    pairs = (
        (("train", "test"),)
        if validation_is_test
        else (("train", "validation"), ("train", "test"), ("validation", "test"))
    )
    for a, b in pairs:
        shared = len(digests[a] & digests[b])
        if shared:
            checks.duplicates[f"{a}/{b}"] = shared
            checks.warnings.append(f"{shared} images of {a} are also in {b} (leakage)")
    missing = [dataset.class_names[i] for i, n in enumerate(counts["train"]) if n == 0]
    if missing:
        checks.warnings.append(safe_text(f"no training images of class {', '.join(missing[:5])}"))
    if dataset.skipped:
        path, reason = dataset.skipped[0]
        checks.warnings.append(  # escaped here: train prints these lines as they are
            safe_text(
                f"{len(dataset.skipped)} files skipped (first: {path}: {reason}); "
                "a training run lists them all in its skipped.csv"
            )
        )
    return checks


def _digests(x: np.ndarray) -> set[bytes]:
    if not isinstance(x, np.ndarray):  # images in files: hash the files, never hold the images
        return {_file_digest(path) for path in x.paths}
    flat = np.ascontiguousarray(x).reshape(len(x), -1)
    return {hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat}


def _file_digest(path: str) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()
