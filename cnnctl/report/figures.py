"""matplotlib figures (Agg, no display): each function writes one figure to the path given."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_curves(rows: Sequence[dict[str, float]], path: Path) -> None:
    """Loss and each metric per epoch, training against validation."""
    fig = curves_figure(rows)
    fig.savefig(path, dpi=100, format="png")
    _pyplot().close(fig)


def curves_figure(rows: Sequence[dict[str, float]]) -> Any:
    """The figure of `save_curves`: one panel per metric, whole-numbered epochs on the x axis."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    names = [
        k
        for k in rows[0]
        if k not in ("epoch", "lr", "seconds", "train_seconds") and not k.startswith("val_")
    ]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    epochs = [row["epoch"] for row in rows]
    for ax, name in zip(axes[0], names, strict=True):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.plot(epochs, [row.get(name) for row in rows], marker="o", label="train")
        if f"val_{name}" in rows[0]:
            ax.plot(
                epochs, [row.get(f"val_{name}") for row in rows], marker="o", label="validation"
            )
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def save_confusion(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path) -> None:
    """The confusion matrix normalised by true class, readable from 2 to 100 classes."""
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(matrix, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    size = min(max(6, n * 0.5), 30)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = range(n)
    font = max(4, min(10, int(400 / max(n, 1))))
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=font)
    ax.set_yticks(ticks, class_names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{rates[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=font - 1,
                        color="white" if rates[i, j] > 0.5 else "black",
                    )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title("confusion matrix (rows: true class, normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def save_error_grid(
    images: Any,
    wrong: Sequence[dict[str, Any]],
    path: Path,
    shown: int = 25,
    maps: dict[int, Any] | None = None,
) -> None:
    """The most confidently wrong examples, each titled `true -> predicted`; where `maps`
    holds an example's Grad-CAM map (0..1), it lies over the image in inferno."""
    import numpy as np

    plt = _pyplot()
    rows = wrong[:shown]
    columns = min(5, len(rows))
    lines = -(-len(rows) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(2.2 * columns, 2.5 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows, strict=False):
        image = images[row["index"]]
        heatmap = (maps or {}).get(row["index"])
        if heatmap is None:
            ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None)
        else:  # grey under the map, so the colours are the map's alone
            ax.imshow(np.asarray(image, np.float32).mean(axis=-1), cmap="gray")
            ax.imshow(heatmap, cmap="inferno", alpha=0.5, vmin=0, vmax=1)
        ax.set_title(f"{row['true'][:12]} -> {row['predicted'][:12]}", fontsize=8)
    title = "misclassified (highest loss first)"
    title += "; Grad-CAM of the predicted class" if maps else ""
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def save_pr_curves(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]], path: Path, shown: int = 20
) -> None:
    """Precision against recall, one line per label (multilabel)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (precision, recall) in list(curves.items())[:shown]:
        ax.plot(recall, precision, label=str(name)[:20], linewidth=1)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall per label")
    if curves:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def save_scatter(truth: Any, predicted: Any, names: Sequence[str], path: Path) -> None:
    """Predicted against true values, one panel per target, with the line y = x (regression)."""
    plt = _pyplot()
    count = len(names)
    fig, axes = plt.subplots(1, count, figsize=(4 * count, 4), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes.flat, names, strict=False)):
        ax.scatter(truth[:, i], predicted[:, i], s=4, alpha=0.5)
        low = float(min(truth[:, i].min(initial=0), predicted[:, i].min(initial=0)))
        high = float(max(truth[:, i].max(initial=1), predicted[:, i].max(initial=1)))
        ax.plot([low, high], [low, high], color="grey", linewidth=1)
        ax.set_xlabel(f"true {str(name)[:20]}")
        ax.set_ylabel("predicted")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def save_residuals(residuals: Any, names: Sequence[str], path: Path) -> None:
    """A histogram of predicted - true, one panel per target (regression)."""
    plt = _pyplot()
    count = len(names)
    fig, axes = plt.subplots(1, count, figsize=(4 * count, 3.5), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes.flat, names, strict=False)):
        ax.hist(residuals[:, i], bins=40)
        ax.set_xlabel(f"predicted - true ({str(name)[:20]})")
        ax.set_ylabel("images")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def save_compare(
    series: Sequence[tuple[str, Sequence[dict[str, float]]]], metric: str, path: Path
) -> None:
    """One metric of several runs overlaid: a colour a run, validation solid, training dashed."""
    fig = compare_figure(series, metric)
    fig.savefig(path, dpi=100, format="png")
    _pyplot().close(fig)


def compare_figure(series: Sequence[tuple[str, Sequence[dict[str, float]]]], metric: str) -> Any:
    """The figure of `save_compare`, whole-numbered epochs on the x axis."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colours = plt.get_cmap("tab10" if len(series) <= 10 else "tab20")
    epochs = [row["epoch"] for _, rows in series for row in rows] or [1]
    for i, (name, rows) in enumerate(series):
        colour = colours(i % colours.N)
        for key, style, what in ((f"val_{metric}", "-", "validation"), (metric, "--", "training")):
            points = [(row["epoch"], row[key]) for row in rows if key in row]
            if points:
                x, y = zip(*points, strict=True)
                label = f"{str(name)[:30]} ({what})"
                ax.plot(x, y, linestyle=style, color=colour, marker="o", markersize=3, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs
    ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: validation solid, training dashed")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best", ncol=2 if len(series) > 4 else 1)
    fig.tight_layout()
    return fig
