"""Loading model files that may come from anywhere, without running code hidden in them.

A `.keras` file is a zip holding `config.json` (which classes to build) and
`model.weights.h5`. Before Keras sees it, cnnctl reads the config as plain
JSON and checks every class it names against an allow-list of standard Keras
classes, checks the archive's sizes (zip bombs) and the declared weight shapes
(shape bombs); then Keras loads it with `safe_mode=True`.
"""

from __future__ import annotations

import functools
import io
import json
import zipfile
from pathlib import Path
from typing import Any

from cnnctl.errors import ModelFileError, first_line

MAX_MEMBER_BYTES = 4 * 2**30  # no CNN cnnctl trains is near 4 GiB unpacked; a zip bomb is
MAX_CONFIG_BYTES = 16 * 2**20
MAX_RATIO = 200  # unpacked / packed size; weights barely compress, bombs compress a million-fold
SAFE_MODULES = ("initializers", "regularizers", "constraints", "losses", "metrics")
MODEL_CLASSES = {"Sequential", "Functional", "Model", "InputLayer", "DTypePolicy", "FloatDTypePolicy"}


def load_model(path: Path, compile: bool = True, legacy_h5: bool = False) -> Any:
    """Load a model file after checking that it names only standard Keras classes."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file", "pass a .keras file saved by cnnctl or Keras")
    if path.suffix in (".h5", ".hdf5"):
        if not legacy_h5:
            raise ModelFileError(f"{path}: legacy HDF5 models are not loaded",
                                 "re-save it as .keras with Keras 3, or pass --legacy-h5 if you trust it")
        check_h5(path)
    else:
        check_archive(path)
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=compile)
    except ValueError as error:
        if "safe_mode" in str(error) or "unsafe" in str(error).lower():
            raise ModelFileError(f"{path}: refused: the model carries code that would run on load") from None
        raise ModelFileError(f"{path}: not a loadable Keras model ({first_line(error)})") from None
    except Exception as error:  # h5py, zip and Keras raise many kinds for damaged files
        raise ModelFileError(f"{path}: damaged or not a Keras model ({type(error).__name__}: "
                             f"{first_line(error)})") from None


def check_archive(path: Path) -> dict[str, Any]:
    """Vet a `.keras` zip: member names and sizes, config classes, weight shapes."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            for info in members.values():
                _check_member(path, info)
            if "config.json" not in members:
                raise ModelFileError(f"{path}: not a Keras model file (no config.json inside)")
            if members["config.json"].file_size > MAX_CONFIG_BYTES:
                raise ModelFileError(f"{path}: refused: config.json is too large")
            config = json.loads(archive.read("config.json"))
            check_config(path, config)
            if "model.weights.h5" in members:
                _check_weights(path, archive.read("model.weights.h5"))
    except zipfile.BadZipFile:
        raise ModelFileError(f"{path}: not a Keras model file (not a .keras zip archive)",
                             "pass the model.keras of a run") from None
    except (OSError, ValueError, RecursionError, EOFError) as error:
        raise ModelFileError(f"{path}: damaged model file ({first_line(error)})") from None
    return config


def _check_member(path: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename
    if name.startswith(("/", "\\")) or ".." in Path(name).parts:
        raise ModelFileError(f"{path}: refused: archive member '{name}' points outside the archive")
    if info.file_size > MAX_MEMBER_BYTES or (
            info.file_size > 2**20 and info.file_size > MAX_RATIO * max(info.compress_size, 1)):
        raise ModelFileError(f"{path}: refused: {name} would unpack to {info.file_size:,} bytes "
                             f"from {info.compress_size:,} (a zip bomb?)")


def check_h5(path: Path) -> None:
    """Vet a legacy HDF5 model: its `model_config` attribute and its dataset shapes."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            raw = h5.attrs.get("model_config")
            if raw is None:
                raise ModelFileError(f"{path}: not a Keras model file (no model_config in the HDF5 file)")
            check_config(path, json.loads(raw.decode() if isinstance(raw, bytes) else raw))
            _check_shapes(path, h5, path.stat().st_size)
    except OSError as error:
        raise ModelFileError(f"{path}: not a readable HDF5 file ({first_line(error)})") from None
    except (ValueError, RecursionError) as error:
        raise ModelFileError(f"{path}: damaged model file ({first_line(error)})") from None


def _check_weights(path: Path, data: bytes) -> None:
    import h5py

    with h5py.File(io.BytesIO(data), "r") as h5:
        _check_shapes(path, h5, len(data))


def _check_shapes(path: Path, h5: Any, stored: int) -> None:
    """Weights are stored whole; a dataset declaring far more bytes than the file holds is a bomb."""
    import h5py

    declared = 0

    def visit(name: str, item: Any) -> None:
        nonlocal declared
        if isinstance(item, h5py.Dataset) and item.shape is not None:
            size = item.dtype.itemsize
            for n in item.shape:
                size *= n
            declared += size

    h5.visititems(visit)
    if declared > 2 * stored + 2**20:
        raise ModelFileError(f"{path}: refused: its weights declare {declared:,} bytes but the file "
                             f"holds {stored:,} (a shape bomb?)")


def check_config(path: Path, config: Any) -> None:
    """Every object the config names must be a standard Keras class from a safe module."""
    allowed = _allowed_classes()
    for item in _objects(path, config):
        name, module = item.get("class_name"), item.get("module")
        registered = item.get("registered_name")
        if not isinstance(name, str):
            raise ModelFileError(f"{path}: damaged model config (class_name {name!r})")
        if name == "__keras_tensor__" and module is None:
            continue  # a functional model's record of the tensor between two layers, not a class
        if module is not None and (not isinstance(module, str) or module.split(".")[0] != "keras"):
            raise ModelFileError(f"{path}: refused: it names code from module '{module}'",
                                 "cnnctl only loads models built from standard Keras layers")
        if registered not in (None, name) and not str(registered).startswith("keras"):
            raise ModelFileError(f"{path}: refused: it needs the custom object '{registered}'",
                                 "cnnctl only loads models built from standard Keras layers")
        if name not in allowed:
            why = "which can run code or read files" if name in _RISKY else "not a class cnnctl loads"
            raise ModelFileError(f"{path}: refused: it contains a {name} layer, {why}",
                                 "cnnctl only loads models built from standard Keras layers")


_RISKY = {"Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer", "StringLookup",
          "IntegerLookup", "TextVectorization"}


@functools.cache
def _allowed_classes() -> frozenset[str]:
    import keras

    from cnnctl.blocks import MODEL_FILE_CLASSES
    from cnnctl.builder import LAYERS, OPTIMIZERS

    names = set(LAYERS) | set(OPTIMIZERS) | MODEL_CLASSES | set(MODEL_FILE_CLASSES)
    names |= set(dir(keras.optimizers.schedules))
    for module in SAFE_MODULES:
        names |= {n for n in dir(getattr(keras, module)) if n[:1].isupper()}
    return frozenset(names - _RISKY)


def _objects(path: Path, value: Any, depth: int = 0):
    """Every serialized object (a dict with `class_name`) inside the config."""
    if depth > 100:
        raise ModelFileError(f"{path}: refused: its config is nested too deeply")
    if isinstance(value, dict):
        if "class_name" in value:
            yield value
        for child in value.values():
            yield from _objects(path, child, depth + 1)
    elif isinstance(value, list):
        for child in value:
            yield from _objects(path, child, depth + 1)
