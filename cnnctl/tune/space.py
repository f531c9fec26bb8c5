"""The search space of a `tune:` section: dotted paths into the config, and the values they take.

A parameter's key is a `--set` path (`model.layers.0.filters`). A trial's config
is the validated base config with each path set to the trial's value. Before any
trial, every path and every extreme of every range is tried by building that
config's model, so that a typo or an impossible value fails with the file and
line of the parameter, not an hour later in trial 17.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from cnnctl.config import Config, ParamSpec, TuneConfig, dump_data, validate_config
from cnnctl.config.paths import path_parts, set_path
from cnnctl.config.yamlfile import Source
from cnnctl.errors import ConfigError, PathError
from cnnctl.suggest import suggest

_INNER = "trial config"  # the file name of a trial's Source: stripped where a place is known
MAX_GRID = 100_000


def base_data(config: Config) -> dict:
    """The resolved config as plain data, without its `tune:` section: what trials start from."""
    data = config.model_dump(mode="json", exclude_none=True)
    data.pop("tune", None)
    return data


def trial_config(config: Config, values: dict[str, Any], name: str) -> Config:
    """The base config with each path set to its value, validated, named `name`."""
    data = base_data(config)
    data["name"] = name
    for key, value in values.items():
        set_path(data, key, value)
    return validate_config(data, Source(file=_INNER, has_lines=False), name)


def own_config(data: dict, values: dict[str, Any], name: str) -> str:
    """A config file's own data (no `--set`, no defaults) with each path set to its value,
    without its `tune:` section, named `name`: checked, then written back as YAML.

    Raises:
        ConfigError: when that config is not valid on its own.
    """
    data = copy.deepcopy(data)
    data.pop("tune", None)
    data["name"] = name
    source = Source(file=_INNER, has_lines=False)
    resolved = validate_config(copy.deepcopy(data), source, name).model_dump(
        mode="json", exclude_none=True
    )
    for key, value in values.items():
        _written_up_to(data, resolved, path_parts(key))
        set_path(data, key, value)
    validate_config(copy.deepcopy(data), source, name)
    return dump_data(data)


def _written_up_to(data: Any, resolved: Any, parts: tuple) -> None:
    """Where a path leaves what the file wrote, copy in the default it stood for
    (`train.optimizer.learning_rate` in a file without `optimizer:` needs `optimizer: adam`)."""
    for part in parts[:-1]:
        if isinstance(data, dict) and part not in data:
            if isinstance(resolved, dict) and part in resolved:
                data[part] = copy.deepcopy(resolved[part])
            return
        try:
            data, resolved = data[part], resolved[part]
        except (KeyError, IndexError, TypeError):
            return


def inner_message(error: ConfigError) -> str:
    """A trial config's error message without the placeholder file name."""
    return error.message.removeprefix(f"{_INNER}: ").removeprefix(_INNER)


# --------------------------------------------------------------------------- values


def _encode(value: Any) -> Any:
    """Optuna's choices are plain scalars; a list such as [3, 3] travels as its JSON text."""
    return (
        value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)
    )


def decode(spec: ParamSpec, raw: Any) -> Any:
    """The config value for what Optuna stored (choices of lists come back from JSON)."""
    if spec.type == "choice":
        for value in spec.values or []:
            if _encode(value) == raw:
                return value
    return raw


def fits(spec: ParamSpec, raw: Any) -> bool:
    """Whether a value read back from a study's storage lies in the search space.

    A journal is a file like any other: a hand-edited or planted one may hold `filters: 999999`.
    """
    if spec.type == "choice":
        return any(_encode(value) == raw for value in spec.values or [])
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        return False
    if spec.type == "int" and (not isinstance(raw, int) or (raw - spec.low) % (spec.step or 1)):
        return False
    return spec.low <= raw <= spec.high


def suggest_value(trial: Any, key: str, spec: ParamSpec) -> Any:
    """Ask an Optuna trial for this parameter's value."""
    if spec.type == "choice":
        return decode(spec, trial.suggest_categorical(key, [_encode(v) for v in spec.values or []]))
    if spec.type == "int":
        return trial.suggest_int(key, spec.low, spec.high, step=spec.step or 1, log=spec.log)
    return trial.suggest_float(
        key, spec.low, spec.high, step=spec.step, log=spec.type == "loguniform"
    )


def extremes(spec: ParamSpec) -> list[tuple[str, Any]]:
    """The values checked before any trial, each with the key of the place it is written."""
    if spec.type == "choice":
        return [(f"values.{i}", value) for i, value in enumerate(spec.values or [])]
    low, high = spec.low, spec.high
    if spec.step:  # Optuna keeps to low + k * step
        high = low + math.floor((high - low) / spec.step + 1e-9) * spec.step
    if spec.type != "int":  # what Optuna will hand out: floats, even for `low: 16`
        low, high = float(low), float(high)
    return [("low", low), ("high", high)]


def grid(tune: TuneConfig) -> dict[str, list[Any]]:
    """Every value of every parameter, for the grid sampler."""
    space: dict[str, list[Any]] = {}
    for key, spec in tune.parameters.items():
        if spec.type == "choice":
            space[key] = [_encode(v) for v in spec.values or []]
        elif spec.step or spec.type == "int":
            step = spec.step or 1
            count = math.floor((spec.high - spec.low) / step + 1e-9) + 1
            space[key] = [spec.low + i * step for i in range(min(count, MAX_GRID + 1))]
        else:
            space[key] = []
    return space


# --------------------------------------------------------------------------- checks


def check_space(config: Config) -> None:
    """Refuse a search space that cannot work, before anything trains (builds Keras models)."""
    tune = _tune(config)
    _check_metric(config, tune)
    if tune.sampler == "grid":
        _check_grid(config, tune)
    import keras

    from cnnctl.data.dataset import num_classes_of
    from cnnctl.model.builder import build_model, compile_model

    for key, spec in tune.parameters.items():
        for place, value in extremes(spec):
            where = config.where(("tune", "parameters", key, *_place(place)))
            try:
                trial = trial_config(config, {key: value}, config.name)
                compile_model(build_model(trial, num_classes_of(trial)), trial)
            except PathError as error:
                at_key = config.where(("tune", "parameters", key), at_key=True)
                raise ConfigError(f"{at_key}: {error}", error.hint) from None
            except ConfigError as error:
                hint = error.hint
                if isinstance(value, float) and "valid integer" in error.message:
                    hint = "for whole numbers use type: int (or type: choice)"
                raise ConfigError(
                    f"{where}: {value!r} makes the config invalid: {inner_message(error)}", hint
                ) from None
    keras.backend.clear_session()


def _place(place: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in place.split("."))


def _tune(config: Config) -> TuneConfig:
    if config.tune is None:
        raise ConfigError(
            f"{config.file}: has no tune: section to search with",
            "add one (see the README's 'Hyperparameter search'), then run cnnctl tune again",
        )
    return config.tune


def _check_metric(config: Config, tune: TuneConfig) -> None:
    known = config.train.logged
    if tune.metric not in known:
        raise ConfigError(
            f"{config.where(('tune', 'metric'))}: '{tune.metric}' is not "
            f"logged{suggest(tune.metric, known)}",
            f"choose one of: {', '.join(known)}",
        )


def _check_grid(config: Config, tune: TuneConfig) -> None:
    size = 1
    for key, values in grid(tune).items():
        if not values:
            raise ConfigError(
                f"{config.where(('tune', 'parameters', key))}: the grid sampler needs a finite "
                "list here",
                "use type: choice, type: int, or give a step:",
            )
        size *= len(values)
    if size > MAX_GRID:
        raise ConfigError(
            f"{config.where(('tune', 'parameters'))}: the grid has {size:,} points",
            f"keep it under {MAX_GRID:,}, or use sampler: tpe",
        )
