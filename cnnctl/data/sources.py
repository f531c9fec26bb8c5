"""Where images come from.

Built-in datasets found on disk (or downloaded), IDX folders, .npz and CSV files.
Everything here returns plain numpy arrays of raw pixels and integer labels;
scaling happens inside the model.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cnnctl.config.schema import BUILTIN_SHAPES
from cnnctl.errors import DataError, first_line
from cnnctl.limits import limit, npy_header, open_regular, refuse_over

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# Digests of the official files: sha256 of the unpacked IDX bytes (Debian re-packs the .gz files),
# sha256 of Keras' mnist.npz, and md5 of the original MNIST training .gz files.
OFFICIAL = {
    "mnist": {
        "t10k-images-idx3-ubyte": (
            "sha256:0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
        ),
        "t10k-labels-idx1-ubyte": (
            "sha256:ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
        ),
        "train-images-idx3-ubyte.gz": "md5-file:f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "md5-file:d53e105ee54ea40749a09fcbcd1e9432",
        "mnist.npz": "sha256-file:731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
    },
    "fashion_mnist": {
        "t10k-images-idx3-ubyte": (
            "sha256:5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
        ),
        "t10k-labels-idx1-ubyte": (
            "sha256:0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
        ),
        "train-images-idx3-ubyte": (
            "sha256:c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
        ),
        "train-labels-idx1-ubyte": (
            "sha256:bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
        ),
    },
}


@dataclass(frozen=True)
class Builtin:
    """What cnnctl knows about a built-in dataset before loading it."""

    name: str
    shape: tuple[int, int, int]
    classes: tuple[str, ...]
    keras_cache: str  # file or folder name under ~/.keras/datasets
    system: tuple[str, ...] = ()  # where a distribution package installs it


BUILTINS = {
    "mnist": Builtin(
        "mnist", BUILTIN_SHAPES["mnist"], tuple(str(d) for d in range(10)), "mnist.npz"
    ),
    "fashion_mnist": Builtin(
        "fashion_mnist",
        BUILTIN_SHAPES["fashion_mnist"],
        FASHION_CLASSES,
        "fashion-mnist",
        ("/usr/share/datasets/fashion-mnist",),
    ),
    "cifar10": Builtin(
        "cifar10", BUILTIN_SHAPES["cifar10"], CIFAR10_CLASSES, "cifar-10-batches-py"
    ),
    "cifar100": Builtin(
        "cifar100",
        BUILTIN_SHAPES["cifar100"],
        tuple(str(i) for i in range(100)),
        "cifar-100-python",
    ),
}
if set(BUILTINS) != set(BUILTIN_SHAPES):  # the config's list of names is the one home
    raise ImportError(f"built-ins {sorted(BUILTINS)} differ from {sorted(BUILTIN_SHAPES)}")


@dataclass(frozen=True)
class Arrays:
    """Raw images with integer labels, as found on disk; missing splits are None."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: tuple[str, ...] | None
    origin: str
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    skipped: tuple[tuple[str, str], ...] = ()  # unreadable files: (path, reason)
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> file per image
    warnings: tuple[str, ...] = ()


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


def find_builtin(name: str) -> Path | None:
    """The first place that holds the dataset, or None."""
    for place in builtin_candidates(name):
        if place.is_file() or (place.is_dir() and any(place.iterdir())):
            return place
    return None


def load_builtin(name: str, offline: bool = False) -> Arrays:
    """Load a built-in dataset from the first place that has it, else download it with Keras."""
    place = find_builtin(name)
    if place is None:
        looked = ", ".join(str(p) for p in builtin_candidates(name))
        hint = f"put the dataset's files in $CNNCTL_DATA_DIR/{name}/ (IDX files or an .npz)" + (
            ", or `apt-get install dataset-fashion-mnist`" if name == "fashion_mnist" else ""
        )
        if offline:
            raise DataError(f"dataset '{name}' not found offline (looked in {looked})", hint)
        return _download(name, looked, hint)
    if place.name == BUILTINS[name].keras_cache and name.startswith("cifar"):
        arrays = _keras_loader(name, str(place))  # Keras reads its own cache without downloading
    elif place.is_file():
        arrays = load_npz(place)
    else:
        npz = sorted(place.glob("*.npz"))
        arrays = load_npz(npz[0]) if npz else load_idx_folder(place)
    return replace(arrays, class_names=BUILTINS[name].classes, warnings=verify(name, place))


def verify(name: str, place: Path) -> tuple[str, ...]:
    """Warnings for files that differ from the official ones (damaged, or another version)."""
    known = OFFICIAL.get(name, {})
    files = [place] if place.is_file() else sorted(p for p in place.iterdir() if p.is_file())
    differ = []
    for path in files:
        expected = known.get(path.name) or known.get(path.name.removesuffix(".gz"))
        if expected and _digest(path, expected.split(":")[0]) != expected.split(":")[1]:
            differ.append(path.name)
    if not differ:
        return ()
    what = f"{differ[0]} differs" if len(differ) == 1 else f"{len(differ)} files differ"
    return (f"{place}: {what} from the official {name} files (damaged, or a subset?)",)


def _digest(path: Path, kind: str) -> str:
    """The file's digest, read in chunks (a gzip member may unpack to anything)."""
    digest = hashlib.md5() if kind == "md5-file" else hashlib.sha256()
    try:
        with open_regular(path, DataError) as raw:
            stream = gzip.open(raw) if kind == "sha256" and path.suffix == ".gz" else raw
            read = 0
            while chunk := stream.read(2**20):
                digest.update(chunk)
                read += len(chunk)
                if read > limit("bytes"):
                    return "too large"
    except (OSError, EOFError, DataError, zlib.error):
        return "unreadable"
    return digest.hexdigest()


def _download(name: str, looked: str, hint: str) -> Arrays:
    try:
        arrays = _keras_loader(name, None)
    except Exception as error:  # Keras raises bare Exceptions for network failures
        raise DataError(
            f"dataset '{name}' not found (looked in {looked}) and the download failed: "
            f"{first_line(error)}",
            hint,
        ) from None
    return replace(arrays, class_names=BUILTINS[name].classes)


def _keras_loader(name: str, origin: str | None) -> Arrays:
    import keras

    loader = getattr(keras.datasets, name).load_data
    (x_train, y_train), (x_test, y_test) = (
        loader(label_mode="fine") if name == "cifar100" else loader()
    )
    return Arrays(x_train, y_train, x_test, y_test, None, origin or f"keras.datasets.{name}")


# --------------------------------------------------------------------------- IDX


_IDX_FILES = {
    "x_train": "train-images*idx3*",
    "y_train": "train-labels*idx1*",
    "x_test": "t10k-images*idx3*",
    "y_test": "t10k-labels*idx1*",
}


def is_idx_folder(folder: Path) -> bool:
    return any(folder.glob("*idx3*"))


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
    """Read one IDX file (the MNIST format), gzipped or not: never more than its header declares."""
    try:
        with (
            open_regular(path, DataError) as raw,
            gzip.open(raw) if path.suffix == ".gz" else raw as stream,
        ):
            magic = stream.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES:
                raise DataError(f"{path}: not an IDX file (bad magic number)")
            head = stream.read(4 * magic[3])
            shape = tuple(
                int.from_bytes(head[4 * i : 4 * i + 4], "big") for i in range(len(head) // 4)
            )
            dtype = np.dtype(_IDX_TYPES[magic[2]])
            expected = math.prod(shape) * dtype.itemsize
            refuse_over(
                "bytes", expected, str(path), f"its header declares {list(shape)} values", DataError
            )
            body = stream.read(expected)
            extra = stream.read(1)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"{path}: cannot read: {error}", "the file may be truncated; fetch it again"
        ) from None
    if len(head) != 4 * magic[3] or len(body) != expected or extra:
        size = "more" if extra else f"{4 + len(head) + len(body)} bytes"
        raise DataError(
            f"{path}: truncated IDX file ({size}, expected {4 + 4 * magic[3] + expected})"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape)


# --------------------------------------------------------------------------- NPZ and CSV


def load_npz(path: Path) -> Arrays:
    """An .npz with x_train, y_train, x_test, y_test (and optionally class_names)."""
    _check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: missing array {', '.join(missing)} (has "
                    f"{', '.join(npz.files) or 'none'})",
                    "save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)",
                )
            names = (
                tuple(str(n) for n in npz["class_names"]) if "class_names" in npz.files else None
            )
            return Arrays(
                npz["x_train"], npz["y_train"], npz["x_test"], npz["y_test"], names, str(path)
            )
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable .npz file ({error})") from None


def _check_npz(path: Path) -> None:
    """Every array's header, read before numpy allocates it: declared sizes within the budget."""
    try:
        with open_regular(path, DataError) as raw, zipfile.ZipFile(raw) as archive:
            declared = 0
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    shape, dtype = npy_header(member)
                size = math.prod(shape) * dtype.itemsize
                if size > info.file_size:
                    raise DataError(
                        f"{path}: {info.filename} declares {size:,} bytes but holds "
                        f"{info.file_size:,} (damaged, or a shape bomb)"
                    )
                declared += size
    except (
        OSError,
        ValueError,
        EOFError,
        zipfile.BadZipFile,
        NotImplementedError,
        RuntimeError,
        zlib.error,
    ) as error:
        raise DataError(f"{path}: not a readable .npz file ({first_line(error, 120)})") from None
    refuse_over("bytes", declared, str(path), "its arrays hold too many bytes", DataError)


def load_csv(path: Path, label_column: str, shape: tuple[int, int, int]) -> Arrays:
    """A CSV with a label column and one column per pixel (Kaggle's digit-recognizer layout)."""
    with open_regular(path, DataError) as raw:
        refuse_over(
            "bytes", os.fstat(raw.fileno()).st_size, str(path), "the file is too large", DataError
        )
        line = raw.readline(2**24)  # a header of 16 MiB is 2 million columns
    header = line.decode("utf-8", errors="replace").strip().split(",")
    if label_column not in header:
        raise DataError(
            f"{path}: no column '{label_column}' (columns: {', '.join(header[:5])}, ...)",
            "set data.label_column to the column that holds the class",
        )
    pixels = len(header) - 1
    if pixels != shape[0] * shape[1] * shape[2]:
        raise DataError(
            f"{path}: {pixels} pixel columns do not make images of shape {list(shape)}",
            "set data.image_shape (or model.input_shape) to [height, width, channels]",
        )
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)
    except ValueError as error:
        raise DataError(f"{path}: not a table of numbers ({first_line(error, 120)})") from None
    if len(table) == 0:
        raise DataError(f"{path}: no rows")
    label = header.index(label_column)
    y = table[:, label].astype(np.int64)
    x = np.delete(table, label, axis=1)
    x = x.astype(np.uint8) if x.min() >= 0 and x.max() <= 255 and np.all(x == np.round(x)) else x
    return Arrays(x.reshape(-1, *shape), y, None, None, None, str(path))
