"""Whether a map means something: the deletion test (Petsiuk et al., RISE, BMVC 2018) and the
model-randomisation sanity check (Adebayo et al., NeurIPS 2018). numpy only.

"Removing" a pixel is setting it to black (RISE's deletion) by default, or to a blurred copy
of the image (`blurred`; Fong & Vedaldi, ICCV 2017; RISE's insertion canvas): black cannot
remove a pixel that is already black, and a blurred copy takes out the detail while keeping
the image's brightness where the object is.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def delete_top(
    images: np.ndarray, maps: np.ndarray, fraction: float, fill: np.ndarray | None = None
) -> np.ndarray:
    """Images with the `fraction` of pixels each map ranks highest removed: set to 0, or to
    `fill`'s pixel there (an array shaped like `images`)."""
    out = images.copy()
    flat = maps.reshape(len(maps), -1)
    count = int(round(flat.shape[1] * fraction))
    order = np.argsort(-flat, axis=1, kind="stable")[:, :count]
    for i, top in enumerate(order):
        rows, cols = np.unravel_index(top, maps.shape[1:])
        out[i, rows, cols] = 0 if fill is None else fill[i, rows, cols]
    return out


def delete_random(
    images: np.ndarray, fraction: float, seed: int = 0, fill: np.ndarray | None = None
) -> np.ndarray:
    """Images with a random `fraction` of their pixels removed (as `delete_top`)."""
    rng = np.random.default_rng(seed)
    return delete_top(images, rng.random(images.shape[:3]), fraction, fill)


def blurred(images: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Each image (N, H, W, C) under a Gaussian blur of `sigma` pixels (edges repeated)."""
    radius = max(1, int(round(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = np.asarray(images, np.float64)
    for axis in (1, 2):  # separable: rows, then columns
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        size = out.shape[axis]
        out = sum(
            weight * np.take(padded, np.arange(k, k + size), axis=axis)
            for k, weight in enumerate(taps)
        )
    return out.astype(np.float32)


def deletion_auc(
    predict: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    maps: np.ndarray,
    weights: np.ndarray,
    steps: int = 10,
    fill: np.ndarray | None = None,
) -> np.ndarray:
    """Per image: the area under the explained score as the map's top pixels are removed,
    0%, 1/steps, ... 100% (lower: the map found what the model needs)."""
    scores = []
    for k in range(steps + 1):
        out = np.asarray(predict(delete_top(images, maps, k / steps, fill)), dtype=np.float32)
        scores.append((out * weights).reshape(len(out), -1).sum(axis=1))
    curve = np.stack(scores, axis=1)
    return ((curve[:, 1:] + curve[:, :-1]) / 2).mean(axis=1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps (ties share their mean rank)."""
    ra, rb = _ranks(a.ravel()), _ranks(b.ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    bottom = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / bottom) if bottom > 0 else 0.0


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(len(values))
    unique, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def deletion_wins(
    probabilities: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    maps: np.ndarray,
    fraction: float = 0.1,
    seed: int = 0,
    fill: np.ndarray | None = None,
) -> np.ndarray:
    """Per image: whether removing the `fraction` of pixels its map ranks highest lowers the
    explained output (`probabilities(images)` gives one value per image) more than removing
    a random `fraction` does (Petsiuk et al.'s deletion, at one step)."""
    top = probabilities(delete_top(images, maps, fraction, fill))
    chance = probabilities(delete_random(images, fraction, seed, fill))
    return top < chance
