"""Loading model files that may come from anywhere, without running code hidden in them.

A `.keras` file is a zip holding `config.json` (which classes to build) and
`model.weights.h5` (or `.npz`). Before Keras sees it, cnnctl checks the archive's
member count and sizes (zip bombs), reads the config as plain JSON and checks every
class it names against an allow-list of standard Keras classes
(`cnnctl.modelfile.check`), builds the model symbolically to bound its parameters and
activations, and checks the weights' declared shapes (shape bombs). Only the config
and the weights are then unpacked, into a folder cnnctl always removes, and Keras
loads that folder with `safe_mode=True`: Keras never unpacks the archive itself.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from cnnctl.errors import ModelFileError, first_line
from cnnctl.limits import limit, open_regular, parse_json, refuse_over
from cnnctl.modelfile.check import Sizes, check_config, check_sizes
from cnnctl.modelfile.weights import MAX_RATIO, check_h5_file, check_npz_file

WEIGHTS = ("model.weights.h5", "model.weights.npz")
# A zip or HDF5 library meeting a damaged file raises nearly any exception type.
DAMAGE = (
    OSError,
    ValueError,
    KeyError,
    RuntimeError,
    TypeError,
    OverflowError,
    IndexError,
    NotImplementedError,
    EOFError,
    AttributeError,
    zipfile.BadZipFile,
    RecursionError,
)


def load_model(path: Path, compile: bool = True, legacy_h5: bool = False) -> Any:
    """Load a model file after checking that it names only standard Keras classes, within limits."""
    path = Path(path)
    if path.suffix in (".h5", ".hdf5"):
        if not legacy_h5:
            raise ModelFileError(
                f"{path}: legacy HDF5 models are not loaded",
                "re-save it as .keras with Keras 3, or pass --legacy-h5 if you trust it",
            )
        open_regular(path, ModelFileError).close()
        check_h5(path)
        return _keras_load(path, path, compile)
    with tempfile.TemporaryDirectory(prefix="cnnctl-model-") as folder:
        unpacked = unpack_archive(path, Path(folder))
        return _keras_load(path, unpacked, compile)


def _keras_load(path: Path, source: Path, compile: bool) -> Any:
    import keras

    import cnnctl.tasks.pixel_loss  # noqa: F401  registers cnnctl's own loss (OWN_OBJECTS)

    try:
        return keras.saving.load_model(source, safe_mode=True, compile=compile)
    except ValueError as error:
        if "safe_mode" in str(error) or "unsafe" in str(error).lower():
            raise ModelFileError(
                f"{path}: refused: the model carries code that would run on load"
            ) from None
        raise ModelFileError(f"{path}: not a loadable Keras model ({first_line(error)})") from None
    except MemoryError:
        raise ModelFileError(
            f"{path}: out of memory while loading this model",
            "the file asks for more memory than this machine has",
        ) from None
    except Exception as error:  # h5py, zip and Keras raise many kinds for damaged files
        if type(error).__name__ == "ResourceExhaustedError":
            raise ModelFileError(f"{path}: out of memory while loading this model") from None
        raise ModelFileError(
            f"{path}: damaged or not a Keras model ({type(error).__name__}: {first_line(error)})"
        ) from None


def unpack_archive(path: Path, folder: Path) -> Path:
    """Vet a `.keras` zip and unpack its config and weights into `folder`: a Keras model folder."""
    with open_regular(path, ModelFileError) as stream:
        try:
            with zipfile.ZipFile(stream) as archive:
                config = _vet_archive(path, archive)
                sizes = check_sizes(path, config)
                (folder / "config.json").write_bytes(_read_member(path, archive, "config.json"))
                name = next(n for n in WEIGHTS if n in archive.NameToInfo)
                _check_weights_size(path, archive.getinfo(name), sizes)
                _extract(path, archive, name, folder / name)
        except zipfile.BadZipFile:
            raise ModelFileError(
                f"{path}: not a Keras model file (not a .keras zip archive)",
                "pass the model.keras of a run",
            ) from None
        except ModelFileError:
            raise
        except DAMAGE as error:
            raise ModelFileError(
                f"{path}: damaged model file ({type(error).__name__}: {first_line(error)})"
            ) from None
    if name.endswith(".h5"):
        check_h5_file(path, folder / name, sizes)
    else:
        check_npz_file(path, folder / name, sizes)
    return folder


def check_archive(path: Path) -> dict[str, Any]:
    """Vet a `.keras` zip without loading it: members, config classes and sizes, weight shapes."""
    with tempfile.TemporaryDirectory(prefix="cnnctl-model-") as folder:
        unpack_archive(path, Path(folder))
        return parse_json((Path(folder) / "config.json").read_bytes(), str(path), ModelFileError)


def _vet_archive(path: Path, archive: zipfile.ZipFile) -> dict[str, Any]:
    members = archive.infolist()
    refuse_over(
        "members", len(members), str(path), "the archive has too many members", ModelFileError
    )
    for info in members:
        name = info.filename
        if name.startswith(("/", "\\")) or ".." in Path(name.replace("\\", "/")).parts:
            raise ModelFileError(
                f"{path}: refused: archive member '{name}' points outside the archive"
            )
        _check_member(path, info)
    refuse_over(
        "bytes",
        sum(info.file_size for info in members),
        str(path),
        "the archive unpacks to too many bytes",
        ModelFileError,
    )
    if "config.json" not in archive.NameToInfo:
        raise ModelFileError(f"{path}: not a Keras model file (no config.json inside)")
    if not any(name in archive.NameToInfo for name in WEIGHTS):
        raise ModelFileError(f"{path}: not a Keras model file (no model.weights.h5 inside)")
    config = parse_json(
        _read_member(path, archive, "config.json"), f"{path}: config.json", ModelFileError
    )
    check_config(path, config)
    return config


def _check_member(path: Path, info: zipfile.ZipInfo, name: str = "bytes") -> None:
    if info.file_size > 2**20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise ModelFileError(
            f"{path}: refused: {info.filename} would unpack to {info.file_size:,} "
            f"bytes from {info.compress_size:,} (a zip bomb?)"
        )
    refuse_over(name, info.file_size, str(path), f"{info.filename} is too large", ModelFileError)
    if info.flag_bits & 0x1:
        raise ModelFileError(f"{path}: refused: {info.filename} is encrypted")


def _check_weights_size(path: Path, info: zipfile.ZipInfo, sizes: Sizes) -> None:
    """Weights take < 32 bytes per parameter of the config (`Sizes.weights_bytes`)."""
    most = sizes.weights_bytes
    if info.file_size > most:
        raise ModelFileError(
            f"{path}: refused: {info.filename} unpacks to {info.file_size:,} bytes, "
            f"far more than a model of {sizes.params:,} parameters needs ({most:,})"
        )


def _read_member(path: Path, archive: zipfile.ZipFile, name: str) -> bytes:
    """A small member (config, state), bounded by the `json_bytes` limit before it is unpacked."""
    info = archive.getinfo(name)
    _check_member(path, info, "json_bytes")
    with archive.open(info) as member:
        return member.read(limit("json_bytes") + 1)


def _extract(path: Path, archive: zipfile.ZipFile, name: str, target: Path) -> None:
    """Stream one member to disk in chunks.

    zipfile stops at the declared size and checks the CRC.
    """
    info = archive.getinfo(name)
    _check_member(path, info)
    with archive.open(info) as member, open(target, "wb") as out:
        shutil.copyfileobj(member, out, 2**20)


def read_member_json(path: Path, name: str) -> Any:
    """A JSON member of a `.keras` archive (cnnctl's resume state), bounded and parsed safely."""
    with open_regular(path, ModelFileError) as stream:
        try:
            with zipfile.ZipFile(stream) as archive:
                if name not in archive.NameToInfo:
                    raise ModelFileError(
                        f"{path}: not a cnnctl checkpoint (no {name} inside)", "train the run again"
                    )
                data = _read_member(path, archive, name)
        except ModelFileError:
            raise
        except DAMAGE as error:
            raise ModelFileError(
                f"{path}: not a cnnctl checkpoint ({type(error).__name__}: {first_line(error)})"
            ) from None
    return parse_json(data, f"{path}: {name}", ModelFileError)


def check_h5(path: Path) -> None:
    """Vet a legacy HDF5 model: its `model_config` attribute, model size and dataset shapes."""
    raw = check_h5_file(path, path)  # read whole in a child process first: HDF5 can hang
    if raw is None:
        raise ModelFileError(f"{path}: not a Keras model file (no model_config in the HDF5 file)")
    config = parse_json(raw, f"{path}: model_config", ModelFileError)
    check_config(path, config)
    check_sizes(path, config, legacy=True)
