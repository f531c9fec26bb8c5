"""`make bench`, streaming section: generated 128x128 JPEG folders, streamed against in memory.

    python bench/bench_streaming.py                       # 20,000 and 80,000 files
    python bench/bench_streaming.py --small 2000 --large 8000

Measures peak RSS of `cnnctl train` (data.cache: none) on the small and the large folder,
first-epoch images/s streamed and in memory, later epochs read from the disk cache against
in memory (two pairs of runs, alternating: the machine's speed drifts between runs), time to
the first training batch, and predict on 2,000 PNGs / 2,000 JPEGs against model.predict.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
from pathlib import Path

from make_images import make_images

from bench import CNNCTL, PYTHON, measure  # bench/ is on sys.path: this file runs beside bench.py

CONFIG = """\
name: stream-{tag}
data:
  path: {folder}
  cache: {cache}
  test_fraction: 0.1
model:
  input_shape: [128, 128, 3]
  layers:
    - {{type: Conv2D, filters: 8, kernel_size: [3, 3], strides: [2, 2], activation: relu}}
    - {{type: MaxPooling2D, pool_size: [2, 2]}}
    - {{type: Conv2D, filters: 16, kernel_size: [3, 3], activation: relu}}
    - GlobalAveragePooling2D
    - {{type: Dense, units: 10, activation: softmax}}
train:
  epochs: {epochs}
  batch_size: 64
"""

FIRST_BATCH = """
import json, sys, time
from cnnctl.startup import load_tensorflow
load_tensorflow()
from cnnctl.config import DataConfig
from cnnctl.data.dataset import load_dataset
from cnnctl.data.pipeline import training_batches
started = time.perf_counter()
d = load_dataset(
    DataConfig(path=sys.argv[1], cache=sys.argv[2], test_fraction=0.1), (128, 128, 3), 42
)
batches, _ = training_batches(d.x_train, d.y_train, batch_size=64, seed=42, num_classes=10,
                              one_hot=True, first_epoch=0, epochs=1)
next(iter(batches))
print(json.dumps({"seconds": time.perf_counter() - started}))
"""

PREDICT = """
import json, statistics, sys, time
from pathlib import Path
from cnnctl.startup import load_tensorflow
load_tensorflow()
import keras, numpy as np
from PIL import Image
from cnnctl.modelfile.load import load_model
from cnnctl.scoring.predict import predict_images
from cnnctl.scoring.source import resolve_source
from cnnctl.data.stream import decode_batches, files_for
folder, model_path = Path(sys.argv[1]), Path(sys.argv[2])
paths = sorted(p for p in folder.rglob("*") if p.is_file())
x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]).astype("float32")
model = keras.saving.load_model(model_path)
model.predict(x, batch_size=256, verbose=0)
direct, tool, load, decode = [], [], [], []
for _ in range(3):
    t = time.perf_counter()  # decoding alone, in predict's pipeline: how much of it is decoding
    for _ in decode_batches(files_for(paths, x.shape[1:]), 256):
        pass
    decode.append(time.perf_counter() - t)
    t = time.perf_counter()
    load_model(model_path, compile=False)  # vetted and loaded, as predict_images does first
    load.append(time.perf_counter() - t)
    t = time.perf_counter()
    model.predict(x, batch_size=256, verbose=0)
    direct.append(time.perf_counter() - t)
    t = time.perf_counter()
    out = predict_images(resolve_source(None, model_path, Path('runs')), [str(folder)])
    tool.append(time.perf_counter() - t)
    assert len(out.items) == len(paths), out.failures[:3]
print(json.dumps({"images": len(paths), "direct_seconds": statistics.median(direct),
                  "predict_seconds": statistics.median(tool),
                  "load_seconds": statistics.median(load),
                  "decode_seconds": statistics.median(decode)}))
"""


def train(work: Path, folder: Path, cache: str, tag: str, epochs: int = 2) -> dict:
    """`cnnctl train` on `folder`: peak RSS, per-epoch train images/s, the run."""
    config = work / f"stream-{tag}.yaml"
    config.write_text(CONFIG.format(tag=tag, folder=folder, cache=cache, epochs=epochs))
    result = measure([*CNNCTL, "train", str(config), "--json", "--runs-dir", "runs"], work)
    summary = json.loads(result["stdout"])
    with open(work / summary["run"] / "metrics.csv") as stream:
        rows = list(csv.DictReader(stream))
    images = (
        summary["train_images_per_second"]
        * sum(float(r["train_seconds"]) for r in rows)
        / len(rows)
    )
    return {
        "peak_mb": result["peak_mb"],
        "wall_seconds": result["wall_seconds"],
        "train_images": round(images),
        "epoch_images_per_second": [images / float(r["train_seconds"]) for r in rows],
        "run": summary["run"],
    }


def streaming(work: Path, small: int, large: int) -> dict:
    """The streaming figures, small and large folders generated under `work`."""
    import os

    os.environ["CNNCTL_CACHE_DIR"] = str(work / "cache")
    from bench import ENV

    ENV["CNNCTL_CACHE_DIR"] = str(work / "cache")
    small_folder = make_images(work / f"jpg-{small}", small)
    large_folder = make_images(work / f"jpg-{large}", large)
    print("streaming: folders written", flush=True)
    out: dict = {"small": small, "large": large}
    out["stream_small"] = train(work, small_folder, "none", "small")
    out["stream_large"] = train(work, large_folder, "none", "large")
    train(work, small_folder, "disk", "disk-build", epochs=1)  # the cache, written once
    for pair in range(2):  # alternating, so that both routes see the same drift of the machine
        for mode in ("memory", "disk"):
            out.setdefault(mode, []).append(
                train(work, small_folder, mode, f"{mode}-{pair}", epochs=3)
            )
    for mode in ("memory", "none"):
        figures = measure([PYTHON, "-c", FIRST_BATCH, str(small_folder), mode], work)
        out[f"first_batch_{mode}"] = json.loads(figures["stdout"])["seconds"]
    model = work / out["memory"][0]["run"] / "model.keras"
    for fmt in ("png", "jpg"):
        folder = make_images(work / f"predict-{fmt}", 2000, fmt=fmt)
        figures = json.loads(
            measure([PYTHON, "-c", PREDICT, str(folder), str(model)], work)["stdout"]
        )
        decode_and_run = figures["predict_seconds"] - figures["load_seconds"]
        out[f"predict_{fmt}"] = {
            **figures,
            "ratio": decode_and_run / figures["direct_seconds"],
            "ratio_with_load": figures["predict_seconds"] / figures["direct_seconds"],
        }
    print("streaming", json.dumps(out), flush=True)
    return out


def later_epochs(run: dict) -> float:
    """Images/s after the first epoch (which also traces): the median of epochs 2 and 3."""
    return statistics.median(run["epoch_images_per_second"][1:])


def streaming_markdown(s: dict) -> str:
    small, large, memory, disk = s["stream_small"], s["stream_large"], s["memory"], s["disk"]
    disk_ratios = [later_epochs(d) / later_epochs(m) for m, d in zip(memory, disk, strict=True)]
    lines = [
        "## Streaming image folders (128x128 JPEGs generated from Fashion-MNIST)",
        "",
        f"Peak RSS of `cnnctl train` with `data.cache: none`: "
        f"{small['peak_mb']:,.0f} MB on {s['small']:,} "
        f"files, {large['peak_mb']:,.0f} MB on {s['large']:,} files: ratio "
        f"{large['peak_mb'] / small['peak_mb']:.2f}x (aim: at most 1.1x).",
        "",
        f"| route ({s['small']:,} files) | epoch 1 images/s | later epochs images/s | peak MB |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in [
        ("in memory (`cache: memory`)", memory[0]),
        ("streamed (`cache: none`)", small),
        ("decode cache (`cache: disk`, written by an earlier run)", disk[0]),
    ]:
        first, later = row["epoch_images_per_second"][0], later_epochs(row)
        lines.append(f"| {name} | {first:,.0f} | {later:,.0f} | {row['peak_mb']:,.0f} |")
    lines += [
        "",
        f"Streamed epoch 1 against in memory: "
        f"{small['epoch_images_per_second'][0] / memory[0]['epoch_images_per_second'][0]:.2f}x. "
        f"Decode cache against in memory, epochs 2 and 3 (median), two pairs of alternating "
        f"runs: {', '.join(f'{r:.2f}x' for r in disk_ratios)} (aim: >= 0.9x).",
        f"Time to the first training batch (TensorFlow start-up excluded): in memory "
        f"{s['first_batch_memory']:.2f} s, streamed {s['first_batch_none']:.2f} s.",
        "",
    ]
    for fmt in ("png", "jpg"):
        p = s[f"predict_{fmt}"]
        streamed = p["images"] / (p["predict_seconds"] - p["load_seconds"])
        decode, model = p["images"] / p["decode_seconds"], p["images"] / p["direct_seconds"]
        lines.append(
            f"Predict on {p['images']:,} {fmt.upper()} files of 128x128 (decode and classify, "
            f"the model already loaded): {streamed:,.0f}"
            f" images/s against model.predict on the same images in memory "
            f"{model:,.0f}: ratio {p['ratio']:.2f}x (aim: at most "
            f"1.5x); with the model's vetting and loading ({p['load_seconds']:.2f} s, once per "
            f"command) {p['ratio_with_load']:.2f}x. Decoding alone (predict's pipeline, no model) "
            f"runs at {decode:,.0f} images/s: it takes {model / decode:.2f}x the model's time."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=20000)
    parser.add_argument("--large", type=int, default=80000)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cnnctl-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"working in {work}", flush=True)
    raw = streaming(work, args.small, args.large)
    print(streaming_markdown(raw))
