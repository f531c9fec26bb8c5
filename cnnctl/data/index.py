"""A file index: (path, label, split) for every image of a folder or a CSV of paths, built once.

Nothing here decodes pixels. Each file gets a header check (Pillow reads only the
header) so unreadable files are found before training, and a route: TensorFlow's
own decoders for plain JPEG/PNG/GIF/BMP, Pillow for what they cannot read. The
checks are remembered in the cache folder per (path, size, mtime): later runs on
the same folder only stat the files.

    data/cats/001.jpg  data/dogs/002.png ...                       one split
    data/train/cats/...  data/test/cats/...  [data/val/cats/...]    given splits
    images.csv with columns path,label[,split]                      a list of files
"""

from __future__ import annotations

import csv
import io
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnctl.data.images import IMAGE_EXTENSIONS, image_paths, size_refusal
from cnnctl.errors import DataError, first_line
from cnnctl.limits import limit, open_regular, refuse_over
from cnnctl.tasks import Task, task_named

# Split folder names people use -> our split names (config.SPLITS).
SPLIT_FOLDERS = {"train": "train", "test": "test", "val": "validation", "validation": "validation"}
PATH_COLUMNS = ("path", "file", "filename", "image")
TF_FORMATS = {
    "JPEG": {"L", "RGB"},
    "PNG": {"L", "LA", "RGB", "RGBA"},
    "GIF": {"P", "L", "RGB"},
    "BMP": {"L", "RGB", "RGBA"},
}


@dataclass(frozen=True)
class FileIndex:
    """Every usable image file with its label and split; `pillow`: TensorFlow cannot decode it."""

    paths: np.ndarray  # str, one per file
    labels: np.ndarray  # as the task reads them: class indices, multi-hot rows, numbers
    splits: np.ndarray  # str: train / validation / test
    pillow: np.ndarray  # bool
    class_names: tuple[str, ...]
    origin: str
    skipped: tuple[tuple[str, str], ...] = ()  # (path, reason) failing the header check

    def select(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def signature(self) -> list[tuple[str, int, int]]:
        """(path, size, mtime) of every file: what a decode cache is keyed by."""
        out = []
        for path in self.paths:
            info = os.stat(path)
            out.append((str(path), info.st_size, info.st_mtime_ns))
        return out


def folder_classes(folder: Path) -> list[str]:
    """The class names of a folder of class folders (or of split folders of them), cheaply:
    the sub-folders' names, no image opened."""
    return _class_names(_split_roots(folder)["train"])


def _split_roots(folder: Path) -> dict[str, Path]:
    splits = {
        SPLIT_FOLDERS[p.name]: p
        for p in sorted(folder.iterdir())
        if p.is_dir() and p.name in SPLIT_FOLDERS
    }
    if splits and "train" not in splits:
        raise DataError(
            f"{folder}: has {', '.join(p.name for p in splits.values())}/ but no train/",
            "put the training images in train/<class>/",
        )
    return splits or {"train": folder}


def index_folder(folder: Path) -> FileIndex:
    """Index a folder of class folders, or of train/ test/ [val/] split folders of class folders."""
    roots = _split_roots(folder)
    names = _class_names(roots["train"])
    paths, labels, split_of = [], [], []
    for split, root in roots.items():
        unknown = sorted(set(_class_names(root, allow_empty=True)) - set(names))
        if unknown:
            raise DataError(
                f"{root}: class folder '{unknown[0]}' is not in {roots['train']}",
                "every split needs the same class folders",
            )
        for label, name in enumerate(names):
            images = _images_in(root / name)
            paths += images
            labels += [label] * len(images)
            split_of += [split] * len(images)
    return checked_index(paths, labels, split_of, tuple(names), str(folder))


def _text(path: Path) -> io.TextIOWrapper:
    """A CSV opened as text, only if it is a regular file (a FIFO would hang the read)."""
    return io.TextIOWrapper(
        open_regular(path, DataError), encoding="utf-8", errors="replace", newline=""
    )


def is_path_csv(path: Path) -> bool:
    """A CSV whose header names a column of file paths (else it is a CSV of pixels)."""
    with _text(path) as stream:
        header = [c.strip().lower() for c in stream.readline(65536).split(",")]
    return any(c in PATH_COLUMNS for c in header)


def index_csv(path: Path, label_column: str | Sequence[str], task: Task | None = None) -> FileIndex:
    """Index a CSV of `path,label[,split]` rows; paths are relative to the CSV's folder.

    The label cells are read by `task` (default: one column of class names).
    """
    task = task or task_named("classification")
    columns = [label_column] if isinstance(label_column, str) else list(label_column)
    with _text(path) as stream:
        rows = csv.DictReader(stream)
        header = [c.strip() for c in rows.fieldnames or []]
        column = next((c for c in header if c.lower() in PATH_COLUMNS), None)
        for wanted in columns:
            if wanted not in header:
                raise DataError(
                    f"{path}: no column '{wanted}' (columns: {', '.join(header[:5])})",
                    "set data.label_column to the column that holds the class",
                )
        table, cells = [], []
        seen: dict[str, int] = {}  # path -> its first line: bounded by csv_rows, as `table` is
        for number, row in _rows(path, rows):
            file = (row.get(column) or "").strip()
            labels = tuple((row.get(c) or "").strip() for c in columns)
            empty = next((c for c, cell in zip(columns, labels, strict=True) if not cell), None)
            if not file or empty:
                raise DataError(
                    f"{path}:{number}: empty {column if not file else empty}",
                    "every row needs a file path and a label",
                )
            split = SPLIT_FOLDERS.get((row.get("split") or "train").strip().lower())
            if split is None:
                raise DataError(
                    f"{path}:{number}: split '{row['split']}' is not train, val or test"
                )
            image = str(path.parent / file)
            if image in seen:  # labels agreeing or not: one image could be in train and validation
                raise DataError(
                    f"{path}:{number}: image {file!r} is listed twice, lines {seen[image]} "
                    f"and {number}",
                    "list each image once: delete one of the two rows",
                )
            seen[image] = number
            table.append((image, number, split))
            cells.append(labels)
    if not table:
        raise DataError(f"{path}: no rows")
    paths, lines, splits = zip(*table, strict=True)
    labels, names = task.read_labels(cells, lines, splits, columns, str(path))
    return checked_index(list(paths), labels, list(splits), tuple(names), str(path))


def _rows(path: Path, rows: csv.DictReader) -> Iterator[tuple[int, dict]]:
    """(line, row) of a CSV: rows bounded by `csv_rows`, a cell too long one clear line."""
    number = 1
    try:
        for number, row in enumerate(rows, start=2):
            refuse_over("csv_rows", number - 1, str(path), "too many rows", DataError)
            yield number, row
    except csv.Error as error:  # "field larger than field limit (131072)", a NUL byte, ...
        raise DataError(
            f"{path}:{number + 1}: not a CSV of paths and labels ({first_line(error, 120)})",
            f"a cell holds a file path or a label, at most {csv.field_size_limit():,} characters",
        ) from None


def _class_names(root: Path, allow_empty: bool = False) -> list[str]:
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names and not allow_empty:
        raise DataError(
            f"{root}: no class folders", "put each class's images in a sub-folder named after it"
        )
    return names


def _images_in(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    images = image_paths(folder)
    if not images:
        raise DataError(
            f"{folder}: class folder has no images",
            f"add images ({', '.join(sorted(IMAGE_EXTENSIONS)[:4])}, ...) or remove the folder",
        )
    return images


def checked_index(
    paths: list[str],
    labels: list[int] | np.ndarray,
    splits: list[str],
    names: tuple[str, ...],
    origin: str,
) -> FileIndex:
    """An index of `paths` (a folder's, a CSV's, or the images of a mask folder) keeping the
    files whose header reads; each one's decoder noted."""
    from cnnctl.data.cache import remembered_probes

    unique = list(dict.fromkeys(paths))  # each file probed once, however often it is listed
    answers = remembered_probes(
        unique, origin, probe, settings=f"pixels<={limit('pixels')},bytes<={limit('image_bytes')}"
    )
    found = dict(zip(unique, answers, strict=True))
    probes = [found[p] for p in paths] if len(unique) < len(paths) else answers
    keep = [i for i, p in enumerate(probes) if isinstance(p, bool)]
    skipped = tuple(
        (paths[i], probes[i]) for i in range(len(paths)) if not isinstance(probes[i], bool)
    )
    if not keep:
        raise DataError(
            f"{origin}: none of its {len(paths)} images could be read",
            f"first: {skipped[0][0]}: {skipped[0][1]}" if skipped else "add images",
        )
    take = np.asarray(keep, dtype=np.int64)
    return FileIndex(
        np.asarray(paths, dtype=object)[take],
        (labels if isinstance(labels, np.ndarray) else np.asarray(labels, dtype=np.int64))[take],
        np.asarray(splits, dtype=object)[take],
        np.asarray([probes[i] for i in keep], dtype=bool),
        names,
        origin,
        skipped,
    )


def probe(path: str) -> bool | str:
    """Read a file's header: whether Pillow must decode it, or why it cannot be used."""
    from PIL import Image, UnidentifiedImageError

    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if info.st_size == 0:
            return "empty file"
        with Image.open(path) as image:
            width, height, fmt, mode = image.width, image.height, image.format, image.mode
    except UnidentifiedImageError:
        return "not an image file Pillow can read"
    except (OSError, SyntaxError, ValueError) as error:
        return f"damaged image header ({error})"
    except Image.DecompressionBombError:
        return f"image is larger than {limit('pixels'):,} pixels"
    if width == 0 or height == 0:
        return "image has zero size"
    refusal = size_refusal(width, height, mode)
    if refusal:
        return refusal.removeprefix("refused: ")
    return mode not in TF_FORMATS.get(fmt or "", set())
