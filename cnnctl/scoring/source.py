"""What a scoring command scores with, decided once: the model file and its kind, the run it
belongs to, the run's config and task, the names of the outputs, and test-time augmentation.

`evaluate`, `predict`, `export` (and `serve`, `explain`) take a `ScoringSource`; none of them
asks again which file, which run or which classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnctl.config import Config, load_config
from cnnctl.errors import DataError, ModelFileError, RunError
from cnnctl.escape import safe_text
from cnnctl.limits import read_json
from cnnctl.modelfile.exported import (
    exported_class_names,
    exported_facts,
    exported_record,
    is_exported,
)
from cnnctl.runs import Run, find_run, run_of_model
from cnnctl.tasks import REGISTRY, Task, task_named, task_of


@dataclass(frozen=True)
class ScoringSource:
    """A model file to score with, and everything about it that its run folder says."""

    model_file: Path
    run: Run | None  # the run folder it belongs to, when it is in one
    config: Config | None  # that run's config
    task: Task
    names: list[str] | None  # one per output; None where nothing records them
    tta: str = "none"
    legacy_h5: bool = False
    warning: str | None = None  # a line for the person: what was guessed about the model file
    # What `load` and `traced` made, kept for the next call in the same process (serve, bench).
    _kept: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def exported(self) -> bool:
        """.onnx / .tflite: run in their own runtime, without TensorFlow."""
        return is_exported(self.model_file)

    def load(self, compile: bool = True) -> Any:
        """The model, ready to call: Keras or the exported file's runtime, with TTA applied.

        Loaded once per source: a second call (a server's, a benchmark's) reuses it."""
        if ("model", compile) not in self._kept:
            self._kept["model", compile] = self._load(compile)
        return self._kept["model", compile]

    def _load(self, compile: bool) -> Any:
        from cnnctl.scoring.tta import with_tta

        if self.exported:
            from cnnctl.modelfile.exported import load_exported

            model = load_exported(self.model_file)
            _check_rank(self.model_file, model, self.task)
        else:
            from cnnctl.modelfile.load import load_model

            model = load_model(self.model_file, compile=compile, legacy_h5=self.legacy_h5)
        return with_tta(model, self.tta, self.task)

    def output_names(self, model: Any) -> list[str]:
        """One name per output of `model` (a class, label or target; "0", "1", ... where nothing
        records them); names of another model's outputs are refused."""
        outputs = model.output_shape[-1]
        if self.names is not None and len(self.names) != outputs:
            raise DataError(
                f"{Path(self.model_file).parent / 'classes.json'}: {len(self.names)} class "
                f"names for a model with {outputs} outputs",
                "the file does not belong to this model",
            )
        return self.names or [str(i) for i in range(outputs)]

    def inference(self, model: Any) -> Any:
        """`model` as "batch -> outputs" in inference mode. A Keras model called without
        `training=False` runs its augmentation layers (a RandomFlip in the model flipped half
        of predict's images: one image, two answers); an exported file has none."""
        if self.exported:
            return model
        return lambda batch: model(batch, training=False)

    def traced(self, model: Any) -> Any:
        """`model` (a Keras model this source loaded) as a traced graph function on batches of
        any size: fused kernels instead of eager calls, traced once per source."""
        if ("traced", id(model)) not in self._kept:
            import tensorflow as tf

            shape = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
            self._kept["traced", id(model)] = tf.function(
                lambda batch: model(batch, training=False), input_signature=[shape]
            )
        return self._kept["traced", id(model)]


def resolve_source(
    run_ref: str | None,
    model_file: Path | None,
    runs_dir: Path,
    tta: str | None = None,
    legacy_h5: bool = False,
) -> ScoringSource:
    """The run named `run_ref` (default: the latest with a model), or a model file `model_file`.

    A file inside a run folder (or its export/ folder) takes that run's config and class
    names; a bare exported file takes the class names recorded beside it.
    """
    if model_file is None:
        run = find_run(run_ref, runs_dir, with_model=True)
        model_file = run.model
        if not model_file.is_file():
            raise RunError(
                f"{model_file}: the run has no model yet",
                f"resume it: cnnctl train --resume {run.path}",
            )
    else:
        model_file = Path(model_file)
        run = run_of_model(model_file)
        if not os.path.lexists(model_file):  # what else is there, the loader names
            raise ModelFileError(
                f"{model_file}: no such model file",
                "give the path of a .keras, .onnx or .tflite file, or a run name (see cnnctl runs)",
            )
    config = load_config(run.effective_config) if run is not None else None
    if config is None and is_exported(model_file):
        return _bare_exported(model_file, run, tta)
    return ScoringSource(
        model_file=model_file,
        run=run,
        config=config,
        task=_task(config, run),
        names=_names(run, model_file),
        tta=tta or (config.model.tta if config is not None else "none"),
        legacy_h5=legacy_h5,
    )


def _bare_exported(model_file: Path, run: Run | None, tta: str | None) -> ScoringSource:
    """An exported file outside any run: its task, names and kept state from the export.json
    beside it, else from the record inside the file, else guessed from its output's shape
    (per pixel: segmentation; else a classifier), with a warning that says so."""
    record, warning = exported_record(model_file), None
    if not record:
        facts = exported_facts(model_file)
        record = facts.record
        if record is None:
            spatial = [n for n, t in REGISTRY.items() if t.spatial_output]
            record = {"task": spatial[0] if facts.output_rank == 4 and spatial else None}
            warning = (
                f"warning: {model_file}: no export.json beside it and no cnnctl record inside; "
                + (
                    "its per-pixel outputs are read as segmentation masks"
                    if record["task"]
                    else "its outputs are read as a classifier's probabilities"
                )
                + " (to be sure: copy its export.json beside it, or re-export it with this "
                "version of cnnctl)"
            )
    name = record.get("task")
    if name is not None and name not in REGISTRY:
        raise ModelFileError(
            f"{model_file}: its cnnctl record names an unknown task '{safe_text(str(name)[:40])}'",
            f"tasks: {', '.join(REGISTRY)}; re-export the model with this version of cnnctl",
        )
    task = task_named(name or "classification")
    kept = record.get("kept")
    try:
        task.restore(kept if isinstance(kept, dict) else {})
    except DataError as error:  # the record's kept state is not what the task wrote
        raise ModelFileError(f"{model_file}: its cnnctl record: {error.message}") from None
    return ScoringSource(
        model_file=model_file,
        run=run,
        config=None,
        task=task,
        names=_names(run, model_file, record),
        tta=tta or "none",
        warning=warning,
    )


def _check_rank(path: Path, model: Any, task: Task) -> None:
    """An exported file's outputs must have the task's shape: per pixel (N, H, W, C) for a task
    with spatial outputs, one vector (N, C) for the others; else a ModelFileError."""
    rank = len(model.output_shape)
    if rank == (4 if task.spatial_output else 2):
        return
    shape = [None, *model.output_shape[1:]]
    raise ModelFileError(
        f"{path}: its outputs are shaped {shape}, not what task: {task.name} reads "
        f"({'per-pixel (N, H, W, classes)' if task.spatial_output else 'one vector per image'})",
        "put the file's own export.json beside it, or re-export it with this version of cnnctl",
    )


def run_source(run: Run) -> ScoringSource:
    """The run's own model.keras, as training's end-of-run test scores it."""
    if not run.model.is_file():
        raise RunError(
            f"{run.model}: the run has no model yet", f"resume it: cnnctl train --resume {run.path}"
        )
    config = load_config(run.effective_config)
    return ScoringSource(
        run.model, run, config, _task(config, run), _names(run, run.model), config.model.tta
    )


def _task(config: Config | None, run: Run | None) -> Task:
    """The run's task, with what it kept in the run folder (multilabel: its thresholds)."""
    task = task_of(config)
    if run is not None:
        task.restore(kept_state(task, run))
    return task


def kept_state(task: Task, run: Run) -> dict[str, Any]:
    """The files the task's `fitted` wrote in the run folder, read back (bounded JSON)."""
    files = (run.path / name for name in task.kept_files)
    return {file.name: read_json(file, RunError) for file in files if os.path.lexists(file)}


def _names(
    run: Run | None, model_file: Path, record: dict[str, Any] | None = None
) -> list[str] | None:
    """classes.json of the run (or beside a bare model), else an exported file's record
    (`record`, where it was read already: export.json's or the file's own)."""
    folder = run or Run(model_file.parent)
    if folder.classes.is_file():
        return folder.class_names()
    if record is not None:
        found = record.get("class_names")
        return found if isinstance(found, list) and all(isinstance(n, str) for n in found) else None
    return exported_class_names(model_file) if is_exported(model_file) else None
