"""`cnnctl explain`: maps of what the model looked at for image files, and the feature maps of
every convolution for one image, written as figures (and raw maps) beside the run.

Images are found and decoded as `predict` does (same files, same refusals, same limits);
which outputs are explained is the task's (`Task.explain_targets`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnctl.data.images import ImageError, expand_paths, load_image
from cnnctl.errors import DataError, ModelFileError
from cnnctl.explain import GRADIENT_METHODS, LAYER_METHODS, METHODS
from cnnctl.limits import EVAL_BATCH
from cnnctl.runs import atomic_write, write_json
from cnnctl.scoring.source import ScoringSource
from cnnctl.suggest import suggest

CHUNK = 256  # images decoded, mapped and written per step


@dataclass
class Explained:
    """One map: the image, what it explains (output name, index, the model's value), and files."""

    path: str
    label: str
    index: int
    value: float
    method: str
    layer: str | None
    files: list[str] = field(default_factory=list)
    heatmap: np.ndarray | None = None

    def to_json(self, with_map: bool = False) -> dict[str, Any]:
        row = {
            "path": self.path,
            "label": self.label,
            "index": self.index,
            "value": round(self.value, 6),
            "method": self.method,
            "layer": self.layer,
            "files": self.files,
        }
        if with_map and self.heatmap is not None:
            row["map"] = np.round(self.heatmap, 4).tolist()
        return row


@dataclass
class Explanations:
    items: list[Explained] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    folder: Path | None = None


def explain_images(
    source: ScoringSource,
    inputs: list[str],
    method: str = "gradcam",
    chosen: str | None = None,
    top_k: int | None = None,
    layer_name: str | None = None,
    output: Path | None = None,
    fmt: str = "png",
    invert: bool = False,
    batch_size: int = EVAL_BATCH,
) -> Explanations:
    """A map by `method` for each image named by `inputs` (files, folders, globs) and each
    output the task explains; an overlay PNG each (and .npy or explain.json by `fmt`) in
    `output` (default: the run's explain/ folder, else ./explain)."""
    check_method(source, method, layer_name)
    paths, failures = expand_paths(inputs)
    result = Explanations(failures=failures)
    if not paths:
        return result
    model = source.load(compile=False)
    names = source.output_names(model)
    index = _chosen(chosen, names)
    folder = output or (source.run.path / "explain" if source.run else Path("explain"))
    taken: set[str] = set()
    for start in range(0, len(paths), CHUNK):  # a large folder never sits in memory whole
        pixels, kept = _decode(paths[start : start + CHUNK], model.input_shape, invert, result)
        if not kept:
            continue
        outputs = _outputs(source.inference(model), pixels, batch_size)
        rows = [
            (i, target)
            for i, output in enumerate(outputs)
            for target in source.task.explain_targets(output, names, index, top_k)
        ]
        which = np.array([i for i, _ in rows])
        weights = np.stack([t.weights for _, t in rows])
        maps, layer_path = compute_maps(
            model, source, pixels[which], weights, method, layer_name, batch_size
        )
        folder.mkdir(parents=True, exist_ok=True)
        result.folder = folder
        for (i, target), heatmap in zip(rows, maps, strict=True):
            item = Explained(
                str(kept[i]), target.label, target.index, target.value, method, layer_path
            )
            item.heatmap = heatmap if fmt == "json" else None
            # a chosen --layer is named too: maps of two layers never overwrite each other
            at = f"-{_slug(layer_path)}" if layer_name is not None and layer_path else ""
            stem = _unique(
                f"{_slug(kept[i].stem)}-{_slug(method)}{at}-{_slug(target.label)}", taken
            )
            item.files = _write(folder, stem, pixels[i], heatmap, _title(kept[i], item), fmt)
            result.items.append(item)
    if fmt == "json":
        report = folder / "explain.json"
        write_json(report, [item.to_json(with_map=True) for item in result.items])
        for item in result.items:
            item.files.append(str(report))
    return result


def explain_one(
    model: Any,
    source: ScoringSource,
    names: list[str],
    image: np.ndarray,
    name: str,
    method: str = "gradcam",
) -> tuple[Explained, bytes]:
    """One decoded image (H, W, C) explained as `explain` explains a file named `name` with
    its defaults (the task's first target): the row, and the overlay PNG's bytes, drawn as
    `explain` draws NAME-METHOD-LABEL.png (serve's /v1/explain)."""
    import io

    from cnnctl.explain.overlay import save_overlay

    check_method(source, method, None)
    pixels = np.asarray(image, np.float32)[None]
    output = _outputs(source.inference(model), pixels, 1)[0]
    target = source.task.explain_targets(output, names, None, None)[0]
    maps, layer_path = compute_maps(model, source, pixels, target.weights[None], method)
    item = Explained(name, target.label, target.index, target.value, method, layer_path)
    buffer = io.BytesIO()
    save_overlay(pixels[0], maps[0], _title(Path(name), item), buffer)
    return item, buffer.getvalue()


def _decode(
    paths: list[Path], input_shape: tuple, invert: bool, result: Explanations
) -> tuple[np.ndarray, list[Path]]:
    """The images as `predict` decodes them; each that fails goes to `result.failures`."""
    _, height, width, channels = input_shape
    images, kept = [], []
    for path in paths:
        try:
            images.append(load_image(path, height, width, channels, invert))
            kept.append(path)
        except ImageError as error:
            result.failures.append((str(path), str(error)))
    pixels = np.stack(images).astype(np.float32) if images else np.zeros((0, height, width, 1))
    return pixels, kept


def _title(path: Path, item: Explained) -> str:
    where = f" at {item.layer}" if item.layer else ""
    return f"{path.name}: {item.label} {item.value:.3f} ({item.method}{where})"


def _write(
    folder: Path, stem: str, image: np.ndarray, heatmap: np.ndarray, title: str, fmt: str
) -> list[str]:
    """The overlay PNG (and the raw map with --format npy); the paths written."""
    from cnnctl.explain.overlay import save_overlay

    png = folder / f"{stem}.png"
    atomic_write(png, lambda p: save_overlay(image, heatmap, title, p))
    if fmt != "npy":
        return [str(png)]
    npy = folder / f"{stem}.npy"
    atomic_write(npy, lambda p: _save_npy(p, heatmap))
    return [str(png), str(npy)]


def check_method(source: ScoringSource, method: str, layer_name: str | None) -> None:
    """Refuse a method the model file cannot give, or --layer where the method reads none."""
    if method not in METHODS:
        raise DataError(
            f"--method {method}: unknown{suggest(method, METHODS)}",
            f"choose one of: {', '.join(METHODS)}",
        )
    if source.exported and method in GRADIENT_METHODS:
        raise ModelFileError(
            f"{source.model_file}: --method {method} needs gradients, which an exported "
            ".onnx/.tflite file does not give",
            "use --method occlusion with this file, or explain with the run's model.keras",
        )
    if layer_name is not None and method not in LAYER_METHODS:
        raise DataError(
            f"--layer {layer_name}: --method {method} reads no layer",
            f"--layer applies to {' and '.join(LAYER_METHODS)}",
        )


def compute_maps(
    model: Any,
    source: ScoringSource,
    images: np.ndarray,
    weights: np.ndarray,
    method: str,
    layer_name: str | None = None,
    batch_size: int = EVAL_BATCH,
) -> tuple[np.ndarray, str | None]:
    """The maps (N, H, W) in 0..1, and the path of the layer they were read at (or None)."""
    from cnnctl.explain.methods import gradient_maps, occlusion_maps

    if method == "occlusion":
        maps, _ = occlusion_maps(source.inference(model), images, weights, batch_size=batch_size)
        return maps, None
    layer_path, layer = None, None
    if method in LAYER_METHODS:
        from cnnctl.explain.layers import find_layer

        layer_path, layer = find_layer(model, layer_name, str(source.model_file))
    return gradient_maps(model, images, weights, method, layer, batch_size)[0], layer_path


def _chosen(chosen: str | None, names: list[str]) -> int | None:
    """--class NAME -> its output index (a name, or an index where no name matches)."""
    if chosen is None:
        return None
    if chosen in names:
        return names.index(chosen)
    if chosen.isdigit() and int(chosen) < len(names):
        return int(chosen)
    listed = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    raise DataError(
        f"--class {chosen}: the model has no output of that name{suggest(chosen, names)}",
        f"outputs: {listed}",
    )


def _outputs(call: Any, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate(
        [
            np.asarray(call(pixels[i : i + batch_size]), dtype=np.float32)
            for i in range(0, len(pixels), batch_size)
        ]
    )


def _save_npy(path: Path, heatmap: np.ndarray) -> None:
    with open(path, "wb") as stream:  # np.save(path) would add a second .npy to the temp name
        np.save(stream, heatmap.astype(np.float32))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_.")[:60] or "x"


def _unique(stem: str, taken: set[str]) -> str:
    name, n = stem, 2
    while name in taken:
        name, n = f"{stem}-{n}", n + 1
    taken.add(name)
    return name


def feature_figure(
    source: ScoringSource,
    image: Path | None,
    output: Path | None = None,
    invert: bool = False,
    offline: bool = True,
) -> Path:
    """features.png: the activations of every convolution for one image (`image`, else the
    first test image of the run's data) and the first convolution's filters."""
    from cnnctl.explain.layers import conv_layers, recording
    from cnnctl.explain.overlay import save_features

    if source.exported:
        raise ModelFileError(
            f"{source.model_file}: an exported file does not show its inner layers",
            "use the run's model.keras for --layers",
        )
    model = source.load(compile=False)
    _, height, width, channels = model.input_shape
    pixels = _one_image(source, image, (height, width, channels), invert, offline)
    convs = conv_layers(model)
    if not convs:
        raise DataError(
            f"{source.model_file}: the model has no convolutional layer to show",
            "--layers shows Conv2D layers' outputs",
        )
    with recording([layer for _, layer in convs]) as seen:
        model(pixels[None].astype(np.float32), training=False)
    shown = [
        (path, np.asarray(found[-1], np.float32)[0])
        for (path, _), found in zip(convs, seen, strict=True)
        if found
    ]
    first_path, first = convs[0]
    kernel = np.asarray(first.get_weights()[0], np.float32) if first.get_weights() else None
    filters = (first_path, kernel) if kernel is not None and kernel.ndim == 4 else None
    folder = output or (source.run.path / "explain" if source.run else Path("explain"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "features.png"
    atomic_write(path, lambda p: save_features(pixels, shown, filters, p))
    return path


def _one_image(
    source: ScoringSource, image: Path | None, shape: tuple, invert: bool, offline: bool
) -> np.ndarray:
    """The image file decoded as predict decodes it, or the run's first test image."""
    if image is not None:
        try:
            return load_image(Path(image), *shape, invert).astype(np.float32)
        except ImageError as error:
            raise DataError(f"{image}: {error}", "give a PNG or JPEG file") from None
    if source.config is None:
        raise DataError(
            f"{source.model_file}: is not in a run folder, so it has no test image to show",
            "give one: --image FILE",
        )
    from cnnctl.data.dataset import dataset_for, decoded

    x, _ = dataset_for(source.config, offline).split("test")
    pixels, _ = decoded(x[:1])
    if not len(pixels):
        raise DataError(f"{source.model_file}: the run's test split has no image", "give --image")
    return np.asarray(pixels[0], np.float32)
