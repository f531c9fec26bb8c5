"""Per-epoch rules: learning-rate schedules, plateaus, early stopping. Pure Python, no Keras.

Their whole state is a small dict, saved in every checkpoint, so a resumed run
continues them exactly where they were.
"""

from __future__ import annotations

import math
from typing import Any

from cnnctl.config import EarlyStoppingConfig, LRSchedule, mode_of


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether `value` beats `best` by more than `min_delta` in direction `mode`."""
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def scheduled_lr(schedule: LRSchedule | None, base: float, epoch: int, epochs: int) -> float | None:
    """The learning rate for 0-based `epoch` under a fixed rule.

    None where it depends on metrics.
    """
    if schedule is None or schedule.type in ("constant", "reduce_on_plateau"):
        return None
    if schedule.type == "step":
        return max(base * schedule.factor ** (epoch // schedule.step_epochs), schedule.min_lr)
    if schedule.type == "exponential":
        return max(base * schedule.factor**epoch, schedule.min_lr)
    # cosine, after an optional linear warm-up
    if epoch < schedule.warmup_epochs:
        return base * (epoch + 1) / (schedule.warmup_epochs + 1)
    span = max(epochs - schedule.warmup_epochs, 1)
    progress = (epoch - schedule.warmup_epochs) / span
    return schedule.min_lr + (base - schedule.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def plateau_step(schedule: LRSchedule, state: dict[str, Any], value: float, lr: float) -> float:
    """Reduce-on-plateau: after `patience` epochs without improvement, multiply lr by `factor`."""
    mode = mode_of(schedule.monitor)
    if improved(value, state.get("best"), mode, schedule.min_delta):
        state["best"], state["wait"] = value, 0
        return lr
    state["wait"] = state.get("wait", 0) + 1
    if state["wait"] >= max(schedule.patience, 1):
        state["wait"] = 0
        return max(lr * schedule.factor, schedule.min_lr)
    return lr


def early_stop_step(
    rule: EarlyStoppingConfig, state: dict[str, Any], value: float, epoch: int
) -> bool:
    """Whether to stop after this epoch: `patience` epochs in a row without improvement."""
    if improved(value, state.get("best"), mode_of(rule.monitor, rule.mode), rule.min_delta):
        state["best"], state["best_epoch"], state["wait"] = value, epoch, 0
        return False
    state["wait"] = state.get("wait", 0) + 1
    return state["wait"] >= max(rule.patience, 1)  # as Keras' EarlyStopping counts
