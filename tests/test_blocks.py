"""Residual and Backbone blocks: built from the config, checked, trained, saved, loaded safely."""

from __future__ import annotations

import csv
from pathlib import Path

import keras
import numpy as np
import pytest

from cnnctl.cli import main
from cnnctl.config import load_config
from cnnctl.errors import CnnctlError
from cnnctl.model.blocks import APPLICATIONS, preprocess_weights
from cnnctl.model.builder import build_model, compile_model
from cnnctl.modelfile.load import load_model
from cnnctl.training.fit import resume_run, train_run

HEAD = (
    "data:\n  dataset: mnist\n  limit: 1000\n  validation: 0.2\n"
    "model:\n  input_shape: [28, 28, 1]\n  layers:\n"
)
RESIDUAL = """\
    - {type: Conv2D, filters: 8, kernel_size: 3, padding: same}
    - type: Residual
      activation: relu
      layers:
        - {type: Conv2D, filters: 16, kernel_size: 3, strides: 2, padding: same}
        - BatchNormalization
        - {type: Dropout, rate: 0.1}
    - type: Residual
      shortcut: identity
      layers:
        - {type: Conv2D, filters: 16, kernel_size: 3, padding: same}
    - GlobalAveragePooling2D
    - {type: Dense, units: 10, activation: softmax}
"""
BACKBONE = """\
    - {type: Resizing, height: 32, width: 32}
    - {type: Backbone, name: MobileNetV3Small, weights: %s, trainable: false}
    - {type: Dense, units: 10, activation: softmax}
"""


def build(write, text: str, train: str = "") -> keras.Model:
    config = load_config(write("x.yaml", HEAD + text + train))
    model = build_model(config, 10)
    compile_model(model, config)
    return model


def error(write, text: str, train: str = "") -> str:
    with pytest.raises(CnnctlError) as info:
        build(write, text, train)
    return info.value.format_message()


def rows(run) -> list[dict[str, str]]:
    with open(run.metrics_csv) as stream:
        return list(csv.DictReader(stream))


# --------------------------------------------------------------------------- Residual


def test_residual_blocks_project_only_where_shapes_change(write):
    model = build(write, RESIDUAL)
    first, second = model.get_layer("residual_1"), model.get_layer("residual_2")
    assert first.output_shape == (None, 14, 14, 16) and second.output_shape == (None, 14, 14, 16)
    assert "residual_1_project" in [layer.name for layer in first.layers]
    assert not any(layer.name.endswith("_project") for layer in second.layers)
    assert isinstance(first.layers[-1], keras.layers.Activation)  # activation: relu after the add


def test_residual_saves_and_loads_through_the_allow_list(write, tmp_path):
    model = build(write, RESIDUAL)
    model.save(tmp_path / "m.keras")
    # cnnctl's checks, then Keras with safe_mode; uncompiled: the optimizer was never used
    loaded = load_model(tmp_path / "m.keras", compile=False)
    batch = np.random.default_rng(0).uniform(0, 255, (4, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(
        loaded.predict(batch, verbose=0), model.predict(batch, verbose=0), atol=1e-6
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            RESIDUAL.replace(
                "filters: 16, kernel_size: 3, strides", "filter: 16, kernel_size: 3, strides"
            ),
            "x.yaml:12:26: model.layers[1].layers[0].filter: unknown argument of Conv2D (did you "
            "mean 'filters'?)",
        ),
        (
            RESIDUAL.replace("- BatchNormalization", "- Lambda"),
            "x.yaml:13:11: model.layers[1].layers[1].type: unknown layer type 'Lambda'",
        ),
        (
            RESIDUAL.replace(
                "shortcut: identity",
                "shortcut: identity\n      activation: relu\n      padding: same",
            ),
            "model.layers[2].padding: unknown argument of Residual",
        ),
        (
            RESIDUAL.replace("activation: relu\n", "shortcut: projectoin\n"),
            "model.layers[1].shortcut: unknown value 'projectoin' (did you mean 'projection'?)",
        ),
        (
            RESIDUAL.replace(
                "shortcut: identity\n      layers:\n        - {type: Conv2D, filters: 16",
                "shortcut: identity\n      layers:\n        - {type: Conv2D, filters: 32",
            ),
            "model.layers[2].shortcut: the block's layers turn shape (14, 14, 16) "
            "into (14, 14, 32)",
        ),
        (
            RESIDUAL.replace("kernel_size: 3, strides: 2, padding: same", "kernel_size: 30"),
            "model.layers[1].layers[0]: Conv2D cannot take an input of shape (None, 28, 28, 8)",
        ),
        (
            "    - {type: Residual, shortcut: identity}\n",
            "model.layers[0]: a Residual block needs `layers:`",
        ),
        (
            "    - {type: Residual, layers: [{units: 3}]}\n",
            "model.layers[0].layers[0]: needs a `type:`",
        ),
        (
            "    - {type: residual, layers: [Flatten]}\n",
            "unknown layer type 'residual' (did you mean 'Residual'?)",
        ),
    ],
    ids=[
        "nested-argument",
        "nested-lambda",
        "block-argument",
        "shortcut-choice",
        "identity-shape",
        "nested-shape",
        "no-layers",
        "nested-type",
        "type-case",
    ],
)
def test_residual_mistakes_point_at_the_nested_layer(write, text, expected):
    assert expected in error(write, text)


def test_residual_trains_and_predicts_end_to_end(runner, write):
    config = write("res.yaml", HEAD + RESIDUAL + "train: {epochs: 1, batch_size: 64}\n")
    result = runner.invoke(main, ["train", str(config), "--json"])
    assert result.exit_code == 0, result.output
    evaluated = runner.invoke(
        main, ["evaluate", "--json"]
    )  # loads runs/x/model.keras through the checks
    assert evaluated.exit_code == 0, evaluated.output


# --------------------------------------------------------------------------- Backbone


@pytest.mark.parametrize(
    ("mode", "module"), [("caffe", "resnet"), ("tf", "mobilenet_v2"), ("torch", "densenet")]
)
@pytest.mark.parametrize("scale", [1.0, 255.0], ids=["raw", "normalized"])
def test_preprocessing_layer_matches_the_applications_preprocess_input(mode, module, scale):
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    expected = getattr(keras.applications, module).preprocess_input(pixels.copy())
    kernel, bias = preprocess_weights(mode, 3, scale)
    np.testing.assert_allclose(pixels / scale @ kernel + bias, expected, rtol=1e-5, atol=1e-4)
    gray_kernel, gray_bias = preprocess_weights(mode, 1, scale)
    gray = pixels[..., :1]
    np.testing.assert_allclose(
        gray / scale @ gray_kernel + gray_bias,
        getattr(keras.applications, module).preprocess_input(np.repeat(gray, 3, -1)),
        rtol=1e-5,
        atol=1e-4,
    )


def test_backbone_loads_a_local_weights_file(write, tmp_path):
    app = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    app.set_weights(
        [np.random.default_rng(2).normal(size=w.shape).astype("float32") for w in app.get_weights()]
    )
    app.save_weights(tmp_path / "mine.weights.h5")
    model = build(write, BACKBONE % "mine.weights.h5")
    loaded = model.get_layer("backbone_1").layers[-1]
    for ours, theirs in zip(loaded.get_weights(), app.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_backbone_refuses_a_weights_file_of_another_model(write, tmp_path):
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save_weights(
        tmp_path / "other.weights.h5"
    )
    assert "other.weights.h5 does not hold weights of MobileNetV3Small" in error(
        write, BACKBONE % "other.weights.h5"
    )


def test_backbone_refuses_a_weights_file_that_links_to_another_file(write, tmp_path):
    """An HDF5 external link would make the library open a file the config never named."""
    import h5py

    with h5py.File(tmp_path / "secret.h5", "w") as h5:
        h5["x"] = np.zeros(3, "float32")
    with h5py.File(tmp_path / "link.weights.h5", "w") as h5:
        h5["layers/conv/vars/0"] = np.zeros(3, "float32")
        h5["layers/conv/vars/1"] = h5py.ExternalLink("secret.h5", "/x")
    with pytest.raises(CnnctlError) as info:
        build(write, BACKBONE % "link.weights.h5")
    assert info.value.exit_code == 2
    message = info.value.format_message()
    assert message.splitlines()[0] == (
        "x.yaml:9:57: model.layers[1].weights: link.weights.h5: refused: its weights link to "
        "another file ('layers/conv/vars/1' -> secret.h5:/x)"
    )
    assert "hint: save the weights into one file" in message
    assert "SystemError" not in message


def test_offline_imagenet_names_the_file_and_the_folder(runner, write):
    config = write("bb.yaml", HEAD + BACKBONE % "imagenet")
    result = runner.invoke(main, ["validate", str(config)])  # the fixture sets CNNCTL_OFFLINE=1
    assert result.exit_code == 2
    assert (
        "bb.yaml:9:57: model.layers[1].weights: the ImageNet weights of MobileNetV3Small"
        in result.stderr
    )
    assert "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5" in result.stderr
    assert "/models/" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "    - {type: Backbone, name: MobileNetV3Smal, weights: none}\n",
            "model.layers[0].name: unknown Backbone 'MobileNetV3Smal' (did you mean "
            "'MobileNetV3Small'?)",
        ),
        (
            "    - {type: Backbone, name: ResNet50, weights: none}\n",
            "model.layers[0]: ResNet50 needs images of at least 32x32, got 28x28",
        ),
        (
            "    - {type: Resizing, height: 32, width: 32}\n    - {type: Backbone, name: "
            "ResNet50, weights: x.txt}\n",
            "model.layers[1].weights: 'x.txt' is not imagenet, none or a .weights.h5 file",
        ),
        (
            "    - {type: Resizing, height: 32, width: 32}\n    - {type: Backbone, name: "
            "ResNet50, weights: no.h5}\n",
            "model.layers[1].weights: no.h5: no such file",
        ),
        (
            "    - {type: Backbone, name: ResNet50, weights: none, pooling: mean}\n",
            "model.layers[0].pooling: unknown value 'mean'",
        ),
        (
            "    - {type: Residual, layers: [{type: Backbone, name: ResNet50}]}\n",
            "model.layers[0].layers[0]: a Backbone cannot sit inside a Residual block",
        ),
    ],
    ids=["unknown-name", "too-small", "not-h5", "missing-file", "pooling", "inside-residual"],
)
def test_backbone_mistakes(write, text, expected):
    assert expected in error(write, text)


def test_known_backbones_are_keras_applications():
    assert {"MobileNetV3Small", "EfficientNetV2B0", "ResNet50"} <= set(APPLICATIONS)
    assert all(hasattr(keras.applications, name) for name in APPLICATIONS)


# --------------------------------------------------------------------------- fine_tune

FINE_TUNE = (
    "train:\n  epochs: 2\n  batch_size: 100\n  fine_tune: {at_epoch: 1, learning_rate: 1e-4%s}\n"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (RESIDUAL + FINE_TUNE % "", "train.fine_tune: the model has no Backbone layer to thaw"),
        (BACKBONE % "none" + FINE_TUNE % ", layers: first 3", "must be `all` or `last K`"),
        (BACKBONE % "none" + FINE_TUNE.replace("at_epoch: 1", "at_epoch: 0") % "", "at_epoch"),
    ],
    ids=["no-backbone", "bad-layers", "zero-epoch"],
)
def test_fine_tune_mistakes(write, text, expected):
    with pytest.raises(CnnctlError) as info:
        load_config(write("x.yaml", HEAD + text))
    assert expected in info.value.format_message()


def test_fine_tune_thaws_at_the_epoch_with_batch_norm_frozen(write):
    """A random-weight backbone trains frozen, then thawed; its run saves and loads, checked."""
    config = load_config(
        write("ft.yaml", HEAD + BACKBONE % "none" + FINE_TUNE % ", layers: last 20")
    )
    result = train_run(config, Path("runs"), None)
    assert [float(r["lr"]) for r in rows(result.run)] == pytest.approx([1e-3, 1e-4])
    block = load_model(result.run.last).get_layer("backbone_1")
    assert not block.get_layer("preprocess").trainable  # preprocessing never trains
    app = block.layers[-1]
    trainable = [layer for layer in app.layers if layer.trainable and layer.weights]
    assert trainable and all(layer in app.layers[-20:] for layer in trainable)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)


@pytest.mark.slow
def test_resume_across_the_thaw_is_exact(write):
    text = HEAD + BACKBONE % "none" + FINE_TUNE % ""
    whole = train_run(load_config(write("a.yaml", text), ["train.epochs=3"]), Path("runs"), None)
    part = train_run(load_config(write("b.yaml", text), ["train.epochs=1"]), Path("runs"), None)
    resume_run(part.run, None, ("train.epochs=2",))  # the thaw happens in the resumed run
    resume_run(part.run, None, ("train.epochs=3",))  # and this one resumes thawed
    keys = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
    assert [[r[k] for k in keys] for r in rows(part.run)] == [
        [r[k] for k in keys] for r in rows(whole.run)
    ]
