"""Image files -> arrays shaped like the model's input, the way the training data looked."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from struct import error as struct_error

import numpy as np

from cnnctl.errors import DataError
from cnnctl.limits import is_regular, kind_of, limit, open_regular

IMAGE_EXTENSIONS = {
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
}


class ImageError(Exception):
    """One input that cannot be used; the others still are."""


# Bytes per pixel of a decoded image in each Pillow mode (4 for the unusual ones).
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "RGB": 3, "YCbCr": 3}
MODE_BYTES |= {"LAB": 3, "HSV": 3, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


def size_refusal(width: int, height: int, mode: str = "RGBA") -> str | None:
    """Why an image of this header may not be decoded (None: it may), from the header alone.

    Its pixels are bounded by `pixels`, and the bytes it decodes to by `image_bytes`, the
    memory budget of one image (a 64-megapixel RGBA image is 256 MiB).
    """
    pixels = width * height
    if pixels > limit("pixels"):
        return (
            f"refused: {width}x{height} is more than {limit('pixels'):,} pixels "
            f"(raise with cnnctl --limit pixels={pixels})"
        )
    decoded = pixels * MODE_BYTES.get(mode, 4)
    if decoded > limit("image_bytes"):
        return (
            f"refused: {width}x{height} {mode} decodes to {decoded:,} bytes, more than "
            f"{limit('image_bytes'):,} (raise with cnnctl --limit image_bytes={decoded})"
        )
    return None


def expand_paths(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders (recursively, image files only) and globs -> image paths, plus failures."""
    found: list[Path] = []
    failures: list[tuple[str, str]] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            images = image_files(path)
            if not images:
                failures.append((text, "folder holds no image files"))
            found.extend(images)
        elif path.exists():
            if is_regular(path):
                found.append(path)
            else:
                failures.append((text, f"not a regular file ({kind_of(os.stat(path).st_mode)})"))
        elif glob.has_magic(text):
            matches = sorted(p for p in _glob(text) if is_regular(p))
            if not matches:
                failures.append((text, "no file matches this pattern"))
            found.extend(matches)
        else:
            failures.append((text, "no such file or folder"))
    return list(dict.fromkeys(found)), failures


def image_files(folder: Path) -> list[Path]:
    """The image files under `folder`, sorted: regular files only, symlinked folders not entered."""
    return [Path(p) for p in image_paths(folder)]


def image_paths(folder: Path | str) -> list[str]:
    """`image_files` as strings: an index of 200,000 photos holds one str per file, no Paths.

    The order is sorted-path order (each folder's entries by name, sub-folders in place).
    Symlinked folders are not entered (no loops); FIFOs and other non-files are skipped;
    a deep tree is walked with a stack, not recursion.
    """
    found: list[str] = []
    files = 0
    stack = [iter(_entries(os.fspath(folder)))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif entry.is_dir(follow_symlinks=False):
            stack.append(iter(_entries(entry.path)))
        elif entry.is_file():  # follows a symlinked file, as reading it will
            files += 1
            if files > limit("files"):
                raise DataError(
                    f"{folder}: holds more than {limit('files'):,} files",
                    f"pass a smaller folder, or raise: cnnctl --limit files={files}",
                )
            if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(entry.path)
    return found


def _entries(directory: str) -> list[os.DirEntry]:
    """A folder's entries sorted by name; [] where it cannot be listed (as os.walk skips it)."""
    try:
        with os.scandir(directory) as listing:
            return sorted(listing, key=lambda entry: entry.name)
    except OSError:
        return []


def _glob(pattern: str) -> list[Path]:
    """A glob whose `**` never follows symlinked folders (`a -> .` would recurse forever)."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path()
    rest = "/".join(parts[fixed:])
    if "**" not in rest:
        return [Path(p) for p in glob.glob(pattern)]
    found = []
    for path in root.glob(rest):  # pathlib's ** does not recurse into symlinks (Python < 3.13)
        found.append(path)
        if len(found) > limit("files"):
            raise DataError(
                f"{pattern}: matches more than {limit('files'):,} files",
                f"narrow the pattern, or raise: cnnctl --limit files={len(found)}",
            )
    return found


def load_image(
    path: Path, height: int, width: int, channels: int, invert: bool = False
) -> np.ndarray:
    """Decode with Pillow, convert to `channels`, resize to (height, width); uint8 (H, W, C)."""
    from PIL import UnidentifiedImageError

    try:
        stream = open_regular(path, DataError)
    except DataError as error:
        raise ImageError(str(error.message).removeprefix(f"{path}: ")) from None
    try:
        return _decode(stream, height, width, channels, invert)
    except UnidentifiedImageError:
        empty = path.is_file() and path.stat().st_size == 0
        raise ImageError("empty file" if empty else "not an image file Pillow can read") from None


def decode_image(
    data: bytes, height: int, width: int, channels: int, invert: bool = False
) -> np.ndarray:
    """`load_image` for bytes held in memory (an upload): the same checks, the same array."""
    import io

    from PIL import UnidentifiedImageError

    try:
        return _decode(io.BytesIO(data), height, width, channels, invert)
    except UnidentifiedImageError:
        raise ImageError(
            "empty file" if not data else "not an image file Pillow can read"
        ) from None


def _decode(stream, height: int, width: int, channels: int, invert: bool) -> np.ndarray:
    """Decode an open stream; UnidentifiedImageError (not an image) is left to the caller."""
    from PIL import Image, UnidentifiedImageError

    pixels = limit("pixels")
    Image.MAX_IMAGE_PIXELS = None  # cnnctl checks the header itself, below, with its own limit
    try:
        with stream, Image.open(stream) as image:
            # The header gives the size in every format, mode and bit depth: check before decoding.
            refusal = size_refusal(image.width, image.height, image.mode)
            if refusal:
                raise ImageError(refusal)
            image.load()
            if image.width == 0 or image.height == 0:
                raise ImageError("image has zero size")
            mode = "L" if channels == 1 else "RGB"
            if image.mode != mode:
                image = _to_mode(image, mode, (width, height))
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError:  # an OSError too: the caller words it
        raise
    except (Image.DecompressionBombError, MemoryError):
        raise ImageError(f"refused: image is larger than {pixels:,} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct_error) as error:
        raise ImageError(f"damaged or truncated image ({error})") from None
    if array.ndim == 2:
        array = array[..., np.newaxis]
    if channels not in (1, 3):
        raise ImageError(f"the model takes {channels} channels; cnnctl reads images as 1 or 3")
    return 255 - array if invert else array


def _to_mode(image, mode: str, size: tuple[int, int]):
    """Convert any Pillow mode (16-bit, palette, CMYK, with alpha) to 8-bit L or RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        from PIL import Image

        top = 65535.0 if image.mode.startswith("I;16") else max(float(image.getextrema()[1]), 1.0)
        if image.mode != "F":
            image = image.convert("I")
        if image.size != size:  # shrink first: a large 16-bit image never becomes a float array
            image = image.resize(size, Image.Resampling.BILINEAR)
        values = np.asarray(image, dtype=np.float32)
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGB" if image.mode == "RGBA" else "L")
    return image.convert(mode)
