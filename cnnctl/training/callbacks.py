"""Keras callbacks of a training run: per-epoch files and rules, progress, clean stops on signals.

Each epoch ends with, in this order: model.keras (when the monitored value
improved), checkpoints/last.keras, metrics.csv. The epoch counts as done once
its checkpoint is whole, and metrics.csv lists only epochs that are done: a
kill between the two leaves the row inside the checkpoint, and resume writes it.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

import keras

from cnnctl import report
from cnnctl.config import Config, mode_of
from cnnctl.runs import Run, atomic_write, rows_to_csv, write_text
from cnnctl.training.checkpoint import rng_state, save_with_state
from cnnctl.training.schedule import early_stop_step, improved, plateau_step, scheduled_lr
from cnnctl.training.state import ResumeState


class Display(Protocol):
    """Where training reports what it does.

    The command line supplies one (`report.TrainingDisplay`).
    """

    def warn(self, message: str) -> None: ...

    def note(self, message: str) -> None: ...

    def epoch(self, row: dict[str, float], epochs: int, best: bool) -> None: ...

    def progress(self) -> contextlib.AbstractContextManager[Any]: ...


class StopRequested(Exception):
    """Raised inside `fit` at a step boundary after SIGINT or SIGTERM."""


class EpochRecorder(keras.callbacks.Callback):
    """Writes the run folder's files after each epoch.

    model.keras (when better), schedules, checkpoints/last.keras, metrics.csv.
    """

    def __init__(
        self,
        run: Run,
        config: Config,
        state: ResumeState,
        train_images: int,
        display: Display | None,
        write: bool = True,
    ) -> None:
        super().__init__()
        self.write, self.display = write, display
        self.run, self.train, self.train_images = run, config.train, train_images
        self.monitor = self.train.checkpoint.monitor
        self.mode = mode_of(self.monitor, self.train.checkpoint.mode)
        self.epoch = state.epoch
        self.best, self.best_epoch = state.best, state.best_epoch
        self.rows: list[dict[str, float]] = list(state.rows)[: self.epoch]
        self.rules = state.rules
        self.base_lr = state.base_lr
        self.stopped_early: int | None = None
        self.failed: int | None = None
        self._started = self._validation_started = 0.0

    def on_train_begin(self, logs=None) -> None:
        if self.base_lr is None:
            self.base_lr = self._lr()

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        lr = scheduled_lr(self.train.lr_schedule, self.base_lr, epoch, self.train.epochs)
        if lr is not None:
            self.model.optimizer.learning_rate = lr
        self._started = self._validation_started = time.perf_counter()

    def on_test_begin(self, logs=None) -> None:
        self._validation_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = {key: float(value) for key, value in (logs or {}).items()}
        if any(math.isnan(v) or math.isinf(v) for v in logs.values()):
            self.failed = epoch + 1
            self.model.stop_training = True
            return
        row = {
            "epoch": epoch + 1,
            **{k: round(v, 6) for k, v in logs.items()},
            "lr": self._lr(),
            "train_seconds": round(self._validation_started - self._started, 3),
            "seconds": round(time.perf_counter() - self._started, 3),
        }
        rows = [*self.rows, row]
        better = improved(logs[self.monitor], self.best, self.mode)
        if not self.write:  # another worker: the same decisions, no files
            if better:
                self.best, self.best_epoch = logs[self.monitor], epoch + 1
            self._apply_rules(logs, epoch + 1)
            self.rows, self.epoch = rows, epoch + 1
            return
        if better or not self.run.model.exists():
            self.best, self.best_epoch = logs[self.monitor], epoch + 1
            atomic_write(self.run.model, lambda tmp: self.model.save(tmp))
        self._apply_rules(logs, epoch + 1)
        state = ResumeState(
            epoch=epoch + 1,
            best=self.best,
            best_epoch=self.best_epoch,
            monitor=self.monitor,
            rows=rows,
            rules=self.rules,
            base_lr=self.base_lr,
            stopped_early=self.stopped_early,
            rng=rng_state(self.model),
        )
        atomic_write(self.run.last, lambda tmp: save_with_state(self.model, tmp, state))
        # the epoch counts as done once its checkpoint is whole, and only then is it listed
        self.rows, self.epoch = rows, epoch + 1
        write_text(self.run.metrics_csv, rows_to_csv(rows))
        with contextlib.suppress(Exception):  # a plot must never stop training
            atomic_write(self.run.curves, lambda tmp: report.save_curves(self.rows, tmp))
        if self.display is not None:
            self.display.epoch(row, self.train.epochs, best=self.best_epoch == epoch + 1)

    def _apply_rules(self, logs: dict[str, float], epoch: int) -> None:
        """Reduce-on-plateau and early stopping; their state goes into the checkpoint."""
        schedule, early = self.train.lr_schedule, self.train.early_stopping
        if schedule is not None and schedule.type == "reduce_on_plateau":
            self.model.optimizer.learning_rate = plateau_step(
                schedule, self.rules.setdefault("plateau", {}), logs[schedule.monitor], self._lr()
            )
        rule_state = self.rules.setdefault("early_stopping", {})
        if early is not None and early_stop_step(early, rule_state, logs[early.monitor], epoch):
            self.stopped_early = epoch
            self.model.stop_training = True

    def _lr(self) -> float:
        return round(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)), 10)

    def images_per_second(self) -> float:
        """Training speed from the second epoch on, where there is one: the first epoch also
        traces the graphs (18 s against 0.8 s later for a Backbone), which is not speed."""
        rows = self.rows[1:] or self.rows
        seconds = sum(r["train_seconds"] for r in rows)
        return len(rows) * self.train_images / seconds if seconds else 0.0


class ProgressUpdater(keras.callbacks.Callback):
    """Moves the progress bar; stops `fit` at a step boundary when a signal arrived."""

    async_safe = True  # batch-end updates run off the training thread

    def __init__(self, progress, stop: dict[str, bool], epochs: int, steps: int) -> None:
        super().__init__()
        self.progress, self.stop, self.epochs, self.steps = progress, stop, epochs, steps
        self.task = None

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        description = f"epoch {epoch + 1}/{self.epochs}"
        if self.progress is None:
            return
        if self.task is None:
            self.task = self.progress.add_task(description, total=self.steps)
        self.progress.reset(self.task, total=self.steps, description=description)

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        if self.stop["requested"]:
            raise StopRequested

    on_test_batch_begin = on_train_batch_begin

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=batch + 1)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[dict[str, bool]]:
    """SIGINT/SIGTERM ask training to stop at the next step; a second SIGINT stops at once."""
    stop = {"requested": False}

    def handler(signum, frame):
        if stop["requested"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop["requested"] = True

    if threading.current_thread() is not threading.main_thread():
        yield stop  # only the main thread may handle signals
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
