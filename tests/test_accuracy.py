"""The seed's promise, end to end: the classic Keras MNIST network reaches its accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnctl.cli import main

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
def test_seed_config_on_the_real_mnist_test_set_split(runner):
    """configs/mnist.yaml, unchanged, on MNIST's test set split 8,000 train / 2,000 test."""
    result = runner.invoke(main, ["train", str(REPO / "configs" / "mnist.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["epochs_done"] == 10
    assert summary["test"]["accuracy"] >= 0.98, summary


@pytest.mark.slow
def test_fashion_mnist_config_on_full_fashion_mnist(runner, monkeypatch):
    """configs/fashion_mnist.yaml on all 60,000 + 10,000 images (the plain script reaches 0.909)."""
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs Debian's dataset-fashion-mnist (`make data` installs it)")
    monkeypatch.delenv("CNNCTL_DATA_DIR")
    result = runner.invoke(main, ["train", str(REPO / "configs" / "fashion_mnist.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["test"]["accuracy"] >= 0.90, summary
    assert Path(summary["run"], "curves.png").is_file()
