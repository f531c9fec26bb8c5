"""The Task seam: everything that depends on what a label is, behind one interface.

A task says how labels are read and encoded, how the data is split, what the network's
last layer must give, how its outputs are scored, reported, printed and compared with an
exported copy, and how two test-time views of an image merge. The rest of cnnctl calls
these methods and never asks which task it runs; a new task is one module beside this one.

Tasks work on numpy arrays and import no TensorFlow: exported models are scored with them
in processes that never load it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from cnnctl.errors import ConfigError, DataError
from cnnctl.runs.results import EvaluationResult, Prediction

if TYPE_CHECKING:
    from cnnctl.config import Config, TrainConfig


TARGET_STATS = "target_stats.json"  # a run's standardization of regression targets


@dataclass
class Report:
    """A task's evaluation of one split: JSON fields, the worst examples, and its figures.

    `fields` go into evaluation.json beside the common ones; `worst` becomes
    misclassified.csv (highest loss first); `figures` maps a file stem to a function
    that writes that figure to the path it is given. `explain` lists (image index, weights
    over its output) whose Grad-CAM maps a figure shows: evaluate puts them in `maps`
    (image index -> map in 0..1) before the figures are drawn, where the model has gradients.
    """

    fields: dict[str, Any]
    worst: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    explain: list[tuple[int, np.ndarray]] = field(default_factory=list)
    maps: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass
class ExplainTarget:
    """One output `explain` maps: its index and name, the model's value for it, and the
    weights (shaped like one image's output) whose sum with the output is the explained score."""

    index: int
    label: str
    value: float
    weights: np.ndarray


class Task(ABC):
    """One kind of label: single-label classes, several labels, numbers, pixel classes."""

    name: ClassVar[str]
    # Whether outputs have the image's height and width: a mirrored view's output is then
    # mirrored back before the two are averaged.
    spatial_output: ClassVar[bool] = False
    # The one test figure that ranks runs of this task (compare, report, tracking), and whether
    # higher ("max") or lower ("min") is better: a key of metrics.json's "test".
    headline: ClassVar[tuple[str, str]] = ("accuracy", "max")
    # what predict's table calls a row's label and its value
    prediction_columns: ClassVar[tuple[str, str]] = ("class", "prob")
    # Whether labels are images too (masks beside the images: data/masks.py reads them).
    mask_labels: ClassVar[bool] = False
    counted: ClassVar[str] = "images"  # what label_counts counts, for `datasets check`

    def use_config(self, config: Config) -> None:
        """Take up the config's settings the task scores with (nothing by default)."""
        return None

    # --------------------------------------------------------------------------- labels

    @abstractmethod
    def encode_labels(self, y: np.ndarray, origin: str) -> np.ndarray:
        """Labels as a data source gave them -> the form stored in a `Dataset`.

        Raises `DataError` naming `origin` when they cannot be labels of this task.
        """

    def held_out(self, y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
        """A boolean mask of the examples to hold out (`fraction` of them, chosen by `seed`);
        at random by default (a task with classes stratifies)."""
        held = np.zeros(len(y), dtype=bool)
        held[np.random.default_rng(seed).permutation(len(y))[: int(round(len(y) * fraction))]] = (
            True
        )
        return held

    @abstractmethod
    def output_names(
        self, given: Sequence[str] | None, labels: Sequence[np.ndarray], origin: str
    ) -> tuple[str, ...]:
        """The name of each output: the source's names, or made up from the labels seen."""

    def check_source(self, kind: str, where: str) -> None:
        """Refuse a kind of data source this task cannot read labels from (a `ConfigError`).

        `kind`: builtin, folder, idx, npz, pixel_csv or path_csv; every kind by default.
        """
        return None

    def read_labels(
        self,
        cells: Sequence[tuple[str, ...]],
        lines: Sequence[int],
        splits: Sequence[str],
        columns: Sequence[str],
        path: str,
    ) -> tuple[np.ndarray, tuple[str, ...]]:
        """A CSV of paths' label cells (one tuple a row, one cell a label column) -> labels
        and output names. `lines[i]` is row i's line in `path` and `splits[i]` its split.

        Default: one column of class names, numbered in sorted order (numerically if digits).
        """
        if len(columns) != 1:
            raise DataError(
                f"{path}: data.label_column lists {len(columns)} columns; task: {self.name} "
                "reads one",
                "give one column name",
            )
        found = sorted({row[0] for row in cells})
        names = sorted(found, key=int) if all(n.isdigit() for n in found) else found
        number = {name: i for i, name in enumerate(names)}
        return np.asarray([number[row[0]] for row in cells], dtype=np.int64), tuple(names)

    def label_counts(self, y: np.ndarray, k: int) -> list[int]:
        """Examples of each output in a split, for the checks before training."""
        return np.bincount(y, minlength=k).tolist()

    def check_outputs(self, outputs: int, names: Sequence[str], y: np.ndarray, where: str) -> None:
        """A model's number of outputs must fit the data it is scored on (a `DataError`)."""
        if outputs != len(names) or y.max(initial=0) >= len(names):
            raise DataError(
                f"{where}: the model has {outputs} outputs but the data "
                f"has {max(len(names), int(y.max(initial=0)) + 1)} classes"
            )

    # --------------------------------------------------------------------------- the model

    @abstractmethod
    def check_head(self, output_shape: tuple, outputs: int | None, config: Config) -> None:
        """The network's output must fit the data; a `ConfigError` at the last layer if not."""

    @abstractmethod
    def one_hot(self, train: TrainConfig) -> bool:
        """Whether labels go to the loss as one-hot vectors (else as they are stored)."""

    def class_weights(self, config: Config, y: np.ndarray, names: Sequence[str]) -> Any:
        """Keras' `class_weight` for `fit` from train.class_weight, or None.

        Tasks without classes refuse the setting.
        """
        if config.train.class_weight is None:
            return None
        raise ConfigError(
            f"{config.where(('train', 'class_weight'))}: class weights apply to classes, "
            f"not to task: {self.name}",
            "remove train.class_weight",
        )

    def loss_object(self, config: Config, outputs: int) -> Any:
        """A Keras loss object to compile with, where the task makes its own; None: train.loss
        by name (the default). Imports Keras only when called."""
        return None

    def metric_object(self, name: str, config: Config, outputs: int) -> Any:
        """A Keras metric object for the name under train.metrics, where the task makes its
        own; None: Keras' metric of that name (the default)."""
        return None

    def pixel_weights(self, config: Config, y: np.ndarray, names: Sequence[str]) -> Any:
        """A weight per class for every labelled pixel's loss (labels that are masks), from
        train.class_weight, as a numpy vector; None by default (`class_weights` serves the
        tasks whose labels Keras' class_weight understands)."""
        return None

    @abstractmethod
    def metric_hint(self) -> str:
        """What to put under train.metrics, for the unknown-metric message."""

    # --------------------------------------------------------------------------- scoring

    @abstractmethod
    def score(self, outputs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        """The task's headline metrics and loss, from outputs alone (exported files)."""

    @abstractmethod
    def report(
        self,
        outputs: np.ndarray,
        truth: np.ndarray,
        names: list[str],
        files: Sequence[str] | None,
        images: np.ndarray,
    ) -> Report:
        """Numbers, worst examples and figures of an evaluation."""

    @abstractmethod
    def evaluation_table(self, result: EvaluationResult) -> Any:
        """What `evaluate` shows in the terminal (a Rich renderable)."""

    @abstractmethod
    def prediction(
        self, path: Path | str, output: np.ndarray, names: list[str], k: int | None
    ) -> Prediction:
        """What `predict` shows for one image (`k`: --top-k, None when not given)."""

    def explain_targets(
        self, output: np.ndarray, names: list[str], chosen: int | None, k: int | None
    ) -> list[ExplainTarget]:
        """What `explain` maps for one image's `output`; a map explains sum(weights * output).

        `chosen`: the output the user named (--class). Default: that one, else the rows
        `prediction` gives (the top-k classes; each label above its threshold, or the most
        probable where none is; each target's value). A task whose outputs are per pixel
        (segmentation) overrides this to weigh the chosen class's predicted pixels.
        """
        picked = (
            [(chosen, float(output[chosen]))]
            if chosen is not None
            else [(g.index, g.probability) for g in self.prediction("", output, names, k).top]
        ) or [(int(np.argmax(output)), float(np.max(output)))]
        targets = []
        for index, value in picked:
            weights = np.zeros(output.shape, np.float32)
            weights[index] = 1.0
            targets.append(ExplainTarget(int(index), names[index], float(value), weights))
        return targets

    @abstractmethod
    def parity(
        self, expected: np.ndarray, got: np.ndarray, truth: np.ndarray, tolerance: float | None
    ) -> dict[str, Any]:
        """How far an exported file's outputs are from Keras', and whether that passes.

        `tolerance`: the largest difference allowed; None for a quantized file, whose
        quality is judged instead.
        """

    @abstractmethod
    def parity_summary(self, check: dict[str, Any]) -> str:
        """`parity`'s figures in one line, for messages."""

    # --------------------------------------------------------------------------- run state

    def target_scaling(self, y: np.ndarray, config: Config) -> dict[str, Any] | None:
        """{"mean": [...], "std": [...]} of the training targets where the network should learn
        them standardized (saved as target_stats.json); None by default."""
        return None

    def fitted(
        self,
        validation: Callable[[], tuple[np.ndarray, np.ndarray]],
        names: Sequence[str],
        config: Config,
    ) -> dict[str, Any]:
        """After training: what the task settles from the best model's validation outputs
        (`validation()` gives them and their labels), to keep with the run as
        {file name: JSON data}; this task object keeps it too. Nothing by default."""
        return {}

    kept_files: ClassVar[tuple[str, ...]] = ()  # what `fitted` writes, read back by `restore`

    def restore(self, kept: Mapping[str, Any]) -> None:
        """Take up what `fitted` saved ({file name: JSON data}, read from the run folder or an
        exported file's record); nothing by default."""
        return None

    def test_metrics(self, outputs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        """Figures added to training's test metrics, from the outputs (none by default)."""
        return {}

    needs_test_outputs: ClassVar[bool] = False  # whether test_metrics is worth a predict pass

    def parity_rows(self, check: dict[str, Any]) -> list[tuple[str, str]]:
        """`parity`'s figures as (name, value) rows, for export's table."""
        return [
            ("max abs diff", f"{check['max_abs_diff']:.2e}"),
            ("parity", self.parity_summary(check)),
        ]

    def merge_tta(self, plain: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
        """One output from an image's and its mirror's (the mirror's output already unflipped)."""
        return (plain + mirrored) / 2


def column_names(
    given: Sequence[str] | None, labels: Sequence[np.ndarray], origin: str, noun: str
) -> tuple[str, ...]:
    """One name per label column (`noun`: label, target): the source's, else "0", "1", ..."""
    count = labels[0].shape[1]
    if given is None:
        return tuple(str(i) for i in range(count))
    if len(given) != count:
        raise DataError(f"{origin}: {len(given)} {noun} names for {count} {noun}s")
    return tuple(given)


def check_vector_head(
    output_shape: tuple,
    outputs: int | None,
    config: Config,
    noun: str,
    activations: tuple[str | None, ...],
) -> None:
    """A head of `outputs` values (`noun`: labels, targets) whose activation is one of
    `activations` (None: no activation), as far as the config says which it is; `outputs`
    None: not known before the data is read (`validate`), so not checked."""
    last = ("model", "layers", len(config.model.layers) - 1)
    if len(output_shape) != 2:
        raise ConfigError(
            f"{config.where(last)}: the network ends with shape {output_shape}, not one value "
            f"per {noun[:-1]}",
            f"add Flatten (or GlobalAveragePooling2D) and a Dense layer with "
            f"{outputs or 'one'} units{'' if outputs else f' per {noun[:-1]}'}",
        )
    if outputs is not None and output_shape[-1] != outputs:
        raise ConfigError(
            f"{config.where(last)}: the last layer gives {output_shape[-1]} outputs but the "
            f"data has {outputs} {noun}",
            f"set units: {outputs} on the last Dense layer",
        )
    spec = config.model.layers[-1]
    if spec.type not in ("Dense", "Activation"):
        return  # a block or another layer: its activation is not the config's to say
    found = spec.args.get("activation")
    found = None if found in (None, "linear") else found
    if found not in activations:
        wanted = " or ".join("no activation" if a is None else a for a in activations)
        raise ConfigError(
            f"{config.where(last)}: the last layer's activation is {found or 'none'}; "
            f"task: {config.task} needs {wanted}",
            f"set activation: {activations[0]}" if activations[0] else "remove its activation",
        )
