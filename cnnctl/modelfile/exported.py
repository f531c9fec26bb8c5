"""Exported models (.onnx, .tflite) behind the face of a Keras model: images in, probabilities out.

Nothing here imports TensorFlow: `cnnctl predict --model model.onnx` starts in a fraction of a
second. Files may come from anywhere, so each one is vetted before a runtime sees it: a regular
file of bounded size, a well-formed graph, standard operators only (an ONNX custom-op domain or
a TFLite custom op would run code from outside the file), no tensor read from another file
(initializers, `Constant` attributes, sparse tensors, subgraphs), no control flow (a `Loop` can
run forever; a classifier export holds none), declared input and output sizes within the
`image_bytes` budget. The runtimes' own log lines are kept off the terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cnnctl.errors import CnnctlError, ModelFileError, first_line
from cnnctl.escape import safe_text
from cnnctl.limits import EVAL_BATCH, limit, read_bounded, read_json
from cnnctl.modelfile.record import FileFacts, onnx_facts, tflite_facts

EXPORTED_SUFFIXES = (".onnx", ".tflite")
MAX_BYTES = 2 * 2**30  # protobuf's own limit; no CNN cnnctl trains is near it
ONNX_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}
PIP_EXTRA = 'pip install "cnnctl[export]"'
STANDARD = "cnnctl runs ONNX models of standard operators only"
CONTROL_FLOW = {"Loop", "If", "Scan"}  # tf2onnx writes none for a CNN; a Loop may never end
SELF_CONTAINED = "cnnctl runs self-contained ONNX files only"


def is_exported(path: Path | str | None) -> bool:
    """True for a file an exported runtime runs (by its suffix), False for .keras and others."""
    return path is not None and Path(path).suffix.lower() in EXPORTED_SUFFIXES


def require_extra(module: str, load: bool = True) -> Any:
    """Import (or, with `load=False`, only find) a module of the `export` extra; if it is
    missing, say which pip command brings it (exit 2)."""
    import importlib
    import importlib.util

    try:
        if load:
            return importlib.import_module(module)
        if sys.modules.get(module, False) is None or importlib.util.find_spec(module) is None:
            raise ImportError(module)
        return None
    except (ImportError, ValueError):
        raise CnnctlError(
            f"{module.split('.')[0]} is not installed; exported models need the 'export' extra",
            PIP_EXTRA,
        ) from None


class ExportedModel:
    """An .onnx or .tflite image classifier: `model(batch)` -> probabilities, like Keras."""

    def __init__(self, path: Path, run: Any, input_shape: tuple, output_shape: tuple) -> None:
        self.path = path
        self._run = run
        self.input_shape = (None, *input_shape)  # (None, height, width, channels), as Keras says
        self.output_shape = (None, *output_shape)  # (None, outputs) or (None, H, W, classes)

    def __call__(self, batch: np.ndarray, training: bool = False) -> np.ndarray:
        return self._run(np.ascontiguousarray(batch, dtype=np.float32))

    def predict(self, x: np.ndarray, batch_size: int = EVAL_BATCH, verbose: int = 0) -> np.ndarray:
        """Probabilities for every image of `x`, in batches."""
        parts = [self(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, *self.output_shape[1:]), np.float32)


def load_exported(path: Path) -> ExportedModel:
    """Vet and load an exported model file; every problem with the file is a ModelFileError."""
    path = Path(path)
    data = _read_bounded(path)
    loader = _load_onnx if path.suffix.lower() == ".onnx" else _load_tflite
    model = loader(path, data)
    _, height, width, channels = model.input_shape
    sizes = (height, width, channels)
    if not all(isinstance(n, int) and n > 0 for n in sizes) or channels not in (1, 3):
        raise ModelFileError(
            f"{path}: takes input {list(model.input_shape)}, not images "
            "(batch, height, width, 1 or 3 channels)",
            "pass a model exported with cnnctl export",
        )
    return model


def _read_bounded(path: Path) -> bytes:
    """The whole file, through the shared reader: regular files only, at most the `bytes` limit."""
    if not os.path.lexists(path):
        raise ModelFileError(
            f"{path}: no such model file",
            "pass a .keras, .onnx or .tflite file, e.g. runs/<run>/export/model.onnx",
        )
    with contextlib.suppress(OSError):  # a broken link: the reader below names it
        if os.path.getsize(path) > MAX_BYTES:
            raise ModelFileError(f"{path}: refused: larger than any model cnnctl exports (2 GiB)")
    data = read_bounded(path, ModelFileError, name="bytes")
    if not data:
        raise ModelFileError(f"{path}: damaged: the file is empty")
    return data


def exported_facts(path: Path) -> FileFacts:
    """The record an exported file carries inside itself (None: none) and its output's rank,
    read without a runtime; a damaged file or a malformed record is a ModelFileError."""
    path = Path(path)
    data = _read_bounded(path)
    if path.suffix.lower() == ".onnx":
        proto = _parse_onnx(path, data)
        _vet_onnx(path, proto)  # a refused file is named before anything is read from it
        return onnx_facts(path, proto)
    if data[4:8] != b"TFL3":
        raise ModelFileError(f"{path}: damaged or not a TFLite model (no TFL3 identifier)")
    return tflite_facts(path, data)


def _onnx_model_proto() -> Any:
    """onnx's ModelProto class, without importing the onnx package.

    `import onnx` costs 0.5 s (it loads ml_dtypes' type tables) where parsing needs only the
    generated protobuf module, which imports nothing but protobuf: load that file alone.
    """
    if "onnx" in sys.modules:
        return sys.modules["onnx"].ModelProto
    require_extra("onnx", load=False)
    import importlib.util

    origin = importlib.util.find_spec("onnx").origin
    spec = importlib.util.spec_from_file_location(
        "_cnnctl_onnx_ml_pb2", Path(origin).parent / "onnx_ml_pb2.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ModelProto


def _parse_onnx(path: Path, data: bytes) -> Any:
    model_proto = _onnx_model_proto()
    try:
        proto = model_proto.FromString(data)
    except Exception as error:  # protobuf raises DecodeError and others for damaged bytes
        why = first_line(error, 120)
        raise ModelFileError(f"{path}: damaged or not an ONNX model ({why})") from None
    if not proto.graph.node:
        raise ModelFileError(f"{path}: damaged or not an ONNX model (its graph is empty)")
    return proto


def _load_onnx(path: Path, data: bytes) -> ExportedModel:
    proto = _parse_onnx(path, data)
    ort = require_extra("onnxruntime")
    _vet_onnx(path, proto)
    ort.set_default_logger_severity(3)  # its coloured C++ lines would cut cnnctl's one line
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types vary by version
        raise ModelFileError(f"{path}: onnxruntime cannot load it ({first_line(error)})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if (
        len(inputs) != 1
        or len(outputs) != 1
        or inputs[0].type != "tensor(float)"
        or len(inputs[0].shape) != 4
    ):
        raise ModelFileError(
            f"{path}: not a one-input float image classifier",
            "pass a model exported with cnnctl export",
        )
    name = inputs[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        try:
            return session.run(None, {name: batch})[0]
        except Exception as error:  # onnxruntime's own exception types vary by version
            raise ModelFileError(
                f"{path}: onnxruntime cannot run it ({first_line(error)})"
            ) from None

    shape = tuple(inputs[0].shape[1:])
    given = tuple(outputs[0].shape[1:] or ())
    if not given or not all(isinstance(n, int) for n in given):  # symbolic sizes: run one image
        given = (
            tuple(int(n) for n in run(np.zeros((1, *shape), np.float32)).shape[1:])
            if all(isinstance(n, int) for n in shape)
            else (0,)
        )
    return ExportedModel(path, run, shape, given)


def _vet_onnx(path: Path, proto: Any) -> None:
    """Standard operators only, no local functions, no control flow, every tensor inside the
    file, declared inputs and outputs within the budget."""
    if proto.functions:
        raise ModelFileError(f"{path}: refused: it defines its own functions ({STANDARD})")
    for opset in proto.opset_import:
        if opset.domain not in ONNX_DOMAINS:
            raise ModelFileError(
                f"{path}: refused: it uses the custom operator domain '{opset.domain}' ({STANDARD})"
            )
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        _check_declared(
            path, value.name, [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
        )
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        tensors = [*graph.initializer]
        for sparse in graph.sparse_initializer:
            tensors += [sparse.values, sparse.indices]
        for node in graph.node:
            if node.domain not in ONNX_DOMAINS:
                raise ModelFileError(
                    f"{path}: refused: operator {node.op_type} from the custom "
                    f"domain '{node.domain}' ({STANDARD})"
                )
            if node.op_type in CONTROL_FLOW:
                raise ModelFileError(
                    f"{path}: refused: operator {node.op_type} (control flow, which an image "
                    "classifier export never holds and which may never end)",
                    "pass a model exported with cnnctl export",
                )
            for attribute in node.attribute:  # tensors of Constant and others; subgraphs
                tensors += [attribute.t] if attribute.HasField("t") else []
                tensors += list(attribute.tensors)
                for sparse in [
                    *([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []),
                    *attribute.sparse_tensors,
                ]:
                    tensors += [sparse.values, sparse.indices]
                graphs.extend([attribute.g] if attribute.HasField("g") else [])
                graphs.extend(attribute.graphs)
        for tensor in tensors:
            if tensor.data_location == 1 or len(tensor.external_data):  # 1: EXTERNAL
                raise ModelFileError(
                    f"{path}: refused: it reads tensors from other files (tensor "
                    f"'{safe_text(tensor.name[:80])}'; {SELF_CONTAINED})",
                    "pass a model exported with cnnctl export",
                )


def _check_declared(path: Path, name: str, shape: list[int]) -> None:
    """Refuse an input or output whose declared size for one image is over `image_bytes`.

    The runtime would allocate it, and `predict` resize each image up to it.
    """
    values = 1
    for n in shape[1:]:  # the first is the batch
        values *= max(int(n), 1)
    allowed = limit("image_bytes")
    if values * 4 > allowed:
        raise ModelFileError(
            f"{path}: refused: '{safe_text(str(name)[:80])}' declares shape {list(shape)}: "
            f"{values * 4:,} bytes per image (> limit {allowed:,})",
            f"if you trust this file, raise the limit: cnnctl --limit image_bytes={values * 4} ...",
        )


def _load_tflite(path: Path, data: bytes) -> ExportedModel:
    if data[4:8] != b"TFL3":
        raise ModelFileError(f"{path}: damaged or not a TFLite model (no TFL3 identifier)")
    interpreter_module = require_extra("ai_edge_litert.interpreter")
    try:
        # The flatbuffer is verified before use; an unknown custom op fails here, before any runs.
        with quiet_stderr():  # LiteRT's C++ says "INFO: Created TensorFlow Lite XNNPACK delegate"
            interpreter = interpreter_module.Interpreter(
                model_content=data, num_threads=os.cpu_count() or 1
            )
            inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
            for detail in [*inputs, *outputs]:  # before any tensor is allocated
                _check_declared(path, detail["name"], [int(n) for n in detail["shape"]])
            interpreter.allocate_tensors()
    except ModelFileError:
        raise
    except Exception as error:  # LiteRT raises ValueError and RuntimeError for bad files
        why = first_line(error, 120)
        raise ModelFileError(f"{path}: damaged or unusable TFLite model ({why})") from None
    if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0]["shape"]) != 4:
        raise ModelFileError(
            f"{path}: not a one-input image classifier", "pass a model exported with cnnctl export"
        )
    source, target = inputs[0], outputs[0]
    state = {"batch": None}

    def run(batch: np.ndarray) -> np.ndarray:
        try:  # a custom op allocates fine and fails only here; LiteRT logs to fd 2 as it fails
            with quiet_stderr():
                if state["batch"] != len(batch):  # one batch size at a time; resize on change
                    interpreter.resize_tensor_input(
                        source["index"], [len(batch), *source["shape"][1:]]
                    )
                    interpreter.allocate_tensors()
                    state["batch"] = len(batch)
                interpreter.set_tensor(source["index"], _quantize(batch, source))
                interpreter.invoke()
                return _dequantize(interpreter.get_tensor(target["index"]), target).copy()
        except Exception as error:  # RuntimeError, ValueError: an op LiteRT cannot run
            raise ModelFileError(
                f"{path}: LiteRT cannot run it ({first_line(error, 120)})"
            ) from None

    shape = tuple(int(n) for n in source["shape"][1:])
    return ExportedModel(path, run, shape, tuple(int(n) for n in target["shape"][1:]))


@contextlib.contextmanager
def quiet_stderr():
    """Send file descriptor 2 to /dev/null for a moment: C++ runtimes log there past Python."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _quantize(batch: np.ndarray, detail: dict) -> np.ndarray:
    """Float pixels -> the input's dtype (float32 unless the file takes integer input)."""
    if detail["dtype"] == np.float32:
        return batch
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    values = np.clip(np.round(batch / (scale or 1.0) + zero), info.min, info.max)
    return values.astype(detail["dtype"])


def _dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    if values.dtype == np.float32:
        return values
    scale, zero = detail["quantization"]
    return (values.astype(np.float32) - zero) * scale


def exported_record(path: Path) -> dict[str, Any]:
    """What export.json beside an exported file records for it ({} if nothing).

    export.json is read like every other input: a regular file, at most `json_bytes`.
    """
    index = Path(path).parent / "export.json"
    if not os.path.lexists(index):
        return {}
    records = read_json(index, ModelFileError)
    for record in records.get("exports", []) if isinstance(records, dict) else []:
        if isinstance(record, dict) and record.get("file") == Path(path).name:
            return record
    return {}


def exported_class_names(path: Path) -> list[str] | None:
    """Class names recorded for an exported file in the export.json beside it, if any."""
    names = exported_record(path).get("class_names")
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return names
    return None
