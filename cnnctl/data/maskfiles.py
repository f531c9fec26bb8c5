"""Mask files: one mask read and checked (single channel, its image's size, every value a class
or ignore_index; opened as a regular file only, its size checked from the header before it is
decoded), and `FileMasks`, the masks of streamed pairs left in their files (or in the decode
cache) and read beside their images. No TensorFlow here."""

from __future__ import annotations

import os
from pathlib import Path
from struct import error as struct_error
from typing import Any

import numpy as np

from cnnctl.data.images import ImageError, size_refusal
from cnnctl.errors import DataError
from cnnctl.limits import npy_header, open_regular

MASK_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I;16N", "I")  # single channel, 8 or 16 bit


def mask_dtype(classes: int, ignore: int) -> Any:
    """The smallest unsigned type that holds every class index and `ignore`."""
    return np.uint8 if max(classes - 1, ignore) <= 255 else np.uint16


class FileMasks:
    """Read-only masks (N, H, W) of class indices that stay in their PNG files (or in the
    decode cache), as `FileImages` are images: the labels of streamed pairs.

    Code that needs the length, the shape or a few masks uses it as an array (`np.asarray`
    decodes them all, an error if one no longer reads); the trainer streams each mask beside
    its image. Every mask was checked before training; a file changed since fails like a
    damaged image: left out of its batch (weight 0) and reported (`reason`).
    """

    ndim = 3

    def __init__(
        self,
        paths: Any,
        sizes: Any,
        size: tuple[int, int],
        dtype: Any,
        classes: int,
        ignore: int,
        store: Path | None = None,
        rows: Any = None,
    ) -> None:
        self.paths = np.asarray(paths, dtype=object)
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(len(self.paths), 2)  # its image's
        self.size = (int(size[0]), int(size[1]))  # (height, width), the images' own
        self.dtype = np.dtype(dtype)
        self.classes, self.ignore = classes, ignore
        self.store = store  # the decode cache's masks.npy; `rows` index into it
        self.rows = np.arange(len(self.paths)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.top = classes - 1  # every value was checked: a class or ignore
        self._opened: dict[str, Any] = {}  # the decode cache opened once, shared with every part

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.paths), *self.size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            masks, failed = self.read(np.asarray([key]))
            if failed:
                raise DataError(f"{self.paths[key]}: {self.reason(int(key))}")
            return masks[0]
        take = np.arange(len(self))[key]
        part = FileMasks(
            self.paths[take],
            self.sizes[take],
            self.size,
            self.dtype,
            self.classes,
            self.ignore,
            self.store,
            self.rows[take],
        )
        part._opened = self._opened
        return part

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Every mask; one that no longer reads is an error, never a silent blank."""
        masks, failed = self.read(np.arange(len(self)))
        if failed:
            raise DataError(
                f"{self.paths[failed[0]]}: {self.reason(failed[0])}"
                + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""),
                "replace or remove the file, then run again",
            )
        return masks if dtype is None else masks.astype(dtype)

    def astype(self, dtype: Any) -> np.ndarray:
        return np.asarray(self, dtype=dtype)

    def read(self, positions: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """The masks at `positions` (blank where one fails), and the positions that failed."""
        out = np.zeros((len(positions), *self.size), self.dtype)
        failed = []
        for i, position in enumerate(np.asarray(positions).tolist()):
            try:
                out[i] = self.one(position)
            except ImageError:
                failed.append(i)
        return out, failed

    def one(self, position: int) -> np.ndarray:
        """One mask, checked again as before training; `ImageError` if it no longer reads."""
        if self.store is not None:
            stream, offset = self._cache()
            length = self.size[0] * self.size[1] * self.dtype.itemsize
            try:  # pread: the cache may be cut short by another process while it is read
                data = os.pread(stream.fileno(), length, offset + int(self.rows[position]) * length)
            except OSError as error:
                raise ImageError(f"the decode cache could not be read ({error})") from None
            if len(data) != length:
                raise ImageError(
                    f"the decode cache was cut short while in use; delete it: "
                    f"rm -r {self.store.parent}"
                )
            return np.frombuffer(data, self.dtype).reshape(self.size)
        width, height = (int(v) for v in self.sizes[position])
        values = read_mask(Path(self.paths[position]), (width, height), self.classes, self.ignore)
        return resized(values, (*self.size, 1), compact=True).astype(self.dtype)

    def reason(self, position: int) -> str | None:
        """Why the mask at `position` does not read now; None when it does."""
        try:
            self.one(position)
        except ImageError as error:
            return str(error).removeprefix(f"mask {self.paths[position]}: ")
        return None

    def _cache(self) -> tuple[Any, int]:
        """The open decode cache and where its masks start (the header checked again)."""
        if not self._opened:
            stream = open_regular(self.store, DataError)
            try:
                (_, *size), dtype = npy_header(stream)
                if dtype != self.dtype or tuple(size) != self.size:
                    raise ValueError(f"{size} {dtype}")
            except ValueError:
                stream.close()
                raise DataError(
                    f"{self.store}: the decode cache changed while in use",
                    f"delete it (rm -r {self.store.parent}) and run again: it is rebuilt",
                ) from None
            self._opened["stream"], self._opened["offset"] = stream, stream.tell()
        return self._opened["stream"], self._opened["offset"]


def resized(labels: np.ndarray, shape: tuple[int, int, int], compact: bool = False) -> np.ndarray:
    if labels.shape != (shape[0], shape[1]):
        from PIL import Image

        labels = np.asarray(
            Image.fromarray(labels).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
        )
    return labels if compact else labels.astype(np.int32)


def image_size(path: Path) -> tuple[int, int]:
    """An image's width and height, from its header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open_regular(path, DataError) as stream, Image.open(stream) as opened:
            return opened.width, opened.height
    except DataError as error:
        raise ImageError(str(error.message).removeprefix(f"{path}: ")) from None
    except UnidentifiedImageError:
        raise ImageError("not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct_error) as error:
        raise ImageError(f"damaged image header ({error})") from None


def read_mask(path: Path, size: tuple[int, int], classes: int, ignore: int) -> np.ndarray:
    """A mask's class indices (H, W), uint8 or uint16, checked: single channel, `size`
    (width, height), and every value a class (0..classes-1) or `ignore`."""
    from PIL import Image, UnidentifiedImageError

    def refuse(reason: str) -> ImageError:
        return ImageError(f"mask {path}: {reason}")

    Image.MAX_IMAGE_PIXELS = None  # the header is checked below, with cnnctl's own limit
    try:
        stream = open_regular(path, DataError)
    except DataError as error:
        raise refuse(str(error.message).removeprefix(f"{path}: ")) from None
    try:
        with stream, Image.open(stream) as opened:
            refusal = size_refusal(opened.width, opened.height, opened.mode)
            if refusal:
                raise refuse(refusal)
            if opened.mode not in MASK_MODES:
                raise refuse(
                    f"a mask must be single-channel (8 or 16 bit grey, or palette), got "
                    f"{opened.mode}"
                )
            if opened.size != size:
                raise refuse(
                    f"mask is {opened.width}x{opened.height} but its image is {size[0]}x{size[1]}"
                )
            opened.load()
            values = np.asarray(opened)  # a palette image gives its indices
    except UnidentifiedImageError:
        raise refuse("not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct_error) as error:
        raise refuse(f"damaged or truncated image ({error})") from None
    if values.ndim != 2:
        raise refuse(f"a mask must be single-channel, got shape {values.shape}")
    bad = (values >= classes) & (values != ignore)
    if bad.any():
        row, column = (int(v) for v in np.argwhere(bad)[0])
        raise refuse(
            f"value {int(values[row, column])} at x={column}, y={row} is no class "
            f"(0..{classes - 1}) and not ignore_index {ignore}"
        )
    return values.astype(np.uint16 if values.max(initial=0) > 255 else np.uint8)
