"""Importing TensorFlow: quietly (its C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL since 2.20),
and only with a Keras that has no known model-loading vulnerabilities."""

from __future__ import annotations

import os
import re
import sys
import warnings

# Keras releases before this one load some hostile model files despite safe_mode
# (CVE-2025-1550, CVE-2025-9905, CVE-2026-0897, CVE-2026-1462, path traversal in 3.13).
KERAS_FLOOR = (3, 14, 0)


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
