"""`make bench`: cnnctl against the plain Keras script, side by side in one run, medians and ratios.

    python bench/bench.py            # full: Fashion-MNIST, 3 repetitions
                                     # (about 20 minutes on 2 cores)
    python bench/bench.py --quick    # a smoke run on a subset (about 3 minutes)
    python bench/bench.py --accurate # also the >= 0.93 config, 3 seeds (adds about 30 minutes)

Writes docs/benchmarks.md (tables and the machine) and docs/benchmarks.json (raw figures).
Shared machines vary by up to 2x between runs: compare the ratios, measured A/B alternated.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CNNCTL = [PYTHON, "-m", "cnnctl.cli", "--offline"]
TARGET = 0.909  # the seed script's Fashion-MNIST test accuracy, measured on this kind of machine
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def measure(command: list[str], cwd: Path) -> dict:
    """Run `command`; its wall seconds, peak resident memory (MB) and stdout.

    wait4's ru_maxrss of a child started by fork and exec is at least this process's own
    peak (it is inherited), so where it is not well above that, the peak is the child's own
    VmHWM, read from /proc while it runs.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        own_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, cwd=cwd, env=ENV)
        polled_kb = 0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            polled_kb = max(polled_kb, _peak_kb(process.pid))
            time.sleep(0.005)  # also how late the exit is seen: small beside any run timed
        seconds = time.perf_counter() - started
        out.seek(0), err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"failed: {' '.join(command)}\n{err.read()[-3000:]}")
        inherited = usage.ru_maxrss <= own_peak_kb + 64 * 1024  # (kB)
        peak_kb = polled_kb if inherited else usage.ru_maxrss
        return {"wall_seconds": seconds, "peak_mb": peak_kb / 1024, "stdout": out.read()}


def _peak_kb(pid: int) -> int:
    """A running process's own peak resident memory (VmHWM), in KiB; 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
    except OSError:
        return 0


def seed_script(args: argparse.Namespace, cwd: Path, mixed: bool = False) -> dict:
    extra = ["--limit", str(args.limit), "--epochs", str(args.epochs)] if args.quick else []
    extra += ["--mixed"] if mixed else []
    result = measure([PYTHON, str(REPO / "bench" / "seed_script.py"), *extra], cwd)
    figures = json.loads(result.pop("stdout").strip().splitlines()[-1])
    reached = next((e["seconds"] for e in figures["epochs"] if e["val_accuracy"] >= TARGET), None)
    return {
        **result,
        "images_per_second": figures["images_per_second"],
        "fit_seconds": figures["fit_seconds"],
        "test_accuracy": figures["test_accuracy"],
        "seconds_to_target": reached,
    }


def cnnctl_train(config: str, args: argparse.Namespace, cwd: Path, *overrides: str) -> dict:
    extra = (
        ["--set", f"data.limit={args.limit}", "--epochs", str(args.epochs)] if args.quick else []
    )
    sets = [item for override in overrides for item in ("--set", override)]
    result = measure(
        [
            *CNNCTL,
            "train",
            str(REPO / "configs" / config),
            "--json",
            "--runs-dir",
            "runs",
            *extra,
            *sets,
        ],
        cwd,
    )
    summary = json.loads(result.pop("stdout"))
    with open(cwd / summary["run"] / "metrics.csv") as stream:
        rows = list(csv.DictReader(stream))
    elapsed, reached = 0.0, None
    for row in rows:
        elapsed += float(row["seconds"])
        if reached is None and float(row["val_accuracy"]) >= TARGET:
            reached = elapsed
    images = summary["train_images"] * len(rows)  # the rate in the summary leaves out epoch 1
    return {
        **result,
        "images_per_second": images / elapsed,
        "fit_seconds": elapsed,
        "test_accuracy": summary["test"]["accuracy"],
        "seconds_to_target": reached,
        "run": summary["run"],
    }


def median(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------- start-up and predict


def startup(cwd: Path, model: Path, image: Path, reps: int) -> dict:
    commands = {
        "python -c 'import tensorflow'": [PYTHON, "-c", "import tensorflow"],
        "cnnctl --help": [*CNNCTL, "--help"],
        "cnnctl validate configs/mnist.yaml": [
            *CNNCTL,
            "validate",
            str(REPO / "configs" / "mnist.yaml"),
        ],
        "cnnctl predict one.png": [*CNNCTL, "predict", str(image), "--model", str(model)],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(reps):
        for name, command in commands.items():
            times[name].append(measure(command, cwd)["wall_seconds"])
    return {name: statistics.median(values) for name, values in times.items()}


PREDICT_CODE = """
import json, statistics, sys, time
from pathlib import Path
from cnnctl.startup import load_tensorflow
load_tensorflow()
import keras, numpy as np
from PIL import Image
from cnnctl.scoring.predict import predict_images
from cnnctl.scoring.source import resolve_source
folder, model_path = Path(sys.argv[1]), Path(sys.argv[2])
paths = sorted(folder.glob("*.png"))
x = np.stack([np.asarray(Image.open(p))[..., None] for p in paths]).astype("float32")
model = keras.saving.load_model(model_path)
model.predict(x, batch_size=256, verbose=0)
held = resolve_source(None, model_path, Path('runs'))  # as a server holds it: loaded once
predict_images(held, [str(folder)])
direct, cold, warm = [], [], []
for _ in range(5):
    t = time.perf_counter()
    model.predict(x, batch_size=256, verbose=0)
    direct.append(time.perf_counter() - t)
    t = time.perf_counter()  # one `cnnctl predict`: find, load, trace the model, then predict
    out = predict_images(resolve_source(None, model_path, Path('runs')), [str(folder)])
    cold.append(time.perf_counter() - t)
    assert len(out.items) == len(paths)
    t = time.perf_counter()  # the per-file work alone: decode, batch, predict, rows
    out = predict_images(held, [str(folder)])
    warm.append(time.perf_counter() - t)
    assert len(out.items) == len(paths)
print(json.dumps({"images": len(paths), "direct_seconds": statistics.median(direct),
                  "predict_seconds": statistics.median(cold),
                  "warm_seconds": statistics.median(warm)}))
"""


def predict_folder(cwd: Path, model: Path, count: int) -> dict:
    from PIL import Image

    from cnnctl.data.sources import load_builtin

    folder = cwd / "pngs"
    folder.mkdir(exist_ok=True)
    for index, image in enumerate(load_builtin("fashion_mnist").x_test[:count]):
        Image.fromarray(image).save(folder / f"{index:05d}.png")
    figures = json.loads(
        measure([PYTHON, "-c", PREDICT_CODE, str(folder), str(model)], cwd)["stdout"]
    )
    return {
        **figures,
        "direct_images_per_second": count / figures["direct_seconds"],
        "predict_images_per_second": count / figures["predict_seconds"],
        "ratio": figures["predict_seconds"] / figures["direct_seconds"],
        "warm_ratio": figures["warm_seconds"] / figures["direct_seconds"],
    }


# --------------------------------------------------------------------------- FLOPs


def training_flops(config_path: Path) -> float:
    """FLOPs to train on one image: forward, plus weight and input gradients.

    No input gradient flows into the first layer.
    """
    from cnnctl.startup import load_tensorflow

    load_tensorflow()
    import keras

    from cnnctl.config import load_config
    from cnnctl.model.builder import build_model

    model = build_model(load_config(config_path), 10)
    total, first = 0.0, True
    for layer in model.layers:
        forward = 0.0
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            forward = 2.0 * h * w * kh * kw * layer.input.shape[-1] * c_out
        elif isinstance(layer, keras.layers.Dense):
            forward = 2.0 * layer.input.shape[-1] * layer.units
        if forward:
            total += forward * (2 if first else 3)
            first = False
    return total


def machine() -> dict:
    info = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        for line in cpuinfo.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                info["cpu"] = value.strip()
            if key.strip() == "cpu MHz":
                info["mhz"] = float(value)
            if key.strip() == "flags":
                flags = set(value.split())
                info["flags"] = sorted(
                    flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni"}
                )
    except OSError:
        pass
    import keras
    import tensorflow as tf

    info["tensorflow"], info["keras"] = tf.__version__, keras.__version__
    return info


def peak_flops(info: dict) -> tuple[float, str]:
    lanes = 16 if "avx512f" in info.get("flags", []) else 8
    fma_units = 1
    ghz = info.get("mhz", 2600) / 1000
    peak = info["cores"] * ghz * 1e9 * lanes * 2 * fma_units
    return peak, (
        f"{info['cores']} cores x {ghz:.2f} GHz x {lanes} FP32 lanes "
        f"({'AVX-512' if lanes == 16 else 'AVX2'})"
        f" x 2 (FMA) x {fma_units} FMA unit per core"
    )


# --------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a subset and fewer epochs: checks the bench itself"
    )
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--accurate", action="store_true", help="also the >= 0.93 config, 3 seeds")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    args.reps = args.reps or (1 if args.quick else 3)
    args.limit, args.epochs = 10_000, 2
    work = Path(tempfile.mkdtemp(prefix="cnnctl-bench-"))
    print(f"working in {work}", flush=True)

    results: dict[str, list[dict]] = {"script": [], "seed": [], "fast": [], "fast_float32": []}
    for rep in range(args.reps):  # A/B alternated
        for name, run in [
            ("script", lambda: seed_script(args, work)),
            ("seed", lambda: cnnctl_train("fashion_mnist.yaml", args, work)),
            ("fast", lambda: cnnctl_train("fashion_mnist_fast.yaml", args, work)),
            (
                "fast_float32",
                lambda: cnnctl_train(
                    "fashion_mnist_fast.yaml", args, work, "train.precision=float32"
                ),
            ),
        ]:
            results[name].append(run())
            last = results[name][-1]
            print(
                f"rep {rep + 1} {name:13s} {last['images_per_second']:8.0f} img/s  "
                f"wall {last['wall_seconds']:6.1f}s  peak {last['peak_mb']:6.0f} MB  "
                f"acc {last['test_accuracy']:.4f}",
                flush=True,
            )

    model = work / results["seed"][-1]["run"] / "model.keras"
    from PIL import Image

    from cnnctl.data.sources import load_builtin

    Image.fromarray(load_builtin("fashion_mnist").x_test[0]).save(work / "one.png")
    starts = startup(work, model, work / "one.png", reps=3 if args.quick else 5)
    from bench_export import export_predict  # beside this file

    starts |= export_predict(work, model.parent, work / "one.png", reps=3 if args.quick else 5)
    print("start-up", starts, flush=True)
    predict = predict_folder(work, model, 2000)
    print("predict", predict, flush=True)
    from bench_explain import explain_bench  # beside this file

    explained = explain_bench(model.parent, load_builtin("fashion_mnist").x_test[:200, ..., None])
    print("explain", explained, flush=True)
    from bench_streaming import streaming  # beside this file

    stream = streaming(work, *((2000, 8000) if args.quick else (20000, 80000)))
    accurate = (
        [
            cnnctl_train("fashion_mnist_accurate.yaml", args, work, f"seed={seed}")
            for seed in (1, 2, 3)
        ]
        if args.accurate
        else []
    )

    info = machine()
    flops = training_flops(REPO / "configs" / "fashion_mnist.yaml")
    peak, assumptions = peak_flops(info)
    summary = {
        name: {
            key: median(runs, key)
            for key in (
                "images_per_second",
                "wall_seconds",
                "fit_seconds",
                "peak_mb",
                "test_accuracy",
                "seconds_to_target",
            )
        }
        for name, runs in results.items()
    }
    raw = {
        "machine": info,
        "quick": args.quick,
        "reps": args.reps,
        "target_accuracy": TARGET,
        "training_flops_per_image": flops,
        "peak_flops": peak,
        "peak_assumptions": assumptions,
        "summary": summary,
        "runs": results,
        "startup_seconds": starts,
        "predict_folder": predict,
        "accurate": accurate,
        "streaming": stream,
        "explain": explained,
    }
    args.out.mkdir(exist_ok=True)
    (args.out / "benchmarks.json").write_text(json.dumps(raw, indent=2) + "\n")
    (args.out / "benchmarks.md").write_text(markdown(raw))
    print(markdown(raw))


def markdown(raw: dict) -> str:
    s, info = raw["summary"], raw["machine"]
    script, seed, fast, fast32 = s["script"], s["seed"], s["fast"], s["fast_float32"]
    flops, peak = raw["training_flops_per_image"], raw["peak_flops"]

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "n/a"

    def secs(value):
        return f"{value:.1f}" if value is not None else "not reached"

    lines = [
        "# Benchmarks",
        "",
        "Measured by `make bench` "
        f"({'quick: 10,000 images, 2 epochs' if raw['quick'] else 'full Fashion-MNIST'}; "
        f"median of {raw['reps']} runs, A/B alternated in one invocation).",
        "",
        f"Machine: {info.get('cpu', '?')}, {info['cores']} cores, flags "
        f"{', '.join(info.get('flags', []))}; "
        f"Python {info['python']}, TensorFlow {info['tensorflow']}, Keras {info['keras']}.",
        "",
        "## Training: cnnctl against the plain Keras script (same network, same data)",
        "",
        "| run | train images/s | vs script | wall s | fit s | peak MB | vs script | test acc | s "
        "to 0.909 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in [
        ("plain Keras script (batch 32)", script),
        ("cnnctl configs/fashion_mnist.yaml", seed),
        ("cnnctl configs/fashion_mnist_fast.yaml (mixed)", fast),
        ("same, precision float32", fast32),
    ]:
        lines.append(
            f"| {name} | {row['images_per_second']:,.0f} | "
            f"{ratio(row['images_per_second'], script['images_per_second'])}"
            f" | {row['wall_seconds']:.1f} | {row['fit_seconds']:.1f} | {row['peak_mb']:,.0f} | "
            f"{ratio(row['peak_mb'], script['peak_mb'])} | {row['test_accuracy']:.4f} | "
            f"{secs(row['seconds_to_target'])} |"
        )
    if fast["seconds_to_target"] and script["fit_seconds"]:
        lines += [
            "",
            f"The fast config reaches {TARGET} test accuracy after "
            f"{fast['seconds_to_target']:.1f} s of "
            f"training: {fast['seconds_to_target'] / script['fit_seconds']:.2f} of the plain "
            "script's "
            f"{script['fit_seconds']:.1f} s (target: at most 1/3).",
        ]
    lines += [
        "",
        "Images/s count every epoch's training and validation time, for both; `wall` is the whole "
        "process (start-up, data, training, test, files).",
        "",
        "## Share of the machine",
        "",
        f"Training FLOPs per image (seed network): {flops / 1e6:.2f} MFLOP (forward, plus weight "
        "and input "
        f"gradients; no input gradient into the first layer).",
        f"FP32 peak: {peak / 1e9:.0f} GFLOP/s = {raw['peak_assumptions']}.",
        "",
        "| run | achieved GFLOP/s | of FP32 peak |",
        "| --- | ---: | ---: |",
    ]
    for name, row in [
        ("plain Keras script", script),
        ("cnnctl seed config", seed),
        ("cnnctl fast config", fast),
        ("cnnctl fast config, float32", fast32),
    ]:
        achieved = row["images_per_second"] * flops
        lines.append(f"| {name} | {achieved / 1e9:.1f} | {achieved / peak:.0%} |")
    st = raw["startup_seconds"]
    base = st["python -c 'import tensorflow'"]
    lines += [
        "",
        "## Start-up (median wall seconds)",
        "",
        "| command | s | minus `import tensorflow` |",
        "| --- | ---: | ---: |",
    ]
    for name, value in st.items():
        lines.append(f"| `{name}` | {value:.2f} | {value - base:+.2f} |")
    p = raw["predict_folder"]
    lines += [
        "",
        "## Predict on a folder of PNG files (TensorFlow start-up excluded)",
        "",
        f"{p['images']:,} PNG files against the loaded model called directly on the same "
        f"images already in memory (`model.predict`, {p['direct_seconds']:.3f} s): "
        f"`predict_images` with its model held (decode, batch, predict, rows: the per-file "
        f"work) {p['warm_seconds']:.3f} s, ratio {p.get('warm_ratio', 0):.2f}x (aim: 1.5x); "
        f"one whole call (find, load and trace the model first) {p['predict_seconds']:.3f} s, "
        f"ratio {p['ratio']:.2f}x.",
        "",
    ]
    if raw.get("streaming"):
        from bench_streaming import streaming_markdown

        lines += [streaming_markdown(raw["streaming"])]
    if raw.get("explain"):
        from bench_explain import explain_markdown

        lines += [explain_markdown(raw["explain"])]
    if raw["accurate"]:
        accs = [r["test_accuracy"] for r in raw["accurate"]]
        walls = [r["wall_seconds"] for r in raw["accurate"]]
        lines += [
            "## Accuracy config",
            "",
            f"`configs/fashion_mnist_accurate.yaml`, seeds 1-3: test accuracy "
            f"median {statistics.median(accs):.4f} ({', '.join(f'{a:.4f}' for a in accs)}), wall "
            "median "
            f"{statistics.median(walls) / 60:.1f} min (target: >= 0.93 in <= 10 min).",
            "",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
