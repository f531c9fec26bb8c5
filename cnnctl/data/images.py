"""Image files -> arrays shaped like the model's input, the way the training data looked."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MAX_PIXELS = 100_000_000  # refuse decompression bombs


class ImageError(Exception):
    """One input that cannot be used; the others still are."""


def expand_paths(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders (recursively, image files only) and globs -> image paths, plus failures."""
    found: list[Path] = []
    failures: list[tuple[str, str]] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not images:
                failures.append((text, "folder holds no image files"))
            found.extend(images)
        elif path.exists():
            found.append(path)
        elif glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not matches:
                failures.append((text, "no file matches this pattern"))
            found.extend(matches)
        else:
            failures.append((text, "no such file or folder"))
    return list(dict.fromkeys(found)), failures


def load_image(path: Path, height: int, width: int, channels: int, invert: bool = False) -> np.ndarray:
    """Decode with Pillow, convert to `channels`, resize to (height, width); uint8 (H, W, C)."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(path) as image:
            image.load()
            if image.width == 0 or image.height == 0:
                raise ImageError("image has zero size")
            mode = "L" if channels == 1 else "RGB"
            if image.mode != mode:
                image = _to_mode(image, mode)
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError:
        empty = path.is_file() and path.stat().st_size == 0
        raise ImageError("empty file" if empty else "not an image file Pillow can read") from None
    except Image.DecompressionBombError:
        raise ImageError(f"image is larger than {MAX_PIXELS:,} pixels") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"damaged or truncated image ({error})") from None
    if array.ndim == 2:
        array = array[..., np.newaxis]
    if channels not in (1, 3):
        raise ImageError(f"the model takes {channels} channels; cnnctl reads images as 1 or 3")
    return 255 - array if invert else array


def _to_mode(image, mode: str):
    """Convert any Pillow mode (16-bit, palette, CMYK, with alpha) to 8-bit L or RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        from PIL import Image

        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGB" if image.mode == "RGBA" else "L")
    return image.convert(mode)
