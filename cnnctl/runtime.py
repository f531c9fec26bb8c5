"""Importing TensorFlow quietly: its C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL since 2.20."""

from __future__ import annotations

import os
import sys
import warnings


def load_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow and Keras, hiding their start-up chatter unless `verbose`."""
    if verbose or "tensorflow" in sys.modules:
        import keras  # noqa: F401

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import keras  # noqa: F401
        import tensorflow as tf

        tf.constant(0.0) + 1.0  # device set-up prints its own lines on first use
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
