"""The tracking wing: a finished run folder sent to an experiment tracker (MLflow), or left
pending in the folder for `cnnctl track sync`. Training and tune call it; it imports MLflow
only inside its functions, and nothing it meets stops a run."""

from __future__ import annotations

import importlib.util

from cnnctl.config import Config
from cnnctl.errors import CnnctlError, ConfigError

INSTALL = "pip install 'cnnctl[track]'"


def need_tracker(config: Config) -> None:
    """A config that asks for MLflow where it is not installed: refused before training."""
    if config.train.track == "mlflow" and importlib.util.find_spec("mlflow") is None:
        raise ConfigError(f"{config.where(('train', 'track'))}: MLflow is not installed: {INSTALL}")


def need_mlflow() -> None:
    """`track sync` where MLflow is not installed: one line with the pip command."""
    if importlib.util.find_spec("mlflow") is None:
        raise CnnctlError(f"MLflow is not installed: {INSTALL}")
