"""Weights files (`.h5`, `.npz`) checked against their declared shapes before anything is allocated.

A dataset's header can declare terabytes while the file stores nothing (a shape
bomb): reading it would allocate the declared size. `.npz` weights: each `.npy`
header is read through numpy's format reader, the data is not. HDF5 weights are
read in a child process (`cnnctl.modelfile.h5probe`), declared sizes first, then all of it.

The weights of a `.keras` archive are also held to its config (`check.Sizes`): no array
larger than the model's largest variable, no more bytes in all than its parameters need,
and no `.npy` member of an `.npz` that inflates more than `MAX_RATIO`-fold. All of it is
decided from headers and declared sizes, before any array is read.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

from cnnctl.errors import ModelFileError, first_line
from cnnctl.limits import npy_header, refuse_over
from cnnctl.modelfile.check import WRONG_MODEL, Sizes, too_large, too_many_bytes

MAX_RATIO = 200  # unpacked / packed size; weights barely compress, bombs compress a million-fold


def check_h5_file(path: Path, h5_path: Path, sizes: Sizes | None = None) -> str | None:
    """Every dataset's declared bytes must fit in the file, and all of it must be readable.

    Read in a child process with a deadline (`cnnctl.modelfile.h5probe`): the HDF5 library can hang
    on damaged metadata. With `sizes` (the model's, from its config), each dataset's declared
    shape and their total are held to them before any is read. Returns the file's `model_config`
    attribute (legacy .h5), if any.
    """
    from cnnctl.modelfile.h5probe import probe

    return probe(path, h5_path, sizes).get("config")


def check_npz_file(path: Path, npz_path: Path, sizes: Sizes | None = None) -> None:
    """Each `.npy` member: no objects, and no more data declared than the member holds.

    With `sizes`: no member inflating more than MAX_RATIO-fold, none larger than the model's
    largest variable, and no more bytes in all than the model's parameters need.
    """
    try:
        with zipfile.ZipFile(npz_path) as npz:
            members = npz.infolist()
            refuse_over(
                "members",
                len(members),
                str(path),
                "its weights have too many arrays",
                ModelFileError,
            )
            refuse_over(
                "bytes",
                sum(i.file_size for i in members),
                str(path),
                "its weights unpack to too many bytes",
                ModelFileError,
            )
            if sizes is not None:
                _check_inflation(path, members, sizes)
            for info in members:
                with npz.open(info) as member:
                    shape, dtype = npy_header(member)
                if dtype.hasobject:
                    raise ModelFileError(
                        f"{path}: refused: weights '{info.filename}' hold Python objects"
                    )
                declared = math.prod(shape) * dtype.itemsize
                if declared > info.file_size:
                    raise ModelFileError(
                        f"{path}: refused: weights '{info.filename}' declare "
                        f"{declared:,} bytes but hold {info.file_size:,} (a shape bomb?)"
                    )
                if sizes is not None:
                    problem = too_large(info.filename, shape, dtype.itemsize, sizes)
                    if problem:
                        raise ModelFileError(f"{path}: {problem}", WRONG_MODEL)
    except ModelFileError:
        raise
    except Exception as error:  # zipfile and numpy raise many types on damaged data
        raise ModelFileError(
            f"{path}: damaged weights ({type(error).__name__}: {first_line(error)})",
            "the file is damaged; save or download it again",
        ) from None


def _check_inflation(path: Path, members: list[zipfile.ZipInfo], sizes: Sizes) -> None:
    """The members' declared sizes, before any is opened: each ratio, then their total."""
    for info in members:
        if info.file_size > 2**20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise ModelFileError(
                f"{path}: refused: weights '{info.filename}' would unpack to "
                f"{info.file_size:,} bytes from {info.compress_size:,} (a zip bomb?)",
                WRONG_MODEL,
            )
    problem = too_many_bytes(sum(info.file_size for info in members), sizes)
    if problem:
        raise ModelFileError(f"{path}: {problem}", WRONG_MODEL)
