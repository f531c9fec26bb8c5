"""The resume state stored inside `checkpoints/last.keras`: its fields and its hardened reader.

No Keras here, so a resume is judged (finished? damaged?) before TensorFlow starts.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cnnctl.errors import RunError, first_line
from cnnctl.runs import STATE_MEMBER

STATE_LIMIT = 64 * 2**20  # bytes; the rows of 100,000 epochs fit many times over


class ResumeState(BaseModel):
    """Everything a resumed run needs besides the weights: where it was and what it had decided."""

    model_config = ConfigDict(extra="ignore")

    epoch: int = Field(default=0, ge=0, le=1_000_000)  # epochs finished
    best: float | None = None
    best_epoch: int | None = Field(default=None, ge=0, le=1_000_000)
    monitor: str | None = None
    rows: list[dict[str, int | float]] = Field(default_factory=list)
    rules: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"plateau": {}, "early_stopping": {}}
    )
    base_lr: float | None = None
    stopped_early: int | None = None
    rng: list[list[int]] = Field(default_factory=list)  # dropout generators' states


def read_state(path: Path) -> ResumeState:
    """The resume state stored inside a checkpoint, checked before anything trusts it."""
    hint = "the checkpoint is damaged; train the run again from its config"
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(STATE_MEMBER)
            if info.file_size > STATE_LIMIT:
                raise RunError(
                    f"{path}: resume state of {info.file_size:,} bytes is too large", hint
                )
            with archive.open(info) as stream:
                raw = stream.read(STATE_LIMIT + 1)  # the header's size may lie
        if len(raw) > STATE_LIMIT:
            raise RunError(f"{path}: resume state larger than {STATE_LIMIT:,} bytes", hint)
        return ResumeState.model_validate(json.loads(raw))
    except RunError:
        raise
    except (
        OSError,
        KeyError,
        ValueError,
        zipfile.BadZipFile,
        RecursionError,
        NotImplementedError,
        RuntimeError,
        EOFError,
    ) as error:
        detail = first_line(error, 120)
        if isinstance(error, ValidationError):
            first = error.errors()[0]
            detail = f"{'.'.join(map(str, first['loc'])) or 'state'}: {first['msg'].lower()}"
        raise RunError(
            f"{path}: not a cnnctl checkpoint ({STATE_MEMBER}: {detail})", hint
        ) from None
