"""Hostile exported models (issue 25, 1-5): files that read other files, balloon, hang or crash.

Each group runs in one fresh child process (`test_hostile.run_group`): exit 0 or 2, no
traceback, under 1.5 GB peak RSS, nothing left in TMPDIR, nothing outside touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_hostile import check, run_group, snapshot

from cnnctl.cli import main

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


def _classifier(
    path: Path, extra_nodes=(), bias: str | None = None, shape=(1, 28, 28, 1), inits=()
) -> Path:
    """x [1,28,28,1] -> Flatten -> MatMul -> (+ bias) -> Softmax -> y [1,10]."""
    weights = helper.make_tensor(
        "w", TensorProto.FLOAT, [784, 10], np.full(7840, 0.01, np.float32).tolist()
    )
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        *extra_nodes,
        helper.make_node("Add", ["logits", bias], ["biased"]) if bias else None,
        helper.make_node("Softmax", ["biased" if bias else "logits"], ["y"]),
    ]
    graph = helper.make_graph(
        [n for n in nodes if n is not None],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [weights, *inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


def _external(name: str, location: str, length: int = 40) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[length // 4])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _endless_loop(path: Path) -> Path:
    """A Loop whose condition stays true: onnxruntime runs it until killed."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["v_in"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 10]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 10]),
        ],
    )
    true = helper.make_tensor("true", TensorProto.BOOL, [], [True])
    loop = helper.make_node("Loop", ["", "true", "logits"], ["looped"], body=body)
    return _classifier(path, extra_nodes=[loop], bias="looped", inits=[true])


@pytest.fixture(scope="module")
def tflite_files(tmp_path_factory) -> Path:
    """A 1.4 KB-class .tflite declaring a 12000x12000x3 input."""
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("tflite")

    @tf.function(input_signature=[tf.TensorSpec([1, 12000, 12000, 3], tf.float32)])
    def wide(x):
        return tf.nn.softmax(tf.reduce_mean(x, axis=[1, 2])[:, :2])

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [wide.get_concrete_function()], wide
    )
    (folder / "wide.tflite").write_bytes(converter.convert())
    return folder


def test_hostile_exported_models(tmp_path, tflite_files, outside):
    made = tmp_path
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(made / "x.png")
    (made / ".env").write_bytes(np.full(10, 7.0, np.float32).tobytes())  # "secret" bytes
    secret = made / ".env"
    # 1: a Constant node (not an initializer) whose tensor reads .env
    const = helper.make_node("Constant", [], ["leak"], value=_external("leak", ".env"))
    _classifier(made / "constant.onnx", extra_nodes=[const], bias="leak")
    _classifier(made / "initializer.onnx", bias="leak", inits=[_external("leak", ".env")])
    sparse = helper.make_sparse_tensor(
        _external("vals", ".env", 8),
        helper.make_tensor("idx", TensorProto.INT64, [2], [0, 1]),
        [10],
    )
    sparse_node = helper.make_node("Constant", [], ["leak"], sparse_value=sparse)
    _classifier(made / "sparse.onnx", extra_nodes=[sparse_node], bias="leak")
    # 2: declared sizes
    _classifier(made / "huge-input.onnx", shape=(1, 100000, 100000, 3))
    # 3: a graph that never ends
    _endless_loop(made / "loop.onnx")
    # 4: export.json beside a good model is a FIFO
    (made / "fifo").mkdir()
    _classifier(made / "fifo" / "model.onnx")
    os.mkfifo(made / "fifo" / "export.json")
    _classifier(made / "good.onnx")
    before = snapshot(outside)

    def predict(model: Path) -> list[str]:
        return ["predict", str(made / "x.png"), "--model", str(model), "--json"]

    cases = [
        (predict(made / "good.onnx"), 0, ""),
        (predict(made / "constant.onnx"), 2, "reads tensors from other files (tensor 'leak'"),
        (predict(made / "initializer.onnx"), 2, "reads tensors from other files"),
        (predict(made / "sparse.onnx"), 2, "reads tensors from other files"),
        (predict(made / "huge-input.onnx"), 2, "declares shape [1, 100000, 100000, 3]"),
        (predict(tflite_files / "wide.tflite"), 2, "declares shape [1, 12000, 12000, 3]"),
        (predict(made / "loop.onnx"), 2, "refused: operator Loop (control flow"),
        (predict(made / "fifo" / "model.onnx"), 2, "export.json: not a regular file (a FIFO)"),
    ]
    results, rss = run_group([args for args, _, _ in cases], tmp_path)
    check(results, [(code, phrase) for _, code, phrase in cases], rss)
    for result in results:
        assert "7.0" not in result["stdout"] and "\x1b" not in result["stderr"] + result["stdout"]
    assert "image is larger" not in results[4]["stderr"]  # the model's shape, not the image
    assert snapshot(outside) == before and secret.read_bytes()


def test_an_exported_model_that_fails_while_running_exits_2_in_one_line(
    runner, tmp_path, monkeypatch
):
    """A custom op passes allocate_tensors and fails at invoke (as LiteRT does): one line."""
    import ai_edge_litert.interpreter as litert
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 28, 28, 1], tf.float32)])
    def small(x):
        return tf.nn.softmax(tf.reshape(x, [1, 784])[:, :10])

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [small.get_concrete_function()], small
    )
    (tmp_path / "custom.tflite").write_bytes(converter.convert())
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")

    def invoke(self):
        raise RuntimeError("Encountered unresolved custom op: Evil.\nNode number 1 failed")

    monkeypatch.setattr(litert.Interpreter, "invoke", invoke)
    result = runner.invoke(
        main, ["predict", str(tmp_path / "x.png"), "--model", str(tmp_path / "custom.tflite")]
    )
    assert result.exit_code == 2, result.output
    assert "LiteRT cannot run it (Encountered unresolved custom op: Evil.)" in result.stderr
    assert "internal error" not in result.output and len(result.stderr.strip().splitlines()) <= 2


def test_export_json_beside_a_model_is_read_through_the_limits(tmp_path):
    from cnnctl.errors import ModelFileError
    from cnnctl.modelfile.exported import exported_class_names

    model = _classifier(tmp_path / "model.onnx")
    assert exported_class_names(model) is None
    (tmp_path / "export.json").write_text(
        json.dumps({"exports": [{"file": "model.onnx", "class_names": ["a", "b"]}]})
    )
    assert exported_class_names(model) == ["a", "b"]
    (tmp_path / "export.json").write_text("[" * 100_000)
    with pytest.raises(ModelFileError, match="export.json: refused: the JSON is nested too deep"):
        exported_class_names(model)


@pytest.fixture
def outside(tmp_path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("sk-live-0123456789\n")
    return folder


def _with_record(path: Path, text: str) -> Path:
    """A good classifier whose embedded cnnctl record is `text`."""
    _classifier(path)
    model = onnx.load(str(path))
    model.metadata_props.add(key="cnnctl", value=text)
    path.write_bytes(model.SerializeToString())
    return path


NAMES = [f"n{i}" for i in range(10)]
RECORDS = {  # an embedded record -> the line cnnctl answers with (exit 2), or None: it is used
    "huge": (json.dumps({"task": "classification", "pad": "x" * 2**20}), "record is 1,048,"),
    "not-json": ("{task: multilabel", "embedded cnnctl record: not valid JSON"),
    "deep": ("[" * 100_000, "embedded cnnctl record: refused: the JSON is nested too deeply"),
    "list": ("[1, 2]", "embedded cnnctl record: not a JSON object"),
    "names-type": ('{"class_names": 5}', "'class_names' is a int, not a list"),
    "names-items": ('{"class_names": [1, 2]}', "'class_names' holds something else than names"),
    "task-type": ('{"task": true}', "'task' is a bool, not a str"),
    "task-unknown": ('{"task": "telepathy"}', "record names an unknown task 'telepathy'"),
    "kept": (
        '{"task": "multilabel", "kept": {"thresholds.json": 5}}',
        "its cnnctl record: thresholds.json: not a thresholds file",
    ),
    "per-pixel": ('{"task": "segmentation"}', "its outputs are shaped [None, 10], not what task"),
    "good": (json.dumps({"task": "multilabel", "class_names": NAMES}), None),
}


@pytest.mark.parametrize("case", list(RECORDS))
def test_an_embedded_record_is_read_through_the_limits(runner, tmp_path, case):
    """The record inside an exported file is untrusted input: bounded, parsed defensively, each
    field checked; a bad one is one or two lines and exit 2, never a traceback."""
    text, phrase = RECORDS[case]
    model = _with_record(tmp_path / "model.onnx", text)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
    args = ["predict", str(tmp_path / "x.png"), "--model", str(model), "--json", "--top-k", "1"]
    result = runner.invoke(main, args)
    if phrase is None:  # read as multilabel: every label under its threshold (0.1 < 0.5)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)[0]["top"][0]["label"] in NAMES
        assert "warning" not in result.stderr
        return
    assert result.exit_code == 2, result.output
    assert phrase in result.stderr and str(model) in result.stderr
    assert "internal error" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2


def test_a_tflite_record_is_read_through_the_limits(tmp_path):
    """TFLite keeps the record as a named metadata buffer: the same checks."""
    import tensorflow as tf

    from cnnctl.errors import ModelFileError
    from cnnctl.modelfile.exported import exported_facts
    from cnnctl.modelfile.record import embed_tflite

    @tf.function(input_signature=[tf.TensorSpec([1, 28, 28, 1], tf.float32)])
    def small(x):
        return tf.nn.softmax(tf.reshape(x, [1, 784])[:, :10])

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [small.get_concrete_function()], small
    )
    path = tmp_path / "model.tflite"
    path.write_bytes(converter.convert())
    assert exported_facts(path).record is None and exported_facts(path).output_rank == 2
    embed_tflite(path, json.dumps({"task": "multilabel", "class_names": NAMES}))
    assert exported_facts(path).record == {"task": "multilabel", "class_names": NAMES}
    embed_tflite(path, "x" * (2**20 + 1))  # replaces the first
    with pytest.raises(ModelFileError, match="record is 1,048,577 bytes"):
        exported_facts(path)
    embed_tflite(path, '{"kept": []}')
    with pytest.raises(ModelFileError, match="'kept' is a list, not a dict"):
        exported_facts(path)
