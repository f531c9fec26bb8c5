"""The record an exported file carries inside itself: what `export.json` says of it, so that a
copy moved alone still knows its task, output names and thresholds.

ONNX keeps it in the model's `metadata_props` (key `cnnctl`), TFLite in a named buffer of the
flatbuffer's `metadata` (name `cnnctl`), the place the TFLite converter keeps its own. Both hold
one JSON object. The file may come from anywhere, so the record is read like any other input:
at most RECORD_BYTES, parsed by `parse_json`, and every field checked before use; a malformed
record is a ModelFileError naming the file. TensorFlow is never imported here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnctl.errors import ModelFileError, first_line
from cnnctl.limits import parse_json

RECORD_KEY = "cnnctl"
RECORD_BYTES = 2**20  # a record of 10,000 class names is ~200 KB
RECORD_VERSION = 1
# What a record may hold, with the JSON types of its values; other keys are ignored.
FIELDS: dict[str, tuple[type, ...]] = {
    "version": (int,),
    "task": (str,),
    "class_names": (list,),
    "kept": (dict,),
    "target_stats": (dict,),
    "input": (dict,),
    "output": (dict,),
    "format": (str,),
    "quantize": (str, type(None)),
    "preprocessing": (str,),
    "file": (str,),
    "source": (str,),
    "keras": (str,),
    "created": (str,),
}
MAX_METADATA = 64  # entries of a TFLite file's metadata looked at; the converter writes two


@dataclass(frozen=True)
class FileFacts:
    """What an exported file says of itself before a runtime loads it."""

    record: dict[str, Any] | None  # the embedded record; None: the file carries none
    output_rank: int | None  # 2: a value per output; 4: per pixel (N, H, W, C); None: unknown


def embedded_record(record: dict[str, Any]) -> str:
    """The JSON text to embed: export.json's record without what is known only after the
    check (check, size, path, timing)."""
    kept = {key: record[key] for key in FIELDS if key in record and key != "version"}
    return json.dumps({"version": RECORD_VERSION, **kept}, sort_keys=True)


def embed_onnx(proto: Any, text: str) -> None:
    """Put the record into an ONNX ModelProto's metadata_props, replacing an older one."""
    kept = [p for p in proto.metadata_props if p.key != RECORD_KEY]
    del proto.metadata_props[:]
    for prop in kept:
        proto.metadata_props.add(key=prop.key, value=prop.value)
    proto.metadata_props.add(key=RECORD_KEY, value=text)


def embed_tflite(path: Path, text: str) -> None:
    """Rewrite the TFLite file at `path` with the record as a named metadata buffer.

    Through LiteRT's own flatbuffer object API; the export's check then runs on the result."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(path.read_bytes()))
    model.metadata = [m for m in (model.metadata or []) if _name(m.name) != RECORD_KEY]
    buffer = schema.BufferT()
    buffer.data = list(text.encode())
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = RECORD_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))


def _name(name: Any) -> str:
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


def onnx_facts(path: Path, proto: Any) -> FileFacts:
    """The record in a parsed ONNX ModelProto, and its output's rank."""
    texts = [p.value for p in proto.metadata_props if p.key == RECORD_KEY]
    outputs = proto.graph.output
    rank = len(outputs[0].type.tensor_type.shape.dim) if len(outputs) == 1 else None
    return FileFacts(_parsed(path, texts[-1]) if texts else None, rank or None)


def tflite_facts(path: Path, data: bytes) -> FileFacts:
    """The record in a TFLite flatbuffer, and its output's rank.

    The flatbuffer accessors do no bounds checks of their own: every failure of a damaged
    file is caught, and the record's size is checked before its bytes are read."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        return FileFacts(None, None)  # the loader names the missing extra
    try:
        model = schema.Model.GetRootAs(data, 0)
        text = None
        for i in range(min(model.MetadataLength(), MAX_METADATA)):
            entry = model.Metadata(i)
            if entry.Name() != RECORD_KEY.encode():
                continue
            buffer = model.Buffers(entry.Buffer())
            size = buffer.DataLength() if buffer is not None else 0
            if size > RECORD_BYTES:
                raise _too_large(path, size)
            text = bytes(buffer.DataAsNumpy()) if size else b""
        rank = None
        if model.SubgraphsLength() >= 1:
            graph = model.Subgraphs(0)
            if graph.OutputsLength() == 1:
                rank = graph.Tensors(int(graph.Outputs(0))).ShapeLength() or None
    except ModelFileError:
        raise
    except Exception as error:  # struct.error, IndexError, ...: damaged bytes
        raise ModelFileError(
            f"{path}: damaged or unusable TFLite model ({first_line(error, 120)})"
        ) from None
    return FileFacts(_parsed(path, text) if text is not None else None, rank)


def _too_large(path: Path, size: int) -> ModelFileError:
    return ModelFileError(
        f"{path}: refused: its embedded cnnctl record is {size:,} bytes (> {RECORD_BYTES:,})",
        "re-export the model with cnnctl export, or put its export.json beside it",
    )


def _parsed(path: Path, text: str | bytes) -> dict[str, Any]:
    """The record, checked field by field; anything else is a ModelFileError naming the file."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > RECORD_BYTES:
        raise _too_large(path, size)
    where = f"{path}: its embedded cnnctl record"
    fix = "re-export the model with cnnctl export, or put its export.json beside it"
    value = parse_json(text, where, ModelFileError)
    if not isinstance(value, dict):
        raise ModelFileError(f"{where}: not a JSON object", fix)
    for key, types in FIELDS.items():
        if key in value and (
            not isinstance(value[key], types) or isinstance(value[key], bool) and int in types
        ):
            raise ModelFileError(
                f"{where}: '{key}' is a {type(value[key]).__name__}, not a "
                f"{' or '.join('null' if t is type(None) else t.__name__ for t in types)}",
                fix,
            )
    names = value.get("class_names")
    if names is not None and not all(isinstance(n, str) for n in names):
        raise ModelFileError(f"{where}: 'class_names' holds something else than names", fix)
    return {key: value[key] for key in FIELDS if key in value}
