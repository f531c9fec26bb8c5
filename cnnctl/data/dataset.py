"""Datasets as the trainer sees them: shaped images, labels as the task reads them, and the
three splits. What a label is belongs to the task (`cnnctl.tasks`); this module only moves them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnctl.config import Config, DataConfig
from cnnctl.data.sources import (
    BUILTINS,
    Arrays,
    is_idx_folder,
    load_builtin,
    load_csv,
    load_idx_folder,
    load_npz,
)
from cnnctl.errors import ConfigError, DataError
from cnnctl.tasks import Task, task_named, task_of


@dataclass(frozen=True)
class Dataset:
    """Raw-pixel images (N, H, W, C) with the task's labels, split three ways.

    The images of a split are an array, or `FileImages` (files decoded as they stream).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    origin: str
    skipped: tuple[tuple[str, str], ...] = ()
    warnings: tuple[str, ...] = ()
    files: dict[str, tuple[str, ...]] = field(
        default_factory=dict
    )  # split -> source file of each image

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.x_train.shape[1:]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return {
            "train": (self.x_train, self.y_train),
            "validation": (self.x_val, self.y_val),
            "test": (self.x_test, self.y_test),
        }[name]


def decoded(x: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The pixels of the images of `x` that decode, and the positions of those that do not.

    Images still in files can fail (a file cut short after indexing); arrays never do.
    """
    if isinstance(x, np.ndarray):
        return x, []
    from cnnctl.data.stream import decode_all  # TensorFlow: only for images in files

    pixels, failed = decode_all(x)
    return (np.delete(pixels, failed, axis=0) if failed else pixels), failed


def without(y: np.ndarray, failed: Sequence[int]) -> np.ndarray:
    """Labels `y` without the positions `failed` (images left out), as an array: masks still
    in files are read here, those left out never."""
    if len(failed):
        y = y[np.setdiff1d(np.arange(len(y)), failed)]
    return np.asarray(y)


def image_shape_of(data: DataConfig, input_shape: Sequence[int]) -> tuple[int, int, int]:
    """The size images are read at.

    data.image_size / color_mode / image_shape, else the model's input.
    """
    height, width, channels = input_shape
    if data.image_shape:
        return tuple(data.image_shape)
    if data.image_size:
        height, width = data.image_size
    if data.color_mode:
        channels = 1 if data.color_mode == "grayscale" else 3
    return height, width, channels


def load_arrays(
    data: DataConfig, input_shape: Sequence[int], offline: bool = False, task: Task | None = None
) -> Arrays:
    """Read the data source as it is on disk (or download a built-in, unless `offline`).

    `task` reads a CSV of paths' labels, and may refuse a kind of source first.
    """
    task = task or task_named("classification")
    if data.dataset:
        task.check_source("builtin", data.where(("dataset",)))
        return load_builtin(data.dataset, offline)
    path = Path(data.path)
    if not path.exists():
        raise ConfigError(
            f"{data.where(('path',))}: {data.path}: no such file or folder",
            "data.path is read relative to the folder you run cnnctl in",
        )
    where = data.where(("path",))
    if path.is_dir():
        if task.mask_labels:  # images/ and masks/: labels are images too
            from cnnctl.data.masks import load_mask_folder

            task.check_source("mask_folder", where)
            return load_mask_folder(path, image_shape_of(data, input_shape), data)
        if is_idx_folder(path):
            task.check_source("idx", where)
            return load_idx_folder(path)
        from cnnctl.data.folders import load_image_folder

        task.check_source("folder", where)
        return load_image_folder(path, image_shape_of(data, input_shape), data.cache)
    if path.suffix == ".npz":
        task.check_source("npz", where)
        return load_npz(path)
    if path.suffix == ".csv":
        from cnnctl.data.index import is_path_csv

        if is_path_csv(path):  # a list of image files, read like a folder
            from cnnctl.data.folders import load_path_csv

            task.check_source("path_csv", where)
            return load_path_csv(
                path, data.label_column, image_shape_of(data, input_shape), data.cache, task
            )
        task.check_source("pixel_csv", where)
        return load_csv(path, _one_column(data), image_shape_of(data, input_shape))
    raise DataError(
        f"{path}: unsupported data file",
        "data.path takes a folder of class folders or IDX files, an .npz or a .csv",
    )


def _one_column(data: DataConfig) -> str:
    """The label column of a CSV of pixels: one name."""
    if isinstance(data.label_column, str):
        return data.label_column
    raise ConfigError(
        f"{data.where(('label_column',))}: a CSV of pixels has one label column",
        "give one column name",
    )


def dataset_for(config: Config, offline: bool = False) -> Dataset:
    """The config's data, split as it says, checked to fit its model's input."""
    dataset = load_dataset(
        config.data, config.model.input_shape, config.seed, offline, task_of(config)
    )
    check_fits(dataset, config)
    return dataset


def load_dataset(
    data: DataConfig,
    input_shape: Sequence[int],
    seed: int,
    offline: bool = False,
    task: Task | None = None,
    whole: bool = False,
) -> Dataset:
    """Find, read, shape and split a data section; `task` reads the labels (default: classes).

    `whole`: data that is one pool of images (no test split of its own) is its own test
    split, whole, as `evaluate --data FOLDER` scores it; nothing is held out.

    Images are read at `input_shape` where resized.
    """
    task = task or task_named("classification")
    arrays = load_arrays(data, input_shape, offline, task)
    x_train, y_train = (
        _images(arrays.x_train, arrays.origin),
        task.encode_labels(arrays.y_train, arrays.origin),
    )
    files = dict(arrays.files)
    if arrays.x_test is None and whole:
        x_test, y_test = x_train, y_train
        if "train" in files:
            files["test"] = files["train"]
    elif arrays.x_test is None:  # one pool of images: hold out a test split, as the task splits
        x_train, y_train, x_test, y_test, kept, held = split_off(
            task, x_train, y_train, data.test_fraction, seed
        )
        _split_files(files, "test", kept, held)
    else:
        x_test, y_test = (
            _images(arrays.x_test, arrays.origin),
            task.encode_labels(arrays.y_test, arrays.origin),
        )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{arrays.origin}: train images are {x_train.shape[1:]} but test images "
            f"{x_test.shape[1:]}"
        )
    if data.limit:
        x_train, y_train = x_train[: data.limit], y_train[: data.limit]
        files.pop("train", None)
    if arrays.x_val is not None:
        x_val = _images(arrays.x_val, arrays.origin)
        y_val = task.encode_labels(arrays.y_val, arrays.origin)
    elif data.validation == "test":
        x_val, y_val = x_test, y_test
        files["validation"] = files.get("test", ())
    else:
        x_train, y_train, x_val, y_val, kept, held = split_off(
            task, x_train, y_train, data.validation, seed
        )
        _split_files(files, "validation", kept, held)
    names = task.output_names(arrays.class_names, (y_train, y_test), arrays.origin)
    return Dataset(
        x_train,
        y_train,
        x_val,
        y_val,
        x_test,
        y_test,
        names,
        arrays.origin,
        arrays.skipped,
        arrays.warnings,
        {k: v for k, v in files.items() if v},
    )


def _split_files(
    files: dict[str, tuple[str, ...]], held_name: str, kept: np.ndarray, held: np.ndarray
) -> None:
    """Follow a split of the training images with their file names, where they came from files."""
    if "train" in files:
        names = np.asarray(files["train"])
        files[held_name], files["train"] = tuple(names[held]), tuple(names[kept])


def num_classes_of(config: Config) -> int | None:
    """The number of classes, when it is known without reading the images: a built-in's, or
    a folder of class folders' (the sub-folders); None where only reading the data tells."""
    if config.data.dataset:
        return len(BUILTINS[config.data.dataset].classes)
    path = Path(config.data.path)
    if task_of(config).mask_labels:  # images/ and masks/: data.classes or classes.txt
        from cnnctl.data.masks import class_names, is_mask_folder

        return len(class_names(path, config.data)) if is_mask_folder(path) else None
    if path.is_dir() and not is_idx_folder(path):
        from cnnctl.data.index import folder_classes

        return len(folder_classes(path))
    return None


def _images(x: np.ndarray, origin: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or len(x) == 0:
        raise DataError(
            f"{origin}: expected images shaped (N, height, width[, channels]), got {x.shape}"
        )
    return x


def split_off(task: Task, x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Hold out `fraction` as the task chooses: (x, y, x_held, y_held, kept, held) positions."""
    held = task.held_out(y, fraction, seed)
    if held.all() or not held.any():
        raise DataError(
            f"a fraction of {fraction} of {len(y)} images leaves a split empty",
            "use more images or a larger fraction",
        )
    return x[~held], y[~held], x[held], y[held], np.flatnonzero(~held), np.flatnonzero(held)


def check_fits(dataset: Dataset, config: Config) -> None:
    """The data's image size must be the model's input size."""
    expected = tuple(config.model.input_shape)
    if dataset.image_shape != expected:
        raise ConfigError(
            f"{config.where(('model', 'input_shape'))}: is {list(expected)} but the images of "
            f"{dataset.origin} are {list(dataset.image_shape)}",
            f"set input_shape: {list(dataset.image_shape)}",
        )
