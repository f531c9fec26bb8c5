"""Where images come from: built-in datasets found on disk (or downloaded), IDX folders, .npz files.

Everything here returns plain numpy arrays of raw pixels (N, H, W, C) and
integer labels; scaling happens inside the model.
"""

from __future__ import annotations

import gzip
import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cnnctl.errors import DataError

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


@dataclass(frozen=True)
class Builtin:
    """What cnnctl knows about a built-in dataset before loading it."""

    name: str
    shape: tuple[int, int, int]
    classes: tuple[str, ...]
    keras_cache: str  # file or folder name under ~/.keras/datasets
    system: tuple[str, ...] = ()  # where a distribution package installs it


BUILTINS = {
    "mnist": Builtin("mnist", (28, 28, 1), tuple(str(d) for d in range(10)), "mnist.npz"),
    "fashion_mnist": Builtin(
        "fashion_mnist", (28, 28, 1), FASHION_CLASSES, "fashion-mnist",
        ("/usr/share/datasets/fashion-mnist",),
    ),
}


@dataclass(frozen=True)
class Arrays:
    """Raw train and test images with integer labels, as found on disk."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...] | None
    origin: str


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def builtin_candidates(name: str) -> list[Path]:
    """The places a built-in dataset is looked for, in order."""
    builtin = BUILTINS[name]
    places = []
    if os.environ.get("CNNCTL_DATA_DIR"):
        places.append(Path(os.environ["CNNCTL_DATA_DIR"]) / name)
    places.append(keras_cache_dir() / builtin.keras_cache)
    places.extend(Path(p) for p in builtin.system)
    return places


def offline() -> bool:
    return os.environ.get("CNNCTL_OFFLINE", "").lower() in ("1", "true", "yes")


def load_builtin(name: str) -> Arrays:
    """Load a built-in dataset from the first place that has it, else download it with Keras."""
    for place in builtin_candidates(name):
        arrays = None
        if place.is_file() and place.suffix == ".npz":
            arrays = load_npz(place)
        elif place.is_dir():
            npz = sorted(place.glob("*.npz"))
            arrays = load_npz(npz[0]) if npz else load_idx_folder(place)
        if arrays is not None:
            return replace(arrays, class_names=BUILTINS[name].classes)
    looked = ", ".join(str(p) for p in builtin_candidates(name))
    hint = (
        f"put the four IDX files (train-images-idx3-ubyte.gz, ...) in $CNNCTL_DATA_DIR/{name}/"
        + (", or `apt-get install dataset-fashion-mnist`" if name == "fashion_mnist" else "")
    )
    if offline():
        raise DataError(f"dataset '{name}' not found offline (looked in {looked})", hint)
    return _download(name, looked, hint)


def _download(name: str, looked: str, hint: str) -> Arrays:
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as error:  # Keras raises bare Exceptions for network failures
        raise DataError(
            f"dataset '{name}' not found (looked in {looked}) and the download failed: "
            f"{str(error).splitlines()[0][:200]}",
            hint,
        ) from None
    return Arrays(x_train, y_train, x_test, y_test, BUILTINS[name].classes, f"keras.datasets.{name}")


# --------------------------------------------------------------------------- IDX


_IDX_FILES = {
    "x_train": "train-images*idx3*",
    "y_train": "train-labels*idx1*",
    "x_test": "t10k-images*idx3*",
    "y_test": "t10k-labels*idx1*",
}


def load_idx_folder(folder: Path) -> Arrays:
    """A folder with MNIST-style IDX files (gzipped or not), as MNIST and Fashion-MNIST ship."""
    arrays = {}
    for key, pattern in _IDX_FILES.items():
        matches = sorted(folder.glob(pattern))
        if not matches:
            raise DataError(
                f"{folder}: no file matching '{pattern}'",
                "an IDX folder needs train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (.gz or not)",
            )
        arrays[key] = read_idx(matches[0])
    for split in ("train", "test"):
        if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            raise DataError(
                f"{folder}: {split} has {len(arrays[f'x_{split}'])} images but "
                f"{len(arrays[f'y_{split}'])} labels"
            )
    return Arrays(**arrays, class_names=None, origin=str(folder))


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (http://yann.lecun.com/exdb/mnist/ format), gzipped or not."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: cannot read: {error}", "the file may be truncated; fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, expected {expected})")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


# --------------------------------------------------------------------------- NPZ


def load_npz(path: Path) -> Arrays:
    """An .npz with x_train, y_train, x_test, y_test (and optionally class_names)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: missing array {', '.join(missing)} (has {', '.join(npz.files) or 'none'})",
                    "save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)",
                )
            names = tuple(str(n) for n in npz["class_names"]) if "class_names" in npz.files else None
            return Arrays(npz["x_train"], npz["y_train"], npz["x_test"], npz["y_test"], names, str(path))
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable .npz file ({error})") from None


def load_path(path: Path) -> Arrays:
    """The user's own data: an IDX folder or an .npz file."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder", "check data.path in the config")
    if path.is_dir():
        return load_idx_folder(path)
    if path.suffix == ".npz":
        return load_npz(path)
    raise DataError(
        f"{path}: unsupported data file",
        "data.path takes a folder of IDX files or an .npz with x_train/y_train/x_test/y_test",
    )
