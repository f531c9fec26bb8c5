"""What a cnnctl process starts with: a private temporary folder, removed at exit; TensorFlow
imported quietly (its C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL since 2.20) and only with
a Keras that has no known model-loading vulnerabilities; the cluster it belongs to (TF_CONFIG),
read by training and data alike."""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import warnings
from typing import Any

# Keras releases before this one load some hostile model files despite safe_mode
# (CVE-2025-1550, CVE-2025-9905, CVE-2026-0897, CVE-2026-1462, path traversal in 3.13).
KERAS_FLOOR = (3, 14, 0)


OWNER = "CNNCTL_TMP_OWNER"  # the pid whose private folder $TMPDIR is


def private_tmp() -> str:
    """Give this process a temporary folder of its own, removed when it exits; its path.

    TensorFlow's AutoGraph writes modules to the temporary folder and onnxruntime a `.ses` file
    when imported; neither removes them. $TMPDIR and `tempfile.tempdir` point into a fresh folder
    (made before either is imported), which goes at exit, on SIGTERM and on Ctrl-C. Calling it
    again in the same process changes nothing.
    """
    if os.environ.get(OWNER) == str(os.getpid()) and os.path.isdir(os.environ.get("TMPDIR", "")):
        return os.environ["TMPDIR"]
    tempfile.tempdir = None  # the parent folder: $TMPDIR as given, not a cached answer
    folder = tempfile.mkdtemp(prefix=f"cnnctl-{os.getpid()}-")
    os.environ["TMPDIR"], os.environ[OWNER] = folder, str(os.getpid())
    tempfile.tempdir = folder
    atexit.register(_remove, folder, os.getpid())
    if hasattr(signal, "SIGTERM") and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        try:
            signal.signal(signal.SIGTERM, _terminated)
        except ValueError:  # not the main thread: atexit still removes it on a normal exit
            pass
    return folder


def _remove(folder: str, pid: int) -> None:
    if os.getpid() == pid:  # a forked child leaves its parent's folder alone
        shutil.rmtree(folder, ignore_errors=True)


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM: stop the way Ctrl-C does (exit code 130), so that atexit runs."""
    signal.signal(signum, signal.SIG_DFL)
    raise KeyboardInterrupt


def load_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow and Keras (chatter hidden unless `verbose`); refuse an unsafe Keras."""
    if verbose or "tensorflow" in sys.modules:
        import keras
    else:
        _quiet_import()
        import keras
    check_keras_version(keras.__version__)


def check_keras_version(version: str) -> None:
    from cnnctl.errors import CnnctlError

    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
    if numbers < KERAS_FLOOR:
        floor = ".".join(map(str, KERAS_FLOOR))
        raise CnnctlError(
            f"Keras {version} has known model-loading vulnerabilities; cnnctl needs {floor} or "
            "later",
            f"pip install 'keras>={floor}'",
        )


def _quiet_import() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import keras  # noqa: F401
        import tensorflow as tf

        if not os.environ.get(
            "TF_CONFIG"
        ):  # a multi-worker cluster must be set up before the first op
            tf.constant(0.0) + 1.0  # device set-up prints its own lines on first use
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def cluster() -> dict[str, Any] | None:
    """TF_CONFIG, parsed; None when it is not set."""
    from cnnctl.errors import ConfigError

    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        value = json.loads(raw)
        value["cluster"], value["task"]["type"], int(value["task"]["index"])  # noqa: B018
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            "TF_CONFIG: not valid JSON with cluster and task",
            'for example {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}',
        ) from None
    return value


def worker_of() -> tuple[int, int]:
    """(workers, this worker's index) of a multi-worker cluster; (1, 0) otherwise."""
    spec = cluster()
    if spec is None:
        return 1, 0
    workers = sorted(spec["cluster"].get("chief", [])) + list(spec["cluster"].get("worker", []))
    index = int(spec["task"]["index"]) + (
        len(spec["cluster"].get("chief", [])) if spec["task"]["type"] == "worker" else 0
    )
    return len(workers), index


def cpu_count() -> int:
    """The cores this process may run on (its affinity, which a container or taskset narrows)."""
    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
