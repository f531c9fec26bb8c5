"""Data sources: built-in lookup order, IDX and .npz files, splits, fit to the model."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from cnnctl.config import load_config
from cnnctl.data.dataset import dataset_for, split_off
from cnnctl.data.sources import builtin_candidates, load_builtin, load_npz, read_idx
from cnnctl.errors import ConfigError, DataError
from cnnctl.tasks import task_named

from conftest import MNIST_TEST_SET, write_idx

BASE = "model:\n  input_shape: [28, 28, 1]\n  layers: [Flatten]\n"


def config_for(write, data: str):
    return load_config(write("x.yaml", "data:\n" + data + BASE))


def test_reads_the_real_mnist_idx_files(mnist_test_set):
    x, y = mnist_test_set
    assert x.shape == (10_000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10_000,) and sorted(set(y.tolist())) == list(range(10))
    assert np.bincount(y)[1] == 1135  # the official count of ones in the MNIST test set


def test_builtin_comes_from_the_data_dir_first(data_dir):
    arrays = load_builtin("mnist")
    assert arrays.origin == str(data_dir / "mnist")
    assert (len(arrays.x_train), len(arrays.x_test)) == (8000, 2000)
    assert arrays.class_names == tuple("0123456789")


def test_lookup_order_is_data_dir_keras_cache_system(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNCTL_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "k"))
    assert builtin_candidates("fashion_mnist") == [
        tmp_path / "d" / "fashion_mnist",
        tmp_path / "k" / "datasets" / "fashion-mnist",
        Path("/usr/share/datasets/fashion-mnist"),
    ]


def test_missing_builtin_offline_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNCTL_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(DataError) as info:
        load_builtin("mnist", offline=True)
    message = info.value.format_message()
    assert "dataset 'mnist' not found offline (looked in" in message
    assert (
        str(tmp_path / "empty" / "mnist") in message
        and "hint: put the dataset's files in" in message
    )
    assert info.value.exit_code == 2


def test_keras_cache_npz_is_used(monkeypatch, tmp_path, mnist_test_set):
    x, y = mnist_test_set
    cache = tmp_path / "k" / "datasets"
    cache.mkdir(parents=True)
    np.savez(
        cache / "mnist.npz", x_train=x[:100], y_train=y[:100], x_test=x[100:150], y_test=y[100:150]
    )
    monkeypatch.setenv("CNNCTL_DATA_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "k"))
    arrays = load_builtin("mnist")
    assert arrays.origin == str(cache / "mnist.npz") and len(arrays.x_train) == 100


def test_npz_path_and_its_errors(write, tmp_path, mnist_test_set):
    x, y = mnist_test_set
    np.savez(
        tmp_path / "digits.npz",
        x_train=x[:300],
        y_train=y[:300],
        x_test=x[300:400],
        y_test=y[300:400],
    )
    dataset = dataset_for(config_for(write, "  path: digits.npz\n"))
    assert dataset.x_train.shape == (300, 28, 28, 1) and len(dataset.x_test) == 100
    np.savez(tmp_path / "partial.npz", x_train=x[:10])
    with pytest.raises(DataError, match=r"partial.npz: missing array y_train, x_test, y_test"):
        load_npz(tmp_path / "partial.npz")
    (tmp_path / "fake.npz").write_text("not a zip")
    with pytest.raises(DataError, match="fake.npz: not a readable .npz file"):
        load_npz(tmp_path / "fake.npz")


def test_idx_folder_path(write, tmp_path, mnist_test_set):
    x, y = mnist_test_set
    folder = tmp_path / "digits"
    folder.mkdir()
    for name, array in [
        ("train-images-idx3-ubyte.gz", x[:500]),
        ("train-labels-idx1-ubyte.gz", y[:500]),
        ("t10k-images-idx3-ubyte.gz", x[500:600]),
        ("t10k-labels-idx1-ubyte.gz", y[500:600]),
    ]:
        write_idx(folder / name, array)
    dataset = dataset_for(config_for(write, "  path: digits\n"))
    assert len(dataset.x_train) == 500 and dataset.class_names == tuple("0123456789")


def test_idx_folder_missing_training_files():
    with pytest.raises(DataError, match="no file matching 'train-images\\*idx3\\*'"):
        dataset_for(load_config_for_path(MNIST_TEST_SET))


def load_config_for_path(path: Path):
    from cnnctl.config import Source, validate_config

    data = {
        "data": {"path": str(path)},
        "model": {"input_shape": [28, 28, 1], "layers": ["Flatten"]},
    }
    return validate_config(data, Source("x.yaml"), "x")


def test_truncated_idx_file_is_reported(tmp_path):
    raw = gzip.open(MNIST_TEST_SET / "t10k-labels-idx1-ubyte.gz").read()
    (tmp_path / "cut").write_bytes(raw[:500])
    with pytest.raises(DataError, match=r"cut: truncated IDX file \(500 bytes, expected 10008\)"):
        read_idx(tmp_path / "cut")
    (tmp_path / "text").write_text("hello world")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "text")


def test_limit_and_fraction_validation(write):
    dataset = dataset_for(config_for(write, "  dataset: mnist\n  limit: 1000\n  validation: 0.2\n"))
    assert len(dataset.x_train) + len(dataset.x_val) == 1000 and len(dataset.x_test) == 2000
    assert abs(len(dataset.x_val) - 200) <= 5  # 20% of each class, rounded per class


def test_stratified_split_keeps_class_shares_and_is_seeded(mnist_test_set):
    x, y = mnist_test_set
    classes = task_named("classification")
    a = split_off(classes, x[:2000], y[:2000], 0.1, seed=1)
    b = split_off(classes, x[:2000], y[:2000], 0.1, seed=1)
    c = split_off(classes, x[:2000], y[:2000], 0.1, seed=2)
    assert np.array_equal(a[3], b[3]) and not np.array_equal(a[3], c[3])
    assert np.array_equal(np.sort(np.concatenate([a[4], a[5]])), np.arange(2000))
    shares = np.bincount(a[3], minlength=10) / np.bincount(y[:2000], minlength=10)
    assert np.all(np.abs(shares - 0.1) < 0.03)


def test_image_size_must_match_the_model(write):
    config = load_config(
        write("x.yaml", "data:\n  dataset: mnist\n" + BASE.replace("[28, 28, 1]", "[32, 32, 3]"))
    )
    with pytest.raises(ConfigError) as info:
        dataset_for(config)
    assert (
        "x.yaml:4:16: model.input_shape: is [32, 32, 3] but the images of"
        in info.value.format_message()
    )
    assert "hint: set input_shape: [28, 28, 1]" in info.value.format_message()
