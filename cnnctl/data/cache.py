"""The decode cache: every image of a file index decoded once into one uint8 .npy, reused later.

It lives in $CNNCTL_CACHE_DIR (default ~/.cache/cnnctl/), outside run folders, one folder
per content key (file list, sizes, mtimes, image size and color mode); a changed file
gives a new key. A cache is built in a temporary folder and renamed into place, so two
processes building it at once both end with the same complete copy. Deleting it is
always safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cnnctl.data.index import FileIndex
from cnnctl.errors import CnnctlError, DataError
from cnnctl.escape import safe_text
from cnnctl.limits import npy_header, open_regular, read_json

VERSION = 1  # bump when the decoding changes
PROBES_VERSION = 1  # bump when the header check changes


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
    return _read_or_build(
        folder,
        "images.npy",
        lambda: _whole(folder, len(index.paths), image_shape),
        lambda: _build(index, image_shape, folder),
        "decode cache {done} {folder}",
    )


def _read_or_build(
    folder: Path, name: str, check: Callable, build: Callable, what: str
) -> tuple[Path, dict[int, str], str]:
    """`folder/name` when `check()` finds it whole, else built (a damaged folder set aside
    first) and checked again; its failed rows (`check`'s answer) and a note, `what` saying
    where (`{done}`: written to / read from, `{folder}`)."""
    meta = check() if folder.exists() else None
    built = meta is None
    if built:
        if folder.exists():  # damaged: set aside (atomic), then rebuilt
            _set_aside(folder)
        build()
        meta = check()
        if meta is None:
            raise DataError(
                f"{folder}: the decode cache just written does not read back",
                f"check the disk, or set data.cache: none; delete it with: rm -r {folder}",
            )
    size = (folder / name).stat().st_size
    done = "written to" if built else "read from"
    note = (
        f"{what.format(done=done, folder=folder)} ({size / 1e9:.2f} GB); "
        f"delete it any time: rm -r {folder}"
    )
    return folder / name, meta, note


def _set_aside(folder: Path) -> None:
    """A damaged cache folder moved aside (atomic) and deleted."""
    aside = folder.with_name(f".{folder.name}.damaged-{os.getpid()}-{time.monotonic_ns()}")
    with contextlib.suppress(OSError):
        os.rename(folder, aside)
        if os.path.islink(aside) or not os.path.isdir(aside):
            os.unlink(aside)  # a planted symlink (or file) goes; never what it points to
        else:
            shutil.rmtree(aside, ignore_errors=True)


def _whole(
    folder: Path,
    files: int,
    image_shape: tuple[int, ...],
    dtype: Any = np.uint8,
    name: str = "images.npy",
) -> dict[int, str] | None:
    """The failed rows of a complete cache folder; None when anything in it is off.

    A cache can be damaged by a full disk, a hand edit or another user: its files are
    read like any other input (regular files, bounded, checked against the index).
    """
    shape = (files, *image_shape)
    try:
        meta = read_json(folder / "meta.json", DataError)
        with open_regular(folder / name, DataError) as stream:
            layout = npy_header(stream)
            data = int(np.prod(shape)) * np.dtype(dtype).itemsize
            whole = stream.tell() + data == os.fstat(stream.fileno()).st_size
    except (CnnctlError, OSError, ValueError):
        return None
    failed = meta.get("failed") if isinstance(meta, dict) else None
    if (
        layout != (shape, np.dtype(dtype))
        or not whole
        or meta.get("version") != VERSION
        or not isinstance(failed, dict)
        or not all(k.isdigit() and int(k) < files and isinstance(v, str) for k, v in failed.items())
    ):
        return None
    return {int(k): safe_text(v[:300]) for k, v in failed.items()}  # it may have been planted


def _build(index: FileIndex, image_shape: tuple[int, int, int], folder: Path) -> None:
    """Every image of `index` decoded into the cache's images.npy, as it decodes."""
    from cnnctl.data.stream import FileImages, decode_all

    files = FileImages(index.paths, index.pillow, image_shape)

    def fill(write: Callable[[np.ndarray], None]) -> dict[int, str]:
        _, failed = decode_all(files, sink=write)
        return {r: files.reason(r) for r in failed}

    shape = (len(index.paths), *image_shape)
    about = {"shape": list(image_shape), "files": len(index.paths), "origin": index.origin}
    _build_rows(folder, "images.npy", shape, np.uint8, fill, about)


def cached_masks(
    pairs: list[tuple[str, str]],
    settings: list,
    shape: tuple[int, ...],
    dtype: Any,
    fill: Callable[[Callable[[np.ndarray], None]], dict[int, str]],
) -> tuple[Path, dict[int, str], str]:
    """The cache's masks.npy (`shape`, `dtype`) for `pairs` (image, mask) and `settings`,
    written by `fill` (each mask checked and decoded, in order) if missing; the failed rows ->
    reason (a failed mask checks as before); and a note. Keyed, built and checked as the
    images' cache is: a changed image or mask file gives a new key."""
    digest = hashlib.blake2b(digest_size=16)
    stamps = []
    for image, mask in pairs:
        for path in (image, mask):
            try:
                info = os.stat(path)
                stamps.append((str(path), info.st_size, info.st_mtime_ns))
            except (OSError, ValueError):
                stamps.append((str(path), -1, -1))
    digest.update(json.dumps([VERSION, "masks", settings, list(shape), stamps]).encode())
    folder = cache_root() / f"masks-{digest.hexdigest()}"
    return _read_or_build(
        folder,
        "masks.npy",
        lambda: _whole(folder, shape[0], shape[1:], dtype, "masks.npy"),
        lambda: _build_rows(folder, "masks.npy", shape, dtype, fill, {"shape": list(shape)}),
        "masks {done} the decode cache {folder}",
    )


def _build_rows(
    folder: Path,
    name: str,
    shape: tuple[int, ...],
    dtype: Any,
    fill: Callable,
    about: dict[str, Any],
) -> None:
    """`fill(write)` (the failed rows -> reason) writing every row, in order, into a fresh
    temporary folder's `name` (.npy) beside meta.json (`about` and the failed rows), renamed
    into place."""
    root = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    need = int(np.prod(shape)) * np.dtype(dtype).itemsize
    free = shutil.disk_usage(root).free
    if need * 1.05 > free:
        raise DataError(
            f"{root}: {need / 1e9:.1f} GB needed for the decode cache, {free / 1e9:.1f} GB free",
            "set CNNCTL_CACHE_DIR to a larger disk, or data.cache: none to stream the files",
        )
    # mkdtemp: a fresh name that nobody can have planted a symlink at (the cache may be shared)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~_umask())  # readable by the others who share the cache, as before
    try:
        with open(tmp / name, "wb") as stream:  # written row by row: memory stays flat
            header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(stream, header)
            failed = fill(lambda rows: stream.write(np.ascontiguousarray(rows, dtype).tobytes()))
            stream.flush()
            os.fsync(stream.fileno())
        meta = {"version": VERSION, **about, "failed": {str(k): v for k, v in failed.items()}}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, folder)  # atomic: readers see no folder, or a whole one
        except OSError:
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there when another process won the race


def remembered_probes(
    paths: list[str], origin: str, probe: Callable[[str], bool | str], settings: str
) -> list[bool | str]:
    """`probe` of every path, remembered across runs per (path, size, mtime).

    A folder of 200,000 photos has its headers read once; later runs only stat the files.
    `settings`: what else the answers depend on (a limit); when it changes, all are redone.
    """
    name = hashlib.blake2b(os.path.abspath(origin).encode(), digest_size=8).hexdigest()
    memo_path = cache_root() / f"probes-{name}.json"
    memo = _read_memo(memo_path, settings)

    stamps = np.full((len(paths), 2), -1, dtype=np.int64)  # size, mtime; -1: not a regular file
    stale = []

    def check(row: int) -> bool | str:
        path = paths[row]
        try:
            info = os.stat(path)
        except (OSError, ValueError):
            return probe(path)
        if not stat.S_ISREG(info.st_mode):
            return probe(path)
        stamps[row] = info.st_size, info.st_mtime_ns
        seen = memo.get(path)
        if isinstance(seen, list) and len(seen) == 3 and seen[:2] == stamps[row].tolist():
            if isinstance(seen[2], (bool, str)):
                return seen[2]
        stale.append(row)
        return probe(path)

    # Rows go to the threads in slices: a future per file would cost more than the file's entry.
    slices = [range(i, min(i + 1024, len(paths))) for i in range(0, len(paths), 1024)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [
            r for part in pool.map(lambda rows: [check(i) for i in rows], slices) for r in part
        ]
    regular = np.flatnonzero(stamps[:, 0] >= 0).tolist()
    if stale or len(memo) != len({paths[row] for row in regular}):
        memo = None  # the answers in hand replace it: never two copies at once
        _write_memo(memo_path, settings, paths, stamps, results, regular)
    return results


def _write_memo(
    path: Path,
    settings: str,
    paths: list[str],
    stamps: np.ndarray,
    results: list[bool | str],
    regular: list[int],
) -> None:
    """Remember the checks of the `regular` rows; a read-only cache folder only costs time."""
    files = {paths[row]: [*stamps[row].tolist(), results[row]] for row in regular}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp (O_EXCL, in the cache folder): a symlink planted at a predictable name would
        # be followed by open(..., "w") and overwrite what it points to
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(name)
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            with open(fd, "w") as stream:  # streamed: no second copy of the whole text
                json.dump({"version": PROBES_VERSION, "settings": settings, "files": files}, stream)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _read_memo(path: Path, settings: str) -> dict:
    """The remembered header checks; {} when missing, too large or damaged."""
    try:
        memo = read_json(path, DataError)
    except (CnnctlError, OSError):
        return {}
    wanted = {"version": PROBES_VERSION, "settings": settings}
    if not isinstance(memo, dict) or any(memo.get(k) != v for k, v in wanted.items()):
        return {}
    files = memo.get("files")
    return files if isinstance(files, dict) else {}
