"""cnnctl serve: a real server on a free loopback port, spoken to over HTTP.

Predictions equal `cnnctl predict --format json` for the same PNGs; the routes; adaptive
batching and its bounded queue; exported models served without TensorFlow.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cnnctl.cli import main
from cnnctl.serve.batcher import Batcher, QueueFull

from conftest import REPO


class Server:
    """`cnnctl serve ... --port 0` in a child process; its URL read from the start-up line."""

    def __init__(self, args: list[str], cwd: Path, limits: str = "", start: float = 120) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "CNNCTL_OFFLINE": "1",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "CNNCTL_LIMITS": limits,
        }
        env.pop("CNNCTL_API_KEY", None)
        command = [sys.executable, "-m", "cnnctl.cli", "serve", "--port", "0", *args]
        self.process = subprocess.Popen(
            command, cwd=cwd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + start
        self.url = None
        while self.url is None:
            found = re.search(r"on (http://127\.0\.0\.1:\d+)/", "".join(self.lines))
            if found:
                self.url = found.group(1)
            elif self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"serve did not start: {''.join(self.lines)}")
            else:
                time.sleep(0.05)
        while httpx.get(f"{self.url}/readyz").status_code != 200:
            time.sleep(0.05)

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        """SIGTERM, and the exit code once it has drained."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self._reader.join(timeout=5)
        return code


@pytest.fixture(scope="module")
def pngs(tmp_path_factory, mnist_test_set) -> list[Path]:
    """Eight real test digits as 28x28 PNG files."""
    x, _ = mnist_test_set
    folder = tmp_path_factory.mktemp("pngs")
    paths = [folder / f"digit-{i}.png" for i in range(8)]
    for i, path in enumerate(paths):
        Image.fromarray(x[8000 + i]).save(path)
    return paths


@pytest.fixture(scope="module")
def keras_server(trained, tmp_path_factory):
    """The trained run served from its Keras model."""
    server = Server(["--runs-dir", str(trained)], tmp_path_factory.mktemp("serve"))
    yield server
    assert server.stop() == 0, server.stderr


@pytest.fixture(scope="module")
def exported_run(trained, tmp_path_factory, data_dir) -> Path:
    """A copy of the trained run with its checked ONNX export."""
    runs = tmp_path_factory.mktemp("exported")
    shutil.copytree(trained / "small", runs / "small")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CNNCTL_OFFLINE", "1")
        env.setenv("CNNCTL_DATA_DIR", str(data_dir))
        result = CliRunner().invoke(main, ["export", str(runs / "small"), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    return runs


def predict_json(runs: Path, pngs: list[Path], *args: str) -> list[dict]:
    """What `cnnctl predict --format json` prints, with each path cut to its file name."""
    command = ["predict", "--runs-dir", str(runs), "--format", "json", *args, *map(str, pngs)]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output
    return [{**row, "path": Path(row["path"]).name} for row in json.loads(result.stdout)]


def upload(url: str, pngs: list[Path], **params) -> httpx.Response:
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in pngs]
    return httpx.post(f"{url}/v1/predict", files=files, params=params, timeout=30)


def test_predictions_equal_predict_json(keras_server, trained, pngs):
    response = upload(keras_server.url, pngs)
    assert response.status_code == 200, response.text
    assert response.json() == predict_json(trained, pngs)
    assert "runs/small/model.keras (keras, task classification, 10 outputs: 0, 1, 2" in (
        keras_server.stderr
    )


def test_raw_and_base64_bodies_answer_as_multipart(keras_server, trained, pngs):
    expected = predict_json(trained, pngs[:2], "--top-k", "5")
    raw = httpx.post(
        f"{keras_server.url}/v1/predict?top_k=5",
        content=pngs[0].read_bytes(),
        headers={"Content-Type": "image/png"},
    )
    assert raw.status_code == 200
    assert raw.json() == [{**expected[0], "path": "body"}]
    encoded = [base64.b64encode(p.read_bytes()).decode() for p in pngs[:2]]
    as_json = httpx.post(f"{keras_server.url}/v1/predict?top_k=5", json={"images": encoded})
    assert as_json.status_code == 200
    assert as_json.json() == [{**row, "path": f"images[{i}]"} for i, row in enumerate(expected)]


def test_model_health_readiness_and_docs(keras_server, trained):
    model = httpx.get(f"{keras_server.url}/v1/model").json()
    assert model["task"] == "classification"
    assert model["class_names"] == [str(i) for i in range(10)]
    assert model["input_shape"] == [None, 28, 28, 1]
    assert (model["format"], model["runtime"], model["tta"]) == ("keras", "keras", "none")
    assert model["file"].endswith("small/model.keras")
    assert httpx.get(f"{keras_server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{keras_server.url}/readyz").json() == {"status": "ready"}
    assert "/v1/predict" in httpx.get(f"{keras_server.url}/openapi.json").json()["paths"]


def test_metrics_count_requests_batches_and_not_random_paths(keras_server, pngs):
    upload(keras_server.url, pngs[:3])
    for i in range(5):
        assert httpx.get(f"{keras_server.url}/no-such-page-{i}").status_code == 404
    text = httpx.get(f"{keras_server.url}/metrics").text
    assert re.search(r'cnnctl_requests_total\{route="/v1/predict",status="200"\} [1-9]', text)
    assert 'cnnctl_requests_total{route="other",status="404"} 5.0' in text
    assert "no-such-page" not in text
    assert re.search(r"cnnctl_batch_size_count [1-9]", text)
    assert 'cnnctl_request_seconds_bucket{le="0.05",route="/v1/predict"}' in text
    assert "cnnctl_queue_images 0.0" in text


def test_user_mistakes_are_one_line_json(keras_server, pngs):
    text = httpx.post(
        f"{keras_server.url}/v1/predict", content=b"hello", headers={"Content-Type": "text/plain"}
    )
    assert text.status_code == 415
    assert text.json()["error"].startswith("unsupported Content-Type text/plain")
    other = httpx.post(
        f"{keras_server.url}/v1/predict", files=[("image", ("a.png", pngs[0].read_bytes()))]
    )
    assert other.status_code == 422
    assert other.json() == {
        "error": "unexpected form field 'image': send images as fields named file"
    }
    bad = httpx.post(f"{keras_server.url}/v1/predict", json={"images": ["not base64!"]})
    assert (bad.status_code, bad.json()) == (422, {"error": "images[0]: not valid base64"})


def test_a_run_with_a_checked_onnx_export_is_served_without_tensorflow(
    exported_run, pngs, tmp_path
):
    server = Server(["small", "--runs-dir", str(exported_run)], tmp_path)
    try:
        assert "small/export/model.onnx (onnxruntime, task classification" in server.stderr
        maps = Path(f"/proc/{server.process.pid}/maps").read_text()
        assert "libonnxruntime" in maps or "onnxruntime" in maps
        assert "tensorflow" not in maps, "an exported model must be served without TensorFlow"
        response = upload(server.url, pngs)
        model = exported_run / "small" / "export" / "model.onnx"
        assert response.json() == predict_json(exported_run, pngs, "--model", str(model))
        described = httpx.get(f"{server.url}/v1/model").json()
        assert described["runtime"] == "onnxruntime"
        assert described["export_parity"]["passed"] is True
    finally:
        assert server.stop() == 0, server.stderr


# ------------------------------------------------------------------ the batcher, in one process


def _batcher(calls: list[int], seconds: float = 0.0, **options) -> Batcher:
    def score(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        time.sleep(seconds)
        return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True)

    settings = {"max_batch_size": 8, "max_latency_ms": 50, "max_queue": 64} | options
    return Batcher(score, **settings)


def test_requests_that_arrive_together_are_scored_in_one_call():
    calls: list[int] = []

    async def scenario():
        batcher = _batcher(calls)
        await batcher.start()
        images = [np.full((1, 2, 2, 1), i, np.float32) for i in range(6)]
        outputs = await asyncio.gather(*(batcher.submit(x) for x in images))
        await batcher.stop()
        return outputs

    outputs = asyncio.run(scenario())
    assert calls == [6]
    assert [float(o[0, 0]) for o in outputs] == [4.0 * i for i in range(6)]


def test_a_batch_closes_at_max_batch_size_and_large_requests_are_chunked():
    calls: list[int] = []

    async def scenario():
        batcher = _batcher(calls, max_batch_size=4)
        await batcher.start()
        big = np.ones((10, 2, 2, 1), np.float32)
        result = await batcher.submit(big)
        await batcher.stop()
        return result

    assert len(asyncio.run(scenario())) == 10
    assert calls == [4, 4, 2]


def test_a_full_queue_refuses_at_once_instead_of_growing():
    calls: list[int] = []

    async def scenario():
        batcher = _batcher(calls, seconds=0.3, max_queue=2, max_batch_size=1, max_latency_ms=0)
        await batcher.start()
        first = asyncio.create_task(batcher.submit(np.ones((1, 2, 2, 1), np.float32)))
        await asyncio.sleep(0.05)  # the first is being scored; the queue is empty again
        waiting = [asyncio.create_task(batcher.submit(np.ones((1, 2, 2, 1)))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="2 images are waiting"):
            await batcher.submit(np.ones((1, 2, 2, 1), np.float32))
        await asyncio.gather(first, *waiting)
        await batcher.stop()

    asyncio.run(scenario())
    assert calls == [1, 1, 1]
