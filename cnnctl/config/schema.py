"""The config's schema: what each section may hold, its defaults and limits (pydantic, frozen).

`config.py` reads, overrides and validates files against these classes; nothing
here reads a file or knows of Keras.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_serializer,
    model_validator,
)

from cnnctl.config.yamlfile import Path_, Source, dotted
from cnnctl.limits import limit

# The built-in datasets and the shape of their images: (height, width, channels).
BUILTIN_SHAPES = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
}
BUILTIN_DATASETS = tuple(BUILTIN_SHAPES)
# A run's, a study's or a trial's name: also a folder name, so no separators and no dot first.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
# What a label is: one module each in cnnctl/tasks/ (the registry there checks it is this list).
TASKS = ("classification", "multilabel", "regression", "segmentation")
SPLITS = ("train", "validation", "test")  # the three splits every dataset is read into
TTA_MODES = ("none", "horizontal_flip")  # test-time augmentation: none, or image + mirror
# Classification losses, and whether each wants one-hot labels.
LOSSES = {
    "categorical_crossentropy": True,
    "sparse_categorical_crossentropy": False,
    "categorical_focal_crossentropy": True,
    "categorical_hinge": True,
    "kl_divergence": True,
    "binary_crossentropy": False,  # multilabel: one sigmoid per label
    "mse": False,  # regression
    "mae": False,
    "huber": False,
    "dice": False,  # segmentation: 1 - mean Dice over the classes, ignore_index left out
    "crossentropy_dice": False,  # segmentation: sparse cross-entropy + Dice
}
# The losses each task takes; the first is its default. Classification keeps its own list.
TASK_LOSSES = {
    "classification": tuple(LOSSES)[:5],
    "multilabel": ("binary_crossentropy",),
    "regression": ("mse", "mae", "huber"),
    "segmentation": ("sparse_categorical_crossentropy", "dice", "crossentropy_dice"),
}
# Metrics compiled when train.metrics is not given (classification: accuracy, as before).
TASK_METRICS = {
    "classification": ["accuracy"],
    "multilabel": ["binary_accuracy"],
    "regression": ["mae"],
    "segmentation": ["mean_iou"],  # over the classes, ignore_index left out
}
SMOOTHED_LOSSES = ("categorical_crossentropy", "categorical_focal_crossentropy")


# --------------------------------------------------------------------------- schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# Layer types that hold layers of their own (cnnctl/blocks.py builds them).
NESTING_TYPES = ("Residual", "Skip")


class ObjectSpec(_Strict):
    """A Keras object named by its class: a bare `Flatten`, or `{type: Dense, units: 10}`."""

    type: str
    args: dict[str, Any] = Field(default_factory=dict)
    layers: list[ObjectSpec] | None = (
        None  # a Residual or Skip block's own layers, validated like model.layers
    )

    @model_validator(mode="before")
    @classmethod
    def _split_type(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"type": value, "args": {}}
        if isinstance(value, dict):
            if "type" not in value:
                raise ValueError("needs a `type:` (for example `type: Dense`)")
            if not isinstance(value["type"], str):
                raise ValueError(f"`type` must be a class name, got {value['type']!r}")
            args = {k: v for k, v in value.items() if k != "type"}
            if value["type"] in NESTING_TYPES and "layers" in args:
                return {"type": value["type"], "layers": args.pop("layers"), "args": args}
            return {"type": value["type"], "args": args}
        raise ValueError(f"expected a name or a mapping with `type:`, got {value!r}")

    @model_serializer
    def _flat(self) -> Any:
        if self.layers is not None:
            return {
                "type": self.type,
                "layers": [spec._flat() for spec in self.layers],
                **self.args,
            }
        return {"type": self.type, **self.args} if self.args else self.type


class DataConfig(_Strict):
    dataset: Literal[BUILTIN_DATASETS] | None = None  # type: ignore[valid-type]
    path: str | None = None
    validation: Any = "test"
    normalize: bool = True
    limit: int | None = Field(default=None, gt=0)
    test_fraction: float = Field(
        default=0.2, gt=0, lt=1
    )  # held out when the data has no test split
    image_size: list[int] | None = Field(
        default=None, min_length=2, max_length=2
    )  # default: the model's
    color_mode: Literal["grayscale", "rgb"] | None = None  # default: from the model's channels
    # CSV files: the column with the class (multilabel: names separated by spaces);
    # regression: a number column, or a list of them
    label_column: str | list[str] = "label"
    standardize_targets: bool | None = None  # regression: train on (y - mean) / std
    # segmentation: the class of each mask value (default: the folder's classes.txt), and the
    # mask value left out of loss and metrics
    classes: list[str] | None = Field(default=None, min_length=2)
    ignore_index: int = Field(default=255, ge=0, le=65535)
    image_shape: list[int] | None = Field(
        default=None, min_length=3, max_length=3
    )  # CSV; default: the model's
    augment: list[ObjectSpec] = Field(default_factory=list)
    cache: Literal["auto", "memory", "disk", "none"] = (
        "auto"  # image folders: where decoded pixels live
    )

    _source: Source | None = PrivateAttr(default=None)

    def where(self, path: Path_) -> str:
        """`file:line:col: data.path` for a value of this section (or just its dotted place)."""
        full = ("data", *path)
        return self._source.where(full) if self._source is not None else dotted(full)

    @field_validator("validation")
    @classmethod
    def _test_or_fraction(cls, value: Any) -> Any:
        if value == "test" or (type(value) is float and 0 < value < 1):
            return value
        raise ValueError(f"must be `test` or a fraction such as 0.1, got {value!r}")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of `dataset:` (a built-in name) or `path:`")
        return self


class ModelConfig(_Strict):
    input_shape: list[int] = Field(min_length=3, max_length=3)
    layers: list[ObjectSpec] = Field(min_length=1)
    # Test-time augmentation: horizontal_flip scores each image as the mean of the model's
    # outputs on it and on its mirror image (the end-of-training test, evaluate, predict).
    tta: Literal[TTA_MODES] = "none"  # type: ignore[valid-type]

    @field_validator("input_shape")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(n <= 0 or n > 16384 for n in value):
            raise ValueError(f"must be [height, width, channels] of positive sizes, got {value}")
        if value[0] * value[1] * value[2] > limit("activation"):
            raise ValueError(
                f"{value} is too large an image to train on; resize the data first "
                f"(or raise --limit activation={limit('activation')})"
            )
        return value


def mode_of(monitor: str, mode: str = "auto") -> str:
    """'max' for metrics that grow as the model improves, else 'min'; an explicit `mode` wins."""
    if mode != "auto":
        return mode
    return (
        "max"
        if any(word in monitor for word in ("acc", "auc", "precision", "recall", "f1", "iou"))
        else "min"
    )


class CheckpointConfig(_Strict):
    """Which epoch's model becomes model.keras."""

    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"


class EarlyStoppingConfig(_Strict):
    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    patience: int = Field(default=3, ge=0)
    min_delta: float = Field(default=0.0, ge=0)
    restore_best: bool = True  # false: model.keras is the last epoch's model instead of the best


class LRSchedule(_Strict):
    """Learning rate per epoch. `type` picks the rule; the other keys tune it."""

    type: Literal["constant", "reduce_on_plateau", "cosine", "step", "exponential"]
    factor: float = Field(
        default=0.5, gt=0, le=1
    )  # plateau, step: multiply by; exponential: per epoch
    patience: int = Field(default=2, ge=0)  # plateau: epochs without improvement first
    monitor: str = "val_loss"  # plateau
    min_delta: float = Field(default=0.0, ge=0)
    step_epochs: int = Field(default=5, gt=0)  # step: every this many epochs
    warmup_epochs: int = Field(default=0, ge=0)  # cosine: linear warm-up first
    min_lr: float = Field(default=0.0, ge=0)


class FineTuneConfig(_Strict):
    """After `at_epoch` epochs, thaw the Backbone and train on at a lower learning rate."""

    at_epoch: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    layers: str = "all"  # "all", or "last K": only the backbone's last K layers are thawed

    @field_validator("layers")
    @classmethod
    def _all_or_last(cls, value: str) -> str:
        if value == "all" or re.fullmatch(r"last [1-9][0-9]{0,5}", value):
            return value
        raise ValueError(f"must be `all` or `last K` such as `last 20`, got {value!r}")

    @property
    def last(self) -> int | None:
        """K of `last K`; None for all layers."""
        return None if self.layers == "all" else int(self.layers.split()[1])


class TrainConfig(_Strict):
    epochs: int = Field(default=10, gt=0, le=100_000)
    batch_size: int = Field(default=32, gt=0, le=65_536)
    optimizer: ObjectSpec = ObjectSpec(type="adam")
    loss: Literal[tuple(LOSSES)] = "categorical_crossentropy"  # type: ignore[valid-type]
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)  # targets 1-x and x/classes
    # Weight of each class in the loss: {name: weight} (others 1.0) or `balanced`
    # (n / (classes * count), as scikit-learn computes it), for imbalanced data.
    class_weight: Literal["balanced"] | dict[str, float] | None = None
    metrics: list[str] = ["accuracy"]
    checkpoint: CheckpointConfig = CheckpointConfig()
    early_stopping: EarlyStoppingConfig | None = None
    lr_schedule: LRSchedule | None = None
    tensorboard: bool = False
    # Experiment tracking: mlflow logs the run (config, epochs, test, files) when it ends
    # (cnnctl[track]; MLFLOW_TRACKING_URI, else a local store in RUNS_DIR/mlruns).
    track: Literal["none", "mlflow"] = "none"
    steps_per_execution: int = Field(default=8, ge=1, le=10_000)  # batches per call into TensorFlow
    jit_compile: Literal["auto"] | bool = (
        "auto"  # XLA; "auto" is Keras' choice (off on CPU, where it is slower)
    )
    precision: Literal["float32", "mixed"] = (
        "float32"  # mixed: bfloat16 on capable CPUs, float16 on GPUs
    )
    mixed_precision: bool | None = None  # the same as precision: mixed
    distribute: Literal["auto", "none", "mirrored", "multi_worker"] = "auto"
    distribute_timeout: float = Field(default=300, ge=1, le=86_400)  # s: a lost worker stops all
    fine_tune: FineTuneConfig | None = None
    # BatchNormalization statistics recomputed over training batches before each validation;
    # auto: for short runs (under 500 steps in all) of models that have BatchNormalization.
    precise_bn: Literal["auto"] | bool = "auto"

    @model_validator(mode="after")
    def _one_precision(self) -> TrainConfig:
        if (
            self.mixed_precision
            and "precision" in self.model_fields_set
            and self.precision == "float32"
        ):
            raise ValueError("precision: float32 and mixed_precision: true disagree; keep one")
        if self.mixed_precision:
            object.__setattr__(self, "precision", "mixed")
        if self.label_smoothing and self.loss not in SMOOTHED_LOSSES:
            raise ValueError(
                f"label_smoothing works with loss: {' or '.join(SMOOTHED_LOSSES)}, not {self.loss}"
            )
        return self

    @property
    def logged(self) -> list[str]:
        """The per-epoch values training logs: what a monitor or a tune metric can name."""
        known = ["loss", *self.metrics]
        return known + [f"val_{name}" for name in known]

    @property
    def one_hot(self) -> bool:
        """Whether the loss wants one-hot labels (else integer class indices)."""
        return LOSSES[self.loss]


class ParamSpec(_Strict):
    """One searched value: a float range, an integer range, or a list of choices."""

    type: Literal["uniform", "loguniform", "int", "choice"]
    low: int | float | None = None
    high: int | float | None = None
    step: int | float | None = Field(default=None, gt=0)  # uniform, int: only multiples of it
    log: bool = False  # int: sample on a log scale
    values: list[Any] | None = Field(default=None, min_length=1)  # choice

    @model_validator(mode="after")
    def _coherent(self) -> ParamSpec:
        if self.type == "choice":
            if self.values is None or self.low is not None or self.high is not None:
                raise ValueError("type: choice takes `values: [...]` (and no low/high)")
            return self
        if self.low is None or self.high is None or self.values is not None:
            raise ValueError(f"type: {self.type} takes `low:` and `high:` (and no values)")
        if self.type == "int" and not all(
            isinstance(v, int) for v in (self.low, self.high, self.step or 1)
        ):
            raise ValueError("type: int takes whole numbers for low, high and step")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if (self.type == "loguniform" or self.log) and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0, got {self.low}")
        return self


class TuneConfig(_Strict):
    """The `tune:` section: what `cnnctl tune` searches; `cnnctl train` ignores it."""

    metric: str = "val_loss"  # a per-epoch value training logs; the trial's value is its best epoch
    goal: Literal["minimize", "maximize"] | None = (
        None  # default: maximize for accuracy-like metrics
    )
    trials: int = Field(default=20, gt=0, le=100_000)  # trials that finish (killed ones are redone)
    timeout: str | int | None = None  # e.g. 30m, 2h, 90s or seconds: no new trial after it
    sampler: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    startup_trials: int = Field(default=5, ge=0)  # sampled at random, and never pruned against
    parameters: dict[str, ParamSpec] = Field(min_length=1)  # keyed by --set paths

    @field_validator("timeout")
    @classmethod
    def _duration(cls, value: str | int | None) -> str | int | None:
        if value is not None and duration_seconds(value) <= 0:
            raise ValueError(f"expected a duration such as 30m, 2h or 90s, got {value!r}")
        return value

    @property
    def direction(self) -> str:
        return self.goal or ("maximize" if mode_of(self.metric) == "max" else "minimize")


def duration_seconds(value: str | int) -> float:
    """'30m' -> 1800.0; a bare number is seconds; 0 for what is not a duration."""
    if isinstance(value, int):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*", value)
    return (
        float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2] or "s"]
        if match
        else 0.0
    )


class EvalConfig(_Strict):
    # multilabel: one decision threshold for every label; default: chosen per label on the
    # validation split (the one maximizing that label's F1)
    threshold: float | None = Field(default=None, gt=0, lt=1)


class Config(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    task: Literal[TASKS] = "classification"  # type: ignore[valid-type]  # old configs: this
    seed: int = Field(default=42, ge=0, lt=2**31)
    data: DataConfig
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    tune: TuneConfig | None = None  # read by `cnnctl tune` only
    eval: EvalConfig | None = None

    @model_validator(mode="after")
    def _task_defaults(self) -> Config:
        """The task's default loss and metrics where train does not name them (a loss of
        another task is refused where the config's lines are known: `load.validate_config`)."""
        train, allowed = self.train, TASK_LOSSES[self.task]
        update: dict[str, Any] = {}
        if "loss" not in train.model_fields_set and train.loss != allowed[0]:
            update["loss"] = allowed[0]
        if "metrics" not in train.model_fields_set and train.metrics != TASK_METRICS[self.task]:
            update["metrics"] = list(TASK_METRICS[self.task])
        if update:  # a copy: the default TrainConfig is shared by every config
            object.__setattr__(self, "train", train.model_copy(update=update))
        return self

    _source: Source = PrivateAttr(default=None)

    @property
    def file(self) -> str:
        """The config file these values were read from, for messages."""
        return self._source.file if self._source is not None else "config"

    def where(self, path: Path_, at_key: bool = False) -> str:
        """`file:line:col: dotted.path` for the value at `path`."""
        return self._source.where(path, at_key)
