"""model.keras -> SavedModel, ONNX or TFLite through Keras' own `model.export`, checked before kept.

Each file is written under a temporary name, loaded back in the runtime that will serve it
(the SavedModel signature, onnxruntime, the LiteRT interpreter) and compared with the Keras model
on real test images of the run's data; only a file that passes is renamed into place and
recorded in `export.json`. TensorFlow is imported inside the functions, never at module level.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnctl.allowlist import INFERENCE_IDENTITY
from cnnctl.errors import CnnctlError, ConfigError, ModelFileError, RunError
from cnnctl.limits import EVAL_BATCH
from cnnctl.modelfile.record import embed_onnx, embed_tflite, embedded_record
from cnnctl.runs import Run, run_of_model, write_json
from cnnctl.scoring.source import kept_state
from cnnctl.tasks import TARGET_STATS, Task, task_named, task_of

FORMATS = ("savedmodel", "onnx", "tflite")
QUANTIZE = ("float16", "int8")
CHECK_IMAGES = 1000  # real test images compared with Keras
REPRESENTATIVE_IMAGES = 200  # training images that calibrate int8 ranges
MAX_DIFF = {"savedmodel": 1e-5, "onnx": 1e-5, "tflite": 1e-4}  # probabilities, float exports
ONNX_NAMES = ("image", "probabilities")  # the graph's input and output, batch dimension "batch"
PREPROCESSING = {
    True: "float32 pixels 0..255 (N, H, W, C); the model scales them (Rescaling 1/255 inside)",
    False: "float32 pixels 0..255 (N, H, W, C), as in training (the model has no Rescaling)",
}


class ExportCheckFailed(CnnctlError):
    """The exported file disagrees with the Keras model (exit 1); no file is left behind."""

    exit_code = 1


@dataclass(frozen=True)
class Source:
    """What to export and the run whose data checks it."""

    model: Path
    run: Run | None  # the folder holding config.yaml and classes.json


def export_source(run: Run | None, model_file: Path | None) -> Source:
    """The model file and its run: a run's model.keras, or a file inside (or beside) a run."""
    if run is not None:
        return Source(run.model, run)
    if not Path(model_file).is_file():
        raise ModelFileError(
            f"{model_file}: no such model file", "give a run's model.keras, or export RUN itself"
        )
    return Source(Path(model_file), run_of_model(Path(model_file)))


def default_output(source: Source, fmt: str, quantize: str | None) -> Path:
    """Where the file goes: the run's export/ folder (else beside the model)."""
    folder = (source.run.path if source.run else source.model.parent) / "export"
    stem = source.model.stem + (f"-{quantize}" if quantize else "")
    names = {"savedmodel": f"{stem}_savedmodel", "onnx": f"{stem}.onnx", "tflite": f"{stem}.tflite"}
    return folder / names[fmt]


def check_request(fmt: str, quantize: str | None, output: Path | None) -> None:
    """Cheap checks before TensorFlow starts: format, quantization, output name, the extra."""
    from cnnctl.modelfile.exported import require_extra

    if quantize and fmt != "tflite":
        raise CnnctlError(
            f"--quantize {quantize}: only TFLite files are quantized",
            "use --format tflite --quantize int8 (or float16)",
        )
    wanted = {"onnx": ".onnx", "tflite": ".tflite"}.get(fmt)
    if output is not None and wanted and output.suffix != wanted:
        raise CnnctlError(
            f"--output {output}: a {fmt} file must end in {wanted}", f"e.g. --output model{wanted}"
        )
    modules = {
        "onnx": ("tf2onnx", "onnx", "onnxruntime"),
        "tflite": ("ai_edge_litert.interpreter",),
    }
    for module in modules.get(fmt, ()):
        require_extra(module, load=False)  # importing tf2onnx would start TensorFlow, noisily


def export_model(
    source: Source,
    fmt: str,
    quantize: str | None = None,
    output: Path | None = None,
    verbose: bool = False,
    offline: bool = False,
) -> dict[str, Any]:
    """Write, check and record one export; returns its export.json record."""
    import keras

    from cnnctl.modelfile.load import load_model

    if source.run is None:
        raise RunError(
            f"{source.model}: no config.yaml beside the model (or its folder) to find "
            "test images for the check",
            "export a run: cnnctl export RUN --format ...",
        )
    output = Path(output) if output is not None else default_output(source, fmt, quantize)
    model = float32_copy(load_model(source.model, compile=False), keras)
    x_check, y_check, x_train, task = _check_images(source.run, offline)
    model(x_check[:1], training=False)  # a loaded model has not been called; export needs it built
    expected = model.predict(x_check, batch_size=EVAL_BATCH, verbose=0)  # the whole model
    record = _record(source, model, output, fmt, quantize, task)
    output.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(output) as tmp:
        started = time.perf_counter()
        with _quiet(verbose):
            _write(inference_model(model, keras), fmt, quantize, tmp, x_train)
            # The record goes inside the file before the check: the file checked is the one kept.
            if fmt == "onnx":
                name_onnx(tmp, output, embedded_record(record))
            elif fmt == "tflite":
                embed_tflite(tmp, embedded_record(record))
        seconds = time.perf_counter() - started
        try:
            got = _run_export(fmt, tmp, x_check)
        except ModelFileError as error:  # the runtime refused the file: our failure, not the user's
            raise ExportCheckFailed(
                error.message.replace(str(tmp), str(output)),
                "nothing was written; run with --verbose to see the converter's messages",
            ) from None
        check = task.parity(expected, got, y_check, None if quantize else MAX_DIFF[fmt])
        if not check["passed"]:
            raise ExportCheckFailed(
                f"{output}: the exported model disagrees with Keras: {task.parity_summary(check)}",
                "nothing was written; run with --verbose to see the converter's messages",
            )
        _replace(tmp, output)
    record.update(
        size_bytes=_size(output), check=check, export_seconds=round(seconds, 2), path=str(output)
    )
    _update_index(output.parent / "export.json", record)
    return record


def float32_copy(model: Any, keras: Any) -> Any:
    """The model, or a float32 twin of a mixed-precision one (LiteRT cannot run its Flex ops)."""
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    config = _float32_config(model.get_config())
    twin = model.__class__.from_config(config)
    twin.set_weights([np.asarray(w, np.float32) for w in model.get_weights()])
    return twin


def inference_model(model: Any, keras: Any) -> Any:
    """The model as it runs at inference: a Sequential without its augmentation layers.

    They are identity outside training, yet their traced graph keeps the random ops (tf2onnx
    leaves StatelessRandomUniformV2 untranslated and onnxruntime refuses the file). The twin
    shares the layers, so the weights are the model's own.
    """
    if not isinstance(model, keras.Sequential):
        return model
    kept = [layer for layer in model.layers if type(layer).__name__ not in INFERENCE_IDENTITY]
    if len(kept) == len(model.layers):
        return model
    twin = keras.Sequential([keras.Input(model.input_shape[1:]), *kept], name=model.name)
    twin(
        np.zeros((1, *model.input_shape[1:]), np.float32), training=False
    )  # export needs it called
    return twin


def _float32_config(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
            return {**value, "config": {**value.get("config", {}), "name": "float32"}}
        return {
            key: (
                "float32"
                if key == "dtype" and isinstance(item, str) and "mixed" in item
                else _float32_config(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_float32_config(item) for item in value]
    return value


def _check_images(run: Run, offline: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, Task]:
    """Up to CHECK_IMAGES real test images with labels, a training sample to calibrate int8,
    and the run's task, which judges the parity."""
    from cnnctl.config import load_config
    from cnnctl.data.dataset import dataset_for, decoded

    if not run.config.is_file():
        raise RunError(
            f"{run.config}: missing; the check needs the run's data", "export a complete run"
        )
    config = load_config(run.effective_config)
    dataset = dataset_for(config, offline)
    x_test, y_test = dataset.split("test")
    order = np.random.default_rng(config.seed).permutation(len(dataset.x_train))
    pick = order[:REPRESENTATIVE_IMAGES]
    x_check, failed = decoded(x_test[:CHECK_IMAGES])  # files that fail to decode are left out
    calibration, _ = decoded(dataset.x_train[np.sort(pick)])
    return (
        x_check.astype(np.float32),
        np.delete(y_test[:CHECK_IMAGES], failed, axis=0),
        calibration.astype(np.float32),
        _restored(task_of(config), run),
    )


def _restored(task: Task, run: Run) -> Task:
    """The run's task with what it kept in the run folder (multilabel: its thresholds)."""
    task.restore(kept_state(task, run))
    return task


def _write(model: Any, fmt: str, quantize: str | None, path: Path, x_train: np.ndarray) -> None:
    """Keras' own exporters; only the TFLite converter options are ours."""
    if fmt == "savedmodel":
        model.export(str(path), format="tf_saved_model", verbose=False)
    elif fmt == "onnx":
        model.export(str(path), format="onnx", verbose=False)
    else:
        options = _litert_options(quantize, x_train)
        model.export(str(path), format="litert", verbose=False, **options)


def name_onnx(path: Path, output: Path, record: str) -> None:
    """Name the graph's input `image`, its output `probabilities`, their first dimension `batch`;
    put the JSON `record` in the model's metadata_props.

    tf2onnx names them after the traced function (`keras_tensor`, `output_0`) and the batch
    dimension `unk__36`; a file loaded elsewhere should say what goes in and comes out.
    Refuses a graph with operators ONNX does not define (converter left-overs), by name.
    """
    import onnx

    proto = onnx.load(str(path))
    graph = proto.graph
    foreign = sorted({n.op_type for n in graph.node if not onnx.defs.has(n.op_type, n.domain)})
    if foreign:
        raise ExportCheckFailed(
            f"{output}: the ONNX converter left TensorFlow operations that ONNX does not "
            f"have: {', '.join(foreign)}",
            "nothing was written; export --format tflite or savedmodel, or run with --verbose",
        )
    renames = {graph.input[0].name: ONNX_NAMES[0], graph.output[0].name: ONNX_NAMES[1]}
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = renames.get(value.name, value.name)
    for value in (graph.input[0], graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    embed_onnx(proto, record)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _litert_options(quantize: str | None, x_train: np.ndarray) -> dict[str, Any]:
    import tensorflow as tf

    if quantize is None:
        return {}
    if quantize == "float16":
        return {
            "optimizations": [tf.lite.Optimize.DEFAULT],
            "target_spec": {"supported_types": [tf.float16]},
        }

    def representative():  # the converter calibrates each int8 range on these real images
        for image in x_train:
            yield [image[np.newaxis]]

    # Integer kernels inside, float32 in and out: the file takes the same pixels as the float ones.
    return {
        "optimizations": [tf.lite.Optimize.DEFAULT],
        "representative_dataset": representative,
        "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
    }


def _run_export(fmt: str, path: Path, x: np.ndarray) -> np.ndarray:
    """Probabilities from the exported file, computed by the runtime that will serve it."""
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))  # must outlive the calls: it owns the variables
        serve = loaded.signatures["serving_default"]
        name = next(iter(serve.structured_input_signature[1]))
        parts = [
            next(iter(serve(**{name: tf.constant(x[i : i + EVAL_BATCH])}).values())).numpy()
            for i in range(0, len(x), EVAL_BATCH)
        ]
        return np.concatenate(parts)
    from cnnctl.modelfile.exported import load_exported

    return load_exported(path).predict(x, batch_size=EVAL_BATCH)


def _record(
    source: Source, model: Any, output: Path, fmt: str, quantize: str | None, task: Task
) -> dict[str, Any]:
    """export.json's record of the file, but for what the check adds (check, size, timing);
    the file itself carries this much (modelfile/record.py)."""
    import keras

    _, height, width, channels = model.input_shape
    rescales = any(isinstance(layer, keras.layers.Rescaling) for layer in model.layers)
    names = source.run.class_names() if source.run and source.run.classes.is_file() else None
    record = {
        "format": fmt,
        "quantize": quantize,
        "file": output.name,
        "path": str(output),
        "source": str(source.model),
        "input": {
            "shape": [None, height, width, channels],
            "dtype": "float32",
            "channels": channels,
        },
        "output": {
            "shape": [None, *model.output_shape[1:]],
            "dtype": "float32",
            "meaning": "probabilities",
        },
        "class_names": names or [str(i) for i in range(model.output_shape[-1])],
        "preprocessing": PREPROCESSING[rescales],
        "keras": keras.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "task": task.name,
    }
    kept = kept_state(task, source.run)
    if kept:  # what the task settled on validation (multilabel: thresholds), for a bare file
        record["kept"] = kept
    stats = source.run.path / TARGET_STATS
    if stats.is_file():  # standardized regression targets: the model already undoes it
        record["target_stats"] = json.loads(stats.read_text(encoding="utf-8"))
    return record


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _update_index(index: Path, record: dict[str, Any]) -> None:
    """export.json lists every file in the folder; exporting a file again replaces its entry."""
    import json

    records: list[dict[str, Any]] = []
    with contextlib.suppress(OSError, ValueError, AttributeError):
        records = [
            r
            for r in json.loads(index.read_text()).get("exports", [])
            if isinstance(r, dict) and r.get("file") != record["file"]
        ]
    write_json(index, {"exports": [*records, record]})


@contextlib.contextmanager
def _temporary(output: Path):
    """A temporary path beside `output`, with its suffix (LiteRT insists); removed on failure."""
    fd, name = tempfile.mkstemp(
        dir=output.parent, prefix=f".{output.stem}.", suffix=f".tmp{output.suffix}"
    )
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()
    try:
        yield tmp
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _replace(tmp: Path, output: Path) -> None:
    """Rename the checked file (or SavedModel folder) into place, replacing an older one."""
    if output.is_dir() and not output.is_symlink():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
        os.replace(tmp, output)
        shutil.rmtree(old, ignore_errors=True)
    elif output.exists() and tmp.is_dir():
        raise ConfigError(
            f"--output {output}: a file is in the way of the SavedModel folder",
            "choose another --output",
        )
    else:
        os.replace(tmp, output)


@contextlib.contextmanager
def _quiet(verbose: bool):
    """Hide the converters' chatter (TF's C++ logs, tf2onnx) unless --verbose."""
    if verbose:
        yield
        return
    import logging
    import sys

    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    os.dup2(devnull, 1), os.dup2(devnull, 2)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            yield
    finally:
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
        logging.getLogger().setLevel(level)


def export_table(record: dict[str, Any]) -> Any:
    """What `cnnctl export` prints: where the file went, its size and its check; each line
    ends at its value (a table would pad every line to the longest, in a pipe too)."""
    from rich.console import Group
    from rich.text import Text

    from cnnctl.escape import safe_text

    check = record["check"]
    kind = record["format"] + (f" ({record['quantize']})" if record["quantize"] else "")
    rows = [
        ("file", record["path"]),
        ("format", kind),
        ("size", f"{record['size_bytes'] / 1024:,.1f} KiB"),
        ("input", f"{record['input']['shape']} float32; {record['preprocessing']}"),
        ("check", f"{check['images']:,} test images against Keras: passed"),
        *task_named(record.get("task", "classification")).parity_rows(check),
    ]
    width = max(len(key) for key, _ in rows) + 2
    return Group(*(Text.assemble((f"{key:<{width}}", "bold"), safe_text(v)) for key, v in rows))
