"""Hostile and broken model files are refused with a clear message, and nothing in them runs."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from cnnctl.cli import main

from hostile_models import CORPUS, make


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "categorical_crossentropy", ["accuracy"])
    model.save(folder / "good.keras")
    return folder / "good.keras"


@pytest.fixture
def image(tmp_path) -> Path:
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
    return tmp_path / "x.png"


def test_the_good_model_loads(runner, good_model, image):
    result = runner.invoke(main, ["predict", str(image), "--model", str(good_model), "--json"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_hostile_model_files_are_refused(runner, good_model, image, tmp_path, name):
    bad = make(name, good_model, tmp_path)
    _, code, phrase = CORPUS[name]
    for command in (
        ["predict", str(image), "--model", str(bad)],
        ["evaluate", "--model", str(bad)],
    ):
        result = runner.invoke(main, command)
        assert result.exit_code == code, result.output
        assert phrase in result.stderr
        assert "Traceback" not in result.output
    assert not Path("pwned").exists()


def test_legacy_h5_loads_only_when_asked(runner, good_model, image, tmp_path):
    h5 = make("legacy.h5", good_model, tmp_path)
    result = runner.invoke(
        main, ["predict", str(image), "--model", str(h5), "--legacy-h5", "--json"]
    )
    assert result.exit_code == 0, result.output


def test_legacy_h5_with_a_lambda_is_refused_even_when_asked(runner, image, tmp_path):
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Flatten(),
            keras.layers.Lambda(lambda x: (open("pwned", "w").write("ran"), x)[1]),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.save(tmp_path / "evil.h5")
    Path("pwned").unlink(missing_ok=True)
    result = runner.invoke(
        main, ["predict", str(image), "--model", str(tmp_path / "evil.h5"), "--legacy-h5"]
    )
    assert result.exit_code == 2 and "refused: it contains a Lambda layer" in result.stderr
    assert not Path("pwned").exists()


def test_functional_models_load_and_refusals_name_the_real_class(runner, image, tmp_path):
    inp = keras.Input((28, 28, 1))
    keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(inp))).save(
        tmp_path / "functional.keras"
    )
    result = runner.invoke(
        main, ["predict", str(image), "--model", str(tmp_path / "functional.keras"), "--json"]
    )
    assert result.exit_code == 0, result.output
    evil = keras.Model(
        inp, keras.layers.Dense(10)(keras.layers.Lambda(lambda x: x)(keras.layers.Flatten()(inp)))
    )
    evil.save(tmp_path / "evil.keras")
    result = runner.invoke(main, ["predict", str(image), "--model", str(tmp_path / "evil.keras")])
    assert result.exit_code == 2 and "refused: it contains a Lambda layer" in result.stderr
    assert "__keras_tensor__" not in result.stderr
