"""predict's files for models whose outputs are images (segmentation): for each image, its mask
of class ids at the image's own size (the prediction resized back with nearest-neighbour) and
a coloured overlay, written into a folder."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from cnnctl import report
from cnnctl.data.images import ImageError, load_image
from cnnctl.data.masks import image_size
from cnnctl.errors import DataError
from cnnctl.runs import atomic_write
from cnnctl.runs.results import Predictions

MASK_SUFFIX, OVERLAY_SUFFIX = ".mask.png", ".overlay.png"


def write_masks(result: Predictions, folder: Path, classes: int) -> list[str]:
    """`NAME.mask.png` (class ids: 8-bit, 16-bit past 256 classes) and `NAME.overlay.png`
    per predicted image into `folder`; returns the files written. Two inputs of one name get
    their position added (`NAME-2.mask.png`); an input is never overwritten (other suffixes)."""
    from PIL import Image

    if folder.exists() and not folder.is_dir():
        raise DataError(f"--output {folder}: is a file", "give a folder for the masks")
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    seen: Counter[str] = Counter()
    for item in result.items:
        if item.mask is None:
            continue
        path = Path(item.path)
        seen[path.stem] += 1
        stem = path.stem if seen[path.stem] == 1 else f"{path.stem}-{seen[path.stem]}"
        try:
            width, height = image_size(path)
            image = load_image(path, height, width, 3)
        except ImageError as error:  # it decoded for the model a moment ago: changed since
            result.failures.append((str(path), str(error)))
            continue
        height, width = image.shape[:2]
        mask = item.mask
        picture = Image.fromarray(mask)  # uint8: L; uint16: I;16
        if picture.size != (width, height):
            picture = picture.resize((width, height), Image.Resampling.NEAREST)
        full = np.asarray(picture)
        tinted = Image.fromarray(report.overlay(image, full, classes), "RGB")
        for suffix, saved in ((MASK_SUFFIX, picture), (OVERLAY_SUFFIX, tinted)):
            target = folder / f"{stem}{suffix}"
            atomic_write(target, lambda tmp, saved=saved: saved.save(tmp, format="PNG"))
            written.append(str(target))
    return written
