"""One `cnnctl tune` worker.

It asks the study for a trial, trains it as an ordinary run, tells the result.

Started by `cnnctl tune` as `python -m cnnctl.tune.worker SPEC` (SPEC: JSON). It
dies with its parent, so a killed `cnnctl tune` leaves no trainer behind; the
trial it was running stays in the storage as running until the next
`cnnctl tune` (or, on another machine, Optuna's heartbeat) marks it failed.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import math
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cnnctl.config import Config, load_config
from cnnctl.errors import CnnctlError, ConfigError, Interrupted, explain, first_line
from cnnctl.runs import set_status
from cnnctl.tune.space import inner_message, suggest_value, trial_config
from cnnctl.tune.study import (
    HOST,
    check_fingerprint,
    counts,
    fail_dead_trials,
    load_optuna,
    make_pruner,
    make_sampler,
    open_storage,
)


def pruning_callback(trial: Any, metric: str) -> Any:
    """A Keras callback that reports `metric` after each epoch.

    It stops `fit` when the pruner says so.

    Unlike optuna-integration's KerasPruningCallback, which raises `TrialPruned` inside
    `fit`, it stops after the epoch is saved, so `train_run` finishes the run folder.
    """
    import keras

    class Pruning(keras.callbacks.Callback):
        pruned_at: int | None = None

        def on_epoch_end(self, epoch: int, logs=None) -> None:
            value = (logs or {}).get(metric)
            if value is None or not math.isfinite(float(value)):
                return
            trial.report(float(value), step=epoch + 1)
            if trial.should_prune():
                self.pruned_at = epoch + 1
                self.model.stop_training = True

    return Pruning()


def work(spec: dict[str, Any]) -> int:
    """Run trials until the study has `target` of them done (or running elsewhere)."""
    import keras

    optuna = load_optuna()
    config = load_config(Path(spec["config"]), tuple(spec["overrides"]))
    folder = Path(spec["folder"])
    storage = open_storage(spec["storage"], folder)
    study = optuna.load_study(
        study_name=spec["study"],
        storage=storage,
        sampler=make_sampler(config.tune, spec["seed"]),
        pruner=make_pruner(config.tune, config.train.epochs),
    )
    check_fingerprint(study, config, spec["config"])
    while spec["deadline"] is None or time.time() < spec["deadline"]:
        with _lock(
            folder / ".tune.lock"
        ):  # counting and asking as one step: no trial too many here
            fail_dead_trials(study, storage)
            done, running = counts(study)
            if done + running >= spec["target"]:
                break
            trial = study.ask()
            for key, value in (
                ("host", HOST),
                ("pid", os.getpid()),
                ("run", f"trial-{trial.number:03d}"),
            ):
                trial.set_user_attr(key, value)
        run_trial(study, storage, trial, config, folder, bool(spec.get("offline")))
        keras.backend.clear_session()
        gc.collect()
    return 0


def run_trial(
    study: Any, storage: Any, trial: Any, config: Config, folder: Path, offline: bool = False
) -> None:
    """Train one trial into `folder/trial-NNN` and tell the study how it went."""
    from cnnctl.training.fit import train_run

    states = load_optuna().trial.TrialState
    tune = config.tune
    pruning = pruning_callback(trial, tune.metric)
    try:
        with _heartbeat(storage, study, trial):
            values = {key: suggest_value(trial, key, spec) for key, spec in tune.parameters.items()}
            run_config = trial_config(config, values, f"trial-{trial.number:03d}")
            result = train_run(run_config, folder, None, offline, callbacks=[pruning])
    except Interrupted:
        _fail(study, trial, "interrupted", True)
        raise
    except CnnctlError as error:  # this trial's values (NaN loss, an impossible combination)
        message = inner_message(error) if isinstance(error, ConfigError) else error.message
        _fail(study, trial, "error", message[:300])
        return
    except Exception as error:
        _fail(study, trial, "error", f"{type(error).__name__}: {first_line(error)}")
        return
    except BaseException:
        _fail(study, trial, "interrupted", True)
        raise
    trial.set_user_attr("run", result.run.name)
    if pruning.pruned_at is not None and pruning.pruned_at < run_config.train.epochs:
        set_status(result.run, "pruned", epochs_done=result.epochs_done)
        _tell(study, trial, state=states.PRUNED)
        return
    scores = [
        row[tune.metric] for row in result.rows if math.isfinite(row.get(tune.metric, math.nan))
    ]
    if not scores:
        _fail(study, trial, "error", f"training logged no {tune.metric}")
        return
    _tell(study, trial, (max if tune.direction == "maximize" else min)(scores))


def _fail(study: Any, trial: Any, key: str, value: Any) -> None:
    with contextlib.suppress(Exception):
        trial.set_user_attr(key, value)
    _tell(study, trial, state=load_optuna().trial.TrialState.FAIL)


def _tell(study: Any, trial: Any, value: float | None = None, state: Any = None) -> None:
    # GridSampler calls study.stop() after the last grid point, which only works inside optimize();
    # the trial's state is stored before that.
    with contextlib.suppress(RuntimeError):
        study.tell(trial, value, state=state, skip_if_finished=True)


@contextlib.contextmanager
def _heartbeat(storage: Any, study: Any, trial: Any) -> Iterator[None]:
    """RDB storage: tell other machines every few seconds that this trial is alive."""
    interval = getattr(storage, "heartbeat_interval", None)
    if not interval:
        yield
        return
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), trial.number
    )
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id)
            stop.wait(interval)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock on a regular file in the study folder (never a FIFO or a link)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CnnctlError(
                f"{path}: not a regular file", "remove it; cnnctl tune makes it again"
            )
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _die_with(parent: int) -> None:
    """Kill this process when the `cnnctl tune` that started it is gone (even by SIGKILL)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM between epochs; inside `fit` train_run handles it


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    try:
        _die_with(spec["parent"])
        signal.signal(signal.SIGTERM, _interrupt)
        return work(spec)
    except BaseException as error:  # shown as `cnnctl` shows errors: one line, no traceback
        shown = explain(error)
        if not isinstance(shown, Interrupted):
            message = shown.format_message().replace("\n", " ")  # one line: `cnnctl tune` shows it
            print(f"tune worker {spec['index']}: {message}", file=sys.stderr, flush=True)
        return shown.exit_code


if __name__ == "__main__":
    from cnnctl.startup import load_tensorflow

    verbose = json.loads(sys.argv[1]).get("verbose", False)
    load_tensorflow(verbose)
    if not verbose:  # retracing notes from one model per trial in one process
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
    sys.exit(main(sys.argv[1:]))
