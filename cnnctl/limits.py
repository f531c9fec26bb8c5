"""One budget for everything cnnctl reads.

Limits a real user never meets, and safe ways to open files.

Every reader of an untrusted file (model, image, dataset, run folder file) asks here
how much it may unpack, allocate or read, so that a small hostile file cannot make
cnnctl use gigabytes, fill the disk or hang. Each limit can be raised with
`cnnctl --limit NAME=VALUE ...` or `CNNCTL_LIMITS="NAME=VALUE,..."`; every refusal names it.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import IO, Any

from cnnctl.errors import CnnctlError
from cnnctl.escape import safe_text

# name -> (default, what it bounds). Defaults sit far above what cnnctl's users train
# (MNIST is 47 MB, CIFAR-100 150 MB, a ResNet-50 25M parameters).
DEFAULTS: dict[str, tuple[int, str]] = {
    "bytes": (4 * 2**30, "bytes unpacked from one file (dataset, model archive, weights)"),
    "members": (1_000, "members of a .keras archive"),
    "json_bytes": (64 * 2**20, "bytes of one JSON file or archive member (config, state)"),
    "params": (100_000_000, "parameters of a loaded model"),
    "activation": (2**26, "values in one layer's output for one image"),
    "pixels": (64_000_000, "pixels of one image, checked before decoding"),
    "files": (1_000_000, "files found under one folder or glob"),
    "h5_seconds": (20, "seconds to read an HDF5 weights file in a child process (+10 s per GiB)"),
    "image_bytes": (256 * 2**20, "bytes of one decoded image, or of one input of a model"),
    "journal_bytes": (256 * 2**20, "bytes of a tune study's journal.log"),
    "csv_rows": (10_000_000, "rows of one CSV file"),
    "request_bytes": (32 * 2**20, "bytes of one HTTP request body to cnnctl serve"),
    "request_seconds": (10, "seconds a client may take to send one request body to cnnctl serve"),
}
ENV = "CNNCTL_LIMITS"
# Images per step when only scoring (evaluate, predict, export checks, the end-of-run test):
# larger than training batches, as no gradients are held; small enough to bound memory.
EVAL_BATCH = 256


class LimitExceeded(CnnctlError):
    """A file asks for more than a limit allows (exit code 2)."""


# Every value must lie within these bounds (1 up to a petabyte, or a week of seconds): a value
# past them is a typo or an attack on the limit itself (`1e400` would overflow int()).
MAXIMA = {"h5_seconds": 7 * 86_400, "request_seconds": 7 * 86_400}
MAXIMUM = 2**50


def parse_limits(text: str, source: str) -> dict[str, int]:
    """`NAME=VALUE,...` (from `--limit` or $CNNCTL_LIMITS) -> {name: value}; one set of rules.

    Unknown names, missing or non-numeric values and values outside 1..MAXIMUM are refused with
    the item and where it came from; a later item overrides an earlier one.
    """
    values: dict[str, int] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, _, raw = item.partition("=")
        key = key.strip()
        where = (
            f"--limit {safe_text(item[:80])}"
            if source == "--limit"
            else f"{ENV}: {safe_text(item[:80])}"
        )
        if key not in DEFAULTS:
            raise CnnctlError(
                f"{where}: unknown limit{_near(key)}",
                f"limits: {', '.join(DEFAULTS)}; e.g. --limit pixels=200000000",
            )
        value = _number(raw.strip())
        top = MAXIMA.get(key, MAXIMUM)
        if value is None or not 1 <= value <= top:
            raise CnnctlError(
                f"{where}: the value of a limit is a whole number from 1 to {top:,}",
                f"for example --limit {key}={DEFAULTS[key][0] * 2}",
            )
        values[key] = value
    return values


def _number(raw: str) -> int | None:
    """A limit's value: digits, or a finite float such as 2e8; None for anything else."""
    if len(raw) > 40:  # no limit needs more; int() of 5,000 digits would be refused anyway
        return None
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        number = float(raw)
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None


def _near(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(DEFAULTS), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def limit(name: str) -> int:
    """The limit `name`, as set in $CNNCTL_LIMITS (by `--limit`) or its default."""
    return parse_limits(os.environ.get(ENV, ""), ENV).get(name, DEFAULTS[name][0])


def check_limit_names(items: tuple[str, ...]) -> str:
    """`--limit NAME=VALUE` values (and $CNNCTL_LIMITS) -> the $CNNCTL_LIMITS text, checked."""
    parse_limits(os.environ.get(ENV, ""), ENV)
    for item in items:
        if "," in item:
            raise CnnctlError(f"--limit {safe_text(item[:80])}: one NAME=VALUE per --limit")
        parse_limits(item, "--limit")
    return ",".join([os.environ.get(ENV, ""), *items]).strip(",")


def refuse_over(
    name: str, value: int, where: str, what: str, error: type[CnnctlError] = LimitExceeded
) -> None:
    """Raise `error` when `value` exceeds the limit `name`: `where: refused: what (N > limit)`."""
    allowed = limit(name)
    if value > allowed:
        raise error(
            f"{where}: refused: {what} ({value:,} > limit {allowed:,})",
            f"if you trust this file, raise the limit: cnnctl --limit {name}={value} ...",
        )


def open_regular(path: Path, error: type[CnnctlError], mode: str = "rb") -> IO[Any]:
    """Open `path` for reading only if it is a regular file: a FIFO, device or socket would hang.

    The check is made on the opened descriptor (O_NONBLOCK keeps a FIFO from blocking the open),
    so a file swapped between check and open cannot slip through.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a file") from None
    except OSError as failure:
        raise error(f"{path}: cannot open: {failure.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise error(
            f"{path}: not a regular file ({kind_of(info.st_mode)})",
            "cnnctl reads only regular files; pass the file itself",
        )
    os.set_blocking(fd, True)
    return os.fdopen(fd, mode) if "b" in mode else open(fd, mode, encoding="utf-8")


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def is_regular(path: Path) -> bool:
    """True for a regular file (following symlinks); never blocks, never raises."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def read_bounded(path: Path, error: type[CnnctlError], name: str = "json_bytes") -> bytes:
    """The whole of a small regular file, refused (before reading) when over the limit `name`."""
    with open_regular(path, error) as stream:
        size = os.fstat(stream.fileno()).st_size
        refuse_over(name, size, str(path), "the file is too large", error)
        data = stream.read(limit(name) + 1)
    refuse_over(name, len(data), str(path), "the file is too large", error)
    return data


def parse_json(data: bytes | str, where: str, error: type[CnnctlError]) -> Any:
    """JSON from untrusted bytes: damage, deep nesting and huge numbers become `error`."""
    try:
        return json.loads(data)
    except RecursionError:
        raise error(f"{where}: refused: the JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as failure:  # JSONDecodeError is a ValueError
        raise error(f"{where}: not valid JSON ({str(failure).splitlines()[0][:120]})") from None


def read_json(path: Path, error: type[CnnctlError]) -> Any:
    """A small JSON file, read through the same limits as every other input."""
    return parse_json(read_bounded(path, error), str(path), error)


def inside(folder: Path, path: Path) -> bool:
    """True when `path`, with every symlink followed, lies inside `folder`."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError, ValueError):  # RuntimeError: a symlink loop
        return False


def npy_header(member: IO[bytes]) -> tuple[tuple[int, ...], Any]:
    """Shape and dtype of a `.npy` stream, from its header only (the data stays unread)."""
    import numpy as np

    major, _ = np.lib.format.read_magic(member)
    read = (
        np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    )
    shape, _, dtype = read(member)
    return shape, dtype
