"""The decode cache: every image of a file index decoded once into one uint8 .npy, reused later.

It lives in $CNNCTL_CACHE_DIR (default ~/.cache/cnnctl/), outside run folders, one folder
per content key (file list, sizes, mtimes, image size and color mode); a changed file
gives a new key. A cache is built in a temporary folder and renamed into place, so two
processes building it at once both end with the same complete copy. Deleting it is
always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from cnnctl.data.index import FileIndex
from cnnctl.errors import DataError

VERSION = 1  # bump when the decoding changes


def cache_root() -> Path:
    return Path(os.environ.get("CNNCTL_CACHE_DIR") or Path.home() / ".cache" / "cnnctl")


def cache_key(index: FileIndex, image_shape: tuple[int, int, int]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([VERSION, list(image_shape), index.signature()]).encode())
    return digest.hexdigest()


def cached_images(
    index: FileIndex, image_shape: tuple[int, int, int]
) -> tuple[Path, dict[int, str], str]:
    """The cache's images.npy for `index` (built if missing), failed rows -> reason, and a note."""
    folder = cache_root() / f"decoded-{cache_key(index, image_shape)}"
    built = False
    if not (folder / "meta.json").is_file():
        _build(index, image_shape, folder)
        built = True
    meta = json.loads((folder / "meta.json").read_text())
    size = (folder / "images.npy").stat().st_size
    note = (
        f"decode cache {'written to' if built else 'read from'} {folder} ({size / 1e9:.2f} GB); "
        f"delete it any time: rm -r {folder}"
    )
    return folder / "images.npy", {int(k): v for k, v in meta["failed"].items()}, note


def _build(index: FileIndex, image_shape: tuple[int, int, int], folder: Path) -> None:
    from cnnctl.data.stream import FileImages, decode_all

    root = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    need = len(index.paths) * int(np.prod(image_shape))
    free = shutil.disk_usage(root).free
    if need * 1.05 > free:
        raise DataError(
            f"{root}: {need / 1e9:.1f} GB needed for the decode cache, {free / 1e9:.1f} GB free",
            "set CNNCTL_CACHE_DIR to a larger disk, or data.cache: none to stream the files",
        )
    tmp = root / f".{folder.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        files = FileImages(index.paths, index.pillow, image_shape)
        with open(tmp / "images.npy", "wb") as stream:  # written as it decodes: memory stays flat
            header = {
                "descr": "|u1",
                "fortran_order": False,
                "shape": (len(index.paths), *image_shape),
            }
            np.lib.format.write_array_header_1_0(stream, header)
            _, failed = decode_all(files, sink=lambda images: stream.write(images.tobytes()))
            stream.flush()
            os.fsync(stream.fileno())
        reasons = {str(r): files.reason(r) for r in failed}
        meta = {
            "version": VERSION,
            "shape": list(image_shape),
            "files": len(index.paths),
            "origin": index.origin,
            "failed": reasons,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, folder)  # atomic: readers see no folder, or a whole one
        except OSError:
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there when another process won the race
