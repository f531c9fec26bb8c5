"""YAML file -> `--set` overrides -> one validated, typed, frozen `Config`.

No Keras here: the config only says *what* to build. Every error names the
file, line and column (or the `--set` that caused it) and the dotted place.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
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

BUILTIN_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
# Classification losses, and whether each wants one-hot labels.
LOSSES = {
    "categorical_crossentropy": True,
    "sparse_categorical_crossentropy": False,
    "categorical_focal_crossentropy": True,
    "categorical_hinge": True,
    "kl_divergence": True,
}
MAX_FILE_BYTES = 1_000_000
MAX_NODES = 100_000  # YAML aliases can expand a small file into billions of nodes.
MAX_DEPTH = 64

Path_ = tuple  # a place in the config: ("model", "layers", 0, "filters")


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


def mode_of(monitor: str) -> str:
    """'max' for metrics that grow as the model improves, else 'min'."""
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

    @property
    def source(self) -> Source:
        """Where each value came from: for error messages that point at a line."""
        return self._source

    def where(self, path: Path_, at_key: bool = False) -> str:
        """`file:line:col: dotted.path` for the value at `path`."""
        return self._source.where(path, at_key)


# --------------------------------------------------------------------------- YAML with marks


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a number, as YAML 1.2 and people do."""


_Loader.yaml_implicit_resolvers = {
    key: list(resolvers) for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass
class Source:
    """The file a config came from, the line/column of each value, and the overrides."""

    file: str
    has_lines: bool = True  # False for a `--set` value: one short line, no line numbers to show
    marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    overrides: dict[Path_, str] = field(default_factory=dict)

    def where(self, path: Path_, at_key: bool = False) -> str:
        """`file:line:col: dotted.path`, at the value (or at its key, for unknown keys)."""
        place = dotted(path)
        if at_key and path in self.key_marks:
            line, col = self.key_marks[path]
            return f"{self.file}:{line}:{col}: {place}"
        for set_path, text in self.overrides.items():
            if path[: len(set_path)] == set_path:
                return f"--set {text}: {place}"
        for n in range(len(path), -1, -1):
            if path[:n] in self.marks:
                line, col = self.marks[path[:n]]
                return f"{self.file}:{line}:{col}: {place}"
        return f"{self.file}: {place}"


def dotted(path: Path_) -> str:
    """("model", "layers", 0, "filters") -> "model.layers[0].filters"."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _construct(node: yaml.Node, loader: _Loader, source: Source, path: Path_, budget: list[int]):
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(
            f"{source.file}: the YAML expands to more than {MAX_NODES} values",
            "remove repeated aliases (*name); a config is small",
        )
    if len(path) > MAX_DEPTH:
        raise ConfigError(f"{source.where(path)}: nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, yaml.MappingNode):
        if node.tag != "tag:yaml.org,2002:map":
            raise ConfigError(f"{_at(source, node)}: the tag {node.tag} is not allowed here")
        loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _construct(key_node, loader, source, path, budget)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise ConfigError(f"{_at(source, key_node)}: a key must be a plain name")
            if key in result:
                raise ConfigError(
                    f"{_at(source, key_node)}: duplicate key '{key}' in {dotted(path)}",
                    "each key may appear once; delete or rename one of them",
                )
            source.key_marks[(*path, key)] = _line_col(key_node)
            source.marks[(*path, key)] = _line_col(value_node)
            result[key] = _construct(value_node, loader, source, (*path, key), budget)
        return result
    if isinstance(node, yaml.SequenceNode):
        if node.tag != "tag:yaml.org,2002:seq":
            raise ConfigError(f"{_at(source, node)}: the tag {node.tag} is not allowed here")
        items = []
        for index, item in enumerate(node.value):
            source.marks[(*path, index)] = _line_col(item)
            items.append(_construct(item, loader, source, (*path, index), budget))
        return items
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as error:
        raise ConfigError(
            f"{_at(source, node)}: {getattr(error, 'problem', error)}",
            "configs hold plain values only: numbers, text, true/false, lists, mappings",
        ) from error


def _line_col(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _at(source: Source, node: yaml.Node) -> str:
    line, col = _line_col(node)
    return f"{source.file}:{line}:{col}" if source.has_lines else source.file


def parse_yaml(text: str, source: Source) -> Any:
    """Parse YAML text safely into plain Python values, recording where each one stood."""
    loader = None
    try:
        loader = _Loader(text)
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{source.file}:{mark.line + 1}:{mark.column + 1}" if mark and source.has_lines else source.file
        raise ConfigError(
            f"{where}: invalid YAML: {error.problem or error.context}",
            "check the indentation and quoting on this line and the one above",
        ) from error
    except yaml.YAMLError as error:  # e.g. a control character the YAML reader refuses
        raise ConfigError(f"{source.file}: invalid YAML: {str(error).splitlines()[-1].strip()}",
                          "remove control characters; save the file as plain UTF-8 text") from error
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:
        return None
    return _construct(root, loader, source, (), [MAX_NODES])


def read_config_file(path: Path) -> tuple[Any, Source]:
    """Read a config file: plain data plus its `Source` of line marks."""
    source = Source(file=str(path))
    if not path.exists():
        raise ConfigError(f"{path}: no such config file", "check the path; configs/ has examples")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file", "pass a .yaml file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes is too large for a config (limit {MAX_FILE_BYTES:,})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a UTF-8 text file ({error.reason})") from error
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from error
    return parse_yaml(text, source), source


# --------------------------------------------------------------------------- overrides


def apply_override(data: dict, text: str, source: Source) -> None:
    """Apply one `--set dotted.path=value` (the value read as YAML) to `data` in place."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text}: expected KEY=VALUE", "for example --set train.epochs=3")
    parts: list[str | int] = []
    for part in key.strip().split("."):
        if not part:
            raise ConfigError(f"--set {text}: empty name in '{key}'", "for example model.layers.0.filters")
        parts.append(int(part) if part.isascii() and part.isdigit() else part)
    value = parse_yaml(raw, Source(file=f"--set {text}", has_lines=False)) if raw.strip() else None
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = dotted(tuple(parts[: depth + 1]))
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise ConfigError(
                    f"--set {text}: {where}: no such list item (the list has {len(node)})",
                    f"use an index from 0 to {len(node) - 1}",
                )
        elif isinstance(node, dict):
            if not last and part not in node:
                node[part] = {}
        else:
            raise ConfigError(f"--set {text}: {dotted(tuple(parts[:depth]))} is a single value, not a section")
        if last:
            node[part] = value
        else:
            node = node[part]
    source.overrides[tuple(parts)] = text


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


def suggest(word: str, choices: Sequence[str]) -> str:
    """' (did you mean 'filters'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[str(word).lower()]] if str(word).lower() in lowered else []
    return f" (did you mean '{close[0]}'?)" if close else ""


def _explain(error: dict, data: Any, source: Source) -> ConfigError:
    kind, loc = error["type"], error["loc"]
    path = _data_path(data, loc, missing=kind == "missing")
    where = source.where(path, at_key=kind == "extra_forbidden")
    got = error.get("input")
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
        raise _explain(error.errors()[0], data, source) from None
    config._source = source
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


def load_config(path: Path, overrides: Sequence[str] = ()) -> Config:
    """Read, override and validate a config file."""
    data, source = read_config_file(Path(path))
    if data is None:
        data = {}
    for text in overrides:
        if not isinstance(data, dict):
            break
        apply_override(data, text, source)
    return validate_config(data, source, default_name=_safe_name(Path(path).stem))


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
