"""Generate image folders from Fashion-MNIST: upscaled to 128x128, tinted RGB, class folders.

    python bench/make_images.py out/jpgs --count 20000            # JPEG, out/jpgs/<class>/00000.jpg
    python bench/make_images.py out/pngs --count 2000 --format png

The images repeat after 70,000 (train + test), each repeat with another tint.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def make_images(out: Path, count: int, size: int = 128, fmt: str = "jpg") -> Path:
    """Write `count` images into `out/<class>/`; returns `out`. Files already there are kept."""
    from PIL import Image

    from cnnctl.data.sources import load_builtin

    arrays = load_builtin("fashion_mnist", offline=True)
    x = np.concatenate([arrays.x_train, arrays.x_test])
    y = np.concatenate([arrays.y_train, arrays.y_test])
    tints = np.random.default_rng(0).uniform(0.4, 1.0, size=(count, 3))
    for label in range(10):
        (out / f"class_{label}").mkdir(parents=True, exist_ok=True)

    def write(i: int) -> None:
        path = out / f"class_{y[i % len(x)]}" / f"{i:06d}.{fmt}"
        if path.exists():
            return
        gray = Image.fromarray(x[i % len(x)]).resize((size, size), Image.Resampling.BILINEAR)
        rgb = (np.asarray(gray, dtype=np.float32)[..., None] * tints[i]).astype(np.uint8)
        Image.fromarray(rgb, "RGB").save(path, quality=90) if fmt == "jpg" else Image.fromarray(
            rgb
        ).save(path)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(write, range(count)))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg")
    args = parser.parse_args()
    print(make_images(args.out, args.count, args.size, args.format))
