"""`make bench-serve`: `cnnctl serve` under load against the server users write by hand.

    python bench/bench_serve.py                 # trains a run of the seed network (1 epoch)
    python bench/bench_serve.py --run runs/fashion_mnist --seconds 10
    python bench/bench_serve.py --quick         # 3 s a level, 5,000 requests for memory

`hey` (Debian's package) posts one 28x28 PNG as a multipart field, to 127.0.0.1 only, for a
bounded time at each concurrency (1, 8, 32), against, in the same run: the naive server
(`bench/naive_server.py`: FastAPI and `model.predict` per request), `cnnctl serve` of the
Keras model, and `cnnctl serve` of the run (its checked ONNX export). Then the resident memory
of `cnnctl serve` before and after 50,000 more requests. Writes docs/serve-benchmarks.json
and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CNNCTL = [PYTHON, "-m", "cnnctl.cli", "--offline"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
BOUNDARY = "cnnctlbenchboundary"
LEVELS = (1, 8, 32)


class Server:
    """A server in a child process; `url` once it answers `ready` (a GET that returns 2xx/405)."""

    def __init__(self, command: list[str], cwd: Path, url: str | None = None) -> None:
        self.process = subprocess.Popen(
            command, cwd=cwd, env=ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 180
        self.url = url
        while self.url is None:
            found = re.search(r"on (http://127\.0\.0\.1:\d+)/", "".join(self.lines))
            self.url = found.group(1) if found else None
            self._alive(deadline)
        import urllib.request

        while True:  # the naive server has no readiness route: any answer will do
            try:
                urllib.request.urlopen(f"{self.url}/openapi.json", timeout=2)
                break
            except OSError:
                self._alive(deadline)

    def _alive(self, deadline: float) -> None:
        if self.process.poll() is not None or time.monotonic() > deadline:
            self.process.kill()
            raise SystemExit(f"server did not start: {''.join(self.lines)[-2000:]}")
        time.sleep(0.1)

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def hey(url: str, body: Path, concurrency: int, seconds: float = 0, requests: int = 0) -> dict:
    """One bounded load: requests/s, p50 and p99 latency (ms), and how many were not 200.

    From hey's per-request CSV: its summary leaves out a percentile that fewer than 100
    requests reach (a slow server's p99).
    """
    bound = ["-z", f"{seconds}s"] if seconds else ["-n", str(requests)]
    command = ["hey", *bound, "-c", str(concurrency), "-t", "20", "-m", "POST", "-o", "csv"]
    command += ["-T", f"multipart/form-data; boundary={BOUNDARY}", "-D", str(body), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    times = sorted(float(row["response-time"]) for row in rows)
    wall = max((float(r["offset"]) + float(r["response-time"]) for r in rows), default=1.0)

    def percentile(p: int) -> float | None:
        return (
            round(times[max(math.ceil(p / 100 * len(times)) - 1, 0)] * 1000, 2) if times else None
        )

    return {
        "concurrency": concurrency,
        "requests_per_second": round(len(rows) / wall, 1),
        "p50_ms": percentile(50),
        "p99_ms": percentile(99),
        "responses": len(rows),
        "not_200": sum(row["status-code"] != "200" for row in rows),
    }


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """A run (trained here unless given, copied so the export stays here) and the request body."""
    if args.run is None:
        config = REPO / "configs" / "fashion_mnist.yaml"
        train = [*CNNCTL, "--runs-dir", "runs", "train", str(config), "--epochs", "1"]
        subprocess.run(
            [*train, "--set", "data.limit=10000", "--json"],
            cwd=work,
            env=ENV,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        run = work / "runs" / "fashion_mnist"
    else:
        run = Path(shutil.copytree(args.run, work / "runs" / args.run.name))
        shutil.rmtree(run / "export", ignore_errors=True)
    subprocess.run(
        [*CNNCTL, "export", str(run), "--format", "onnx", "--json"],
        cwd=work,
        env=ENV,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    from PIL import Image

    sys.path.insert(0, str(REPO))
    from cnnctl.data.sources import read_idx

    images = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
    png = work / "one.png"
    Image.fromarray(read_idx(images)[0]).save(png)
    body = work / "body.multipart"
    body.write_bytes(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="one.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + png.read_bytes()
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return run, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: train one, 1 epoch)")
    parser.add_argument("--seconds", type=float, default=10, help="load per level and server")
    parser.add_argument("--memory-requests", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true", help="3 s a level, 5,000 for memory")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "serve-benchmarks.json")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.memory_requests = 3, 5_000
    if shutil.which("hey") is None:
        raise SystemExit("needs hey: apt-get install hey")
    work = Path(tempfile.mkdtemp(prefix="cnnctl-bench-serve-"))
    print(f"working in {work}", flush=True)
    run, body = prepare(args, work)
    servers = {
        "naive FastAPI + model.predict": (
            [PYTHON, str(REPO / "bench" / "naive_server.py"), str(run / "model.keras"), "18741"],
            "http://127.0.0.1:18741",
            "/predict",
        ),
        "cnnctl serve (Keras)": (
            [*CNNCTL, "serve", "--model", str(run / "model.keras"), "--port", "0"],
            None,
            "/v1/predict",
        ),
        "cnnctl serve (run: ONNX)": (
            [*CNNCTL, "--runs-dir", str(run.parent), "serve", run.name, "--port", "0"],
            None,
            "/v1/predict",
        ),
    }
    results: dict = {"levels": {}, "memory": {}}
    for name, (command, url, route) in servers.items():
        server = Server(command, work, url)
        try:
            hey(server.url + route, body, 8, requests=500)  # warm-up, not measured
            results["levels"][name] = [
                hey(server.url + route, body, c, seconds=args.seconds) for c in LEVELS
            ]
            for row in results["levels"][name]:
                print(f"{name:32} {json.dumps(row)}", flush=True)
            if name.startswith("cnnctl serve (run"):
                hey(server.url + route, body, 32, requests=5_000)  # settle allocations first
                before = server.rss_mb()
                load = hey(server.url + route, body, 32, requests=args.memory_requests)
                after = server.rss_mb()
                results["memory"] = {
                    "server": name,
                    "requests": args.memory_requests,
                    "rss_mb_before": round(before, 1),
                    "rss_mb_after": round(after, 1),
                    "growth_percent": round(100 * (after - before) / before, 2),
                    "not_200": load["not_200"],
                }
                print(f"memory: {json.dumps(results['memory'])}", flush=True)
        finally:
            server.stop()
    baseline = {
        row["concurrency"]: row for row in results["levels"]["naive FastAPI + model.predict"]
    }
    results["ratios"] = {
        name: {
            str(row["concurrency"]): round(
                row["requests_per_second"]
                / max(baseline[row["concurrency"]]["requests_per_second"], 1e-9),
                1,
            )
            for row in rows
        }
        for name, rows in results["levels"].items()
    }
    results["cpus"] = len(os.sched_getaffinity(0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [
        "| server | concurrency | requests/s | p50 ms | p99 ms | non-200 | vs naive |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in results["levels"].items():
        for row in rows:
            ratio = results["ratios"][name][str(row["concurrency"])]
            lines.append(
                f"| {name} | {row['concurrency']} | {row['requests_per_second']:,.1f} | "
                f"{row['p50_ms']} | {row['p99_ms']} | {row['not_200']} | {ratio}x |"
            )
    memory = results["memory"]
    if memory:
        lines.append(
            f"\nResident memory of {memory['server']}: {memory['rss_mb_before']} MB before, "
            f"{memory['rss_mb_after']} MB after {memory['requests']:,} more requests "
            f"({memory['growth_percent']:+.2f}%)."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
