"""Weights files (`.h5`, `.npz`) checked against their declared shapes, without reading the data.

A dataset's header can declare terabytes while the file stores nothing (a shape
bomb): reading it would allocate the declared size. These checks read headers
only: HDF5 metadata through h5py, each `.npy` header through numpy's format reader.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

from cnnctl.errors import ModelFileError, first_line
from cnnctl.limits import npy_header, refuse_over

SLACK = 2**20  # HDF5 and npy headers, alignment


def check_h5_file(path: Path, h5_path: Path) -> None:
    """Every dataset's declared bytes must fit in the file; no links to other files."""
    import h5py

    stored = h5_path.stat().st_size
    declared = 0

    def visit(name: str, link: Any) -> None:
        nonlocal declared
        if isinstance(link, h5py.ExternalLink):
            raise ModelFileError(f"{path}: refused: its weights link to another file ({name})")
        if not isinstance(link, h5py.HardLink):
            return
        item = h5[name]
        if isinstance(item, h5py.Dataset):
            if item.external or item.is_virtual:
                raise ModelFileError(f"{path}: refused: weights '{name}' are stored in another file")
            if item.shape is not None:
                declared += math.prod(item.shape) * item.dtype.itemsize

    try:
        with h5py.File(h5_path, "r") as h5:
            h5.visititems_links(visit)
    except ModelFileError:
        raise
    except Exception as error:  # h5py raises nearly any type on a damaged file
        raise ModelFileError(f"{path}: damaged weights ({type(error).__name__}: {first_line(error)})",
                             "the file is damaged; save or download it again") from None
    if declared > 2 * stored + SLACK:
        raise ModelFileError(f"{path}: refused: its weights declare {declared:,} bytes but the file "
                             f"holds {stored:,} (a shape bomb?)")
    refuse_over("bytes", declared, str(path), "its weights declare too many bytes", ModelFileError)


def check_npz_file(path: Path, npz_path: Path) -> None:
    """Each `.npy` member: no objects, and no more data declared than the member holds."""
    try:
        with zipfile.ZipFile(npz_path) as npz:
            members = npz.infolist()
            refuse_over("members", len(members), str(path), "its weights have too many arrays",
                        ModelFileError)
            refuse_over("bytes", sum(i.file_size for i in members), str(path),
                        "its weights unpack to too many bytes", ModelFileError)
            for info in members:
                with npz.open(info) as member:
                    shape, dtype = npy_header(member)
                if dtype.hasobject:
                    raise ModelFileError(f"{path}: refused: weights '{info.filename}' hold Python objects")
                declared = math.prod(shape) * dtype.itemsize
                if declared > info.file_size:
                    raise ModelFileError(f"{path}: refused: weights '{info.filename}' declare "
                                         f"{declared:,} bytes but hold {info.file_size:,} (a shape bomb?)")
    except ModelFileError:
        raise
    except Exception as error:  # zipfile and numpy raise many types on damaged data
        raise ModelFileError(f"{path}: damaged weights ({type(error).__name__}: {first_line(error)})",
                             "the file is damaged; save or download it again") from None
