"""The checks a training command makes before TensorFlow starts: a refusal is instant.

No Keras here; `fit` repeats nothing of it, it calls it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from cnnctl.config import Config, changed_keys, load_config
from cnnctl.errors import ConfigError, RunError
from cnnctl.runs import Run, running_pid
from cnnctl.training.distribute import is_chief
from cnnctl.training.state import ResumeState, read_state


def check_resume(
    run: Run,
    overrides: tuple[str, ...] = (),
    config_file: Path | None = None,
    values: dict[str, Any] | None = None,
) -> tuple[Config, Config, ResumeState | None]:
    """The config `run` trained with, the one a resume asks for, and the checkpoint's resume
    state (None before a first epoch ended), once the resume is allowed.

    Refused: a run another process is training, a change other than more epochs, a
    finished run asked for no more epochs, a missing tensorboard package.
    """
    pid = running_pid(run) if is_chief() else None
    if pid is not None:
        raise RunError(
            f"{run.path}: is still being trained (pid {pid})", "wait for it, or stop it first"
        )
    saved = load_config(run.effective_config)
    wanted = saved
    if overrides or config_file or values:
        wanted = load_config(config_file or run.effective_config, overrides, values)
    _check_same(saved, wanted, run)
    need_tensorboard(wanted)
    state = read_state(run.last) if run.last.is_file() else None
    if state is None and run.metrics_csv.is_file():
        raise RunError(
            f"{run.last}: missing, though {run.metrics_csv.name} records finished epochs",
            f"the run is damaged; train it again: cnnctl train {run.config}",
        )
    finished = state is not None and run.status_field("status") == "finished"
    if finished and wanted.train.epochs <= saved.train.epochs:
        raise RunError(
            f"{run.path}: already finished ({state.epoch} of {saved.train.epochs} epochs)",
            f"to train longer: cnnctl train --resume {run.path} --epochs {state.epoch + 5}",
        )
    return saved, wanted, state


def _check_same(saved: Config, wanted: Config, run: Run) -> None:
    """A resumed run keeps its config; only raising `train.epochs` is allowed."""
    if wanted.train.epochs < saved.train.epochs:
        raise ConfigError(
            f"--resume {run.name}: train.epochs can only be raised (was {saved.train.epochs})"
        )
    changed = changed_keys(saved, wanted, ignore=("train.epochs",))
    if changed:
        raise ConfigError(
            f"--resume {run.name}: the config differs from the run's in {', '.join(changed[:3])}",
            "only train.epochs may be raised on resume; start a new run for other changes",
        )


def need_tensorboard(config: Config) -> None:
    if config.train.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            f"{config.where(('train', 'tensorboard'))}: needs the tensorboard package",
            "pip install tensorboard (or cnnctl[tensorboard]), or set tensorboard: false",
        )
