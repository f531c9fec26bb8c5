"""Fit a model into a run folder: a new run, or a resumed one. Returns results; never prints.

What happens after each epoch lives in `callbacks`, the checkpoint format in
`checkpoint`; the command line renders what this returns.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

from cnnctl.config import Config, dump_config
from cnnctl.data.checks import check_dataset
from cnnctl.data.dataset import Dataset, dataset_for, without
from cnnctl.data.pipeline import eval_batches, training_batches
from cnnctl.data.stream import skip_reporter
from cnnctl.errors import Interrupted, TrainingFailed
from cnnctl.limits import EVAL_BATCH
from cnnctl.model.builder import build_model, compile_model, joint_augmentation
from cnnctl.modelfile.load import load_model
from cnnctl.runs import (
    Run,
    atomic_write,
    clean_leftovers,
    create_run,
    rows_to_csv,
    set_status,
    write_json,
    write_text,
)
from cnnctl.runs.results import TrainResult
from cnnctl.scoring.evaluate import score_split
from cnnctl.scoring.source import ScoringSource
from cnnctl.tasks import TARGET_STATS, task_of
from cnnctl.track import need_tracker
from cnnctl.training.callbacks import (
    Display,
    EpochRecorder,
    ProgressUpdater,
    StopRequested,
    stop_on_signals,
)
from cnnctl.training.checkpoint import restore_rng
from cnnctl.training.cluster import shared_stop, worker_lost
from cnnctl.training.distribute import is_chief, own_shares, prepare_multi_worker, strategy_for
from cnnctl.training.finetune import FineTune
from cnnctl.training.plan import check_resume, need_tensorboard
from cnnctl.training.precise_bn import precise_bn_callbacks
from cnnctl.training.state import ResumeState


def train_run(
    config: Config,
    runs_root: Path,
    display: Display | None = None,
    offline: bool = False,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainResult:
    """Train `config` from scratch into a new run folder under `runs_root`.

    `callbacks` run after cnnctl's own at each step (the epoch is saved before they see it).
    """
    need_tensorboard(config)
    need_tracker(config)
    strategy = strategy_for(config)  # first: a multi-worker cluster must be set up before any TF op
    return _from_scratch(None, runs_root, config, strategy, display, offline, callbacks)


def resume_run(
    run: Run,
    display: Display | None = None,
    overrides: tuple[str, ...] = (),
    config_file: Path | None = None,
    values: dict[str, Any] | None = None,
    offline: bool = False,
) -> TrainResult:
    """Continue `run` in its own folder from its last finished epoch (or from the start)."""
    chief = is_chief()
    saved, wanted, state = check_resume(run, overrides, config_file, values)
    need_tracker(wanted)
    strategy = strategy_for(wanted)
    if chief:
        clean_leftovers(run)
    if state is None:  # stopped before its first epoch ended: start it over, in the same folder
        return _from_scratch(run, run.path.parent, wanted, strategy, display, offline)
    if wanted.train.epochs > saved.train.epochs and state.stopped_early:
        state.stopped_early = None  # more epochs asked for: early stopping starts counting again
        state.rules.get("early_stopping", {})["wait"] = 0
    keras.utils.set_random_seed(wanted.seed + state.epoch)
    dataset = dataset_for(wanted, offline)
    with strategy.scope():
        model = load_model(run.last)
    restore_rng(model, state.rng)
    if not chief:
        return _fit(run, model, wanted, dataset, state, None, write=False)
    _record_resume(run, saved, wanted, state.epoch)
    # a kill between the checkpoint and metrics.csv left a row out; the checkpoint holds it
    write_text(run.metrics_csv, rows_to_csv(state.rows[: state.epoch]))
    set_status(run, "running", epochs=wanted.train.epochs)
    return _fit(run, model, wanted, dataset, state, display)


def _from_scratch(
    run: Run | None,
    runs_root: Path,
    config: Config,
    strategy: Any,
    display: Display | None,
    offline: bool,
    extra: Sequence[keras.callbacks.Callback] = (),
) -> TrainResult:
    """Build the model and fit it from epoch 0.

    The run folder is made only once the model builds.
    """
    keras.utils.set_random_seed(config.seed)
    dataset = dataset_for(config, offline)
    task_of(config).class_weights(config, dataset.y_train, dataset.class_names)  # before the folder
    for line in check_dataset(dataset, task_of(config)).warnings:
        if display is not None:
            display.warn(line)
    scaling = task_of(config).target_scaling(dataset.y_train, config)
    with strategy.scope():
        model = build_model(config, len(dataset.class_names), offline, scaling)
        compile_model(model, config, math.ceil(len(dataset.x_train) / config.train.batch_size))
    if display is not None and is_chief():
        display.note(_what_trains(dataset, model))
    if not is_chief():  # other workers compute, and write nothing
        return _fit(
            Run(runs_root / config.name), model, config, dataset, ResumeState(), None, write=False
        )
    restarted = run is not None
    run = run or create_run(runs_root, config.name)
    write_text(run.config, dump_config(config))
    write_json(run.classes, list(dataset.class_names))
    if scaling is not None:
        write_json(run.path / TARGET_STATS, scaling)
    set_status(run, "running", started=time.time(), epochs=config.train.epochs)
    result = _fit(run, model, config, dataset, ResumeState(), display, extra=extra)
    result.restarted = restarted
    return result


def _what_trains(dataset: Dataset, model: keras.Model) -> str:
    """One line before epoch 1: the images of each split, the outputs, the parameters."""
    splits = ", ".join(f"{len(dataset.split(s)[0]):,} {s}" for s in ("train", "validation", "test"))
    return (
        f"data: {splits} images of {dataset.origin}; {len(dataset.class_names)} classes; "
        f"model: {model.count_params():,} parameters"
    )


def _record_resume(run: Run, saved: Config, wanted: Config, epoch: int) -> None:
    """A resume that changes values writes config.resume-N.yaml and a line in run.json;
    config.yaml stays as the run began, so each stretch of epochs has its config."""
    if dump_config(saved) == dump_config(wanted):
        return
    path = run.path / f"config.resume-{len(run.resume_configs()) + 1}.yaml"
    write_text(path, dump_config(wanted))
    resumes = run.status_field("resumes")
    resumes = resumes if isinstance(resumes, list) else []
    entry = {"config": path.name, "from_epoch": epoch, "time": time.time()}
    set_status(run, "running", resumes=[*resumes, entry])


def _fit(
    run: Run,
    model: keras.Model,
    config: Config,
    dataset: Dataset,
    state: ResumeState,
    display: Display | None,
    write: bool = True,
    extra: Sequence[keras.callbacks.Callback] = (),
) -> TrainResult:
    """Fit from the epoch `state` names.

    Only a writing process (the chief) touches the run folder.
    """
    train = config.train
    num_classes = len(dataset.class_names)
    batches, steps = training_batches(
        dataset.x_train,
        dataset.y_train,
        batch_size=train.batch_size,
        seed=config.seed,
        num_classes=num_classes,
        one_hot=task_of(config).one_hot(train),
        first_epoch=state.epoch,
        epochs=train.epochs,
        joint=joint_augmentation(config),  # masks: geometric augmentation moves them too
        ignore_index=config.data.ignore_index,
        pixel_weights=task_of(config).pixel_weights(config, dataset.y_train, dataset.class_names),
    )
    validation = eval_batches(
        dataset.x_val,
        dataset.y_val,
        batch_size=max(train.batch_size, EVAL_BATCH),
        num_classes=num_classes,
        one_hot=task_of(config).one_hot(train),
    )
    prepare_multi_worker(model, validation)
    batches = own_shares(model, batches)  # a cluster's streamed batches: each worker's own
    recorder = EpochRecorder(run, config, state, len(dataset.x_train), display, write)
    progress = display.progress() if display is not None and write else contextlib.nullcontext()
    with stop_on_signals() as stop, progress as bar:
        agreeing, stop = shared_stop(model, stop)  # a cluster's workers stop at the same step
        callbacks = [recorder, *agreeing, ProgressUpdater(bar, stop, train.epochs, steps), *extra]
        reporters = skip_reporter(dataset, run, display, write)  # streamed files failing to decode
        callbacks += reporters
        callbacks += precise_bn_callbacks(config, model, dataset, steps, display)  # before val
        if (
            train.fine_tune is not None
        ):  # after the recorder: it may replace the optimizer the recorder set
            callbacks.insert(1, FineTune(config, steps))
        if train.tensorboard and write:
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run.path / "tensorboard")))
        try:
            if state.epoch < train.epochs and not state.stopped_early:
                model.fit(
                    batches,
                    class_weight=task_of(config).class_weights(
                        config, dataset.y_train, dataset.class_names
                    ),
                    steps_per_epoch=steps,
                    epochs=train.epochs,
                    initial_epoch=state.epoch,
                    validation_data=validation,
                    callbacks=callbacks,
                    shuffle=False,
                    verbose=0,
                )
            if stop["requested"]:  # came after fit's last step: stop all the same, before the test
                raise StopRequested
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
                f"free disk space, then resume from epoch {recorder.epoch}: cnnctl train --resume "
                f"{run.path}",
            ) from None
        except Exception as error:  # a collective failed: another worker of the cluster is gone
            lost = worker_lost(error, model, run, recorder.epoch, train.epochs)
            if lost is None:
                raise
            _mark(run, write, "interrupted", recorder.epoch)
            raise lost from None
    result = TrainResult(
        run=run,
        epochs_done=recorder.epoch,
        epochs=train.epochs,
        monitor=recorder.monitor,
        best_epoch=recorder.best_epoch,
        best_value=recorder.best,
        test={},
        stopped_early=recorder.stopped_early or state.stopped_early,
        seconds=sum(row["seconds"] for row in recorder.rows),
        images_per_second=recorder.images_per_second(),
        rows=recorder.rows,
        written=write,
        test_chose_epoch=config.data.validation == "test",
        train_images=len(dataset.x_train),
        task=config.task,
        headline=task_of(config).headline[0],
    )
    if not write:
        return result
    if recorder.failed:
        _mark(run, write, "failed", recorder.epoch)
        raise TrainingFailed(
            f"{run.path}: the loss became NaN (or infinite) in epoch {recorder.failed}",
            "lower train.optimizer.learning_rate (for example {type: Adam, learning_rate: 1e-4})",
        )
    if train.early_stopping and not train.early_stopping.restore_best:
        atomic_write(
            run.model, lambda tmp: shutil.copyfile(run.last, tmp)
        )  # the last epoch, as asked
    tested = time.time()
    result.test = _test(run, config, dataset, reporters)
    result.seconds += time.time() - tested
    write_json(run.metrics_json, result.summary())
    set_status(run, "finished", epochs_done=recorder.epoch)
    if train.track == "mlflow":  # after the run is whole: a tracker that fails changes nothing
        from cnnctl.track.mlflow_log import track_run

        track_run(run, run.path.parent, display.warn if display else _warn)
    return result


def _warn(message: str) -> None:
    """Warnings of a run without a display (a tune trial): stderr, its worker's log."""
    import sys

    print(f"warning: {message}", file=sys.stderr)


def _mark(run: Run, write: bool, status: str, epochs_done: int) -> None:
    """Record how the run ended, where this process writes and the disk still lets it."""
    if write:
        with contextlib.suppress(OSError):
            set_status(run, status, epochs_done=epochs_done)


def _test(
    run: Run, config: Config, dataset: Dataset, callbacks: Sequence[keras.callbacks.Callback] = ()
) -> dict[str, float]:
    """Score the best model (the file predict will use) on the test split, once, at the end,
    as `cnnctl evaluate` scores it."""
    task = task_of(config)
    best = ScoringSource(run.model, run, config, task, list(dataset.class_names), config.model.tta)
    model = best.load()
    batch_size = max(config.train.batch_size, EVAL_BATCH)

    def validation() -> tuple[Any, Any]:
        """The best model's outputs on the validation split, and its labels."""
        scored = score_split(
            model, task, dataset.x_val, dataset.y_val, task.one_hot(config.train), batch_size
        )
        truth = without(dataset.y_val, scored.failed)
        return scored.outputs, truth

    # What the task settles on validation (multilabel: thresholds), kept before the test uses it.
    for name, data in task.fitted(validation, list(dataset.class_names), config).items():
        write_json(run.path / name, data)
    scored = score_split(
        model,
        task,
        dataset.x_test,
        dataset.y_test,
        one_hot=task.one_hot(config.train),
        batch_size=batch_size,
        callbacks=callbacks,
        outputs=task.needs_test_outputs,
    )
    metrics = dict(scored.metrics)
    if task.needs_test_outputs:
        y = without(dataset.y_test, scored.failed)
        metrics.update(task.test_metrics(scored.outputs, y))
    return {key: round(float(value), 6) for key, value in metrics.items()}
