"""Masks made visible: a colour per class, overlays on images, and a gallery of the worst
segmentations (image | true mask | predicted mask, with a legend). Pure numpy and matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Distinct colours (tab20's strong half first); class 0 is drawn black, ignored pixels white.
_PALETTE = np.array(
    [
        (0, 0, 0),
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
        (174, 199, 232),
        (255, 187, 120),
        (152, 223, 138),
        (255, 152, 150),
        (197, 176, 213),
        (196, 156, 148),
        (247, 182, 210),
        (219, 219, 141),
        (158, 218, 229),
    ],
    dtype=np.uint8,
)
IGNORED = np.array((255, 255, 255), dtype=np.uint8)


def mask_colours(classes: int) -> np.ndarray:
    """An RGB colour per class (uint8, (classes, 3)); past 20 classes the colours repeat."""
    return _PALETTE[np.arange(classes) % len(_PALETTE)]


def colour_mask(mask: np.ndarray, classes: int) -> np.ndarray:
    """A mask of class indices -> an RGB image; values past the classes (ignored) white."""
    out = np.empty((*mask.shape, 3), dtype=np.uint8)
    known = mask < classes
    out[known] = mask_colours(classes)[mask[known]]
    out[~known] = IGNORED
    return out


def overlay(image: np.ndarray, mask: np.ndarray, classes: int, alpha: float = 0.5) -> np.ndarray:
    """The image (H, W, 1 or 3, uint8) with every pixel not of class 0 tinted its class's
    colour; class 0 (background by convention) is left as it is."""
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    tinted = rgb.astype(np.float32)
    colours = colour_mask(mask, classes).astype(np.float32)
    shown = (mask > 0) & (mask < classes)
    tinted[shown] = (1 - alpha) * tinted[shown] + alpha * colours[shown]
    return np.clip(tinted, 0, 255).astype(np.uint8)


def save_mask_gallery(
    images: Any,
    truth: np.ndarray,
    predicted: dict[int, np.ndarray],
    rows: Sequence[dict[str, Any]],
    names: Sequence[str],
    path: Path,
) -> None:
    """One line per image of `rows` (worst first): the image, its true mask, the predicted
    mask (`predicted[index]`), coloured with a legend of the classes."""
    from cnnctl.report.figures import _pyplot

    plt = _pyplot()
    count = len(names)
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.4 * len(rows) + 0.8), squeeze=False)
    for line, row in zip(axes, rows, strict=False):
        image = images[row["index"]]
        shown = (
            image.squeeze(-1) if image.shape[-1] == 1 else image,
            colour_mask(truth[row["index"]], count),
            colour_mask(predicted[row["index"]], count),
        )
        titles = (str(row.get("path", row["index"]))[-24:], "true", f"IoU {row['mean_iou']:.2f}")
        for ax, picture, title in zip(line, shown, titles, strict=True):
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    from matplotlib.patches import Patch

    colours = mask_colours(count) / 255.0
    handles = [Patch(color=colours[i], label=str(n)[:16]) for i, n in enumerate(names)]
    handles.append(Patch(facecolor="white", edgecolor="black", label="ignored"))
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=7)
    fig.suptitle("worst segmentations (lowest mean IoU first)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(handles) // 6), 1, 0.97))
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
