"""Predict on real image files, good and bad, and refuse model files that carry code."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from cnnctl.cli import main
from cnnctl.data.images import ImageError, load_image


@pytest.fixture
def digits(tmp_path, mnist_test_set) -> dict[str, Path]:
    """Real test digits saved in the kinds of files people have."""
    x, y = mnist_test_set
    digit = x[8000]  # in the run's test split
    folder = tmp_path / "images"
    folder.mkdir()
    paths = {
        "png": folder / "plain.png",
        "rgba": folder / "rgba.png",
        "palette": folder / "palette.png",
        "16bit": folder / "deep.png",
        "cmyk": folder / "cmyk.jpg",
        "big": folder / "big.png",
    }
    Image.fromarray(digit).save(paths["png"])
    Image.fromarray(digit).convert("RGBA").save(paths["rgba"])
    Image.fromarray(digit).convert("P").save(paths["palette"])
    Image.fromarray(digit.astype(np.uint16) * 257).save(paths["16bit"])
    Image.fromarray(digit).convert("CMYK").save(paths["cmyk"], quality=100)
    Image.fromarray(digit).resize((112, 112)).save(paths["big"])
    return paths


def predict(runner, trained, *args):
    return runner.invoke(main, ["predict", "--runs-dir", str(trained), "--json", *args])


def test_every_image_kind_is_converted_and_agrees(runner, trained, digits, mnist_test_set):
    result = predict(runner, trained, *map(str, digits.values()))
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    assert [item["path"] for item in items] == [str(p) for p in digits.values()]
    labels = {item["top"][0]["label"] for item in items}
    assert labels == {str(mnist_test_set[1][8000])}
    assert all(len(item["top"]) == 3 for item in items)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_text("just some notes\n"), "not an image file Pillow can read"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (
            lambda p: p.write_bytes(_png_bytes()[: len(_png_bytes()) // 2]),
            "damaged or truncated image",
        ),
    ],
    ids=["text-file", "zero-size", "truncated-png"],
)
def test_unreadable_files_are_reported_and_others_still_predicted(
    runner, trained, digits, tmp_path, make, reason
):
    bad = tmp_path / "bad.png"
    make(bad)
    result = predict(runner, trained, str(bad), str(digits["png"]))
    assert result.exit_code == 1
    assert f"{bad}: {reason}" in result.stderr
    assert len(json.loads(result.stdout)) == 1


def test_no_readable_image_is_exit_2(runner, trained, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = predict(runner, trained, "notes.txt", "missing.png")
    assert result.exit_code == 2
    assert "notes.txt: not an image file Pillow can read" in result.stderr
    assert "missing.png: no such file or folder" in result.stderr
    assert "Error: no image could be read" in result.stderr and "Traceback" not in result.output


def test_folders_and_globs_expand_to_image_files(runner, trained, digits, tmp_path):
    (tmp_path / "images" / "readme.txt").write_text("not an image")
    by_folder = json.loads(predict(runner, trained, str(tmp_path / "images")).stdout)
    by_glob = json.loads(predict(runner, trained, str(tmp_path / "images" / "*.png")).stdout)
    assert len(by_folder) == 6 and len(by_glob) == 5


def test_invert_flips_dark_on_light(tmp_path, mnist_test_set):
    Image.fromarray(255 - mnist_test_set[0][0]).save(tmp_path / "ink.png")
    array = load_image(tmp_path / "ink.png", 28, 28, 1, invert=True)
    assert np.array_equal(array[..., 0], mnist_test_set[0][0])
    with pytest.raises(ImageError):
        load_image(tmp_path / "nothing.png", 28, 28, 1)


def test_model_with_a_lambda_layer_is_refused_and_never_run(runner, tmp_path):
    marker = tmp_path / "pwned.txt"  # the lambda writes it in the current folder, tmp_path
    evil = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Flatten(),
            keras.layers.Lambda(lambda x: (open("pwned.txt", "w").write("ran"), x)[1]),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    evil.save(tmp_path / "evil.keras")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
    marker.unlink(missing_ok=True)  # saving traced the lambda once
    result = runner.invoke(main, ["predict", "x.png", "--model", str(tmp_path / "evil.keras")])
    assert result.exit_code == 2
    assert "evil.keras: refused: it contains a Lambda layer" in result.stderr
    assert not marker.exists()
    # The file is truly hostile: Keras itself, told to trust it, runs the code.
    keras.config.enable_unsafe_deserialization()
    try:
        keras.saving.load_model(tmp_path / "evil.keras", safe_mode=False)(np.zeros((1, 28, 28, 1)))
    finally:
        keras.config.disable_unsafe_deserialization() if hasattr(
            keras.config, "disable_unsafe_deserialization"
        ) else None
    assert marker.read_text() == "ran"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "not a Keras model file (not a .keras zip archive)"),
        (b"PK\x03\x04 truncated zip", "not a Keras model file"),
        (b"hello", "not a Keras model file"),
    ],
    ids=["empty", "truncated", "text"],
)
def test_non_model_files_are_clear_errors(runner, tmp_path, content, expected):
    (tmp_path / "m.keras").write_bytes(content)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
    result = runner.invoke(main, ["predict", "x.png", "--model", "m.keras"])
    assert result.exit_code == 2 and expected in result.stderr and "Traceback" not in result.output


def _png_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)  # does not compress
    Image.fromarray(noise).save(buffer, "PNG")
    return buffer.getvalue()


def test_predict_formats_and_output_file(runner, trained, tmp_path, mnist_test_set):
    from PIL import Image

    for i in range(3):
        Image.fromarray(mnist_test_set[0][8000 + i]).save(tmp_path / f"d{i}.png")
    as_csv = runner.invoke(
        main, ["predict", "--runs-dir", str(trained), "--format", "csv", "--top-k", "2", "."]
    )
    assert as_csv.exit_code == 0
    lines = as_csv.stdout.splitlines()
    assert lines[0] == "path,label,probability,label_2,probability_2" and len(lines) == 4
    done = runner.invoke(main, ["predict", "--runs-dir", str(trained), "--output", "out.json", "."])
    assert done.exit_code == 0 and "wrote 3 predictions to out.json" in done.stderr
    assert len(json.loads(Path("out.json").read_text())) == 3


def test_out_of_memory_in_predict_names_the_model_not_the_training_batch():
    from cnnctl.errors import DataError
    from cnnctl.scoring.predict import _run

    def exhausted(batch, training=False):  # a model call that runs out of memory
        raise MemoryError

    with pytest.raises(DataError) as info:
        _run(exhausted, np.zeros((3, 28, 28, 1)), Path("m.keras"))
    assert "m.keras: out of memory running this model on 3 images" in info.value.format_message()
    assert "train.batch_size" not in info.value.format_message()


def test_augmentation_in_the_model_stays_off_when_scoring(runner, tmp_path):
    """A RandomFlip inside the model (data.augment's photometric and flip layers live there) is
    Keras' identity only when called with training=False: one image gets one answer from
    predict, however often, and explain explains that answer."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.RandomFlip("horizontal"),
            keras.layers.Conv2D(2, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    left = np.zeros((8, 8), np.uint8)
    left[:, :3] = 255  # bright on the left only: a flip changes what the model sees
    Image.fromarray(left).save(tmp_path / "left.png")
    model.save(tmp_path / "flip.keras")
    expected = model(left[None, ..., None].astype(np.float32), training=False).numpy()[0]
    seen = set()
    for _ in range(8):
        done = runner.invoke(
            main,
            [
                "predict",
                str(tmp_path / "left.png"),
                "--model",
                str(tmp_path / "flip.keras"),
                "--json",
            ],
        )
        assert done.exit_code == 0, done.output
        top = json.loads(done.stdout)[0]["top"][0]
        seen.add((top["label"], round(top["probability"], 5)))
    assert seen == {(str(int(expected.argmax())), round(float(expected.max()), 5))}
    explained = runner.invoke(
        main,
        [
            "explain",
            str(tmp_path / "left.png"),
            "--model",
            str(tmp_path / "flip.keras"),
            "--json",
            "--method",
            "occlusion",
            "--output",
            str(tmp_path / "maps"),
        ],
    )
    assert explained.exit_code == 0, explained.output
    assert json.loads(explained.stdout)[0]["value"] == pytest.approx(
        float(expected.max()), abs=1e-5
    )
