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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from cnnctl.errors import ConfigError
from cnnctl.runs.results import EvaluationResult, Prediction

if TYPE_CHECKING:
    from cnnctl.config import Config, TrainConfig


@dataclass
class Report:
    """A task's evaluation of one split: JSON fields, the worst examples, and its figures.

    `fields` go into evaluation.json beside the common ones; `worst` becomes
    misclassified.csv (highest loss first); `figures` maps a file stem to a function
    that writes that figure to the path it is given.
    """

    fields: dict[str, Any]
    worst: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """One kind of label: single-label classes, several labels, numbers, pixel classes."""

    name: ClassVar[str]
    # Whether outputs have the image's height and width: a mirrored view's output is then
    # mirrored back before the two are averaged.
    spatial_output: ClassVar[bool] = False

    # --------------------------------------------------------------------------- labels

    @abstractmethod
    def encode_labels(self, y: np.ndarray, origin: str) -> np.ndarray:
        """Labels as a data source gave them -> the form stored in a `Dataset`.

        Raises `DataError` naming `origin` when they cannot be labels of this task.
        """

    @abstractmethod
    def held_out(self, y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
        """A boolean mask of the examples to hold out (`fraction` of them, chosen by `seed`)."""

    @abstractmethod
    def output_names(
        self, given: Sequence[str] | None, labels: Sequence[np.ndarray], origin: str
    ) -> tuple[str, ...]:
        """The name of each output: the source's names, or made up from the labels seen."""

    # --------------------------------------------------------------------------- the model

    @abstractmethod
    def check_head(self, output_shape: tuple, outputs: int, config: Config) -> None:
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
        self, path: Path | str, output: np.ndarray, names: list[str], k: int
    ) -> Prediction:
        """What `predict` shows for one image."""

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

    def merge_tta(self, plain: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
        """One output from an image's and its mirror's (the mirror's output already unflipped)."""
        return (plain + mirrored) / 2
