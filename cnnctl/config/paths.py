"""Dotted paths into a config: the one setter behind `--set` and `tune:` parameters.

`model.layers.0.filters` and `model.layers[0].filters` (the form every error prints) name
the same value. A bare object name on the way (`optimizer: adam`) becomes `{type: adam}`,
so `train.optimizer.learning_rate` works on a config that wrote only `optimizer: adam`.
New keys are left for validation to judge, with the file and line of the setting.
"""

from __future__ import annotations

import re
from typing import Any

from cnnctl.config.yamlfile import dotted
from cnnctl.errors import PathError


def path_parts(key: str) -> tuple[str | int, ...]:
    """`model.layers[0].filters` -> ("model", "layers", 0, "filters")."""
    parts: list[str | int] = []
    for part in re.sub(r"\[(\d+)\]", r".\1", key.strip()).split("."):
        if not part:
            raise PathError(
                f"empty name in '{key}'",
                "for example model.layers.0.filters (or model.layers[0].filters)",
            )
        parts.append(int(part) if part.isascii() and part.isdigit() else part)
    return tuple(parts)


# Where a bare name stands for an object ({type: name, ...}): the optimizer, and each item of
# a list of layers (model.layers, a block's layers) or of augmentations.
OBJECT_KEYS = ("optimizer",)
OBJECT_LISTS = ("layers", "augment")


def _holds_object(parts: tuple[str | int, ...]) -> bool:
    last = parts[-1]
    if isinstance(last, int):
        return len(parts) > 1 and parts[-2] in OBJECT_LISTS
    return last in OBJECT_KEYS


def set_path(data: dict, key: str, value: Any) -> tuple[str | int, ...]:
    """Set `value` at the dotted `key` of plain config data, in place; returns the parts."""
    parts = path_parts(key)
    node: Any = data
    for depth, part in enumerate(parts):
        here = dotted(parts[: depth + 1])
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise PathError(
                    f"{here}: no such list item (the list has {len(node)})",
                    f"use an index from 0 to {len(node) - 1}" if node else "the list is empty",
                )
        elif not isinstance(node, dict):
            raise PathError(
                f"{dotted(parts[:depth])} is a single value, not a section",
                "a path ends at the value it sets",
            )
        elif isinstance(part, int):
            raise PathError(
                f"{dotted(parts[:depth])} is a section, not a list",
                f"keys here: {', '.join(map(str, node))}",
            )
        if depth == len(parts) - 1:
            node[part] = value
            return parts
        child = node[part] if isinstance(node, list) else node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str) and _holds_object(parts[: depth + 1]):
            child = node[part] = {"type": child}  # `optimizer: adam` -> {type: adam, ...}
        node = child
    return parts


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Plain config data -> {dotted path: value}, into lists of sections by index
    (model.layers.0.filters), as compare shows and tracking logs them."""
    if isinstance(data, dict) and data:
        items = data.items()
    elif isinstance(data, list) and data and not all(is_scalar(v) for v in data):
        items = enumerate(data)
    else:
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))
