"""The resume state inside `checkpoints/last.keras`, read as untrusted data.

A run folder may come from someone else: its state is bounded in size (it is read
through the same limits as every other archive member) and checked for the types
`train --resume` relies on, so a damaged or hostile one ends in one clear line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cnnctl.errors import ModelFileError, RunError
from cnnctl.modelfile import read_member_json

STATE_MEMBER = "cnnctl_state.json"
MAX_EPOCH = 1_000_000


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    """The resume state stored inside a checkpoint, checked field by field."""
    try:
        state = read_member_json(path, STATE_MEMBER)
    except ModelFileError as error:
        raise RunError(error.message, error.hint or "train the run again") from None
    problem = _problem(state)
    if problem:
        raise RunError(f"{path}: {STATE_MEMBER}: {problem}", "the checkpoint is damaged; train the run again")
    return state


def _problem(state: Any) -> str | None:
    if not isinstance(state, dict):
        return f"expected an object, found {type(state).__name__}"
    epoch = state.get("epoch")
    if not _int(epoch) or not 0 <= epoch <= MAX_EPOCH:
        return f"epoch must be a whole number from 0 to {MAX_EPOCH:,}, found {str(epoch)[:40]!r}"
    for key in ("best_epoch", "stopped_early"):
        if state.get(key) is not None and not (_int(state[key]) and 0 <= state[key] <= MAX_EPOCH):
            return f"{key} must be an epoch number"
    for key in ("best", "base_lr"):
        if state.get(key) is not None and not _number(state[key]):
            return f"{key} must be a number"
    rows = state.get("rows", [])
    if not isinstance(rows, list) or len(rows) > MAX_EPOCH or not all(
            isinstance(row, dict) and all(isinstance(k, str) and _number(v) for k, v in row.items())
            for row in rows):
        return "rows must be a list of {metric: number} objects"
    rules = state.get("rules", {"plateau": {}, "early_stopping": {}})
    if not isinstance(rules, dict) or not all(
            isinstance(rule, dict) and all(v is None or _number(v) for v in rule.values())
            for rule in rules.values()):
        return "rules must map each rule to {name: number}"
    rng = state.get("rng", [])
    if not isinstance(rng, list) or not all(
            isinstance(seed, list) and len(seed) == 2 and all(_int(n) and 0 <= n < 2**64 for n in seed)
            for seed in rng):
        return "rng must be a list of [int, int] seed states"
    return None


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and abs(value) < 1e300)
