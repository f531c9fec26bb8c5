"""A corpus of hostile and broken model files, made fresh for each test run.

Each entry: file name -> (how to make it from a good .keras file, expected exit code,
expected phrase).
They are generated rather than committed so that each one's construction is readable here.
"""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path


def _rewrite_config(good: Path, target: Path, change: Callable[[dict], None]) -> None:
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == "config.json":
                config = json.loads(data)
                change(config)
                data = json.dumps(config).encode()
            out.writestr(info, data)


def _layers(config: dict) -> list:
    return config["config"]["layers"]


def _add_layer(layer: dict) -> Callable[[dict], None]:
    return lambda config: _layers(config).insert(2, layer)


def _module_gadget(config: dict) -> None:
    # CVE-2025-1550 style: a config naming an arbitrary module and function
    _layers(config)[1] = {
        "module": "os",
        "class_name": "system",
        "config": {"command": "touch pwned"},
        "registered_name": None,
    }


def _custom_object(config: dict) -> None:
    _layers(config)[1]["registered_name"] = "my_package>EvilDense"


def _zip_bomb(good: Path, target: Path) -> None:
    """A member whose header says it unpacks to 10 GB."""
    shutil.copy(good, target)
    data = bytearray(target.read_bytes())
    start = data.find(b"PK\x01\x02")  # central directory entries
    while start != -1:
        name_length = struct.unpack("<H", data[start + 28 : start + 30])[0]
        name = data[start + 46 : start + 46 + name_length]
        if name == b"model.weights.h5":
            data[start + 24 : start + 28] = struct.pack(
                "<I", 0xFFFFFFF0
            )  # uncompressed size: ~4 GB
        start = data.find(b"PK\x01\x02", start + 4)
    target.write_bytes(bytes(data))


def _shape_bomb(good: Path, target: Path) -> None:
    """Weights whose dataset declares 4 TB of float32 but stores nothing."""
    import io

    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.create_dataset("layers/dense/vars/0", shape=(10**6, 10**6), dtype="f4", chunks=(1, 1))
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            data = (
                buffer.getvalue()
                if info.filename == "model.weights.h5"
                else source.read(info.filename)
            )
            out.writestr(info.filename, data)


def _legacy_h5(good: Path, target: Path) -> None:
    import keras

    keras.saving.load_model(good).save(target.with_suffix(".h5"))


def _traversal(good: Path, target: Path) -> None:
    shutil.copy(good, target)
    with zipfile.ZipFile(target, "a") as archive:
        archive.writestr("../../etc/cron.d/evil", "* * * * * root touch /pwned\n")


def _nested(good: Path, target: Path) -> None:
    """A config nested 5,000 levels deep, to exhaust a recursive reader."""
    deep = b'{"class_name": "Sequential", "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            out.writestr(
                info, deep if info.filename == "config.json" else source.read(info.filename)
            )


def _text(good: Path, target: Path) -> None:
    target.write_text("this is not a model\n")


def _truncated(good: Path, target: Path) -> None:
    target.write_bytes(good.read_bytes()[: good.stat().st_size // 2])


def _no_config(good: Path, target: Path) -> None:
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("metadata.json", "{}")


def _bad_json(good: Path, target: Path) -> None:
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            out.writestr(
                info, b"{not json" if info.filename == "config.json" else source.read(info.filename)
            )


def _config(change: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    return lambda good, target: _rewrite_config(good, target, change)


CORPUS: dict[str, tuple[Callable[[Path, Path], None], int, str]] = {
    "lambda.keras": (
        _config(
            _add_layer(
                {
                    "module": "keras.layers",
                    "class_name": "Lambda",
                    "config": {
                        "function": {"class_name": "__lambda__", "config": {"code": "b'evil'"}}
                    },
                    "registered_name": None,
                }
            )
        ),
        2,
        "refused: it contains a Lambda layer, which can run code",
    ),
    "tfsmlayer.keras": (
        _config(
            _add_layer(
                {
                    "module": "keras.layers",
                    "class_name": "TFSMLayer",
                    "config": {"filepath": "/tmp/x"},
                    "registered_name": None,
                }
            )
        ),
        2,
        "refused: it contains a TFSMLayer layer",
    ),
    "torch.keras": (
        _config(
            _add_layer(
                {
                    "module": "keras.layers",
                    "class_name": "TorchModuleWrapper",
                    "config": {},
                    "registered_name": None,
                }
            )
        ),
        2,
        "refused: it contains a TorchModuleWrapper layer",
    ),
    "lookup.keras": (
        _config(
            _add_layer(
                {
                    "module": "keras.layers",
                    "class_name": "StringLookup",
                    "config": {"vocabulary": "/etc/passwd"},
                    "registered_name": None,
                }
            )
        ),
        2,
        "refused: it contains a StringLookup layer",
    ),
    "module.keras": (_config(_module_gadget), 2, "refused: it names code from module 'os'"),
    "custom.keras": (
        _config(_custom_object),
        2,
        "refused: it needs the custom object 'my_package>EvilDense'",
    ),
    "zipbomb.keras": (_zip_bomb, 2, "(a zip bomb?)"),
    "shapebomb.keras": (_shape_bomb, 2, "(a shape bomb?)"),
    "traversal.keras": (_traversal, 2, "points outside the archive"),
    "nested.keras": (_nested, 2, "nested too deeply"),
    "legacy.h5": (_legacy_h5, 2, "legacy HDF5 models are not loaded"),
    "text.keras": (_text, 2, "not a Keras model file (not a .keras zip archive)"),
    "truncated.keras": (_truncated, 2, "not a Keras model file"),
    "noconfig.keras": (_no_config, 2, "no config.json inside"),
    "badjson.keras": (_bad_json, 2, "config.json: not valid JSON"),
}


def make(name: str, good: Path, folder: Path) -> Path:
    """Write the corpus entry `name` into `folder`, made from the good model file `good`."""
    target = folder / name
    CORPUS[name][0](good, target)
    return target


# --------------------------------------------------------------------------- issue 18: resources


def patch_central(path: Path, member: str, **fields: int) -> None:
    """Rewrite fields of `member`'s central-directory entry: flags, method, packed, size."""
    offsets = {"flags": (8, "<H"), "method": (10, "<H"), "packed": (20, "<I"), "size": (24, "<I")}
    data = bytearray(path.read_bytes())
    start = data.find(b"PK\x01\x02")
    while start != -1:
        name_length = struct.unpack("<H", data[start + 28 : start + 30])[0]
        if data[start + 46 : start + 46 + name_length] == member.encode():
            for key, value in fields.items():
                offset, fmt = offsets[key]
                data[start + offset : start + offset + struct.calcsize(fmt)] = struct.pack(
                    fmt, value
                )
        start = data.find(b"PK\x01\x02", start + 4)
    path.write_bytes(bytes(data))


def rebuild(
    good: Path,
    target: Path,
    drop: tuple[str, ...] = (),
    add: dict[str, bytes] | None = None,
    change: Callable[[dict], None] | None = None,
    stored: bool = False,
) -> Path:
    """A copy of `good` without the members `drop`, with `add`, its config changed by `change`.

    `stored`: the members of `add` are stored as they are, not deflated again.
    """
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            if info.filename in drop:
                continue
            data = source.read(info.filename)
            if info.filename == "config.json" and change is not None:
                config = json.loads(data)
                change(config)
                data = json.dumps(config).encode()
            out.writestr(info.filename, data)
        for name, data in (add or {}).items():
            out.writestr(name, data, zipfile.ZIP_STORED if stored else None)
    return target


def npy_bomb() -> bytes:
    """An .npz of one array whose header declares 8 GiB of float32 and that holds 16 bytes."""
    import io

    import numpy as np

    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        npy, {"descr": "<f4", "fortran_order": False, "shape": (2**31,)}
    )
    npy.write(b"\0" * 16)
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("layers/dense/vars/0.npy", npy.getvalue())
    return npz.getvalue()


def png_header_bomb(path: Path, width: int = 14142, height: int = 14142, depth: int = 16) -> Path:
    """A small valid-looking grayscale PNG whose header declares width x height pixels."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    rows = zlib.compress(b"\0" * (1 + width * depth // 8) * 64)  # the first 64 rows only
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )
    return path


def _dense_layer(config: dict) -> dict:
    return next(layer for layer in _layers(config) if layer["class_name"] == "Dense")


def wide_dense(config: dict) -> None:
    """Dense(units=250000) with its build_config removed: 196 million weights on 784 inputs."""
    layer = _dense_layer(config)
    layer["config"]["units"] = 250_000
    layer.pop("build_config", None)


def huge_build_input(config: dict) -> None:
    """No Input layer; the model's build_config says each input holds 10 million values."""
    config["config"]["layers"] = [
        layer
        for layer in _layers(config)
        if layer["class_name"] not in ("InputLayer", "Rescaling", "Flatten")
    ]
    for layer in _layers(config):
        layer.pop("build_config", None)
    config["build_config"] = {"input_shape": [None, 10_000_000]}
    config["config"]["build_input_shape"] = [None, 10_000_000]


def deserialize_activation(config: dict) -> None:
    """An activation naming the function `keras.layers.deserialize` (a function, not a class)."""
    _dense_layer(config)["config"]["activation"] = {
        "module": "keras.layers",
        "class_name": "deserialize",
        "config": {},
        "registered_name": None,
    }


def flip_bytes(data: bytes, seed: int, count: int = 8) -> bytes:
    """`data` with `count` bytes replaced at positions drawn from `seed`."""
    import random

    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(count):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def _npz(arrays: dict[str, bytes]) -> bytes:
    import io

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, npy in arrays.items():
            archive.writestr(name, npy)
    return out.getvalue()


def _npy(array) -> bytes:
    import io

    import numpy as np

    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def npz_inflating(count: int) -> bytes:
    """An .npz whose array `layers/dense` holds `count` float32 zeros, deflated ~1000-fold."""
    import io

    import numpy as np

    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        npy, {"descr": "<f4", "fortran_order": False, "shape": (count,)}
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("layers/dense.npy", "w", force_zip64=True) as member:
            member.write(npy.getvalue())
            zeros = bytes(2**24)
            for _ in range(count * 4 // len(zeros)):
                member.write(zeros)
    return out.getvalue()


def npz_random(count: int) -> bytes:
    """An .npz whose array `layers/dense` holds `count` random float32 values, really stored."""
    import numpy as np

    return _npz({"layers/dense.npy": _npy(np.random.default_rng(0).random(count, "float32"))})


def npz_many(arrays: int, count: int) -> bytes:
    """An .npz of `arrays` arrays of `count` float64 zeros each."""
    import numpy as np

    return _npz({f"junk/{i}.npy": _npy(np.zeros(count)) for i in range(arrays)})


def h5_random(count: int) -> bytes:
    """Keras weights whose Dense kernel holds `count` random float32 values, really stored."""
    import io

    import h5py
    import numpy as np

    out = io.BytesIO()
    with h5py.File(out, "w") as h5:
        h5["layers/dense/vars/0"] = np.random.default_rng(0).random(count, "float32")
        h5["layers/dense/vars/1"] = np.zeros(10, "float32")
    return out.getvalue()
