"""Weights files (`.h5`, `.npz`) checked against their declared shapes before anything is allocated.

A dataset's header can declare terabytes while the file stores nothing (a shape
bomb): reading it would allocate the declared size. `.npz` weights: each `.npy`
header is read through numpy's format reader, the data is not. HDF5 weights are
read in a child process (`cnnctl.modelfile.h5probe`), declared sizes first, then all of it.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

from cnnctl.errors import ModelFileError, first_line
from cnnctl.limits import npy_header, refuse_over


def check_h5_file(path: Path, h5_path: Path) -> str | None:
    """Every dataset's declared bytes must fit in the file, and all of it must be readable.

    Read in a child process with a deadline (`cnnctl.modelfile.h5probe`): the HDF5 library can hang
    on damaged metadata. Returns the file's `model_config` attribute (legacy .h5), if any.
    """
    from cnnctl.modelfile.h5probe import probe

    return probe(path, h5_path).get("config")


def check_npz_file(path: Path, npz_path: Path) -> None:
    """Each `.npy` member: no objects, and no more data declared than the member holds."""
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
    except ModelFileError:
        raise
    except Exception as error:  # zipfile and numpy raise many types on damaged data
        raise ModelFileError(
            f"{path}: damaged weights ({type(error).__name__}: {first_line(error)})",
            "the file is damaged; save or download it again",
        ) from None
