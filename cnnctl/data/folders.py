"""Image folders and CSVs of paths -> a file index -> arrays, a decode cache, or a stream.

    data/cats/001.jpg  data/dogs/002.png ...                       one split
    data/train/cats/...  data/test/cats/...  [data/val/cats/...]    given splits

`data.cache` picks where the decoded pixels live: `memory` (arrays, as before),
`disk` (the decode cache), `none` (decoded each epoch, streamed), `auto`
(memory when the decoded images fit a quarter of RAM, else streamed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnnctl.data.index import SPLIT_FOLDERS, FileIndex, index_csv, index_folder
from cnnctl.data.sources import Arrays
from cnnctl.errors import DataError
from cnnctl.tasks import Task

__all__ = ["SPLIT_FOLDERS", "load_image_folder", "load_path_csv", "load_index", "placement"]


def load_image_folder(folder: Path, shape: tuple[int, int, int], cache: str = "auto") -> Arrays:
    """Index the images under `folder` (headers only), then place the pixels as `cache` says."""
    return load_index(index_folder(folder), shape, cache)


def load_path_csv(
    path: Path,
    label_column: str | list[str],
    shape: tuple[int, int, int],
    cache: str = "auto",
    task: Task | None = None,
) -> Arrays:
    """A CSV of `path,label[,split]` rows, read like a folder; `task` reads the label cells."""
    return load_index(index_csv(path, label_column, task), shape, cache)


def memory_budget() -> int:
    """A quarter of the machine's RAM, in bytes: the most `auto` keeps decoded in memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 2 * 1024**3


def placement(cache: str, files: int, shape: tuple[int, int, int]) -> str:
    """memory, disk or none: where decoded images live for `cache` and this many files."""
    if cache != "auto":
        return cache
    return "memory" if files * int(np.prod(shape)) <= memory_budget() else "none"


def load_index(index: FileIndex, shape: tuple[int, int, int], cache: str = "auto") -> Arrays:
    """The index's splits as arrays (decoded now) or as FileImages (decoded while training)."""
    from cnnctl.data.stream import FileImages, decode_all

    mode = placement(cache, len(index.paths), shape)
    files = FileImages(index.paths, index.pillow, shape)
    store, failed, warnings = None, {}, ()
    if mode == "disk":
        from cnnctl.data.cache import cached_images

        store, failed, note = cached_images(index, shape)
        warnings = (note,)
        files = FileImages(index.paths, index.pillow, shape, store)
    elif mode == "memory":
        pixels, bad = decode_all(files)
        failed = {row: files.reason(row) for row in bad}
    usable = np.ones(len(index.paths), dtype=bool)
    usable[list(failed)] = False
    skipped = index.skipped + tuple(
        (str(index.paths[r]), reason) for r, reason in sorted(failed.items())
    )
    loaded, names = {}, {}
    for split in ("train", "test", "validation"):
        rows = index.select(split)
        rows = rows[usable[rows]]
        if split == "train" and len(rows) == 0:
            raise DataError(f"{index.origin}: none of its {len(index.paths)} images could be read")
        if len(rows):
            x = pixels[rows] if mode == "memory" else files[rows]
            loaded[split], names[split] = (
                (x, index.labels[rows]),
                tuple(str(p) for p in index.paths[rows]),
            )
    test, val = loaded.get("test", (None, None)), loaded.get("validation", (None, None))
    return Arrays(
        *loaded["train"],
        *test,
        index.class_names,
        index.origin,
        *val,
        skipped=skipped,
        files=names,
        warnings=warnings,
    )
