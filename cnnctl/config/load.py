"""YAML file -> `--set` overrides -> one validated, typed, frozen `Config`.

No Keras here: the config only says *what* to build. Every error names the
file, line and column (or the `--set` that caused it) and the dotted place.
The schema itself (the sections and their fields) lives in `schema.py`; its
names are importable from here, the config room's front door.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cnnctl.config.paths import set_path
from cnnctl.config.schema import (
    BUILTIN_SHAPES,
    TASK_LOSSES,
    Config,
)
from cnnctl.config.yamlfile import Path_, Source, parse_yaml, read_config_file
from cnnctl.errors import ConfigError, PathError
from cnnctl.suggest import closest, suggest

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
    try:
        parts = set_path(data, key, value)
    except PathError as error:
        raise ConfigError(f"{origin}: {error.message}", error.hint) from None
    source.overrides[parts] = origin


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
        info = (
            model.model_fields.get(part)
            if isinstance(model, type) and issubclass(model, BaseModel)
            else None
        )
        if info is None:
            return []
        model = next(
            (
                t
                for t in (info.annotation, *typing.get_args(info.annotation))
                if isinstance(t, type) and issubclass(t, BaseModel)
            ),
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
            missing = [
                str(e["loc"][-1])
                for e in errors
                if e["type"] == "missing" and e["loc"][:-1] == parent
            ]
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
        return ConfigError(
            f"{where}: unknown key (did you mean '{wanted}'?), and `{wanted}:` is missing",
            f"rename `{loc[-1]}:` to `{wanted}:`",
        )
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
            f"{source.file}: expected a mapping with data:, model: and train:, got "
            f"{type(data).__name__}",
            "see configs/mnist.yaml for the layout",
        )
    data.setdefault("name", default_name)
    _infer_input_shape(data, source)
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        raise _explain(_first(error.errors()), data, source) from None
    config._source = config.data._source = source
    _check_task_loss(config)
    _check_classes(config)
    _check_monitors(config)
    _check_fine_tune(config)
    return config


def _infer_input_shape(data: dict, source: Source) -> None:
    """model.input_shape where the data fixes it and the config leaves it out: a built-in
    dataset's shape, or data.image_shape, or data.image_size with data.color_mode. The resolved
    config saved with the run holds it; messages about it name where it came from."""
    section, model = data.get("data"), data.get("model")
    if not isinstance(section, dict) or not isinstance(model, dict) or "input_shape" in model:
        return
    name, size, mode = section.get("dataset"), section.get("image_size"), section.get("color_mode")
    shape, origin = None, None
    if isinstance(name, str) and name in BUILTIN_SHAPES:
        shape, origin = list(BUILTIN_SHAPES[name]), f"inferred from data.dataset: {name}"
    elif isinstance(section.get("image_shape"), list):
        shape, origin = section["image_shape"], "inferred from data.image_shape"
    elif isinstance(size, list) and len(size) == 2 and mode in ("grayscale", "rgb"):
        shape = [*size, 1 if mode == "grayscale" else 3]
        origin = "inferred from data.image_size and data.color_mode"
    if shape is not None:
        model["input_shape"] = shape
        source.overrides[("model", "input_shape")] = origin


def inferred(config: Config, path: tuple[str, ...]) -> str | None:
    """Where a value the config file left out came from ("inferred from ..."), or None."""
    origin = config._source.overrides.get(path) if config._source is not None else None
    return origin if origin and origin.startswith("inferred") else None


def _check_task_loss(config: Config) -> None:
    """Each task takes its own losses (classification's, binary_crossentropy, mse/mae/huber)."""
    allowed = TASK_LOSSES[config.task]
    if config.train.loss not in allowed:
        raise ConfigError(
            f"{config.where(('train', 'loss'))}: {config.train.loss} does not fit "
            f"task: {config.task}",
            f"use loss: {' or '.join(allowed)}",
        )


def _check_classes(config: Config) -> None:
    """data.classes: one name per mask value, none empty, none twice (spaces aside): a repeated
    name makes two outputs that `explain --class` and the reports cannot tell apart."""
    names = config.data.classes or ()
    found = misnamed_class(names)
    if found is None:
        return
    i, first = found
    where = config.where(("data", "classes", i))
    if first is None:
        raise ConfigError(
            f"{where}: empty class name",
            "give each mask value a name: data.classes: [background, cell, ...]",
        )
    raise ConfigError(
        f"{where}: duplicate class name {names[i].strip()!r}, already data.classes[{first}]",
        "each mask value needs its own name; rename or remove one of them",
    )


def misnamed_class(names: Sequence[str]) -> tuple[int, int | None] | None:
    """The first class name that is blank, as (its position, None), or that repeats one before
    it, spaces aside, as (its position, the first one's); None when every name is its own."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        key = name.strip()
        if not key:
            return i, None
        if key in seen:
            return i, seen[key]
        seen[key] = i
    return None


def _check_monitors(config: Config) -> None:
    """A monitored value must be one that training logs."""
    train = config.train
    known = train.logged
    for section in ("checkpoint", "early_stopping", "lr_schedule"):
        monitor = getattr(getattr(train, section), "monitor", None)
        if monitor is not None and monitor not in known:
            raise ConfigError(
                f"{config.where(('train', section, 'monitor'))}: '{monitor}' is not "
                f"logged{suggest(monitor, known)}",
                f"choose one of: {', '.join(known)}",
            )


def _check_fine_tune(config: Config) -> None:
    """fine_tune needs a Backbone to thaw.

    An at_epoch past train.epochs waits for a resume with more.
    """
    rule = config.train.fine_tune
    if rule is None:
        return
    if not any(spec.type == "Backbone" for spec in config.model.layers):
        raise ConfigError(
            f"{config.where(('train', 'fine_tune'))}: the model has no Backbone layer to thaw",
            "add a {type: Backbone, ...} layer to model.layers, or remove fine_tune",
        )


def load_config(
    path: Path, overrides: Sequence[str] = (), values: dict[str, Any] | None = None
) -> Config:
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
    changed = changed_paths(a.model_dump(mode="json"), b.model_dump(mode="json"))
    return [key for key in changed if key not in ignore]


def changed_paths(a: Any, b: Any, prefix: str = "") -> typing.Iterator[str]:
    """The dotted paths at which two nested dicts (a config's plain data) differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            yield from changed_paths(
                a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key)
            )
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
    return dump_data(config.model_dump(mode="json", exclude_none=True))


def dump_data(data: dict) -> str:
    """Plain config data as YAML, written as people write it (short lists inline)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
