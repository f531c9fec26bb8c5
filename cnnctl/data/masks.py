"""Segmentation data: images with a mask each, whose pixel values are class indices.

    DIR/images/[train/|test/]NAME.png   the images (any format cnnctl reads)
    DIR/masks/[train/|test/]NAME.png    one single-channel PNG each (8 or 16 bit grey, or
                                        palette read as indices), the image's own size
    DIR/classes.txt                     one class name a line (index = pixel value); or
                                        data.classes

A pair is skipped, and reported as `path: reason`, where its mask is missing, unreadable, of
another size than its image, or holds a value that is neither a class nor data.ignore_index; a
mask without an image is reported too. Every file is opened as a regular file only and its
size checked from the header before it is decoded (limits.py). Decoded pairs are kept in
memory, within the same budget as image folders; with data.cache none or disk (or auto, when
the images would not fit) pairs stream as image folders do, each worker of a cluster reading
only its share: every mask is still read and checked before training (so a bad pair is skipped
and reported before training), then dropped: the labels are `FileMasks`, the mask files (with
none: decoded again beside their image every epoch; with disk: their checked decode kept in the
decode cache), so the memory held for them grows with the number of files, not of pixels.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cnnctl.config import DataConfig, misnamed_class
from cnnctl.data.images import ImageError, image_paths, load_image
from cnnctl.data.index import SPLIT_FOLDERS
from cnnctl.data.maskfiles import FileMasks, image_size, mask_dtype, read_mask, resized
from cnnctl.data.sources import Arrays
from cnnctl.errors import ConfigError, DataError
from cnnctl.limits import read_bounded

CLASSES_FILE = "classes.txt"


def is_mask_folder(folder: Path) -> bool:
    return (folder / "images").is_dir() and (folder / "masks").is_dir()


def class_names(folder: Path, data: DataConfig) -> tuple[str, ...]:
    """data.classes, else the folder's classes.txt (one name a line)."""
    if data.classes:
        return tuple(data.classes)
    file = folder / CLASSES_FILE
    if not file.exists():
        raise ConfigError(
            f"{data.where(('path',))}: {folder} has no {CLASSES_FILE} and data.classes is not "
            "given",
            "list the class of each mask value: data.classes: [background, cell, ...], "
            f"or write {file} with one name a line",
        )
    text = read_bounded(file, DataError).decode("utf-8-sig", errors="replace")
    names = _names_of(file, text.splitlines())
    if len(names) < 2:
        raise DataError(f"{file}: {len(names)} class names; a mask needs at least 2 classes")
    return names


def _names_of(file: Path, lines: list[str]) -> tuple[str, ...]:
    """The names of classes.txt, line n = mask value n-1: blank lines only at the end (one in
    between would shift every later value), each name once, spaces around it dropped."""
    while lines and not lines[-1].strip():
        lines.pop()
    found = misnamed_class(lines)
    if found is not None:
        number, first = found[0] + 1, found[1]
        if first is None:
            raise DataError(
                f"{file}:{number}: empty line; line n names mask value n-1",
                "delete the line, or name the class of that mask value",
            )
        raise DataError(
            f"{file}:{number}: duplicate class name {lines[number - 1].strip()!r}, already on "
            f"line {first + 1}",
            "each mask value needs its own name; rename or remove one of them",
        )
    return tuple(line.strip() for line in lines)


def load_mask_folder(folder: Path, shape: tuple[int, int, int], data: DataConfig) -> Arrays:
    """Images and masks of `folder` as arrays: images (N, H, W, C) uint8 at `shape`, masks
    (N, H, W) int32 (resized with nearest-neighbour where the images are), per split."""
    if not is_mask_folder(folder):
        raise DataError(
            f"{folder}: task: segmentation reads a folder with images/ and masks/",
            "put each image in images/ and its mask (same name, .png) in masks/",
        )
    names = class_names(folder, data)
    skipped: list[tuple[str, str]] = []
    pairs = _pairs(folder, skipped)
    budget = _memory_budget()
    mode = _placement(data.cache, len(pairs), shape)
    # in memory: the image and an int32 mask; streamed: the file names
    per_pair = int(np.prod(shape)) + 4 * shape[0] * shape[1]
    if mode == "memory" and len(pairs) * per_pair > budget:
        raise DataError(
            f"{folder}: {len(pairs):,} pairs take {len(pairs) * per_pair:,} bytes decoded, more "
            f"than a quarter of this machine's memory ({budget:,})",
            "use fewer or smaller images (data.image_size)",
        )
    if mode != "memory":
        return _streamed(folder, pairs, shape, data, names, skipped, mode)
    found: dict[str, tuple[list, list, list]] = {}
    for split, image, mask in pairs:
        try:
            pixels, labels = read_pair(image, mask, shape, len(names), data.ignore_index)
        except ImageError as error:
            skipped.append(_reason(error, image))
            continue
        xs, ys, files = found.setdefault(split, ([], [], []))
        xs.append(pixels)
        ys.append(labels)
        files.append(image)
    if "train" not in found:
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise DataError(f"{folder}: no usable pair of image and mask{first}")

    def stack(split: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        if split not in found:
            return None, None
        return np.stack(found[split][0]), np.stack(found[split][1])

    x_train, y_train = stack("train")
    x_test, y_test = stack("test")
    x_val, y_val = stack("validation")
    return Arrays(
        x_train,
        y_train,
        x_test,
        y_test,
        names,
        str(folder),
        x_val=x_val,
        y_val=y_val,
        skipped=tuple(skipped),
        files={split: tuple(files) for split, (_, _, files) in found.items()},
    )


def _streamed(
    folder: Path,
    pairs: list[tuple[str, str, str]],
    shape: tuple[int, int, int],
    data: DataConfig,
    names: tuple[str, ...],
    skipped: list[tuple[str, str]],
    mode: str,
) -> Arrays:
    """The pairs left in files (`mode` none: decoded each epoch; disk: the decode cache), as
    image folders stream. Each mask is read and checked now, so a bad pair is skipped and
    reported before training, and then dropped: the labels are `FileMasks`."""
    from cnnctl.data.folders import load_index
    from cnnctl.data.index import checked_index

    classes, ignore = len(names), data.ignore_index
    dtype = mask_dtype(classes, ignore)
    store, failed, warnings = None, {}, ()
    if mode == "disk":  # checked and decoded once, into the decode cache (a hit: neither)
        from cnnctl.data.cache import cached_masks

        def fill(write: Any) -> dict[int, str]:
            failed = {}
            for row, (_, image, mask) in enumerate(pairs):
                try:
                    write(read_pair_mask(image, mask, shape, classes, ignore).astype(dtype))
                except ImageError as error:
                    failed[row] = str(error)
                    write(np.zeros(shape[:2], dtype))
            return failed

        signature = [(image, mask) for _, image, mask in pairs]
        key = [list(shape[:2]), classes, ignore, np.dtype(dtype).str]
        store, failed, note = cached_masks(signature, key, (len(pairs), *shape[:2]), dtype, fill)
        warnings = (note,)
    images, masks, sizes, rows, splits = [], [], [], [], []
    for row, (split, image, mask) in enumerate(pairs):
        try:
            if row in failed:
                raise ImageError(failed[row])
            width, height = image_size(Path(image))
            if store is None:  # checked, then dropped: it is decoded again while streaming
                read_mask(Path(mask), (width, height), classes, ignore)
        except ImageError as error:
            skipped.append(_reason(error, image))
            continue
        images.append(image)
        masks.append(mask)
        sizes.append((width, height))
        rows.append(row)
        splits.append(split)
    if "train" not in splits:
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise DataError(f"{folder}: no usable pair of image and mask{first}")
    labels = FileMasks(masks, sizes, shape[:2], dtype, classes, ignore, store, rows)
    index = checked_index(images, np.arange(len(images)), splits, names, str(folder))
    arrays = load_index(index, shape, mode)
    # the index keeps the pairs whose image header reads; its labels are positions in `labels`
    return replace(
        arrays,
        y_train=labels[arrays.y_train],
        y_test=None if arrays.y_test is None else labels[arrays.y_test],
        y_val=None if arrays.y_val is None else labels[arrays.y_val],
        skipped=(*skipped, *arrays.skipped),
        warnings=(*warnings, *arrays.warnings),
    )


def _placement(cache: str, pairs: int, shape: tuple[int, int, int]) -> str:
    from cnnctl.data.folders import placement

    return placement(cache, pairs, shape)


def _memory_budget() -> int:
    from cnnctl.data.folders import memory_budget

    return memory_budget()


def _reason(error: ImageError, image: str) -> tuple[str, str]:
    """`(path, reason)`: the mask's path where the reason is the mask's (it says so first)."""
    text = str(error)
    if text.startswith("mask "):
        path, _, reason = text.removeprefix("mask ").partition(": ")
        return path, reason
    return image, text


def _pairs(folder: Path, skipped: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(split, image, mask) for each image; images without a mask and masks without an image
    go to `skipped`."""
    images_root, masks_root = folder / "images", folder / "masks"
    splits = {
        SPLIT_FOLDERS[p.name]: p.name
        for p in sorted(images_root.iterdir())
        if p.is_dir() and p.name in SPLIT_FOLDERS
    }
    masks = {
        os.path.splitext(os.path.relpath(p, masks_root))[0]: p for p in image_paths(masks_root)
    }
    pairs, used = [], set()
    for image in image_paths(images_root):
        relative = os.path.relpath(image, images_root)
        top = relative.split(os.sep, 1)[0]
        split = next((s for s, name in splits.items() if name == top), "train")
        key = os.path.splitext(relative)[0]
        mask = masks.get(key)
        if mask is None:
            skipped.append((image, f"no mask (expected {masks_root / key}.png)"))
            continue
        used.add(key)
        pairs.append((split, image, mask))
    for key in sorted(set(masks) - used):
        skipped.append((masks[key], "a mask without an image"))
    if splits and "train" not in splits:
        raise DataError(
            f"{images_root}: has {', '.join(sorted(splits.values()))}/ but no train/",
            "put the training images in images/train/ and their masks in masks/train/",
        )
    return pairs


def read_pair(
    image: str, mask: str, shape: tuple[int, int, int], classes: int, ignore: int
) -> tuple[np.ndarray, np.ndarray]:
    """One image at `shape` and its mask at the same height and width; `ImageError` if either
    cannot be used (a mask's reason starts with `mask PATH: `)."""
    width, height = image_size(Path(image))
    labels = read_mask(Path(mask), (width, height), classes, ignore)
    pixels = load_image(Path(image), shape[0], shape[1], shape[2])
    return pixels, resized(labels, shape)


def read_pair_mask(
    image: str, mask: str, shape: tuple[int, int, int], classes: int, ignore: int
) -> np.ndarray:
    """The mask of a pair (its image's header read, not its pixels) at `shape`'s height and
    width, 8 or 16 bit as its values need (a quarter or half of int32's memory); `ImageError`
    as `read_pair` gives it."""
    width, height = image_size(Path(image))
    return resized(read_mask(Path(mask), (width, height), classes, ignore), shape, compact=True)
