"""The user's own data: image folders, CSV files, augmentation, checks before training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnctl.cli import main
from cnnctl.config import load_config
from cnnctl.data.dataset import dataset_for
from cnnctl.data.sources import verify

from conftest import MNIST_TEST_SET, SMALL


def write_pngs(root: Path, x: np.ndarray, y: np.ndarray) -> None:
    for index, (image, label) in enumerate(zip(x, y, strict=True)):
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:05d}.png")


def folder_config(write, path: str, extra: str = "") -> Path:
    return write(
        "folder.yaml",
        SMALL.replace("  dataset: mnist\n  limit: 4000\n", f"  path: {path}\n{extra}"),
    )


@pytest.fixture
def digit_folder(tmp_path, mnist_test_set) -> Path:
    """train/ and test/ folders of real MNIST PNGs, with the odd files people have."""
    x, y = mnist_test_set
    root = tmp_path / "digits"
    write_pngs(root / "train", x[:3000], y[:3000])
    write_pngs(root / "test", x[8000:9000], y[8000:9000])
    Image.fromarray(x[3000]).convert("RGB").save(root / "train" / f"digit_{y[3000]}" / "rgb.png")
    Image.fromarray(x[3001]).resize((56, 56)).save(root / "train" / f"digit_{y[3001]}" / "big.png")
    (root / "train" / "digit_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "train" / "digit_1" / "notes.txt").write_text("not an image, not a .png: ignored")
    return root


def test_image_folder_trains_like_the_same_images_as_arrays(
    runner, write, digit_folder, mnist_test_set, tmp_path
):
    x, y = mnist_test_set
    from_folder = runner.invoke(
        main, ["train", str(folder_config(write, str(digit_folder))), "--json"]
    )
    assert from_folder.exit_code == 0, from_folder.output
    assert "1 files skipped (first: " in from_folder.stderr and "broken.png" in from_folder.stderr
    listed = (Path(json.loads(from_folder.stdout)["run"]) / "skipped.csv").read_text()
    assert "broken.png" in listed  # in memory too, the run lists what it left out
    np.savez(
        tmp_path / "same.npz",
        x_train=np.concatenate([x[:3000], x[3000:3002]]),
        y_train=np.concatenate([y[:3000], y[3000:3002]]),
        x_test=x[8000:9000],
        y_test=y[8000:9000],
    )
    from_arrays = runner.invoke(main, ["train", str(folder_config(write, "same.npz")), "--json"])
    folder_accuracy = json.loads(from_folder.stdout)["test"]["accuracy"]
    arrays_accuracy = json.loads(from_arrays.stdout)["test"]["accuracy"]
    assert folder_accuracy > 0.85 and abs(folder_accuracy - arrays_accuracy) < 0.03
    run = json.loads(from_folder.stdout)["run"]
    assert json.loads(Path(run, "classes.json").read_text()) == [f"digit_{d}" for d in range(10)]


def test_one_folder_is_split_stratified_with_the_seed(write, tmp_path, mnist_test_set):
    x, y = mnist_test_set
    write_pngs(tmp_path / "pool", x[:1000], y[:1000])
    config = load_config(folder_config(write, "pool", "  test_fraction: 0.25\n  validation: 0.2\n"))
    first, second = dataset_for(config), dataset_for(config)
    assert len(first.x_test) == pytest.approx(250, abs=5) and len(first.x_val) == pytest.approx(
        150, abs=5
    )
    assert first.class_names == tuple(f"digit_{d}" for d in range(10))
    for split in ("train", "validation", "test"):
        assert np.array_equal(first.split(split)[0], second.split(split)[0])
        assert first.files[split] == second.files[split]
    shares = np.bincount(first.y_test, minlength=10) / np.bincount(y[:1000], minlength=10)
    assert np.all(np.abs(shares - 0.25) < 0.05)


def test_shuffled_batches_repeat_with_the_seed(mnist_test_set):
    from cnnctl.data.pipeline import training_batches

    x, y = mnist_test_set

    def first_labels(seed):
        batches, _ = training_batches(
            x[:500],
            y[:500],
            batch_size=100,
            seed=seed,
            num_classes=10,
            one_hot=False,
            first_epoch=0,
            epochs=2,
        )
        return [labels.numpy().tolist() for _, labels in batches]

    assert first_labels(1) == first_labels(1)
    assert first_labels(1) != first_labels(2)
    epochs = first_labels(1)
    assert epochs[:5] != epochs[5:]  # each epoch is shuffled anew


def test_empty_class_folder_is_an_error(runner, write, digit_folder):
    (digit_folder / "train" / "digit_x").mkdir()
    (digit_folder / "test" / "digit_x").mkdir()
    result = runner.invoke(main, ["train", str(folder_config(write, str(digit_folder)))])
    assert result.exit_code == 2 and "digit_x: class folder has no images" in result.stderr


def test_csv_of_real_digits(runner, write, mnist_test_set, tmp_path):
    x, y = mnist_test_set
    table = np.column_stack([y[:3000], x[:3000].reshape(3000, -1)])
    header = "label," + ",".join(f"pixel{i}" for i in range(784))
    np.savetxt(tmp_path / "train.csv", table, fmt="%d", delimiter=",", header=header, comments="")
    result = runner.invoke(main, ["train", str(folder_config(write, "train.csv")), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["test"]["accuracy"] > 0.85
    bad = runner.invoke(
        main, ["train", str(folder_config(write, "train.csv", "  label_column: digit\n"))]
    )
    assert bad.exit_code == 2 and "train.csv: no column 'digit'" in bad.stderr


def test_augmentation_lives_in_the_model_and_only_trains(runner, write):
    config = folder_config(
        write,
        "x",
        "  augment:\n    - {type: RandomRotation, factor: 0.05}\n"
        "    - {type: RandomTranslation, height_factor: 0.1, width_factor: 0.1}\n",
    )
    config.write_text(
        config.read_text().replace("  path: x\n", "  dataset: mnist\n  limit: 2000\n")
    )
    result = runner.invoke(main, ["train", str(config), "--json"])
    assert result.exit_code == 0, result.output
    import keras

    model = keras.saving.load_model(Path(json.loads(result.stdout)["run"]) / "model.keras")
    assert [type(layer).__name__ for layer in model.layers[:3]] == [
        "RandomRotation",
        "RandomTranslation",
        "Rescaling",
    ]
    batch = np.random.default_rng(0).integers(0, 255, (4, 28, 28, 1)).astype("float32")
    assert np.array_equal(model(batch, training=False), model(batch, training=False))
    bad = write(
        "bad.yaml",
        SMALL.replace("  limit: 4000\n", "  limit: 4000\n  augment: [{type: RandomRotaton}]\n"),
    )
    result = runner.invoke(main, ["validate", str(bad)])
    assert (
        result.exit_code == 2
        and "data.augment[0].type: unknown augmentation type 'RandomRotaton'" in result.stderr
    )


def test_leakage_between_splits_is_reported(runner, write, tmp_path, mnist_test_set):
    x, y = mnist_test_set
    np.savez(
        tmp_path / "leaky.npz",
        x_train=x[:500],
        y_train=y[:500],
        x_test=x[490:600],
        y_test=y[490:600],
    )
    result = runner.invoke(
        main, ["datasets", "check", str(folder_config(write, "leaky.npz")), "--json"]
    )
    assert result.exit_code == 0, result.output
    checks = json.loads(result.stdout)
    assert checks["duplicates"] == {"train/test": 10}
    assert checks["counts"]["train"] == np.bincount(y[:500], minlength=10).tolist()
    table = runner.invoke(
        main, ["datasets", "check", str(folder_config(write, "leaky.npz"))]
    ).stdout
    assert "warning: 10 images of train are also in test (leakage)" in table


def test_official_files_are_verified(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(MNIST_TEST_SET / name, folder / name)
    assert verify("mnist", folder) == ()
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b damaged")
    assert verify("mnist", folder) == (
        f"{folder}: t10k-labels-idx1-ubyte.gz differs from the official mnist "
        "files (damaged, or a subset?)",
    )


def test_datasets_lists_builtins_offline(runner):
    result = runner.invoke(main, ["--offline", "datasets", "--json"])
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"mnist", "fashion_mnist", "cifar10", "cifar100"}
    assert rows["cifar10"]["shape"] == [32, 32, 3] and rows["cifar100"]["classes"] == 100
    assert rows["mnist"]["found"].endswith("mnist")  # the test data dir
    assert rows["cifar10"]["fallback"] == "not found (offline)"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: (root / "val" / "a").mkdir(parents=True), "has val/ but no train/"),
        (lambda root: root.mkdir(), "no class folders"),
        (lambda root: (root / "cats").mkdir(parents=True), "cats: class folder has no images"),
    ],
    ids=["no-train", "no-classes", "empty-class"],
)
def test_folder_layout_mistakes_are_named(runner, write, tmp_path, make, message):
    make(tmp_path / "pics")
    result = runner.invoke(main, ["datasets", "check", str(folder_config(write, "pics"))])
    assert result.exit_code == 2 and message in result.stderr, result.output
