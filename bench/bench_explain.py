"""Explain's speed and faithfulness on a trained run: Grad-CAM time against predict's for the
same 100 images, and the deletion test (Petsiuk et al., 2018) against random maps.

    python bench/bench_explain.py runs/fashion_mnist       # the run's first 200 test images

`bench/bench.py` calls `explain_bench` on the seed run it trained. Aim (issue 29): 100 images
explained with Grad-CAM in at most 3x predict's time for them (batched gradients). Measured
three ways: the two commands as a user runs them; the two calls in one process with the model
held (explain also writes 100 overlay PNGs, which predict does not); the maps alone against
one model call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


BLUR_SIGMA = 2.0  # pixels: "blur" removal sets a pixel to the image under this Gaussian blur


def _upsampled(coarse: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Coarse maps (N, h, w) to (N, H, W), each cell a block (nearest)."""
    rows = np.arange(size[0]) * coarse.shape[1] // size[0]
    cols = np.arange(size[1]) * coarse.shape[2] // size[1]
    return coarse[:, rows][:, :, cols].astype(np.float32)


def explain_bench(run: Path, images: np.ndarray, timed: int = 100) -> dict:
    """Seconds of predict and of each method on `timed` images (files in, results out, the
    same way each command does it), deletion AUC and wins over random on all of `images`."""
    from PIL import Image

    from cnnctl.explain import GRADIENT_METHODS
    from cnnctl.explain.faithfulness import blurred, deletion_auc, deletion_wins
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
    cnnctl = [sys.executable, "-m", "cnnctl.cli", "--offline"]
    for name, command in [
        (
            "predict command",
            [*cnnctl, "predict", str(folder), "--run", str(run), "--format", "json"],
        ),
        (
            "explain command",
            [*cnnctl, "explain", str(folder), "--run", str(run), "--output", str(maps_out)],
        ),
    ]:
        walls = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            walls.append(time.perf_counter() - started)
        timing[name] = sorted(walls)[1]  # the median of 3
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
    for method in GRADIENT_METHODS:
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
    removals = {"black": None, "blur": blurred(x, BLUR_SIGMA)}
    faithful = {}
    for method in (*GRADIENT_METHODS, "occlusion", "random", "random regions"):
        if method == "random":
            maps = rng.random(x.shape[:3]).astype(np.float32)
        elif method == "random regions":  # as coarse as a 7x7 layer's map: the shape control
            maps = _upsampled(rng.random((len(x), 7, 7)), x.shape[1:3])
        elif method == "occlusion":
            maps = occlusion_maps(model, x, weights)[0]
        else:
            maps = gradient_maps(model, x, weights, method, layer)[0]
        row = {}
        for removal, fill in removals.items():
            auc = deletion_auc(lambda b: np.asarray(model(b)), x, maps, weights, fill=fill)
            row[f"deletion_auc_{removal}"] = round(float(auc.mean()), 4)
            # a random map against random removal measures nothing: left out
            row[f"wins_at_10pct_{removal}"] = (
                None
                if method == "random"
                else round(float(deletion_wins(probability, x, maps, fill=fill).mean()), 3)
            )
        faithful[method] = row
    return {
        "images_timed": timed,
        "images_faithfulness": len(x),
        "seconds_end_to_end": {k: round(v, 3) for k, v in timing.items()},
        "gradcam_over_predict": round(timing["gradcam overlays"] / timing["predict"], 2),
        "command_over_command": round(timing["explain command"] / timing["predict command"], 2),
        "maps_over_model_call": round(compute["gradcam"] / compute["model call"], 2),
        "seconds_maps_only": {k: round(v, 4) for k, v in compute.items()},
        "faithfulness": faithful,
    }


def explain_markdown(result: dict) -> str:
    """The section bench.py adds to docs/benchmarks.md."""
    e2e, maps = result["seconds_end_to_end"], result["seconds_maps_only"]
    lines = [
        "## Explain (Grad-CAM) against predict",
        "",
        f"{result['images_timed']} PNG files (medians of 3). As commands, each starting "
        f"Python and loading the run: `cnnctl predict` {e2e['predict command']:.2f} s, "
        f"`cnnctl explain` {e2e['explain command']:.2f} s: "
        f"**{result['command_over_command']:.2f}x** (aim 3x). In one process with the model "
        f"held: predict {e2e['predict']:.3f} s, explain {e2e['gradcam overlays']:.3f} s "
        f"({result['gradcam_over_predict']:.1f}x: explain also draws and writes "
        f"{result['images_timed']} overlay PNGs, which predict does not). "
        "Maps alone on the same images in memory: "
        + ", ".join(f"{k} {v:.3f} s" for k, v in maps.items())
        + f" (Grad-CAM {result['maps_over_model_call']:.2f}x one model call).",
        "",
        f"Deletion on {result['images_faithfulness']} test images (Petsiuk et al.): area under "
        "the explained class's probability as the map's top pixels are removed in steps of "
        "10% (lower is better), and the share of images where removing the top 10% lowers it "
        "more than removing a random 10%. Removed pixels are set to black (RISE's deletion) "
        f"or to the image blurred with a Gaussian of sigma {BLUR_SIGMA:g} px (Fong & Vedaldi "
        "2017). `random regions`, a random map in 7x7 blocks, is the control: a removal "
        "that favoured coarse maps for their shape would let it win half the images or more.",
        "",
        "| map | AUC, black | wins, black | AUC, blur | wins, blur |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in result["faithfulness"].items():
        cells = [name]
        for removal in ("black", "blur"):
            wins = row[f"wins_at_10pct_{removal}"]
            cells += [
                f"{row[f'deletion_auc_{removal}']:.3f}",
                "-" if wins is None else f"{wins:.0%}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
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
