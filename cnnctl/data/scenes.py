"""Fashion scenes: a derived dataset of 64x64 scenes of one to three Fashion-MNIST items.

Each scene has three kinds of label, for the tasks beyond classification: the set of item
classes (multi-label), the number of items (regression) and a mask (segmentation).

    DIR/images/{train,test}/NNNNN.png   greyscale scenes
    DIR/masks/{train,test}/NNNNN.png    class + 1 where an item is bright, 0 background,
                                        255 (ignore) on an item's faint rim
    DIR/labels.csv                      path,split,tags,count (a CSV of paths, as data.path reads)
    DIR/classes.txt                     background, then the ten class names (index = mask value)

Items of the train split only go to train scenes and test items only to test scenes, so no
item leaks. Pure numpy and Pillow: no TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnctl.errors import DataError

SCENE_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
BRIGHT = 64  # an item's pixel at least this bright is the item; fainter ones are its rim
IGNORE = 255  # mask value of the rim: left out of loss and metrics
MIN_BRIGHT_PIXELS = 16  # fainter items would be in the tags but hardly in the mask: not used
MAX_ITEMS = 3
GAP = 2  # pixels between the boxes of two items
MIN_SIZE = 2 * (28 + GAP)  # three 28x28 items always fit (in three quarters of the scene)
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Scene:
    """One scene: pixels, mask, and which items of its split it holds, where."""

    image: np.ndarray  # uint8 (size, size)
    mask: np.ndarray  # uint8 (size, size)
    items: tuple[int, ...]  # indices into the split's images
    classes: tuple[int, ...]  # class of each item
    boxes: tuple[tuple[int, int, int, int], ...]  # (top, left, height, width) of each item

    @property
    def tags(self) -> str:
        """The distinct class names, in class order, separated by spaces."""
        return " ".join(SCENE_CLASSES[c] for c in sorted(set(self.classes)))


@dataclass(frozen=True)
class SceneSet:
    """What `make_scenes` wrote, and from where."""

    folder: Path
    counts: dict[str, int]  # split -> scenes
    size: int
    origin: str
    warnings: tuple[str, ...] = ()


def make_scenes(
    folder: Path,
    count: int,
    test_count: int,
    size: int = 64,
    seed: int = 42,
    offline: bool = False,
) -> SceneSet:
    """Write `count` train and `test_count` test scenes into `folder`, which must be new or empty.

    Everything is written into a hidden folder beside it and renamed into place at the end, so an
    interrupted run leaves no half dataset.
    """
    from cnnctl.data.sources import load_builtin

    _refuse_existing(folder)
    if size < MIN_SIZE:
        raise DataError(f"scenes of {size}x{size} pixels are too small", f"use at least {MIN_SIZE}")
    arrays = load_builtin("fashion_mnist", offline=offline)
    if arrays.x_test is None or arrays.y_test is None:
        raise DataError(f"{arrays.origin}: Fashion-MNIST without a test split")
    sources = {"train": (arrays.x_train, arrays.y_train), "test": (arrays.x_test, arrays.y_test)}
    counts = {"train": count, "test": test_count}
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".partial"))
    try:
        rows = []
        for number, split in enumerate(SPLITS):
            images, labels = sources[split]
            rng = np.random.default_rng([seed, number])  # a split's scenes: its own stream
            rows += _write_split(
                work, split, compose_scenes(images, labels, counts[split], size, rng)
            )
        _write_tables(work, rows)
        os.chmod(work, 0o777 & ~_umask())  # mkdtemp makes 0700; a dataset is for sharing
        _rename(work, folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(work)
    return SceneSet(folder, counts, size, arrays.origin, arrays.warnings)


def compose_scenes(
    images: np.ndarray, labels: np.ndarray, count: int, size: int, rng: np.random.Generator
) -> Iterator[Scene]:
    """`count` scenes of one to three of these items each, placed without overlap.

    Items are taken in a shuffled order, each once until all have been used.
    """
    images = np.asarray(images).reshape(len(images), *np.shape(images)[1:3])
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    usable = np.flatnonzero((images >= BRIGHT).sum(axis=(1, 2)) >= MIN_BRIGHT_PIXELS)
    if len(usable) == 0:
        raise DataError("no Fashion-MNIST item is bright enough to make scenes of")
    order: list[int] = []
    for _ in range(count):
        n = int(rng.integers(1, MAX_ITEMS + 1))
        while len(order) < n:
            order += [int(i) for i in rng.permutation(usable)]
        items, order = order[:n], order[n:]
        crops = [_crop(images[i]) for i in items]
        corners = _place([c.shape for c in crops], size, rng)
        image = np.zeros((size, size), np.uint8)
        mask = np.zeros((size, size), np.uint8)
        for crop, (top, left), item in zip(crops, corners, items, strict=True):
            h, w = crop.shape
            image[top : top + h, left : left + w] = crop
            mask[top : top + h, left : left + w] = item_mask(crop, int(labels[item]))
        yield Scene(
            image,
            mask,
            tuple(items),
            tuple(int(labels[i]) for i in items),
            tuple((t, left, *c.shape) for c, (t, left) in zip(crops, corners, strict=True)),
        )


def item_mask(pixels: np.ndarray, label: int) -> np.ndarray:
    """class + 1 where the item is bright, IGNORE on its faint rim, 0 where it is absent."""
    rim = np.where(pixels > 0, IGNORE, 0)
    return np.where(pixels >= BRIGHT, label + 1, rim).astype(np.uint8)


def _crop(pixels: np.ndarray) -> np.ndarray:
    """The item's pixels inside their tight box (items need not fill their 28x28 square)."""
    rows = np.flatnonzero(pixels.any(axis=1))
    cols = np.flatnonzero(pixels.any(axis=0))
    return pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _place(
    shapes: list[tuple[int, int]], size: int, rng: np.random.Generator, tries: int = 50
) -> list[tuple[int, int]]:
    """Top-left corners for boxes of these shapes, at least GAP apart: random, else a grid."""
    for _ in range(tries):
        boxes: list[tuple[int, int, int, int]] = []
        for h, w in shapes:
            box = (int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1)), h, w)
            if any(_near(box, placed) for placed in boxes):
                break
            boxes.append(box)
        if len(boxes) == len(shapes):
            return [(top, left) for top, left, _, _ in boxes]
    # Rarely three large items: one quarter each, wherever it fits inside the quarter.
    cell = size // 2
    return [
        (
            cell * (i // 2) + int(rng.integers(0, cell - h - GAP + 1)),
            cell * (i % 2) + int(rng.integers(0, cell - w - GAP + 1)),
        )
        for i, (h, w) in enumerate(shapes)
    ]


def _near(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two boxes (top, left, height, width) overlap or are closer than GAP."""
    return not (
        a[0] + a[2] + GAP <= b[0]
        or b[0] + b[2] + GAP <= a[0]
        or a[1] + a[3] + GAP <= b[1]
        or b[1] + b[3] + GAP <= a[1]
    )


def _write_split(work: Path, split: str, scenes: Iterator[Scene]) -> list[dict[str, object]]:
    from PIL import Image

    for kind in ("images", "masks"):
        (work / kind / split).mkdir(parents=True)
    rows: list[dict[str, object]] = []
    for number, scene in enumerate(scenes):
        name = f"{split}/{number:05d}.png"
        Image.fromarray(scene.image).save(work / "images" / name)
        Image.fromarray(scene.mask).save(work / "masks" / name)
        rows.append(
            {
                "path": f"images/{name}",
                "split": split,
                "tags": scene.tags,
                "count": len(scene.items),
            }
        )
    return rows


def _write_tables(work: Path, rows: list[dict[str, object]]) -> None:
    from cnnctl.runs.io import rows_to_csv

    (work / "labels.csv").write_text(rows_to_csv(rows), encoding="utf-8")
    (work / "classes.txt").write_text("\n".join(("background", *SCENE_CLASSES)) + "\n")


def _refuse_existing(folder: Path) -> None:
    if folder.is_dir() and any(folder.iterdir()):
        raise DataError(
            f"{folder}: already exists and is not empty",
            "give a new folder, or delete this one to make the scenes again",
        )
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder}: exists and is not a folder", "give a new folder")


def _rename(work: Path, folder: Path) -> None:
    """Move the finished dataset into place; an empty folder there is replaced."""
    try:
        os.replace(work, folder)
    except OSError as error:  # filled (or made a file) while we wrote
        raise DataError(
            f"{folder}: cannot put the scenes there ({error.strerror})",
            "give a new folder, or delete this one to make the scenes again",
        ) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
