"""YAML file -> `--set` overrides -> one validated, typed, frozen `Config`.

No Keras here: the config only says *what* to build. Every error names the
file, line and column (or the `--set` that caused it) and the dotted place.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from cnnctl.errors import ConfigError
from cnnctl.suggest import closest, suggest
from cnnctl.yamlfile import Path_, Source, dotted, parse_yaml, read_config_file

BUILTIN_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
SPLITS = ("train", "validation", "test")  # the three splits every dataset is read into
# Classification losses, and whether each wants one-hot labels.
LOSSES = {
    "categorical_crossentropy": True,
    "sparse_categorical_crossentropy": False,
    "categorical_focal_crossentropy": True,
    "categorical_hinge": True,
    "kl_divergence": True,
}


# --------------------------------------------------------------------------- schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ObjectSpec(_Strict):
    """A Keras object named by its class: a bare `Flatten`, or `{type: Dense, units: 10}`."""

    type: str
    args: dict[str, Any] = Field(default_factory=dict)

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
            return {"type": value["type"], "args": {k: v for k, v in value.items() if k != "type"}}
        raise ValueError(f"expected a name or a mapping with `type:`, got {value!r}")

    @model_serializer
    def _flat(self) -> Any:
        return {"type": self.type, **self.args} if self.args else self.type


class DataConfig(_Strict):
    dataset: Literal[BUILTIN_DATASETS] | None = None  # type: ignore[valid-type]
    path: str | None = None
    validation: Any = "test"
    normalize: bool = True
    limit: int | None = Field(default=None, gt=0)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)  # held out when the data has no test split
    image_size: list[int] | None = Field(default=None, min_length=2, max_length=2)  # default: the model's
    color_mode: Literal["grayscale", "rgb"] | None = None  # default: from the model's channels
    label_column: str = "label"  # CSV files: the column with the class
    image_shape: list[int] | None = Field(default=None, min_length=3, max_length=3)  # CSV; default: the model's
    augment: list[ObjectSpec] = Field(default_factory=list)

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

    @field_validator("input_shape")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(n <= 0 or n > 16384 for n in value):
            raise ValueError(f"must be [height, width, channels] of positive sizes, got {value}")
        if value[0] * value[1] * value[2] > 2**26:
            raise ValueError(f"{value} is too large an image to train on; resize the data first")
        return value


def mode_of(monitor: str, mode: str = "auto") -> str:
    """'max' for metrics that grow as the model improves, else 'min'; an explicit `mode` wins."""
    if mode != "auto":
        return mode
    return "max" if any(word in monitor for word in ("acc", "auc", "precision", "recall", "f1")) else "min"


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
    factor: float = Field(default=0.5, gt=0, le=1)  # plateau, step: multiply by; exponential: per epoch
    patience: int = Field(default=2, ge=0)  # plateau: epochs without improvement first
    monitor: str = "val_loss"  # plateau
    min_delta: float = Field(default=0.0, ge=0)
    step_epochs: int = Field(default=5, gt=0)  # step: every this many epochs
    warmup_epochs: int = Field(default=0, ge=0)  # cosine: linear warm-up first
    min_lr: float = Field(default=0.0, ge=0)


class TrainConfig(_Strict):
    epochs: int = Field(default=10, gt=0, le=100_000)
    batch_size: int = Field(default=32, gt=0, le=65_536)
    optimizer: ObjectSpec = ObjectSpec(type="adam")
    loss: Literal[tuple(LOSSES)] = "categorical_crossentropy"  # type: ignore[valid-type]
    metrics: list[str] = ["accuracy"]
    checkpoint: CheckpointConfig = CheckpointConfig()
    early_stopping: EarlyStoppingConfig | None = None
    lr_schedule: LRSchedule | None = None
    tensorboard: bool = False
    steps_per_execution: int = Field(default=8, ge=1, le=10_000)  # batches per call into TensorFlow
    jit_compile: Literal["auto"] | bool = "auto"  # XLA; "auto" is Keras' choice (off on CPU, where it is slower)
    precision: Literal["float32", "mixed"] = "float32"  # mixed: bfloat16 on capable CPUs, float16 on GPUs
    mixed_precision: bool | None = None  # the same as precision: mixed
    distribute: Literal["auto", "none", "mirrored", "multi_worker"] = "auto"
    distribute_timeout: float = Field(default=300, ge=1, le=86_400)  # s: a lost worker stops all

    @model_validator(mode="after")
    def _one_precision(self) -> TrainConfig:
        if self.mixed_precision and "precision" in self.model_fields_set and self.precision == "float32":
            raise ValueError("precision: float32 and mixed_precision: true disagree; keep one")
        if self.mixed_precision:
            object.__setattr__(self, "precision", "mixed")
        return self

    @property
    def one_hot(self) -> bool:
        """Whether the loss wants one-hot labels (else integer class indices)."""
        return LOSSES[self.loss]


class Config(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    seed: int = Field(default=42, ge=0, lt=2**31)
    data: DataConfig
    model: ModelConfig
    train: TrainConfig = TrainConfig()

    _source: Source = PrivateAttr(default=None)

    def where(self, path: Path_, at_key: bool = False) -> str:
        """`file:line:col: dotted.path` for the value at `path`."""
        return self._source.where(path, at_key)


# --------------------------------------------------------------------------- overrides


def apply_override(data: dict, text: str, source: Source) -> None:
    """Apply one `--set dotted.path=value` (the value read as YAML) to `data` in place."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text}: expected KEY=VALUE", "for example --set train.epochs=3")
    value = parse_yaml(raw, Source(file=f"--set {text}", has_lines=False)) if raw.strip() else None
    set_value(data, key, value, source, f"--set {text}")


def set_value(data: dict, key: str, value: Any, source: Source, origin: str) -> None:
    """Put `value` at the dotted `key` of `data`; errors and later messages name `origin`."""
    parts: list[str | int] = []
    for part in key.strip().split("."):
        if not part:
            raise ConfigError(f"{origin}: empty name in '{key}'", "for example model.layers.0.filters")
        parts.append(int(part) if part.isascii() and part.isdigit() else part)
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = dotted(tuple(parts[: depth + 1]))
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise ConfigError(
                    f"{origin}: {where}: no such list item (the list has {len(node)})",
                    f"use an index from 0 to {len(node) - 1}",
                )
        elif isinstance(node, dict):
            if not last and part not in node:
                node[part] = {}
        else:
            raise ConfigError(f"{origin}: {dotted(tuple(parts[:depth]))} is a single value, not a section")
        if last:
            node[part] = value
        else:
            node = node[part]
    source.overrides[tuple(parts)] = origin


# --------------------------------------------------------------------------- validation


def _data_path(data: Any, loc: Sequence[Any], missing: bool) -> Path_:
    """Turn a pydantic error location into a path that exists in the user's data."""
    path: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif isinstance(node, dict) and part == "args":
            continue  # ObjectSpec keeps layer arguments beside `type`, not under `args`
        else:
            if missing:
                path.append(part)
            break
        path.append(part)
    return tuple(path)


def _fields_of(loc: Sequence[Any]) -> list[str]:
    """The valid keys of the section at `loc`, for 'did you mean' hints."""
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if info is None:
            return []
        model = next(
            (t for t in (info.annotation, *typing.get_args(info.annotation))
             if isinstance(t, type) and issubclass(t, BaseModel)),
            None,
        )
        if model is None:
            return []
    return list(model.model_fields)


def _first(errors: list[dict]) -> dict:
    """The error to show: a misspelt key before the "missing" it causes (`modle:` -> `model`)."""
    for error in errors:
        if error["type"] == "extra_forbidden":
            parent, key = error["loc"][:-1], str(error["loc"][-1])
            missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing" and e["loc"][:-1] == parent]
            if closest(key, missing):
                return {**error, "missing": missing}
    return errors[0]


def _explain(error: dict, data: Any, source: Source) -> ConfigError:
    kind, loc = error["type"], error["loc"]
    path = _data_path(data, loc, missing=kind == "missing")
    where = source.where(path, at_key=kind == "extra_forbidden")
    got = error.get("input")
    if kind == "extra_forbidden" and error.get("missing"):
        wanted = closest(str(loc[-1]), error["missing"])
        return ConfigError(f"{where}: unknown key (did you mean '{wanted}'?), and `{wanted}:` is missing",
                           f"rename `{loc[-1]}:` to `{wanted}:`")
    if kind == "extra_forbidden":
        fields = _fields_of(loc[:-1])
        return ConfigError(
            f"{where}: unknown key{suggest(str(loc[-1]), fields)}",
            f"valid keys here: {', '.join(fields)}" if fields else "remove it",
        )
    if kind == "missing":
        return ConfigError(f"{where}: required but missing", f"add `{loc[-1]}:` to the config")
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", error["ctx"]["expected"])
        return ConfigError(
            f"{where}: unknown value {got!r}{suggest(str(got), expected)}",
            f"choose one of: {', '.join(expected)}",
        )
    message = error["msg"].removeprefix("Value error, ")
    if kind not in ("value_error",) and not isinstance(got, (dict, list)):
        message += f" (got {got!r})"
    return ConfigError(f"{where}: {message}")


def validate_config(data: Any, source: Source, default_name: str) -> Config:
    """Plain data -> `Config`, or the first problem as a `ConfigError` that names its line."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source.file}: expected a mapping with data:, model: and train:, got {type(data).__name__}",
            "see configs/mnist.yaml for the layout",
        )
    data.setdefault("name", default_name)
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        raise _explain(_first(error.errors()), data, source) from None
    config._source = config.data._source = source
    _check_monitors(config)
    return config


def _check_monitors(config: Config) -> None:
    """A monitored value must be one that training logs."""
    train = config.train
    known = ["loss", *train.metrics]
    known += [f"val_{name}" for name in known]
    for section in ("checkpoint", "early_stopping", "lr_schedule"):
        monitor = getattr(getattr(train, section), "monitor", None)
        if monitor is not None and monitor not in known:
            raise ConfigError(
                f"{config.where(('train', section, 'monitor'))}: '{monitor}' is not logged{suggest(monitor, known)}",
                f"choose one of: {', '.join(known)}",
            )


def load_config(path: Path, overrides: Sequence[str] = (), values: dict[str, Any] | None = None) -> Config:
    """Read, override and validate a config file.

    `overrides` are `--set KEY=VALUE` texts; `values` are typed values from options
    such as `--epochs` (keyed by dotted path, the option's name kept for messages).
    """
    data, source = read_config_file(Path(path))
    if data is None:
        data = {}
    for text in overrides:
        if not isinstance(data, dict):
            break
        apply_override(data, text, source)
    for key, (option, value) in (values or {}).items():
        if isinstance(data, dict):
            set_value(data, key, value, source, f"{option} {value}")
    return validate_config(data, source, default_name=_safe_name(Path(path).stem))


def changed_keys(a: Config, b: Config, ignore: Sequence[str] = ()) -> list[str]:
    """The dotted keys whose values differ between two configs (for `--resume`)."""
    changed = list(_diff(a.model_dump(mode="json"), b.model_dump(mode="json")))
    return [key for key in changed if key not in ignore]


def _diff(a: Any, b: Any, prefix: str = "") -> typing.Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            yield from _diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
    elif a != b:
        yield prefix


def _safe_name(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "run"
    return name[:100]


class _Dumper(yaml.SafeDumper):
    """Writes short lists of numbers inline (`kernel_size: [3, 3]`), as people write them."""


def _represent_list(dumper: yaml.SafeDumper, items: list) -> yaml.Node:
    flow = all(isinstance(item, (int, float, str)) for item in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump_config(config: Config) -> str:
    """The fully resolved config as YAML: what `train` saves in the run folder."""
    data = config.model_dump(mode="json", exclude_none=True)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
