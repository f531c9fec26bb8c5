"""Loading model files that may come from anywhere, without running code hidden in them.

A `.keras` file is a zip holding `config.json` (which classes to build) and
the weights. Before Keras sees it, the config is read as plain JSON and every
class it names is checked; then Keras loads it with `safe_mode=True`.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from cnnctl.errors import ModelFileError

# Classes that run arbitrary code or read arbitrary files when built.
UNSAFE_CLASSES = {
    "Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer",
    "StringLookup", "IntegerLookup", "TextVectorization",
}
MAX_MEMBER_BYTES = 4 * 2**30  # no CNN of ours is near 4 GiB; a zip bomb is
MAX_CONFIG_BYTES = 16 * 2**20


def load_model(path: Path, compile: bool = True) -> Any:
    """Load a `.keras` file after checking it is one and names only safe Keras classes."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file", "pass a .keras file saved by cnnctl or Keras")
    if path.suffix in (".h5", ".hdf5"):
        raise ModelFileError(f"{path}: legacy HDF5 models are not loaded", "re-save it as .keras with Keras 3")
    check_archive(path)
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=compile)
    except ValueError as error:
        if "safe_mode" in str(error) or "unsafe" in str(error).lower():
            raise ModelFileError(f"{path}: refused: the model carries code that would run on load") from None
        raise ModelFileError(f"{path}: not a loadable Keras model ({_first_line(error)})") from None
    except Exception as error:  # h5py, zip and Keras raise many kinds for damaged files
        raise ModelFileError(f"{path}: damaged or not a Keras model ({type(error).__name__}: "
                             f"{_first_line(error)})") from None


def check_archive(path: Path) -> dict[str, Any]:
    """Read and vet `config.json` from a `.keras` zip without building anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            if "config.json" not in members:
                raise ModelFileError(f"{path}: not a Keras model file (no config.json inside)")
            for info in members.values():
                if info.file_size > MAX_MEMBER_BYTES:
                    raise ModelFileError(f"{path}: refused: {info.filename} would unpack to "
                                         f"{info.file_size:,} bytes")
            if members["config.json"].file_size > MAX_CONFIG_BYTES:
                raise ModelFileError(f"{path}: refused: config.json is too large")
            config = json.loads(archive.read("config.json"))
    except zipfile.BadZipFile:
        raise ModelFileError(f"{path}: not a Keras model file (not a .keras zip archive)",
                             "pass the model.keras of a run") from None
    except (OSError, ValueError) as error:
        raise ModelFileError(f"{path}: damaged model file ({_first_line(error)})") from None
    for item in _objects(config):
        name, module = item.get("class_name"), item.get("module")
        if name in UNSAFE_CLASSES:
            raise ModelFileError(f"{path}: refused: it contains a {name} layer, which can run code",
                                 "cnnctl only loads models built from standard Keras layers")
        if isinstance(module, str) and module.split(".")[0] != "keras":
            raise ModelFileError(f"{path}: refused: it names code from module '{module}'",
                                 "cnnctl only loads models built from standard Keras layers")
    return config


def _objects(value: Any, depth: int = 0):
    """Every serialized object (a dict with `class_name`) inside the config."""
    if depth > 200:
        raise ModelFileError("model config is nested too deeply")
    if isinstance(value, dict):
        if "class_name" in value:
            yield value
        for child in value.values():
            yield from _objects(child, depth + 1)
    elif isinstance(value, list):
        for child in value:
            yield from _objects(child, depth + 1)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__
