"""Fit a model into a run folder: checkpoints, resume, metrics files, clean interrupts.

Each epoch ends with, in this order: metrics.csv, model.keras (when the
monitored value improved), checkpoints/last.keras. The last one carries the
whole resume state inside its zip (epoch, best value, metric rows, RNG
state), so the checkpoint and the state it needs can never disagree.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import shutil
import signal
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from rich.console import Console

from cnnctl import report
from cnnctl.builder import build_model, compile_model
from cnnctl.config import Config, dump_config, load_config
from cnnctl.data import Dataset, load_dataset
from cnnctl.data.checks import check_dataset
from cnnctl.data.pipeline import eval_batches, training_batches
from cnnctl.distribute import is_chief, prepare_multi_worker, strategy_for
from cnnctl.errors import ConfigError, Interrupted, RunError, TrainingFailed
from cnnctl.modelfile import load_model
from cnnctl.runs import (
    Run,
    atomic_write,
    clean_leftovers,
    create_run,
    rows_to_csv,
    running_pid,
    set_status,
    write_json,
    write_text,
)
from cnnctl.schedule import early_stop_step, improved, plateau_step, resolve_mode, scheduled_lr

STATE_MEMBER = "cnnctl_state.json"


@dataclass
class TrainResult:
    """What a finished training run reports."""

    run: Run
    epochs_done: int
    epochs: int
    monitor: str
    best_epoch: int | None
    best_value: float | None
    test: dict[str, float]
    seconds: float
    images_per_second: float
    stopped_early: int | None = None
    written: bool = True  # False on a worker that is not the chief: it trained and wrote nothing
    rows: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        best_row = next((r for r in self.rows if r["epoch"] == self.best_epoch), {})
        return {
            "run": str(self.run.path),
            "epochs_done": self.epochs_done,
            "epochs": self.epochs,
            "stopped_early": self.stopped_early,
            "monitor": self.monitor,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "best": best_row,
            "final": self.rows[-1] if self.rows else {},
            "test": self.test,
            "wall_seconds": round(self.seconds, 2),
            "train_images_per_second": round(self.images_per_second, 1),
        }


class StopRequested(Exception):
    """Raised inside `fit` at a step boundary after SIGINT or SIGTERM."""


# --------------------------------------------------------------------------- entry points


def train_run(config: Config, runs_root: Path, console: Console) -> TrainResult:
    """Train `config` from scratch into a new run folder under `runs_root`."""
    _need_tensorboard(config)
    strategy = strategy_for(config)  # first: a multi-worker cluster must be set up before any TF op
    keras.utils.set_random_seed(config.seed)
    dataset = load_dataset(config)
    warnings = Console(stderr=True, highlight=False)  # not results: stderr, also under --json
    for line in report.check_warnings(check_dataset(dataset)):
        warnings.print(line, soft_wrap=True)
    with strategy.scope():
        model = build_model(config, len(dataset.class_names))
        compile_model(model, config, math.ceil(len(dataset.x_train) / config.train.batch_size))
    if not is_chief():  # other workers compute, and write nothing
        return _fit(Run(runs_root / config.name), model, config, dataset, {}, Console(quiet=True), write=False)
    run = create_run(runs_root, config.name)
    write_text(run.config, dump_config(config))
    write_json(run.classes, list(dataset.class_names))
    set_status(run, "running", started=time.time(), epochs=config.train.epochs)
    return _fit(run, model, config, dataset, {}, console)


def resume_run(run: Run, console: Console, overrides: tuple[str, ...] = (),
               config_file: Path | None = None) -> TrainResult:
    """Continue `run` in its own folder from its last finished epoch."""
    chief = is_chief()
    pid = running_pid(run) if chief else None
    if pid is not None:
        raise RunError(f"{run.path}: is still being trained (pid {pid})", "wait for it, or stop it first")
    saved = load_config(run.config)
    wanted = load_config(config_file or run.config, overrides) if (overrides or config_file) else saved
    _check_same(saved, wanted, run)
    _need_tensorboard(wanted)
    if not run.last.is_file():
        raise RunError(f"{run.last}: no checkpoint to resume from", "train the run again from its config")
    strategy = strategy_for(wanted)
    if chief:
        clean_leftovers(run)
    state = read_state(run.last)
    if wanted.train.epochs > saved.train.epochs and state.get("stopped_early"):
        state["stopped_early"] = None  # more epochs asked for: early stopping starts counting again
        state.get("rules", {}).get("early_stopping", {})["wait"] = 0
    keras.utils.set_random_seed(wanted.seed + state["epoch"])
    dataset = load_dataset(wanted)
    with strategy.scope():
        model = load_model(run.last)
    _restore_rng(model, state.get("rng", []))
    if not chief:
        return _fit(run, model, wanted, dataset, state, Console(quiet=True), write=False)
    write_text(run.config, dump_config(wanted))
    set_status(run, "running", epochs=wanted.train.epochs)
    return _fit(run, model, wanted, dataset, state, console)


def _check_same(saved: Config, wanted: Config, run: Run) -> None:
    """A resumed run keeps its config; only raising `train.epochs` is allowed."""
    if wanted.train.epochs < saved.train.epochs:
        raise ConfigError(f"--resume {run.name}: train.epochs can only be raised (was {saved.train.epochs})")
    a = saved.model_dump(mode="json")
    b = wanted.model_dump(mode="json")
    a["train"].pop("epochs"), b["train"].pop("epochs")
    changed = [key for key in _diff(a, b)]
    if changed:
        raise ConfigError(
            f"--resume {run.name}: the config differs from the run's in {', '.join(changed[:3])}",
            "only train.epochs may be raised on resume; start a new run for other changes",
        )


def _diff(a: Any, b: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            yield from _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
    elif a != b:
        yield prefix


# --------------------------------------------------------------------------- the loop


def _fit(run: Run, model: keras.Model, config: Config, dataset: Dataset,
         state: dict[str, Any], console: Console, write: bool = True) -> TrainResult:
    """Fit from the epoch `state` names; only a writing process (the chief) touches the run folder."""
    train = config.train
    num_classes = len(dataset.class_names)
    first_epoch = int(state.get("epoch", 0))
    batches, steps = training_batches(
        dataset.x_train, dataset.y_train, batch_size=train.batch_size, seed=config.seed,
        num_classes=num_classes, one_hot=train.one_hot, first_epoch=first_epoch, epochs=train.epochs,
    )
    validation = eval_batches(dataset.x_val, dataset.y_val, batch_size=max(train.batch_size, 256),
                              num_classes=num_classes, one_hot=train.one_hot)
    prepare_multi_worker(model, validation)
    recorder = EpochRecorder(run, config, state, len(dataset.x_train), console, write)
    with _stop_on_signals() as stop, report.training_progress(console) as progress:
        callbacks = [recorder, ProgressUpdater(progress, stop, train.epochs, steps)]
        if train.tensorboard and write:
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run.path / "tensorboard")))
        try:
            if first_epoch < train.epochs and not state.get("stopped_early"):
                model.fit(batches, steps_per_epoch=steps, epochs=train.epochs, initial_epoch=first_epoch,
                          validation_data=validation, callbacks=callbacks, shuffle=False, verbose=0)
        except StopRequested:
            _mark(run, write, "interrupted", recorder.epoch)
            raise Interrupted(
                f"stopped; {recorder.epoch} of {train.epochs} epochs are saved in {run.path}",
                f"resume with: cnnctl train --resume {run.path}",
            ) from None
        except OSError as error:  # disk full, folder removed: the last saved epoch is intact
            _mark(run, write, "failed", recorder.epoch)
            raise TrainingFailed(
                f"{run.path}: could not save epoch {recorder.epoch + 1}: {error.strerror or error}",
                f"free disk space, then resume from epoch {recorder.epoch}: cnnctl train --resume {run.path}",
            ) from None
    if not write:
        return TrainResult(run=run, epochs_done=recorder.epoch, epochs=train.epochs, monitor=recorder.monitor,
                           best_epoch=recorder.best_epoch, best_value=recorder.best, test={},
                           seconds=sum(r["seconds"] for r in recorder.rows),
                           images_per_second=recorder.images_per_second(), written=False, rows=recorder.rows)
    if recorder.failed:
        _mark(run, write, "failed", recorder.epoch)
        raise TrainingFailed(
            f"{run.path}: the loss became NaN (or infinite) in epoch {recorder.failed}",
            "lower train.optimizer.learning_rate (for example {type: Adam, learning_rate: 1e-4})",
        )
    if train.early_stopping and not train.early_stopping.restore_best:
        atomic_write(run.model, lambda tmp: shutil.copyfile(run.last, tmp))  # the last epoch, as asked
    tested = time.time()
    test = _test(run, config, dataset)
    result = TrainResult(
        run=run, epochs_done=recorder.epoch, epochs=train.epochs, monitor=recorder.monitor,
        best_epoch=recorder.best_epoch, best_value=recorder.best, test=test,
        stopped_early=recorder.stopped_early or state.get("stopped_early"),
        seconds=sum(row["seconds"] for row in recorder.rows) + time.time() - tested,
        images_per_second=recorder.images_per_second(), rows=recorder.rows,
    )
    write_json(run.metrics_json, result.summary())
    set_status(run, "finished", epochs_done=recorder.epoch)
    return result


def _mark(run: Run, write: bool, status: str, epochs_done: int) -> None:
    """Record how the run ended, where this process writes and the disk still lets it."""
    if write:
        with contextlib.suppress(OSError):
            set_status(run, status, epochs_done=epochs_done)


def _test(run: Run, config: Config, dataset: Dataset) -> dict[str, float]:
    """Evaluate the best model (the file predict will use) on the test split."""
    best = load_model(run.model)
    test = eval_batches(dataset.x_test, dataset.y_test, batch_size=max(config.train.batch_size, 256),
                        num_classes=len(dataset.class_names), one_hot=config.train.one_hot)
    values = best.evaluate(test, verbose=0, return_dict=True)
    return {key: round(float(value), 6) for key, value in values.items()}


class EpochRecorder(keras.callbacks.Callback):
    """After each epoch: metrics.csv, model.keras (when better), schedules, checkpoints/last.keras."""

    def __init__(self, run: Run, config: Config, state: dict[str, Any], train_images: int,
                 console: Console, write: bool = True) -> None:
        super().__init__()
        self.write = write
        self.run, self.train, self.console, self.train_images = run, config.train, console, train_images
        self.monitor = self.train.checkpoint.monitor
        self.mode = resolve_mode(self.train.checkpoint.mode, self.monitor)
        self.epoch = int(state.get("epoch", 0))
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")
        self.rows: list[dict[str, float]] = list(state.get("rows", []))[: self.epoch]
        self.rules: dict[str, dict[str, Any]] = state.get("rules", {"plateau": {}, "early_stopping": {}})
        self.base_lr: float | None = state.get("base_lr")
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
        row = {"epoch": epoch + 1, **{k: round(v, 6) for k, v in logs.items()}, "lr": self._lr(),
               "train_seconds": round(self._validation_started - self._started, 3),
               "seconds": round(time.perf_counter() - self._started, 3)}
        rows = [*self.rows, row]
        if not self.write:  # another worker: the same decisions, no files
            if improved(logs[self.monitor], self.best, self.mode):
                self.best, self.best_epoch = logs[self.monitor], epoch + 1
            self._apply_rules(logs, epoch + 1)
            self.rows, self.epoch = rows, epoch + 1
            return
        write_text(self.run.metrics_csv, rows_to_csv(rows))
        if improved(logs[self.monitor], self.best, self.mode) or not self.run.model.exists():
            self.best, self.best_epoch = logs[self.monitor], epoch + 1
            atomic_write(self.run.model, lambda tmp: self.model.save(tmp))
        self._apply_rules(logs, epoch + 1)
        state = {"epoch": epoch + 1, "best": self.best, "best_epoch": self.best_epoch, "monitor": self.monitor,
                 "rows": rows, "rules": self.rules, "base_lr": self.base_lr,
                 "stopped_early": self.stopped_early, "rng": _rng_state(self.model)}
        atomic_write(self.run.last, lambda tmp: _save_with_state(self.model, tmp, state))
        self.rows, self.epoch = rows, epoch + 1  # the epoch counts as done once its checkpoint is whole
        with contextlib.suppress(Exception):  # a plot must never stop training
            atomic_write(self.run.curves, lambda tmp: report.save_curves(self.rows, tmp))
        self.console.print(report.epoch_line(row, self.train.epochs, improved=self.best_epoch == epoch + 1))

    def _apply_rules(self, logs: dict[str, float], epoch: int) -> None:
        """Reduce-on-plateau and early stopping; their state goes into the checkpoint."""
        schedule, early = self.train.lr_schedule, self.train.early_stopping
        if schedule is not None and schedule.type == "reduce_on_plateau":
            self.model.optimizer.learning_rate = plateau_step(
                schedule, self.rules["plateau"], logs[schedule.monitor], self._lr())
        if early is not None and early_stop_step(early, self.rules["early_stopping"], logs[early.monitor], epoch):
            self.stopped_early = epoch
            self.model.stop_training = True

    def _lr(self) -> float:
        return round(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)), 10)

    def images_per_second(self) -> float:
        seconds = sum(r["train_seconds"] for r in self.rows)
        return len(self.rows) * self.train_images / seconds if seconds else 0.0


class ProgressUpdater(keras.callbacks.Callback):
    """Moves the progress bar; stops `fit` at a step boundary when a signal arrived."""

    async_safe = True  # batch-end updates run off the training thread

    def __init__(self, progress, stop: dict[str, bool], epochs: int, steps: int) -> None:
        super().__init__()
        self.progress, self.stop, self.epochs, self.steps = progress, stop, epochs, steps
        self.task = None

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        description = f"epoch {epoch + 1}/{self.epochs}"
        if self.task is None:
            self.task = self.progress.add_task(description, total=self.steps)
        self.progress.reset(self.task, total=self.steps, description=description)

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        if self.stop["requested"]:
            raise StopRequested

    on_test_batch_begin = on_train_batch_begin

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self.progress.update(self.task, completed=batch + 1)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[dict[str, bool]]:
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


def _need_tensorboard(config: Config) -> None:
    if config.train.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(f"{config.where(('train', 'tensorboard'))}: needs the tensorboard package",
                          "pip install tensorboard (or cnnctl[tensorboard]), or set tensorboard: false")


# --------------------------------------------------------------------------- files


def _save_with_state(model: keras.Model, path: Path, state: dict[str, Any]) -> None:
    model.save(path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(STATE_MEMBER, json.dumps(state))


def read_state(path: Path) -> dict[str, Any]:
    """The resume state stored inside a checkpoint, bounded and checked (cnnctl/statefile.py)."""
    from cnnctl.statefile import read_checkpoint_state

    return read_checkpoint_state(path)


def _rng_state(model: keras.Model) -> list[list[int]]:
    """Dropout and other random layers keep their generator state out of the weights file."""
    return [np.asarray(layer.seed_generator.state).tolist()
            for layer in model.layers if hasattr(layer, "seed_generator")]


def _restore_rng(model: keras.Model, states: list[list[int]]) -> None:
    layers = [layer for layer in model.layers if hasattr(layer, "seed_generator")]
    for layer, value in zip(layers, states, strict=False):
        layer.seed_generator.state.assign(np.asarray(value, dtype=layer.seed_generator.state.dtype))
