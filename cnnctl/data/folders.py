"""A folder of class sub-folders of images (the layout of keras.utils.image_dataset_from_directory).

    data/cats/001.jpg  data/dogs/002.png ...                       one split
    data/train/cats/...  data/test/cats/...  [data/val/cats/...]    given splits
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cnnctl.data.images import IMAGE_EXTENSIONS, ImageError, load_image
from cnnctl.data.sources import Arrays
from cnnctl.errors import DataError

# Split folder names people use -> our split names (config.SPLITS).
SPLIT_FOLDERS = {"train": "train", "test": "test", "val": "validation", "validation": "validation"}


def load_image_folder(folder: Path, shape: tuple[int, int, int]) -> Arrays:
    """Decode every image, resized to `shape` (height, width, channels); report the unreadable ones."""
    splits = {SPLIT_FOLDERS[p.name]: p for p in sorted(folder.iterdir())
              if p.is_dir() and p.name in SPLIT_FOLDERS}
    if splits and "train" not in splits:
        raise DataError(f"{folder}: has {', '.join(p.name for p in splits.values())}/ but no train/",
                        "put the training images in train/<class>/")
    roots = splits or {"train": folder}
    names = _class_names(roots["train"])
    loaded, skipped, files = {}, [], {}
    for split, root in roots.items():
        unknown = sorted(set(_class_names(root, allow_empty=True)) - set(names))
        if unknown:
            raise DataError(f"{root}: class folder '{unknown[0]}' is not in {roots['train']}",
                            "every split needs the same class folders")
        x, y, paths, bad = _load_split(root, names, shape)
        loaded[split], files[split] = (x, y), paths
        skipped += bad
    test = loaded.get("test", (None, None))
    val = loaded.get("validation", (None, None))
    return Arrays(*loaded["train"], *test, tuple(names), str(folder), *val,
                  skipped=tuple(skipped), files=files)


def _class_names(root: Path, allow_empty: bool = False) -> list[str]:
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names and not allow_empty:
        raise DataError(f"{root}: no class folders", "put each class's images in a sub-folder named after it")
    return names


def _load_split(root: Path, names: list[str], shape: tuple[int, int, int]):
    paths, labels = [], []
    for label, name in enumerate(names):
        images = sorted(p for p in (root / name).rglob("*")
                        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()) if (root / name).is_dir() else []
        if not images and (root / name).is_dir():
            raise DataError(f"{root / name}: class folder has no images",
                            f"add images ({', '.join(sorted(IMAGE_EXTENSIONS)[:4])}, ...) or remove the folder")
        paths += images
        labels += [label] * len(images)

    def decode(path: Path) -> np.ndarray | str:
        try:
            return load_image(path, shape[0], shape[1], shape[2])
        except ImageError as error:
            return str(error)

    with ThreadPoolExecutor(max_workers=4) as pool:
        decoded = list(pool.map(decode, paths))
    keep = [i for i, item in enumerate(decoded) if not isinstance(item, str)]
    bad = [(str(paths[i]), decoded[i]) for i in range(len(paths)) if isinstance(decoded[i], str)]
    if not keep:
        raise DataError(f"{root}: none of its {len(paths)} images could be read")
    x = np.stack([decoded[i] for i in keep])
    y = np.asarray([labels[i] for i in keep], dtype=np.int64)
    return x, y, tuple(str(paths[i]) for i in keep), bad
