"""Proof that the maps mean something: a known case (only one quadrant carries the class),
the deletion test (Petsiuk et al., 2018) and the randomised-weights sanity check (Adebayo
et al., 2018), on small real models trained for the test; the seed network on 200
Fashion-MNIST test images when slow tests run."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from cnnctl.cli import main
from cnnctl.explain import LAYER_METHODS
from cnnctl.explain.faithfulness import blurred, deletion_wins, spearman
from cnnctl.explain.layers import find_layer
from cnnctl.explain.methods import gradient_maps, occlusion_maps
from cnnctl.modelfile.load import load_model

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")


def quadrant_images(x: np.ndarray, y: np.ndarray, n: int, seed: int):
    """56x56 images: a real digit in the bottom-right quadrant is the class; the other three
    hold digits with their pixels shuffled (as much ink, no shape), which say nothing of it."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 56, 56, 1), np.float32)
    labels = np.zeros(n, np.int64)
    for i in range(n):
        key, *others = rng.choice(len(y), 4, replace=False)
        noise = rng.permuted(x[others].reshape(3, -1), axis=1).reshape(3, 28, 28)
        images[i, :28, :28, 0], images[i, :28, 28:, 0], images[i, 28:, :28, 0] = noise
        images[i, 28:, 28:, 0] = x[key]
        labels[i] = y[key]
    return images, labels


@pytest.fixture(scope="module")
def quadrants(mnist_test_set):
    """A small model trained on quadrant images (4,000), and 200 test images it never saw."""
    x, y = mnist_test_set
    train_x, train_y = quadrant_images(x[:8000], y[:8000], 4000, seed=0)
    test_x, test_y = quadrant_images(x[8000:], y[8000:], 200, seed=1)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((56, 56, 1)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(8, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train_x, train_y, epochs=4, batch_size=64, verbose=0)
    return model, test_x, test_y


def test_gradcam_puts_most_of_its_mass_in_the_quadrant_that_carries_the_class(quadrants):
    model, test_x, test_y = quadrants
    assert model.evaluate(test_x, test_y, verbose=0)[1] >= 0.85
    _, layer = find_layer(model, None, "quadrants.keras")
    weights = np.eye(10, dtype=np.float32)[test_y]
    maps, _ = gradient_maps(model, test_x, weights, "gradcam", layer)
    share = maps[:, 28:, 28:].sum(axis=(1, 2)) / np.maximum(maps.sum(axis=(1, 2)), 1e-9)
    assert share.mean() > 0.5, share
    assert (share > 0.5).mean() >= 0.85, share


def test_deletion_and_sanity_on_the_quadrant_model(quadrants):
    """200 test images: removing Grad-CAM's top 10% beats removing a random 10% on >= 85%,
    and the maps of the same network with random weights rank pixels otherwise (< 0.5)."""
    model, test_x, _ = quadrants
    wins, rank = _faithfulness(model, test_x)
    assert wins >= 0.85, wins
    assert rank < 0.5, rank


def _faithfulness(
    model, images: np.ndarray, method: str = "gradcam", removal: str = "black"
) -> tuple[float, float]:
    """(share of images that win the deletion test, removed pixels set to black or to the
    image blurred; mean Spearman against random weights; NaN for occlusion, which has no
    gradients to randomise through)."""
    classes = model(images).numpy().argmax(axis=1)
    weights = np.eye(model.output_shape[-1], dtype=np.float32)[classes]

    def maps_of(network):
        if method == "occlusion":
            return occlusion_maps(network, images, weights)[0]
        layer = find_layer(network, None, "m")[1] if method in LAYER_METHODS else None
        return gradient_maps(network, images, weights, method, layer)[0]

    def probability(batch: np.ndarray) -> np.ndarray:
        return model(batch).numpy()[np.arange(len(batch)), classes]

    maps = maps_of(model)
    fill = blurred(images, 2.0) if removal == "blur" else None
    wins = deletion_wins(probability, images, maps, fill=fill).mean()
    if method == "occlusion":
        return float(wins), float("nan")
    keras.utils.set_random_seed(1)
    randomised = keras.models.clone_model(model)  # every weight drawn again by its initializer
    ranks = [spearman(a, b) for a, b in zip(maps, maps_of(randomised), strict=True)]
    return float(wins), float(np.mean(ranks))


@pytest.mark.parametrize("method", ["gradcam", "input-x-gradient"])
def test_deletion_on_the_small_trained_run(trained, mnist_test_set, method):
    """The shared small run (one Conv2D, pooling, Flatten, softmax; 2 epochs of real digits)
    on 200 test digits it did not train on. Its sanity check is not asserted: at one 3x3
    convolution on MNIST both the trained and the random maps follow the ink (Spearman 0.48
    measured), as Adebayo et al. found for gradient x input on MNIST."""
    model = load_model(trained / "small" / "model.keras", compile=False)
    images = mnist_test_set[0][8000:8200, :, :, None].astype(np.float32)
    wins, rank = _faithfulness(model, images, method)
    assert wins >= 0.85, wins


@pytest.mark.slow
def test_seed_network_on_200_fashion_mnist_test_images(runner, monkeypatch):
    """configs/fashion_mnist.yaml's network (2 epochs of the full training set) on the first
    200 test images: every map passes the sanity check; input x gradient and occlusion win
    the deletion test with black removal, Grad-CAM with blurred removal.

    Grad-CAM does not win it with black removal (measured 44-51%, no better than a random
    map): the seed's one convolution sees 3x3 pixels and Grad-CAM's top pixels include the
    background around the item's edges, already black, which black cannot remove. A random
    map of 7x7 regions is the control that blurred removal does not favour coarse maps.
    """
    if not (FASHION / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs Debian's dataset-fashion-mnist (`make data` installs it)")
    from cnnctl.data.sources import read_idx

    monkeypatch.delenv("CNNCTL_DATA_DIR")
    config = str(REPO / "configs" / "fashion_mnist.yaml")
    result = runner.invoke(main, ["train", config, "--epochs", "2", "--json"])
    assert result.exit_code == 0, result.output
    model = load_model(Path(json.loads(result.stdout)["run"]) / "model.keras", compile=False)
    images = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")[:200, :, :, None].astype(np.float32)
    wins, rank = _faithfulness(model, images, "input-x-gradient")
    assert wins >= 0.85 and rank < 0.5, (wins, rank)
    wins, rank = _faithfulness(model, images, "gradcam", "blur")
    assert wins >= 0.85 and rank < 0.5, (wins, rank)
    wins, _ = _faithfulness(model, images, "occlusion")
    assert wins >= 0.8, wins

    classes = model(images).numpy().argmax(axis=1)
    coarse = np.random.default_rng(0).random((200, 7, 7))
    regions = coarse.repeat(4, axis=1).repeat(4, axis=2).astype(np.float32)

    def probability(batch: np.ndarray) -> np.ndarray:
        return model(batch).numpy()[np.arange(len(batch)), classes]

    control = deletion_wins(probability, images, regions, fill=blurred(images, 2.0)).mean()
    assert control < 0.5, control
