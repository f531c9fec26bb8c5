"""Figures of maps: an image with its heatmap, and every convolution's feature maps.

Heatmaps use inferno, a perceptually uniform colour map (equal steps of the map look like
equal steps of colour, and it reads in grey too). Names in titles are drawn as plain text
(a `$` in a class name never starts matplotlib's math mode).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnctl.escape import safe_text

HEATMAP = "inferno"
ALPHA = 0.5  # the heatmap's opacity over the image
OVERLAY_SIZE = 224  # small images are enlarged by whole steps to about this many pixels


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def show_image(ax: Any, image: np.ndarray) -> None:
    """An (H, W, C) image of 0..255 pixels, grey or RGB."""
    pixels = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
    if pixels.shape[-1] == 1:
        ax.imshow(pixels[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(pixels[..., :3])
    ax.axis("off")


def save_overlay(image: np.ndarray, heatmap: np.ndarray, title: str, path: Path) -> None:
    """The image, and the image under its map with a colour bar, titled `title` (a PNG).

    Drawn with Pillow, not as a matplotlib figure: a hundred overlays take a fraction of a
    second instead of half a minute. Small images are enlarged by whole steps (no blur).
    """
    from PIL import Image, ImageDraw

    height, width = heatmap.shape
    scale = max(1, OVERLAY_SIZE // max(height, width))
    size = (width * scale, height * scale)
    pixels = np.clip(np.asarray(image, np.float32), 0, 255)
    rgb = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels[..., :3]
    grey = rgb.mean(axis=-1, keepdims=True)
    lut = _lut()
    blend = (1 - ALPHA) * grey + ALPHA * lut[np.round(np.clip(heatmap, 0, 1) * 255).astype(int)]
    gap, top = 10, 30
    key = _colour_key(size[1])
    canvas = Image.new("RGB", (3 * gap + 2 * size[0] + key.width, top + size[1] + gap), "white")
    for column, picture in enumerate((rgb, blend)):
        shown = Image.fromarray(picture.astype(np.uint8)).resize(size, Image.Resampling.NEAREST)
        canvas.paste(shown, (gap + column * (size[0] + gap), top))
    canvas.paste(key, (2 * gap + 2 * size[0], top - 2))
    ImageDraw.Draw(canvas).text((gap, 8), safe_text(title)[:120], fill="black", font=_font())
    canvas.save(path, format="PNG", compress_level=1)  # fast: a hundred overlays in a blink


@functools.lru_cache(maxsize=4)
def _colour_key(height: int) -> Any:
    """The colour bar, labelled 1 at the top and 0 at the bottom, `height` pixels tall: drawn
    once a size (text is the slowest part of an overlay)."""
    from PIL import Image, ImageDraw

    bar = 12
    key = Image.new("RGB", (bar + 24, height + 4), "white")
    colours = _lut()[np.linspace(255, 0, height).astype(int)][:, None].repeat(bar, axis=1)
    key.paste(Image.fromarray(colours.astype(np.uint8)), (0, 2))
    draw = ImageDraw.Draw(key)
    draw.text((bar + 3, 0), "1", fill="black", font=_font())
    draw.text((bar + 3, height - 12), "0", fill="black", font=_font())
    return key


@functools.lru_cache(maxsize=1)
def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=13)


@functools.lru_cache(maxsize=1)
def _lut() -> np.ndarray:
    """The heatmap's colour map as 256 RGB rows (0..255)."""
    from matplotlib import colormaps

    return colormaps[HEATMAP](np.linspace(0, 1, 256))[:, :3] * 255


def save_features(
    image: np.ndarray,
    layers: Sequence[tuple[str, np.ndarray]],
    filters: tuple[str, np.ndarray] | None,
    path: Path,
    per_layer: int = 16,
) -> None:
    """One figure: the image, the first convolution's filters, then the first `per_layer`
    channels of each convolution's output for it, each row titled with the layer's name
    and shape.

    `layers`: (name, activations (H, W, C)); `filters`: (name, kernel (kh, kw, in, out)).
    """
    plt = _pyplot()
    columns = 8
    rows = [("input", None)] + ([("filters", filters)] if filters else []) + list(layers)
    lines = [
        1 if kind == "input" else -(-min(per_layer, _count(kind, v)) // columns) for kind, v in rows
    ]
    fig = plt.figure(figsize=(columns * 1.1, sum(lines) * 1.15 + 0.45 * len(rows)))
    parts = fig.subfigures(len(rows), 1, height_ratios=[n + 0.4 for n in lines], squeeze=False)
    for part, (kind, value), n in zip(parts[:, 0], rows, lines, strict=True):
        axes = part.subplots(n, columns, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        if kind == "input":
            show_image(axes[0, 0], image)
            part.suptitle("input image", fontsize=9, x=0.02, ha="left")
        elif kind == "filters":
            name, kernel = value
            count = min(per_layer, kernel.shape[-1])
            for ax, i in zip(axes.flat, range(count), strict=False):
                ax.imshow(_filter_image(kernel[..., i]), cmap="gray", interpolation="nearest")
            part.suptitle(
                f"{name}: first {count} of {kernel.shape[-1]} filters "
                f"({kernel.shape[0]}x{kernel.shape[1]}x{kernel.shape[2]})",
                fontsize=9,
                x=0.02,
                ha="left",
                parse_math=False,
            )
        else:
            activations = value
            count = min(per_layer, activations.shape[-1])
            for ax, i in zip(axes.flat, range(count), strict=False):
                ax.imshow(activations[..., i], cmap=HEATMAP, interpolation="nearest")
            shape = "x".join(str(s) for s in activations.shape)
            part.suptitle(
                f"{kind}: {shape} (first {count} channels)",
                fontsize=9,
                x=0.02,
                ha="left",
                parse_math=False,
            )
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)


def _count(kind: str, value: Any) -> int:
    return value[1].shape[-1] if kind == "filters" else value.shape[-1]


def _filter_image(kernel: np.ndarray) -> np.ndarray:
    """A (kh, kw, in) filter as one picture: RGB where it reads 3 channels, else their mean;
    stretched to 0..1."""
    picture = kernel if kernel.shape[-1] == 3 else kernel.mean(axis=-1)
    low, high = float(picture.min()), float(picture.max())
    return (picture - low) / (high - low) if high > low else np.zeros_like(picture)
