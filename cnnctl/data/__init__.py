"""Datasets as the trainer sees them: shaped arrays, class names, and the three splits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnctl.config import Config
from cnnctl.data.sources import BUILTINS, Arrays, load_builtin, load_path
from cnnctl.errors import ConfigError, DataError


@dataclass(frozen=True)
class Dataset:
    """Raw-pixel images (N, H, W, C) with integer labels, split three ways."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    origin: str

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.x_train.shape[1:]


def load_dataset(config: Config) -> Dataset:
    """Find, read, shape and split the config's data; check it fits the model."""
    data = config.data
    if data.path is not None and not Path(data.path).exists():
        raise ConfigError(f"{config.where(('data', 'path'))}: {data.path}: no such file or folder",
                          "data.path is read relative to the folder you run cnnctl in")
    arrays = load_builtin(data.dataset) if data.dataset else load_path(Path(data.path))
    x_train, y_train = _images(arrays.x_train, arrays.origin), _labels(arrays.y_train, arrays.origin)
    x_test, y_test = _images(arrays.x_test, arrays.origin), _labels(arrays.y_test, arrays.origin)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{arrays.origin}: train images are {x_train.shape[1:]} but test images {x_test.shape[1:]}")
    if data.limit:
        x_train, y_train = x_train[: data.limit], y_train[: data.limit]
    if data.validation == "test":
        x_val, y_val = x_test, y_test
    else:
        x_train, y_train, x_val, y_val = stratified_split(x_train, y_train, data.validation, config.seed)
    names = class_names(arrays, max(y_train.max(initial=0), y_test.max(initial=0)) + 1)
    dataset = Dataset(x_train, y_train, x_val, y_val, x_test, y_test, names, arrays.origin)
    check_fits(dataset, config)
    return dataset


def class_names(arrays: Arrays, seen: int) -> tuple[str, ...]:
    if arrays.class_names is None:
        return tuple(str(i) for i in range(seen))
    if len(arrays.class_names) < seen:
        raise DataError(f"{arrays.origin}: {len(arrays.class_names)} class names for labels up to {seen - 1}")
    return arrays.class_names


def num_classes_of(config: Config) -> int | None:
    """The number of classes, when it is known without reading the data."""
    return len(BUILTINS[config.data.dataset].classes) if config.data.dataset else None


def _images(x: np.ndarray, origin: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or len(x) == 0:
        raise DataError(f"{origin}: expected images shaped (N, height, width[, channels]), got {x.shape}")
    return x


def _labels(y: np.ndarray, origin: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)  # one-hot labels
    y = y.reshape(-1)
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise DataError(f"{origin}: labels must be class indices 0, 1, 2, ...; got {y.dtype} {y[:5]}")
    return y.astype(np.int64)


def stratified_split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Hold out `fraction` of each class for validation, chosen with `seed`."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        index = np.flatnonzero(y == label)
        take = int(round(len(index) * fraction))
        held[rng.permutation(index)[:take]] = True
    if held.all() or not held.any():
        raise DataError(f"validation fraction {fraction} of {len(y)} images leaves a split empty")
    return x[~held], y[~held], x[held], y[held]


def check_fits(dataset: Dataset, config: Config) -> None:
    """The data's image size must be the model's input size."""
    expected = tuple(config.model.input_shape)
    if dataset.image_shape != expected:
        raise ConfigError(
            f"{config.where(('model', 'input_shape'))}: is {list(expected)} but the images of "
            f"{dataset.origin} are {list(dataset.image_shape)}",
            f"set input_shape: {list(dataset.image_shape)}",
        )
