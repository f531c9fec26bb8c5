"""Explain's speed and faithfulness on a trained run: Grad-CAM time against predict's for the
same 100 images, and the deletion test (Petsiuk et al., 2018) against random maps.

    python bench/bench_explain.py runs/fashion_mnist       # the run's first 200 test images

`bench/bench.py` calls `explain_bench` on the seed run it trained. Aim (issue 29): 100 images
explained with Grad-CAM in at most 3x predict's time for them (batched gradients).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def explain_bench(run: Path, images: np.ndarray, timed: int = 100) -> dict:
    """Seconds of predict and of each method on `timed` images (files in, results out, the
    same way each command does it), deletion AUC and wins over random on all of `images`."""
    from PIL import Image

    from cnnctl.explain.faithfulness import deletion_auc, deletion_wins
    from cnnctl.explain.layers import find_layer
    from cnnctl.explain.methods import gradient_maps, occlusion_maps
    from cnnctl.scoring.explain import explain_images
    from cnnctl.scoring.predict import predict_images
    from cnnctl.scoring.source import resolve_source

    source = resolve_source(str(run), None, run.parent, "none")
    folder = Path(tempfile.mkdtemp(prefix="cnnctl-explain-"))
    maps_out = Path(tempfile.mkdtemp(prefix="cnnctl-explain-maps-"))  # not among the inputs
    for i, image in enumerate(images[:timed]):
        Image.fromarray(image[..., 0]).save(folder / f"{i:03d}.png")
    files = [str(folder)]
    timing = {}
    for name, call in [
        ("predict", lambda: predict_images(source, files)),
        ("gradcam overlays", lambda: explain_images(source, files, output=maps_out)),
    ]:
        call()  # the first call warms caches up: left out
        walls = []
        for _ in range(3):
            started = time.perf_counter()
            call()
            walls.append(time.perf_counter() - started)
        timing[name] = sorted(walls)[1]  # the median of 3
    model = source.load(compile=False)
    x = images.astype(np.float32)
    classes = np.asarray(model(x)).argmax(axis=1)
    weights = np.eye(model.output_shape[-1], dtype=np.float32)[classes]
    layer = find_layer(model, None, "model")[1]
    compute = {}
    for method in ("gradcam", "gradcam++", "saliency"):
        gradient_maps(model, x[:timed], weights[:timed], method, layer)  # trace
        started = time.perf_counter()
        maps = gradient_maps(model, x[:timed], weights[:timed], method, layer)[0]
        compute[method] = time.perf_counter() - started
    started = time.perf_counter()
    np.asarray(model(x[:timed]))
    compute["model call"] = time.perf_counter() - started

    def probability(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model(batch))[np.arange(len(batch)), classes]

    rng = np.random.default_rng(0)
    faithful = {}
    for method in ("gradcam", "gradcam++", "saliency", "occlusion", "random"):
        if method == "random":
            maps = rng.random(x.shape[:3]).astype(np.float32)
        elif method == "occlusion":
            maps = occlusion_maps(model, x, weights)[0]
        else:
            maps = gradient_maps(model, x, weights, method, layer)[0]
        auc = deletion_auc(lambda b: np.asarray(model(b)), x, maps, weights)
        faithful[method] = {
            "deletion_auc": round(float(auc.mean()), 4),
            # a random map against random removal measures nothing: left out
            "wins_at_10pct": None
            if method == "random"
            else round(float(deletion_wins(probability, x, maps).mean()), 3),
        }
    return {
        "images_timed": timed,
        "images_faithfulness": len(x),
        "seconds_end_to_end": {k: round(v, 3) for k, v in timing.items()},
        "gradcam_over_predict": round(timing["gradcam overlays"] / timing["predict"], 2),
        "seconds_maps_only": {k: round(v, 4) for k, v in compute.items()},
        "faithfulness": faithful,
    }


def explain_markdown(result: dict) -> str:
    """The section bench.py adds to docs/benchmarks.md."""
    e2e, maps = result["seconds_end_to_end"], result["seconds_maps_only"]
    lines = [
        "## Explain (Grad-CAM) against predict",
        "",
        f"{result['images_timed']} PNG files, each call loading the model and decoding the "
        f"files (median of 3): predict "
        f"{e2e['predict']:.2f} s, explain (Grad-CAM, maps and overlay PNGs) "
        f"{e2e['gradcam overlays']:.2f} s: {result['gradcam_over_predict']:.2f}x.",
        "Maps alone on the same images in memory: "
        + ", ".join(f"{k} {v:.3f} s" for k, v in maps.items())
        + ".",
        "",
        f"Deletion on {result['images_faithfulness']} test images (Petsiuk et al.): area under "
        "the explained class's probability as the map's top pixels are removed in steps of "
        "10% (lower is better), and the share of images where removing the top 10% lowers it "
        "more than removing a random 10%.",
        "",
        "| map | deletion AUC | wins at 10% |",
        "| --- | ---: | ---: |",
    ]
    for name, row in result["faithfulness"].items():
        wins = "-" if row["wins_at_10pct"] is None else f"{row['wins_at_10pct']:.0%}"
        lines.append(f"| {name} | {row['deletion_auc']:.3f} | {wins} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    from cnnctl.config import load_config
    from cnnctl.data.dataset import dataset_for, decoded
    from cnnctl.runs import Run

    config = load_config(Run(args.run).effective_config)
    x, _ = dataset_for(config, offline=True).split("test")
    images, _ = decoded(x[: args.images])
    result = explain_bench(args.run, np.asarray(images, np.uint8))
    print(json.dumps(result, indent=2))
    print(explain_markdown(result))


if __name__ == "__main__":
    main()
