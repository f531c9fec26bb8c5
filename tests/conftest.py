"""Shared fixtures: real MNIST digits kept in tests/data/mnist, offline, in a scratch folder."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

MNIST_TEST_SET = Path(__file__).resolve().parent / "data" / "mnist"
REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an array as an IDX file (uint8), gzipped, as MNIST ships."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", n) for n in array.shape
    )
    with gzip.open(path, "wb") as stream:
        stream.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium and chromium-driver
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def require_chromium() -> None:
    """Skip a browser test where Debian's Chromium is missing (`make test` installs it when run
    as root), but fail it in CI (`CI` set), where a skip would hide a broken page."""
    if CHROMIUM.is_file() and CHROMEDRIVER.is_file():
        return
    message = (
        "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def mnist_test_set() -> tuple[np.ndarray, np.ndarray]:
    """The real MNIST test set: 10,000 digits (28x28 uint8) and labels."""
    from cnnctl.data.sources import read_idx

    return (
        read_idx(MNIST_TEST_SET / "t10k-images-idx3-ubyte.gz"),
        read_idx(MNIST_TEST_SET / "t10k-labels-idx1-ubyte.gz"),
    )


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, mnist_test_set) -> Path:
    """A $CNNCTL_DATA_DIR whose `mnist/` is the real test set split 8,000 train / 2,000 test."""
    x, y = mnist_test_set
    root = tmp_path_factory.mktemp("data")
    folder = root / "mnist"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte.gz", x[:8000])
    write_idx(folder / "train-labels-idx1-ubyte.gz", y[:8000])
    write_idx(folder / "t10k-images-idx3-ubyte.gz", x[8000:])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", y[8000:])
    return root


@pytest.fixture(autouse=True)
def offline_scratch(tmp_path, monkeypatch, data_dir):
    """Every test runs offline, in its own folder, with the MNIST split as its data.

    Caches (decoded images, remembered header checks) stay in the test's folder too.
    """
    monkeypatch.chdir(tmp_path)
    # An in-process `cnnctl --limit ...` sets CNNCTL_LIMITS for the process (its children read
    # it); undone after each test, so no later test inherits a raised limit.
    monkeypatch.delenv("CNNCTL_LIMITS", raising=False)
    monkeypatch.setenv("CNNCTL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CNNCTL_OFFLINE", "1")
    monkeypatch.setenv("CNNCTL_DATA_DIR", str(data_dir))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.delenv("CNNCTL_RUNS_DIR", raising=False)
    return tmp_path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def write(tmp_path):
    """Write a text file into the test's folder and return its path (relative, as a user types)."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return Path(name)

    return _write


SMALL = """\
name: small
data:
  dataset: mnist
  limit: 4000
model:
  input_shape: [28, 28, 1]
  layers:
    - type: Conv2D
      filters: 8
      kernel_size: [3, 3]
      activation: relu
    - type: MaxPooling2D
      pool_size: [2, 2]
    - Flatten
    - type: Dense
      units: 10
      activation: softmax
train:
  epochs: 2
  batch_size: 32
"""


@pytest.fixture
def small_config(write) -> Path:
    """A quick config: a tiny CNN on 4,000 real MNIST digits."""
    return write("small.yaml", SMALL)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, data_dir) -> Path:
    """One small run trained through the CLI, shared read-only by the tests that need a model."""
    from cnnctl.cli import main

    root = tmp_path_factory.mktemp("trained")
    (root / "small.yaml").write_text(SMALL)
    with pytest.MonkeyPatch.context() as env:
        env.chdir(root)
        env.setenv("CNNCTL_OFFLINE", "1")
        env.setenv("CNNCTL_DATA_DIR", str(data_dir))
        result = CliRunner().invoke(main, ["train", "small.yaml", "--runs-dir", str(root / "runs")])
    assert result.exit_code == 0, result.output
    return root / "runs"


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A private copy of the trained runs folder, so tests can write into it."""
    return Path(shutil.copytree(trained, tmp_path / "runs"))


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def scenes_csv(tmp_path_factory, mnist_test_set) -> Path:
    """labels.csv of 360 train and 120 test fashion scenes (path,split,tags,count), made once
    from real Fashion-MNIST where installed, else from real digits."""
    from cnnctl.data.scenes import make_scenes
    from cnnctl.data.sources import read_idx

    root = tmp_path_factory.mktemp("scenes")
    items = root / "data" / "fashion_mnist"
    items.mkdir(parents=True)
    if (FASHION / "t10k-images-idx3-ubyte.gz").is_file():
        x = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")
        y = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    else:
        x, y = mnist_test_set
    write_idx(items / "train-images-idx3-ubyte.gz", x[:2000])
    write_idx(items / "train-labels-idx1-ubyte.gz", y[:2000])
    write_idx(items / "t10k-images-idx3-ubyte.gz", x[2000:3000])
    write_idx(items / "t10k-labels-idx1-ubyte.gz", y[2000:3000])
    saved = os.environ.get("CNNCTL_DATA_DIR")
    os.environ["CNNCTL_DATA_DIR"] = str(root / "data")
    try:
        make_scenes(root / "scenes", 360, 120, seed=3, offline=True)
    finally:
        if saved is None:
            os.environ.pop("CNNCTL_DATA_DIR")
        else:
            os.environ["CNNCTL_DATA_DIR"] = saved
    return root / "scenes" / "labels.csv"
