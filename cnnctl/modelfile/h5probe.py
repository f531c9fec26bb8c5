"""Read an untrusted HDF5 file in a child process, so that a damaged one cannot hang cnnctl.

The HDF5 library can loop forever, or crash, on a few flipped bytes of metadata; no
Python code can interrupt it. So cnnctl first reads everything Keras will read (every
attribute, every dataset, whose declared sizes are bounded first) in a child process
with a deadline; only a file the child read completely is handed to Keras.

    python -m cnnctl.modelfile.h5probe FILE
        prints one JSON line: {"declared": N, "config": ..., "problem": ...}
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cnnctl
from cnnctl.errors import ModelFileError
from cnnctl.limits import limit
from cnnctl.modelfile.check import WRONG_MODEL, Sizes, too_large, too_many_bytes

SLACK = 2**20  # HDF5 headers, alignment
DAMAGED = "the file is damaged; save or download it again"
ONE_FILE = "save the weights into one file: model.save_weights('name.weights.h5')"


class Refused(ValueError):
    """A file the probe read and refuses, with the fix to show."""

    def __init__(self, message: str, hint: str = DAMAGED) -> None:
        super().__init__(message)
        self.hint = hint


def probe(path: Path, h5_path: Path, sizes: Sizes | None = None) -> dict[str, Any]:
    """Run the probe on `h5_path` (part of the model file `path`) with a deadline.

    With `sizes`, the model's: each dataset and their total held to them before any is read.
    """
    seconds = limit("h5_seconds") + 10 * h5_path.stat().st_size / 2**30
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(cnnctl.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "cnnctl.modelfile.h5probe",
                str(h5_path),
                *([] if sizes is None else [str(sizes.params), str(sizes.largest)]),
            ],
            env=env,
            capture_output=True,
            timeout=seconds,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ModelFileError(
            f"{path}: refused: reading its weights did not finish in {seconds:.0f} s "
            "(damaged HDF5 data?)",
            f"if the file is sound and only large: cnnctl --limit h5_seconds="
            f"{int(seconds * 4)} ...",
        ) from None
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    if done.returncode != 0 or not lines:
        raise ModelFileError(
            f"{path}: damaged weights (reading them failed with exit code {done.returncode})",
            DAMAGED,
        )
    try:
        result = json.loads(lines[-1])
    except ValueError:
        raise ModelFileError(f"{path}: damaged weights (the reader printed no result)") from None
    if result.get("problem"):
        raise ModelFileError(f"{path}: {result['problem']}", result.get("hint"))
    return result


def _read_everything(h5_path: Path, sizes: Sizes | None = None) -> dict[str, Any]:
    import h5py

    stored = h5_path.stat().st_size
    result: dict[str, Any] = {"declared": 0, "config": None}
    datasets = []

    links: list[tuple[str, Any]] = []
    unfit: str | None = None  # why a dataset, or all of them, fit no variable of the model

    def visit(name: str, link: Any) -> None:
        # Only collect: an exception raised inside h5py's visit callback comes out as
        # "SystemError: <cyfunction FastRLock.__exit__ ...>", whatever it said.
        links.append((name, link))

    with h5py.File(h5_path, "r") as h5:
        raw = h5.attrs.get("model_config")
        if raw is not None:
            if not isinstance(raw, (bytes, str)):
                raise ValueError("damaged model file (model_config is not text)")
            result["config"] = raw.decode() if isinstance(raw, bytes) else raw
        h5.visititems_links(visit)
        for name, link in links:
            if isinstance(link, h5py.ExternalLink):
                raise Refused(
                    f"refused: its weights link to another file "
                    f"('{name}' -> {link.filename}:{link.path})",
                    ONE_FILE,
                )
            if not isinstance(link, h5py.HardLink):
                continue
            item = h5[name]
            if isinstance(item, h5py.Dataset):
                if item.external or item.is_virtual:
                    raise Refused(f"refused: weights '{name}' are stored in another file", ONE_FILE)
                if item.shape is not None:
                    result["declared"] += math.prod(item.shape) * item.dtype.itemsize
                    if sizes is not None and unfit is None:
                        unfit = too_large(name, item.shape, item.dtype.itemsize, sizes)
                datasets.append(item)
        declared = result["declared"]
        if declared > 2 * stored + SLACK:
            raise ValueError(
                f"refused: its weights declare {declared:,} bytes but the file "
                f"holds {stored:,} (a shape bomb?)"
            )
        if declared > limit("bytes"):
            raise ValueError(
                f"refused: its weights declare too many bytes ({declared:,} > limit "
                f"{limit('bytes'):,}; raise: cnnctl --limit bytes={declared})"
            )
        if sizes is not None and unfit is None:
            unfit = too_many_bytes(declared, sizes)
        if unfit:  # after the shape bomb, a plainer name for a file that stores nothing
            raise Refused(unfit, WRONG_MODEL)
        for group in [h5, *(h5[name] for name in _names(h5))]:
            for key in group.attrs:
                group.attrs[key]  # noqa: B018 - reading is the test
        for dataset in datasets:
            dataset[()]
    return result


def _names(h5: Any) -> list[str]:
    names: list[str] = []
    h5.visit(names.append)
    return names


def main() -> None:
    try:
        sizes = Sizes(int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else None
        result = _read_everything(Path(sys.argv[1]), sizes)
    except ValueError as error:
        message = str(error)
        damaged = not message.startswith(("refused", "damaged"))
        result = {
            "problem": f"damaged weights ({message[:200]})" if damaged else message,
            "hint": getattr(error, "hint", DAMAGED),
        }
    except Exception as error:  # h5py raises nearly any type on damaged data
        result = {
            "problem": f"damaged weights ({type(error).__name__}: {str(error)[:200]})",
            "hint": DAMAGED,
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
