"""Config -> Keras model: the allow-list, argument checks, shape checks."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from cnnctl.config import load_config
from cnnctl.errors import ConfigError
from cnnctl.model.builder import build_model, compile_model

REPO = Path(__file__).resolve().parents[1]
HEAD = "data:\n  dataset: mnist\nmodel:\n  input_shape: [28, 28, 1]\n  layers:\n"


def build(write, layers: str, num_classes: int | None = 10, train: str = ""):
    config = load_config(write("x.yaml", HEAD + layers + train))
    model = build_model(config, num_classes)
    compile_model(model, config)
    return model


def build_error(write, layers: str, num_classes: int | None = 10, train: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        build(write, layers, num_classes, train)
    return info.value.format_message()


def test_seed_model_matches_the_keras_script():
    model = build_model(load_config(REPO / "configs" / "mnist.yaml"), 10)
    assert model.count_params() == 693_962
    assert [type(layer).__name__ for layer in model.layers] == [
        "Rescaling",
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
        "Dropout",
        "Dense",
    ]
    assert model.output_shape == (None, 10)


def test_normalize_puts_rescaling_inside_the_model(write):
    model = build(write, "    - Flatten\n    - {type: Dense, units: 10, activation: softmax}\n")
    assert isinstance(model.layers[0], keras.layers.Rescaling)
    assert model.layers[0].scale == pytest.approx(1 / 255)


def test_optimizer_mapping_and_metrics(write):
    model = build(
        write,
        "    - Flatten\n    - {type: Dense, units: 10, activation: softmax}\n",
        train="train:\n  optimizer: {type: SGD, learning_rate: 0.05, momentum: 0.9}\n"
        "  metrics: [accuracy, top_k_categorical_accuracy]\n",
    )
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)
    assert float(model.optimizer.momentum) == pytest.approx(0.9)
    model.evaluate(
        np.zeros((2, 28, 28, 1)), np.eye(10)[:2], verbose=0
    )  # builds the compiled metrics
    assert {m.name for m in model.metrics[1].metrics} == {"accuracy", "top_k_categorical_accuracy"}


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        (
            "    - Conv2d\n",
            "x.yaml:6:7: model.layers[0].type: unknown layer type 'Conv2d' "
            "(did you mean 'Conv2D'?)",
        ),
        ("    - {type: Lambda, function: print}\n", "unknown layer type 'Lambda'"),
        (
            "    - {type: Conv2D, filter: 3, kernel_size: 3}\n",
            "x.yaml:6:22: model.layers[0].filter: unknown argument of Conv2D (did you mean "
            "'filters'?)",
        ),
        (
            "    - {type: Dense, units: 10, input_shape: [3]}\n",
            "give the input size once, as model.input_shape",
        ),
        (
            "    - {type: Dense, units: 10, kernel_initializer: {class_name: X}}\n",
            "must be a plain value",
        ),
        (
            "    - {type: Conv2D, filters: -4, kernel_size: 3}\n",
            "x.yaml:6:31: model.layers[0].filters: Conv2D: Invalid value for argument `filters`",
        ),
        (
            "    - {type: Conv2D, filters: 4, kernel_size: 40}\n",
            "Conv2D cannot take an input of shape (None, 28, 28, 1)",
        ),
        (
            "    - {type: Dense, units: 10, activation: rleu}\n",
            "model.layers[0].activation: unknown activation 'rleu' (did you mean 'relu'?)",
        ),
        (
            "    - {type: Dense, units: 7, activation: softmax}\n",
            "the network ends with shape (None, 28, 28, 7)",
        ),
        (
            "    - Flatten\n    - {type: Dense, units: 7, activation: softmax}\n",
            "model.layers[1]: the last layer gives 7 outputs but the data has 10 classes",
        ),
    ],
    ids=[
        "near-miss-type",
        "lambda",
        "near-miss-arg",
        "input-shape-arg",
        "nested-object",
        "negative-filters",
        "kernel-too-large",
        "unknown-activation",
        "not-flat",
        "wrong-class-count",
    ],
)
def test_bad_layers_are_caught_before_training(write, layers, expected):
    assert expected in build_error(write, layers)


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("filters: 32x", "x.yaml:8:16: model.layers[0].filters: expected an integer, got '32x'"),
        ("filters: 3.5", "x.yaml:8:16: model.layers[0].filters: expected an integer, got 3.5"),
        (
            "strides: two",
            "x.yaml:8:16: model.layers[0].strides: expected an integer or a list of integers, "
            "got 'two'",
        ),
        ("use_bias: 1", "x.yaml:8:17: model.layers[0].use_bias: expected true or false, got 1"),
        ("filters: -4", "x.yaml:8:16: model.layers[0].filters: Conv2D: Invalid value"),
    ],
    ids=["text-for-integer", "float-for-integer", "text-for-sizes", "int-for-bool", "keras-names"],
)
def test_wrong_kind_of_argument_names_its_own_line(write, argument, expected):
    layers = f"    - type: Conv2D\n      kernel_size: 3\n      {argument}\n"
    layers += "" if argument.startswith("filters") else "      filters: 4\n"
    message = build_error(write, layers)
    assert message.startswith(expected), message
    assert "not supported between" not in message


def test_argument_kinds_leave_right_values_alone(write):
    model = build(
        write,
        "    - {type: Conv2D, filters: 4, kernel_size: [3, 3], strides: 1, use_bias: false}\n"
        "    - {type: BatchNormalization, momentum: 0.9, scale: false, axis: -1}\n"
        "    - Flatten\n    - {type: Dropout, rate: 0}\n    - {type: Dense, units: 10}\n",
        train="train:\n  optimizer: {type: Adam, learning_rate: 1e-3, amsgrad: true}\n",
    )
    assert model.layers[1].filters == 4 and model.layers[2].momentum == 0.9


def test_lambda_hint_says_why(write):
    assert "Lambda and layers that run custom code cannot be built" in build_error(
        write, "    - Lambda\n"
    )


def test_unknown_optimizer_and_metric(write):
    layers = "    - Flatten\n    - {type: Dense, units: 10, activation: softmax}\n"
    assert "unknown optimizer type 'adamw2'" in build_error(
        write, layers, train="train:\n  optimizer: adamw2\n"
    )
    assert "train.metrics[0]: unknown metric 'acuracy'" in build_error(
        write, layers, train="train:\n  metrics: [acuracy]\n"
    )
    assert (
        "train.optimizer.learnin_rate: unknown argument of Adam (did you mean 'learning_rate'?)"
        in build_error(
            write, layers, train="train:\n  optimizer: {type: Adam, learnin_rate: 0.1}\n"
        )
    )
