"""`cnnctl explain`: maps for real digits through the CLI, every method, the layer finder
(also inside Residual blocks), task hooks, exported files and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from cnnctl.cli import main
from cnnctl.config import load_config
from cnnctl.errors import DataError
from cnnctl.explain.faithfulness import blurred, delete_top
from cnnctl.explain.layers import conv_layers, find_layer
from cnnctl.explain.methods import gradient_maps, occlusion_maps
from cnnctl.model.builder import build_model
from cnnctl.tasks import task_named

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def digits(tmp_path, mnist_test_set) -> list[Path]:
    """Three real test digits (of the run's test split) as PNG files."""
    x, _ = mnist_test_set
    folder = tmp_path / "digits"
    folder.mkdir()
    paths = []
    for i in (8000, 8001, 8002):
        paths.append(folder / f"d{i}.png")
        Image.fromarray(x[i]).save(paths[-1])
    return paths


def conv_name(runs: Path) -> str:
    """The run's one convolution's name (Keras numbers names by what the process built before)."""
    config = json.loads(zipfile.ZipFile(runs / "small" / "model.keras").read("config.json"))
    return next(
        layer["config"]["name"]
        for layer in config["config"]["layers"]
        if layer["class_name"] == "Conv2D"
    )


def explain(runner, runs, *args):
    return runner.invoke(main, ["explain", "--runs-dir", str(runs), "--json", *args])


def test_gradcam_explains_the_predicted_class_of_each_image(runner, run_copy, digits):
    result = explain(runner, run_copy, *map(str, digits), "--format", "npy")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    predicted = runner.invoke(
        main, ["predict", "--runs-dir", str(run_copy), "--json", *map(str, digits)]
    )
    top = [item["top"][0] for item in json.loads(predicted.stdout)]
    assert [r["label"] for r in rows] == [t["label"] for t in top]
    assert [r["value"] for r in rows] == pytest.approx([t["probability"] for t in top], abs=1e-4)
    assert {r["method"] for r in rows} == {"gradcam"}
    assert rows[0]["layer"] == conv_name(run_copy)  # the only convolution, found by itself
    for row in rows:
        png, npy = map(Path, row["files"])
        assert png.parent == run_copy / "small" / "explain"
        assert Image.open(png).format == "PNG"
        heatmap = np.load(npy)
        assert heatmap.shape == (28, 28) and heatmap.dtype == np.float32
        assert heatmap.min() >= 0 and heatmap.max() == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["gradcam++", "saliency", "input-x-gradient", "occlusion"])
def test_every_method_gives_a_map_in_0_1(runner, run_copy, digits, tmp_path, method):
    out = tmp_path / "maps"
    result = explain(runner, run_copy, str(digits[0]), "--method", method, "--output", str(out))
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["method"] == method
    npy_less = [Path(f) for f in row["files"]]
    assert npy_less[0].parent == out and npy_less[0].suffix == ".png"


def test_a_chosen_layer_is_named_in_the_file_so_two_layers_never_overwrite(
    runner, run_copy, digits
):
    layer = conv_name(run_copy)
    default = json.loads(explain(runner, run_copy, str(digits[0])).stdout)[0]["files"][0]
    chosen = explain(runner, run_copy, str(digits[0]), "--layer", layer)
    assert chosen.exit_code == 0, chosen.output
    named = json.loads(chosen.stdout)[0]["files"][0]
    assert f"-gradcam-{layer}-" in Path(named).name and layer not in Path(default).name
    assert Path(named).is_file() and Path(default).is_file()


def test_json_format_holds_the_maps_and_top_k_explains_k_classes(runner, run_copy, digits):
    result = explain(runner, run_copy, str(digits[0]), "--top-k", "2", "--format", "json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 2
    saved = json.loads((run_copy / "small" / "explain" / "explain.json").read_text())
    assert len(saved) == 2 and np.asarray(saved[0]["map"]).shape == (28, 28)
    assert saved[0]["value"] >= saved[1]["value"]


def test_class_names_the_output_explained(runner, run_copy, digits):
    result = explain(runner, run_copy, str(digits[0]), "--class", "3")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["label"] == "3"
    result = explain(runner, run_copy, str(digits[0]), "--class", "thre")
    assert result.exit_code == 2
    assert "--class thre: the model has no output of that name" in result.output
    assert "outputs: 0, 1, 2" in result.output


def test_unknown_layer_lists_the_convolutions_with_did_you_mean(runner, run_copy, digits):
    result = explain(runner, run_copy, str(digits[0]), "--layer", "conv2", "--json")
    assert result.exit_code == 2
    assert "--layer conv2: no convolutional layer of that name" in result.output
    assert f"did you mean '{conv_name(run_copy)}'" in result.output
    assert f"convolutional layers: {conv_name(run_copy)}" in result.output
    result = explain(runner, run_copy, str(digits[0]), "--method", "saliency", "--layer", "x")
    assert result.exit_code == 2 and "--method saliency reads no layer" in result.output


def test_bad_images_are_reported_as_predict_reports_them(runner, run_copy, digits, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("just some notes\n")
    result = explain(runner, run_copy, str(digits[0]), str(notes))
    assert result.exit_code == 1
    assert f"{notes}: not an image file Pillow can read" in result.stderr
    assert len(json.loads(result.stdout)) == 1
    result = explain(runner, run_copy, str(notes), str(tmp_path / "missing.png"))
    assert result.exit_code == 2
    assert "no such file or folder" in result.stderr and "no image could be read" in result.output


def test_exported_files_take_occlusion_and_refuse_gradients(runner, run_copy, digits):
    export = runner.invoke(main, ["export", str(run_copy / "small"), "--format", "onnx", "--json"])
    assert export.exit_code == 0, export.output
    onnx = run_copy / "small" / "export" / "model.onnx"
    result = runner.invoke(main, ["explain", "--model", str(onnx), str(digits[0])])
    assert result.exit_code == 2
    assert "--method gradcam needs gradients" in result.output
    assert "use --method occlusion" in result.output
    result = runner.invoke(
        main, ["explain", "--model", str(onnx), str(digits[0]), "--method", "occlusion", "--json"]
    )
    assert result.exit_code == 0, result.output
    keras_run = explain(runner, run_copy, str(digits[0]), "--method", "occlusion")
    onnx_row, keras_row = json.loads(result.stdout)[0], json.loads(keras_run.stdout)[0]
    assert onnx_row["label"] == keras_row["label"]
    script = (
        "import sys; from cnnctl.cli import main\n"
        "try: main(sys.argv[1:])\nexcept SystemExit as e: assert e.code == 0, e.code\n"
        "print('tensorflow' in sys.modules)"
    )
    alone = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "explain",
            "--model",
            str(onnx),
            str(digits[0]),
            "--method",
            "occlusion",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert alone.stdout.strip().endswith("False"), alone.stdout  # TensorFlow never imported
    result = runner.invoke(main, ["evaluate", "--model", str(onnx), "--json"])
    assert result.exit_code == 0, result.output
    plain = run_copy / "small" / "errors-model.onnx.png"
    assert plain.is_file() and _coloured(plain) < 0.005  # no gradients: the images alone


def test_feature_maps_figure(runner, run_copy, digits):
    result = explain(runner, run_copy, "--layers", "--image", str(digits[0]))
    assert result.exit_code == 0, result.output
    figure = Path(json.loads(result.stdout)["features"])
    assert figure == run_copy / "small" / "explain" / "features.png"
    assert Image.open(figure).size[1] > 200
    figure.unlink()
    result = explain(runner, run_copy, "--layers")  # no image: the run's first test image
    assert result.exit_code == 0, result.output
    assert figure.is_file()
    result = explain(runner, run_copy, "--layers", "--image", "nowhere.png")
    assert result.exit_code == 2
    assert "nowhere.png: " in result.output and "give a PNG or JPEG file" in result.output


RESIDUAL = """\
data: {dataset: mnist}
model:
  input_shape: [28, 28, 1]
  layers:
    - {type: Conv2D, filters: 4, kernel_size: 3, padding: same}
    - type: Residual
      activation: relu
      layers:
        - {type: Conv2D, filters: 8, kernel_size: 3, strides: 2, padding: same}
        - BatchNormalization
        - {type: Conv2D, filters: 8, kernel_size: 3, padding: same, name: deep}
    - GlobalAveragePooling2D
    - {type: Dense, units: 10, activation: softmax}
"""


def test_the_last_convolution_is_found_inside_a_residual_block(write, mnist_test_set):
    model = build_model(load_config(write("r.yaml", RESIDUAL)), 10)
    paths = [path for path, _ in conv_layers(model)]
    assert "residual_1/deep" in paths and "residual_1/residual_1_project" in paths
    path, layer = find_layer(model, None, "r.keras")
    assert path == "residual_1/deep"
    assert find_layer(model, "deep", "r.keras")[1] is layer
    images = mnist_test_set[0][:4, :, :, None].astype(np.float32)
    weights = np.eye(10, dtype=np.float32)[[0, 1, 2, 3]]
    maps, outputs = gradient_maps(model, images, weights, "gradcam", layer)
    assert maps.shape == (4, 28, 28) and np.all(maps.max(axis=(1, 2)) <= 1.0)
    assert np.allclose(outputs, model(images).numpy(), atol=1e-5)  # the softmax is back
    assert model.layers[-1].activation.__name__ == "softmax"
    assert "call" not in vars(layer)  # the recording hook is gone


def test_a_model_without_convolutions_says_which_methods_work():
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    with pytest.raises(DataError, match="no convolutional layer"):
        find_layer(model, None, "flat.keras")


def test_occlusion_finds_the_only_pixels_that_matter():
    """A fixed 'model' that scores the top-left quarter's brightness: the map says so."""
    images = np.random.default_rng(0).uniform(50, 250, (2, 16, 16, 1)).astype(np.float32)

    def predict(x):
        return x[:, :8, :8, 0].mean(axis=(1, 2))[:, None]

    maps, _ = occlusion_maps(predict, images, np.ones((2, 1), np.float32), patch=4, stride=2)
    assert maps[:, 12:].max() == 0 and maps[:, :, 12:].max() == 0  # one square away: nothing
    assert maps[:, :8, :8].max() == 1.0  # the peak is in the quarter that is scored


def test_input_x_gradient_of_a_linear_model_is_each_pixels_share_of_the_score():
    """Score = sum(w * x) + b: pixel (i, j) carries w_ij * x_ij of it; negative shares are 0."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    w = np.arange(-8, 8, dtype=np.float32).reshape(16, 1)
    model.layers[-1].set_weights([w, np.array([3.0], np.float32)])
    images = np.random.default_rng(1).uniform(0, 255, (2, 4, 4, 1)).astype(np.float32)
    maps, _ = gradient_maps(model, images, np.ones((2, 1), np.float32), "input-x-gradient")
    share = np.maximum(images[..., 0] * w.reshape(4, 4), 0)
    np.testing.assert_allclose(maps, share / share.max(axis=(1, 2), keepdims=True), atol=1e-6)


def test_blurred_removal_keeps_flat_images_and_replaces_only_the_chosen_pixels():
    flat = np.full((1, 9, 9, 1), 70.0, np.float32)
    np.testing.assert_allclose(blurred(flat, 2.0), flat, rtol=1e-6)
    dot = np.zeros((1, 15, 15, 1), np.float32)
    dot[0, 7, 7] = 100.0
    spread = blurred(dot, 1.0)
    assert spread.sum() == pytest.approx(100.0, rel=1e-5) and spread[0, 7, 7] < 20
    assert spread[0, 7, 8] == pytest.approx(spread[0, 8, 7])
    assert spread[0, 7, 8] < spread[0, 7, 7]
    ranks = np.zeros((1, 15, 15), np.float32)
    ranks[0, 7, 7] = 1.0
    removed = delete_top(dot, ranks, 1 / 225, fill=spread)
    assert removed[0, 7, 7, 0] == spread[0, 7, 7, 0] and removed.sum() == spread[0, 7, 7, 0]


def test_task_hooks_choose_what_is_explained():
    output = np.array([0.1, 0.7, 0.2], np.float32)
    names = ["a", "b", "c"]
    classification = task_named("classification").explain_targets(output, names, None, 2)
    assert [(t.label, t.index) for t in classification] == [("b", 1), ("c", 2)]
    assert classification[0].weights.tolist() == [0, 1, 0]
    multilabel = task_named("multilabel").explain_targets(
        np.array([0.9, 0.2, 0.6], np.float32), names, None, None
    )
    assert [t.label for t in multilabel] == ["a", "c"]  # each label above its threshold
    regression = task_named("regression").explain_targets(
        np.array([3.5, -1.0], np.float32), ["x", "y"], None, 1
    )
    assert [(t.label, t.value) for t in regression] == [("x", 3.5), ("y", -1.0)]
    predicted = task_named("classification").explain_targets(output, names, None, None)
    assert [t.label for t in predicted] == ["b"]  # without --top-k: the predicted class
    chosen = task_named("classification").explain_targets(output, names, 0, 3)
    assert [t.label for t in chosen] == ["a"]


def test_duplicate_stems_do_not_overwrite_each_other(
    runner, run_copy, digits, tmp_path, monkeypatch
):
    monkeypatch.setattr("cnnctl.scoring.explain.CHUNK", 1)  # one image a step: names still unique
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(digits[0], other / digits[0].name)
    result = explain(runner, run_copy, str(digits[0]), str(other / digits[0].name))
    assert result.exit_code == 0, result.output
    files = [row["files"][0] for row in json.loads(result.stdout)]
    assert len(set(files)) == 2


def _coloured(png: Path) -> float:
    """The share of a figure's pixels that are not grey (the heatmap's colours)."""
    pixels = np.asarray(Image.open(png).convert("RGB"), np.int16)
    return float(((pixels.max(axis=-1) - pixels.min(axis=-1)) > 40).mean())


def test_evaluate_lays_grad_cam_over_its_gallery_of_errors(runner, run_copy):
    result = runner.invoke(main, ["evaluate", "--runs-dir", str(run_copy), "--json"])
    assert result.exit_code == 0, result.output
    errors = run_copy / "small" / "errors.png"
    assert _coloured(errors) > 0.02  # inferno over the 25 wrong digits


BACKBONE = """\
data: {dataset: mnist}
model:
  input_shape: [28, 28, 1]
  layers:
    - {type: Resizing, height: 32, width: 32}
    - {type: Backbone, name: MobileNetV3Small, weights: none}
    - {type: Dense, units: 10, activation: softmax}
"""


def test_the_last_convolution_is_found_inside_a_backbone(write, mnist_test_set):
    model = build_model(load_config(write("b.yaml", BACKBONE)), 10)
    path, layer = find_layer(model, None, "b.keras")
    assert path.startswith("backbone_1/") and path.endswith(layer.name)
    assert path == conv_layers(model)[-1][0]
    images = mnist_test_set[0][:2, :, :, None].astype(np.float32)
    maps, _ = gradient_maps(model, images, np.eye(10, dtype=np.float32)[:2], "gradcam", layer)
    assert maps.shape == (2, 28, 28) and np.isfinite(maps).all()


@pytest.mark.parametrize(
    ("task", "activation"), [("multilabel", "sigmoid"), ("regression", None)], ids=str
)
def test_multilabel_and_regression_models_are_explained_by_their_task(
    task, activation, tmp_path, digits
):
    """A real Keras model of each head, saved and loaded as a file: one map per output the
    task picks (labels at or above 0.5; every target), values as the model gives them."""
    from cnnctl.scoring.explain import explain_images
    from cnnctl.scoring.source import ScoringSource

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation=activation, bias_initializer="ones"),
        ]
    )
    path = tmp_path / "m.keras"
    model.save(path)
    source = ScoringSource(path, None, None, task_named(task), ["a", "b", "c"])
    result = explain_images(source, [str(digits[0])], output=tmp_path / "out", fmt="npy")
    expected = np.asarray(model(np.asarray(Image.open(digits[0]), np.float32)[None, ..., None]))
    values = {item.label: item.value for item in result.items}
    picked = [
        n for n, v in zip("abc", expected[0], strict=True) if task == "regression" or v >= 0.5
    ]
    assert sorted(values) == picked
    assert [values[n] for n in picked] == pytest.approx(
        [float(v) for n, v in zip("abc", expected[0], strict=True) if n in picked], abs=1e-5
    )
    assert all(np.load(item.files[1]).max() <= 1.0 for item in result.items)
