"""Predict one PNG through an exported .onnx / .tflite file against the .keras model: process wall.

    python bench/bench_export.py runs/fashion_mnist            # export, then time predict (5 reps)
    python bench/bench_export.py runs/small --image one.png --reps 9

`bench/bench.py` calls `export_predict` after its start-up measurements. The aim (issue 13):
predict on one PNG through ONNX in at most 0.5 s of process wall, TensorFlow never imported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from bench import CNNCTL, measure  # bench/ is on sys.path: this file runs beside bench.py

FORMATS = {
    "onnx": ("model.onnx", ["--format", "onnx"]),
    "tflite": ("model.tflite", ["--format", "tflite"]),
}


def export_predict(cwd: Path, run: Path, image: Path, reps: int = 5) -> dict:
    """Export `run` to ONNX and TFLite; median wall seconds of `cnnctl predict image` per file."""
    files = {"keras": run / "model.keras"}
    for name, (file, args) in FORMATS.items():
        record = json.loads(measure([*CNNCTL, "export", str(run), *args, "--json"], cwd)["stdout"])
        files[name] = run / "export" / file
        assert record["check"]["passed"], record
    times: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(reps):  # alternated, so that a busy moment of the machine hits every file
        for name, model in files.items():
            times[name].append(
                measure([*CNNCTL, "predict", str(image), "--model", str(model)], cwd)[
                    "wall_seconds"
                ]
            )
    return {
        f"predict one.png via .{name}": statistics.median(values) for name, values in times.items()
    }


def _one_png(run: Path, cwd: Path) -> Path:
    """The first test image of the run's data, as a PNG."""
    from PIL import Image

    from cnnctl.config import load_config
    from cnnctl.data.dataset import dataset_for

    x_test = dataset_for(load_config(run / "config.yaml")).x_test
    path = cwd / "one.png"
    Image.fromarray(x_test[0].squeeze()).save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a trained run folder")
    parser.add_argument("--image", type=Path, help="a PNG (default: the run's first test image)")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    cwd = Path.cwd()
    image = args.image or _one_png(args.run, cwd)
    figures = export_predict(cwd, args.run.resolve(), image.resolve(), args.reps)
    json.dump(figures, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
