"""An exported file copied alone (no export.json beside it), as a user moves one: helpers for
the task tests that check a bare copy predicts what the file predicts with its export.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cnnctl.cli import main


def copies(exported: Path, folder: Path) -> tuple[Path, Path]:
    """(the file with its export.json beside it, the file alone), both under `folder`."""
    beside, bare = folder / "beside", folder / "bare"
    beside.mkdir(parents=True)
    bare.mkdir(parents=True)
    shutil.copy(exported, beside / exported.name)
    shutil.copy(exported.parent / "export.json", beside / "export.json")
    shutil.copy(exported, bare / exported.name)
    return beside / exported.name, bare / exported.name


def without_record(exported: Path, target: Path) -> Path:
    """A copy of `exported` without the cnnctl record inside (as an older cnnctl wrote it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if exported.suffix == ".onnx":
        import onnx

        model = onnx.load(str(exported))
        kept = [(p.key, p.value) for p in model.metadata_props if p.key != "cnnctl"]
        del model.metadata_props[:]
        for key, value in kept:
            model.metadata_props.add(key=key, value=value)
        target.write_bytes(model.SerializeToString())
    else:
        from ai_edge_litert.tools import flatbuffer_utils

        model = flatbuffer_utils.convert_bytearray_to_object(bytearray(exported.read_bytes()))
        model.metadata = [m for m in model.metadata if m.name not in (b"cnnctl", "cnnctl")]
        target.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    return target


def predict_rows(runner, model: Path, images: list[str], *args: str):
    """`cnnctl predict --model MODEL --json IMAGES`: (its rows, its stderr); exit 0 checked."""
    result = runner.invoke(main, ["predict", "--model", str(model), "--json", *args, *images])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr
