"""YAML as people write it, read safely, with the line and column of every value kept.

`parse_yaml` returns plain Python values (no tags, no objects) and fills a `Source`
with where each value stood, so that a later error can point at `file:line:col`.
Duplicate keys, alias bombs and deep nesting are refused here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnctl.config.indentation import in_words
from cnnctl.errors import ConfigError
from cnnctl.limits import open_regular

MAX_FILE_BYTES = 1_000_000
MAX_NODES = 100_000  # YAML aliases can expand a small file into billions of nodes.
MAX_DEPTH = 64

Path_ = tuple  # a place in a document: ("model", "layers", 0, "filters")


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
    overrides: dict[Path_, str] = field(default_factory=dict)  # path -> the option that set it

    def where(self, path: Path_, at_key: bool = False) -> str:
        """`file:line:col: dotted.path`, at the value (or at its key, for unknown keys)."""
        place = dotted(path)
        if at_key and path in self.key_marks:
            line, col = self.key_marks[path]
            return f"{self.file}:{line}:{col}: {place}"
        for set_path, origin in self.overrides.items():
            if path[: len(set_path)] == set_path:
                return f"{origin}: {place}"
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
    except ValueError as error:  # e.g. an integer of 100,000 digits (Python refuses > 4,300)
        raise ConfigError(
            f"{_at(source, node)}: {str(error).splitlines()[0][:100]}",
            "configs hold plain values: write a shorter number",
        ) from None
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
        raise _yaml_error(text, error, source) from error
    except yaml.YAMLError as error:  # e.g. a control character the YAML reader refuses
        raise ConfigError(
            f"{source.file}: invalid YAML: {str(error).splitlines()[-1].strip()}",
            "remove control characters; save the file as plain UTF-8 text",
        ) from error
    except RecursionError:  # thousands of nested [ or { exhaust PyYAML's recursive composer
        raise ConfigError(
            f"{source.file}: nested more than {MAX_DEPTH} levels deep",
            "a config is a few levels deep; check the brackets",
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:
        return None
    return _construct(root, loader, source, (), [MAX_NODES])


def _yaml_error(text: str, error: yaml.MarkedYAMLError, source: Source) -> ConfigError:
    """PyYAML's complaint in words, at the line that is wrong, with a caret under the spot."""
    mark = error.problem_mark or error.context_mark
    if not mark or not source.has_lines:
        return ConfigError(
            f"{source.file}: invalid YAML: {error.problem or error.context}",
            "check the indentation and quoting",
        )
    lines = text.splitlines() or [""]
    context = error.context_mark.line + 1 if error.context_mark else None
    found = in_words(lines, error.problem or "", mark.line + 1, mark.column, context)
    line, column, message, hint = found or (
        mark.line + 1,
        mark.column,
        str(error.problem or error.context),
        "check the indentation and quoting on this line and the one above",
    )
    excerpt = (line, lines[line - 1], column) if line <= len(lines) else None
    return ConfigError(
        f"{source.file}:{line}:{column + 1}: invalid YAML: {message}", hint, excerpt=excerpt
    )


def read_config_file(path: Path) -> tuple[Any, Source]:
    """Read a config file: plain data plus its `Source` of line marks."""
    source = Source(file=str(path))
    if not path.exists():
        raise ConfigError(f"{path}: no such config file", "check the path; configs/ has examples")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file", "pass a .yaml file")
    with open_regular(path, ConfigError) as stream:  # a FIFO or /dev/zero would never end
        size = os.fstat(stream.fileno()).st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(
                f"{path}: {size:,} bytes is too large for a config (limit {MAX_FILE_BYTES:,})"
            )
        data = stream.read(MAX_FILE_BYTES + 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a UTF-8 text file ({error.reason})") from error
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from error
    return parse_yaml(text, source), source
