"""cnnctl export: every format checked against Keras on real digits; exports run without TF."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cnnctl.cli import main

from conftest import REPO

# (format, quantize) -> the file the export writes into the run's export/ folder
EXPORTS = {
    ("savedmodel", None): "model_savedmodel",
    ("onnx", None): "model.onnx",
    ("tflite", None): "model.tflite",
    ("tflite", "float16"): "model-float16.tflite",
    ("tflite", "int8"): "model-int8.tflite",
}
TOLERANCE = {"model_savedmodel": 1e-5, "model.onnx": 1e-5, "model.tflite": 1e-4}


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory, data_dir) -> Path:
    """A copy of the trained run, exported to every format through the CLI: the run folder."""
    run = tmp_path_factory.mktemp("exported") / "small"
    shutil.copytree(trained / "small", run)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CNNCTL_OFFLINE", "1")
        env.setenv("CNNCTL_DATA_DIR", str(data_dir))
        for fmt, quantize in EXPORTS:
            args = ["export", str(run), "--format", fmt]
            args += ["--quantize", quantize] if quantize else []
            result = CliRunner().invoke(main, [*args, "--json"])
            assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def records(exported) -> dict[str, dict]:
    index = json.loads((exported / "export" / "export.json").read_text())
    return {record["file"]: record for record in index["exports"]}


@pytest.fixture(scope="module")
def keras_model(exported):
    from cnnctl.modelfile.load import load_model

    return load_model(exported / "model.keras", compile=False)


@pytest.fixture(scope="module")
def test_split(mnist_test_set):
    """The run's own test split: the last 2,000 real MNIST digits (see conftest.data_dir)."""
    x, y = mnist_test_set
    return x[8000:, ..., None].astype(np.float32), y[8000:].astype(np.int64)


@pytest.mark.parametrize("name", list(TOLERANCE))
def test_float_exports_match_keras(records, name):
    check = records[name]["check"]
    assert check["passed"] and check["images"] >= 1000
    assert check["max_abs_diff"] <= TOLERANCE[name]
    assert check["top1_agreement"] == 1.0


def test_export_json_is_complete(records, exported):
    assert set(records) == set(EXPORTS.values())
    for name, record in records.items():
        assert (exported / "export" / name).exists()
        assert record["size_bytes"] > 1000
        assert record["input"] == {"shape": [None, 28, 28, 1], "dtype": "float32", "channels": 1}
        assert record["class_names"] == [str(i) for i in range(10)]
        assert "0..255" in record["preprocessing"] and "Rescaling" in record["preprocessing"]
        assert {"keras_accuracy", "export_accuracy", "accuracy_drop_points"} <= set(record["check"])
    assert not list((exported / "export").glob(".*")), "temporary files left behind"


def test_int8_accuracy_drop_on_real_digits(exported, records, keras_model, test_split):
    from cnnctl.modelfile.exported import load_exported

    x, y = test_split
    int8 = load_exported(exported / "export" / "model-int8.tflite")
    keras_accuracy = float((keras_model.predict(x, verbose=0).argmax(1) == y).mean())
    int8_accuracy = float((int8.predict(x).argmax(1) == y).mean())
    assert keras_accuracy > 0.8
    assert 100 * (keras_accuracy - int8_accuracy) <= 1.0
    assert records["model-int8.tflite"]["check"]["accuracy_drop_points"] <= 1.0
    assert records["model-int8.tflite"]["size_bytes"] < records["model.tflite"]["size_bytes"] / 2


@pytest.fixture(scope="module")
def pngs(tmp_path_factory, mnist_test_set) -> Path:
    """40 real test digits written as PNG files."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("pngs")
    for index, image in enumerate(mnist_test_set[0][8000:8040]):
        Image.fromarray(image).save(folder / f"{index:02d}.png")
    return folder


def without_tensorflow(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`cnnctl ARGS` in a fresh process, checked (by -X importtime) never to import TensorFlow."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cnnctl.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", **env},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert not re.search(r"\|\s+(tensorflow|keras)\b", done.stderr), "TensorFlow was imported"
    return done


@pytest.mark.parametrize("name", ["model.onnx", "model.tflite"])
def test_predict_through_export_equals_keras_without_tensorflow(exported, keras_model, pngs, name):
    from cnnctl.data.images import load_image

    done = without_tensorflow(
        "predict", str(pngs), "--model", str(exported / "export" / name), "--json"
    )
    items = json.loads(done.stdout)
    images = np.stack([load_image(Path(i["path"]), 28, 28, 1) for i in items]).astype("float32")
    expected = keras_model.predict(images, verbose=0).argmax(1)
    assert [i["top"][0]["index"] for i in items] == expected.tolist()
    assert len(items) == 40
    # The onnx package (0.5 s: ml_dtypes' tables) is not needed to vet and run a file.
    assert not re.search(r"\|\s+(onnx|ml_dtypes)(\.|$)", done.stderr, re.M), "imported onnx"


def test_evaluate_exported_on_arrays_without_tensorflow(exported, data_dir):
    model = exported / "export" / "model.tflite"
    done = without_tensorflow(
        "evaluate",
        "--model",
        str(model),
        "--json",
        CNNCTL_DATA_DIR=str(data_dir),
        CNNCTL_OFFLINE="1",
    )
    scored = json.loads(done.stdout)
    keras_test = json.loads((exported / "metrics.json").read_text())["test"]
    assert scored["examples"] == 2000
    assert scored["metrics"]["accuracy"] == pytest.approx(keras_test["accuracy"], abs=1e-3)


def test_evaluate_exported_scores_like_keras(exported, runner):
    model = exported / "export" / "model.onnx"
    result = runner.invoke(main, ["evaluate", "--model", str(model), "--json"])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)
    keras_test = json.loads((exported / "metrics.json").read_text())["test"]
    assert scored["examples"] == 2000
    assert scored["metrics"]["accuracy"] == pytest.approx(keras_test["accuracy"], abs=1e-4)
    assert (
        exported / "evaluation-model.onnx.json"
    ).is_file()  # beside, never replacing, the Keras one


def test_tta_on_exported_models_scores_like_keras(exported, runner, tmp_path):
    scores = {}
    for model in ("model.keras", "export/model.onnx", "export/model.tflite"):
        args = ["evaluate", "--model", str(exported / model), "--tta", "horizontal_flip"]
        result = runner.invoke(main, [*args, "--output", str(tmp_path), "--json"])
        assert result.exit_code == 0, result.output
        scores[model] = json.loads(result.stdout)["metrics"]["accuracy"]
    assert scores["export/model.onnx"] == pytest.approx(scores["model.keras"], abs=1e-4)
    assert scores["export/model.tflite"] == pytest.approx(scores["model.keras"], abs=1e-4)


def test_predict_needs_the_export_extra(exported, runner, monkeypatch, pngs):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    result = runner.invoke(
        main, ["predict", str(pngs / "00.png"), "--model", str(exported / "export" / "model.onnx")]
    )
    assert result.exit_code == 2
    assert "onnxruntime is not installed" in result.output
    assert 'hint: pip install "cnnctl[export]"' in result.output


def test_export_needs_the_export_extra(exported, runner, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    result = runner.invoke(main, ["export", str(exported), "--format", "onnx"])
    assert result.exit_code == 2
    assert "tf2onnx is not installed; exported models need the 'export' extra" in result.output
    assert 'pip install "cnnctl[export]"' in result.output


def test_quantize_is_for_tflite_only(exported, runner):
    result = runner.invoke(
        main, ["export", str(exported), "--format", "onnx", "--quantize", "int8"]
    )
    assert result.exit_code == 2
    assert "--quantize int8: only TFLite files are quantized" in result.output


def test_failed_check_leaves_no_file(exported, runner, monkeypatch, tmp_path):
    from cnnctl.scoring import export

    monkeypatch.setitem(export.MAX_DIFF, "onnx", -1.0)  # no file can pass: the check must refuse it
    target = tmp_path / "out" / "model.onnx"
    result = runner.invoke(
        main, ["export", str(exported), "--format", "onnx", "--output", str(target)]
    )
    assert result.exit_code == 1
    assert f"{target}: the exported model disagrees with Keras: max abs diff" in result.output
    assert list(target.parent.iterdir()) == []


def _custom_domain_onnx(path: Path, declared: bool) -> None:
    """A graph calling an operator of a custom domain (which a shared library would implement)."""
    from onnx import TensorProto, helper

    node = helper.make_node("Steal", ["x"], ["y"], domain="evil.ops")
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 28, 28, 1])
    graph = helper.make_graph(
        [node], "g", [image], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])]
    )
    opsets = [helper.make_opsetid("", 17)]
    opsets += [helper.make_opsetid("evil.ops", 1)] if declared else []
    model = helper.make_model(graph, opset_imports=opsets)
    path.write_bytes(model.SerializeToString())


def _damaged(kind: str, folder: Path, exported: Path) -> Path:
    suffix = ".onnx" if kind.endswith("onnx") else ".tflite"
    path = folder / f"bad{suffix}"
    data = (exported / "export" / f"model{suffix}").read_bytes()
    if kind.startswith("truncated"):
        path.write_bytes(data[: len(data) // 2])
    elif kind.startswith("random"):
        path.write_bytes(np.random.default_rng(0).bytes(20_000))
    elif kind == "empty-onnx":
        path.write_bytes(b"")
    elif kind.startswith("custom"):
        _custom_domain_onnx(path, declared=kind == "custom-opset-onnx")
    elif kind == "fifo-tflite":
        os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("truncated-onnx", "damaged or not an ONNX model"),
        ("random-onnx", "damaged or not an ONNX model"),
        ("empty-onnx", "damaged: the file is empty"),
        ("custom-opset-onnx", "refused: it uses the custom operator domain 'evil.ops'"),
        ("custom-node-onnx", "refused: operator Steal from the custom domain 'evil.ops'"),
        ("truncated-tflite", "damaged or unusable TFLite model"),
        ("random-tflite", "damaged or not a TFLite model (no TFL3 identifier)"),
        ("fifo-tflite", "not a regular file"),
    ],
    ids=lambda value: value if value.endswith(("onnx", "tflite")) else "",
)
def test_damaged_exported_file_exits_2_in_one_line(exported, pngs, tmp_path, runner, kind, message):
    path = _damaged(kind, tmp_path, exported)
    result = runner.invoke(main, ["predict", str(pngs / "00.png"), "--model", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()  # the error in one line, at most a hint after it
    assert lines[0].startswith(f"Error: {path}: ") and message in lines[0]
    assert lines[1:] == [] or (len(lines) == 2 and lines[1].startswith("  hint: "))


def test_float32_copy_of_a_mixed_precision_model():
    import keras

    from cnnctl.scoring.export import float32_copy

    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(4, 3),
                keras.layers.Flatten(),
                keras.layers.Dense(3, dtype="float32"),
            ]
        )
    finally:
        keras.config.set_dtype_policy("float32")
    twin = float32_copy(mixed, keras)
    assert {layer.dtype_policy.name for layer in twin.layers} == {"float32"}
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    assert np.allclose(twin(x), mixed(x), atol=0.05)


def _onnx_graph(path: Path, kind: str) -> None:
    """Small hand-made ONNX files, each wrong in one way."""
    from onnx import TensorProto, helper, numpy_helper

    shape = {"not-images": [1, 10], "five-channels": [1, 28, 28, 5]}.get(kind, [1, 28, 28, 1])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    nodes = [] if kind == "empty" else [helper.make_node("Identity", ["x"], ["y"])]
    initializers = []
    if kind == "external-data":
        weights = numpy_helper.from_array(np.zeros(4, np.float32), "w")
        weights.ClearField("raw_data")
        weights.data_location = TensorProto.EXTERNAL
        weights.external_data.add(key="location", value="../../etc/passwd")
        initializers.append(weights)
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if kind == "functions":
        model.functions.append(
            helper.make_function(
                "local",
                "f",
                ["a"],
                ["b"],
                [helper.make_node("Identity", ["a"], ["b"])],
                [helper.make_opsetid("", 17)],
            )
        )
    path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "damaged or not an ONNX model (its graph is empty)"),
        ("external-data", "refused: it reads tensors from other files"),
        ("functions", "refused: it defines its own functions"),
        ("not-images", "not a one-input float image classifier"),
        ("five-channels", "takes input [None, 28, 28, 5], not images"),
    ],
    ids=lambda value: value if "-" in value or value.isalpha() else "",
)
def test_hand_made_onnx_files_are_refused(tmp_path, kind, message):
    from cnnctl.errors import ModelFileError
    from cnnctl.modelfile.exported import load_exported

    path = tmp_path / f"{kind}.onnx"
    _onnx_graph(path, kind)
    with pytest.raises(ModelFileError) as caught:
        load_exported(path)
    assert caught.value.message.startswith(f"{path}: ") and message in caught.value.message


def test_export_output_suffix_must_match(exported, runner):
    result = runner.invoke(
        main, ["export", str(exported), "--format", "tflite", "--output", "m.onnx"]
    )
    assert result.exit_code == 2
    assert "--output m.onnx: a tflite file must end in .tflite" in result.output


def test_export_of_a_lone_model_file_needs_its_run(exported, runner, tmp_path):
    lone = tmp_path / "lone" / "model.keras"
    lone.parent.mkdir()
    shutil.copy(exported / "model.keras", lone)
    result = runner.invoke(main, ["export", "--model", str(lone), "--format", "savedmodel"])
    assert result.exit_code == 2
    assert f"{lone}: no config.yaml beside the model (or its folder)" in result.output
    assert "hint: export a run: cnnctl export RUN --format" in result.output


def test_export_names_a_missing_model_file(runner):
    result = runner.invoke(main, ["export", "--model", "nope.keras", "--format", "onnx"])
    assert result.exit_code == 2 and "nope.keras: no such model file" in result.stderr


AUGMENTED = """\
name: flip
data:
  dataset: mnist
  limit: 600
  augment:
    - {type: RandomFlip, mode: horizontal}
    - {type: RandomRotation, factor: 0.05}
model:
  input_shape: [28, 28, 1]
  layers:
    - {type: Conv2D, filters: 4, kernel_size: 3, activation: relu}
    - {type: MaxPooling2D, pool_size: 2}
    - Flatten
    - {type: Dense, units: 10, activation: softmax}
train:
  epochs: 1
  batch_size: 64
"""


@pytest.fixture(scope="module")
def augmented(tmp_path_factory, data_dir) -> Path:
    """A small run trained with RandomFlip and RandomRotation inside its model: the run folder."""
    root = tmp_path_factory.mktemp("augmented")
    (root / "flip.yaml").write_text(AUGMENTED)
    with pytest.MonkeyPatch.context() as env:
        env.chdir(root)
        env.setenv("CNNCTL_OFFLINE", "1")
        env.setenv("CNNCTL_DATA_DIR", str(data_dir))
        result = CliRunner().invoke(main, ["train", "flip.yaml", "--runs-dir", str(root / "runs")])
    assert result.exit_code == 0, result.output
    return root / "runs" / "flip"


def test_onnx_export_of_an_augmented_model_runs_in_onnxruntime(augmented, runner):
    import onnxruntime as ort

    result = runner.invoke(main, ["export", str(augmented), "--format", "onnx", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["check"]["passed"] and record["check"]["max_abs_diff"] <= 1e-5
    session = ort.InferenceSession(str(augmented / "export" / "model.onnx"))
    assert not any("random" in node.name for node in _onnx_nodes(augmented / "export"))
    image = np.zeros((3, 28, 28, 1), np.float32)
    (probabilities,) = session.run(["probabilities"], {"image": image})
    assert probabilities.shape == (3, 10)


def _onnx_nodes(folder: Path) -> list:
    import onnx

    return list(onnx.load(str(folder / "model.onnx")).graph.node)


def test_onnx_tensors_are_named_image_and_probabilities(records, exported):
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported / "export" / "model.onnx"))
    (image,), (out,) = session.get_inputs(), session.get_outputs()
    assert (image.name, image.shape) == ("image", ["batch", 28, 28, 1])
    assert (out.name, out.shape) == ("probabilities", ["batch", 10])


def test_export_left_with_random_ops_fails_in_words_exit_1(augmented, runner, monkeypatch):
    from cnnctl.scoring import export

    monkeypatch.setattr(export, "inference_model", lambda model, keras: model)  # as before the fix
    target = augmented / "export" / "raw.onnx"
    result = runner.invoke(
        main, ["export", str(augmented), "--format", "onnx", "--output", str(target)]
    )
    assert result.exit_code == 1, result.output
    first = next(line for line in result.output.splitlines() if line.startswith("Error:"))
    assert first == (
        f"Error: {target}: the ONNX converter left TensorFlow operations that ONNX does not "
        "have: ImageProjectiveTransformV3, StatelessRandomUniformV2"
    )
    assert "hint: nothing was written" in result.output and ".tmp" not in result.output
    assert not target.exists()


def test_first_line_cuts_between_words():
    from cnnctl.errors import first_line

    text = "INVALID_GRAPH : Load model failed: " + "word " * 60
    line = first_line(ValueError(text), 80)
    assert len(line) <= 80 and line.endswith("word…") and "wor…" not in line
