"""`make bench-gpu`: images/s on an NVIDIA GPU, float32 vs mixed precision, cnnctl vs plain script.

    python bench/bench_gpu.py          # on a machine with a GPU and the datasets at hand
    python bench/bench_gpu.py --quick  # fewer images and epochs

Needs Fashion-MNIST (and CIFAR-10 for the larger config) where cnnctl finds them
offline: $CNNCTL_DATA_DIR/<name>/, the Keras cache, or Debian's folder. A dataset that is
not there is reported as skipped. Appends a GPU section to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench import REPO, cnnctl_train, measure, seed_script
from cnnctl.data.sources import find_builtin


def gpu_name() -> str:
    try:
        return measure(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], REPO
        )["stdout"].strip()
    except (OSError, SystemExit):
        return "no NVIDIA GPU found"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    args.limit, args.epochs = (10_000, 2) if args.quick else (60_000, 3)
    args.quick = True  # always bound the epochs: the aim is throughput, not accuracy
    work = Path(tempfile.mkdtemp(prefix="cnnctl-bench-gpu-"))
    rows: dict[str, list[dict]] = {}
    plans = [
        (
            "cnnctl fashion_mnist.yaml",
            "fashion_mnist",
            lambda p: cnnctl_train("fashion_mnist.yaml", args, work, f"train.precision={p}"),
        ),
        (
            "plain Keras script",
            "fashion_mnist",
            lambda p: seed_script(args, work, mixed=p == "mixed"),
        ),
        (
            "cnnctl cifar10.yaml",
            "cifar10",
            lambda p: cnnctl_train("cifar10.yaml", args, work, f"train.precision={p}"),
        ),
    ]
    skipped = []
    for _ in range(args.reps):
        for name, dataset, run in plans:
            if find_builtin(dataset) is None:
                skipped.append(f"{name}: {dataset} not found offline")
                continue
            for precision in ("float32", "mixed"):
                result = run(precision)
                rows.setdefault(f"{name} ({precision})", []).append(result)
                print(
                    f"{name:28s} {precision:8s} {result['images_per_second']:9.0f} img/s",
                    flush=True,
                )
    summary = {
        name: statistics.median(r["images_per_second"] for r in runs) for name, runs in rows.items()
    }
    text = ["", f"## GPU ({gpu_name()})", "", "| run | train images/s |", "| --- | ---: |"]
    text += [f"| {name} | {value:,.0f} |" for name, value in summary.items()]
    text += [f"\nSkipped: {'; '.join(sorted(set(skipped)))}" if skipped else ""]
    args.out.mkdir(exist_ok=True)
    (args.out / "benchmarks-gpu.json").write_text(
        json.dumps({"gpu": gpu_name(), "runs": rows}, indent=2)
    )
    with open(args.out / "benchmarks.md", "a") as stream:
        stream.write("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
