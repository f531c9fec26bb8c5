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

from conftest import CHROMEDRIVER, CHROMIUM, REPO, require_chromium
from hostile_models import png_header_bomb


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


def upload(url: str, pngs: list[Path], path: str = "/v1/predict", **params) -> httpx.Response:
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in pngs]
    return httpx.post(f"{url}{path}", files=files, params=params, timeout=30)


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
    docs = httpx.get(f"{keras_server.url}/docs").text  # offline: every asset from this server
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", docs)
    assert assets and all(url.startswith("/") for url in assets), assets
    assert all(httpx.get(f"{keras_server.url}{url}").status_code == 200 for url in assets)


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
        assert described["explain"] is False
        explained = upload(server.url, pngs[:1], path="/v1/explain")
        assert explained.status_code == 501
        assert explained.json()["error"].startswith("model.onnx: explain needs gradients")
    finally:
        assert server.stop() == 0, server.stderr


def test_test_time_augmentation_is_served_as_predict_applies_it(
    onnx_file, exported_run, pngs, tmp_path
):
    server = Server(["--model", str(onnx_file), "--tta", "horizontal_flip"], tmp_path)
    try:
        assert "tta horizontal_flip" in server.stderr
        expected = predict_json(
            exported_run, pngs[:3], "--model", str(onnx_file), "--tta", "horizontal_flip"
        )
        assert upload(server.url, pngs[:3]).json() == expected
        assert expected != predict_json(exported_run, pngs[:3], "--model", str(onnx_file))
    finally:
        assert server.stop() == 0


def test_uploads_are_never_written_to_disk(keras_server, tmp_path):
    environ = Path(f"/proc/{keras_server.process.pid}/environ").read_bytes().split(b"\0")
    folder = Path(next(v for v in environ if v.startswith(b"TMPDIR=")).decode()[7:])
    before = sorted(folder.rglob("*"))
    noise = np.random.default_rng(0).integers(0, 256, (700, 700), dtype=np.uint8)
    big = tmp_path / "noise.png"
    Image.fromarray(noise).save(big)
    # Three of them make a body past 1 MB, where Starlette's own form parser spools to a file.
    assert big.stat().st_size > 400_000
    response = upload(keras_server.url, [big] * 3)
    assert response.status_code == 200
    assert sorted(folder.rglob("*")) == before


def test_without_the_serve_extra_the_fix_is_one_pip_line(runner, monkeypatch, trained):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    result = runner.invoke(main, ["serve", "--runs-dir", str(trained)])
    assert result.exit_code == 2
    assert "uvicorn is not installed; cnnctl serve needs the 'serve' extra" in result.stderr
    assert 'hint: pip install "cnnctl[serve]"' in result.stderr


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


# ------------------------------------------------------------------ hostile requests

HOSTILE_LIMITS = "request_bytes=200000,request_seconds=2,pixels=1000000"


@pytest.fixture(scope="module")
def onnx_file(exported_run) -> Path:
    return exported_run / "small" / "export" / "model.onnx"


@pytest.fixture(scope="module")
def hostile_server(onnx_file, tmp_path_factory):
    """The exported model served with small limits: 200 kB bodies, 2 s, 1 megapixel."""
    server = Server(["--model", str(onnx_file)], tmp_path_factory.mktemp("h"), HOSTILE_LIMITS)
    yield server
    assert server.stop() == 0, server.stderr


def raw_request(url: str, head: bytes, body_parts=(), pause: float = 0.0) -> tuple[bytes, float]:
    """Send `head` and `body_parts` on a socket (pausing between parts); the answer and when
    it came (seconds after the head was sent). A server may close the socket mid-send."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        started = time.monotonic()
        try:
            sock.sendall(head)
            for part in body_parts:
                time.sleep(pause)
                sock.sendall(part)
        except OSError:  # closed by the server while we were still sending
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
        return answer, time.monotonic() - started


def test_a_body_declared_too_large_is_refused_before_it_is_read(hostile_server):
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 2000000000\r\n\r\n"
    )
    answer, seconds = raw_request(hostile_server.url, head)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"the request body is too large (2,000,000,000 > limit 200,000 bytes" in answer
    assert seconds < 5


def test_a_streamed_body_is_cut_off_once_past_the_limit(hostile_server):
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n" % 50_000 + b"\0" * 50_000 + b"\r\n"
    answer, _ = raw_request(hostile_server.url, head, [chunk] * 6)  # 300 kB, never finished
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"limit 200,000 bytes" in answer


def test_a_slow_body_is_cut_off_with_408(hostile_server):
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 1000\r\n\r\n" + b"\0" * 10
    )
    answer, seconds = raw_request(hostile_server.url, head)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"took more than 2 s to arrive" in answer
    assert 1.5 < seconds < 10


def test_a_client_that_sends_its_headers_a_byte_at_a_time_is_disconnected(hostile_server):
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n"
    trickle = [b"X" for _ in range(40)]  # one byte every 0.25 s: 10 s if never cut
    answer, seconds = raw_request(hostile_server.url, head, trickle, pause=0.25)
    assert answer == b""
    assert seconds < 6


def _bomb(path: Path) -> Path:
    Image.new("L", (3000, 3000)).save(path)  # 9 megapixels of zeros: a few kB of PNG
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_bomb, "refused: 3000x3000 is more than 1,000,000 pixels"),
        (png_header_bomb, "refused: 14142x14142 is more than 1,000,000 pixels"),
    ],
    ids=["decompression-bomb", "header-of-200-megapixels"],
)
def test_images_over_the_pixel_limit_are_422(hostile_server, tmp_path, make, reason):
    path = make(tmp_path / "bomb.png")
    assert path.stat().st_size < 200_000
    response = upload(hostile_server.url, [path])
    assert response.status_code == 422
    assert response.json()["error"] == f"bomb.png: {reason} (raise with cnnctl --limit " + (
        "pixels=9000000)" if make is _bomb else "pixels=199996164)"
    )


@pytest.mark.parametrize("kind", ["multipart", "json"])
def test_more_images_than_a_request_may_hold_are_refused_while_parsing(hostile_server, kind):
    url = f"{hostile_server.url}/v1/predict"
    if kind == "multipart":
        response = httpx.post(url, files=[("file", ("x.png", b"x"))] * 300)
    else:
        response = httpx.post(url, json={"images": [""] * 300})
    assert response.status_code == 413
    assert response.json() == {
        "error": "more than 256 images in one request; send them in several requests"
    }


def test_a_non_image_is_415_in_one_line(hostile_server, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("<script>alert(1)</script>\n")
    response = upload(hostile_server.url, [notes])
    assert response.status_code == 415
    assert response.json() == {"error": "notes.png: not an image file Pillow can read"}


def test_the_api_key_is_required_where_set(onnx_file, pngs, tmp_path):
    server = Server(["--model", str(onnx_file), "--api-key", "s3cret"], tmp_path)
    try:
        url = server.url
        assert upload(url, pngs[:1]).status_code == 401
        assert httpx.get(f"{url}/metrics").status_code == 401
        wrong = httpx.get(f"{url}/v1/model", headers={"X-API-Key": "guess"})
        assert (wrong.status_code, wrong.json()["error"]) == (
            401,
            "missing or wrong API key: send X-API-Key: KEY",
        )
        assert httpx.get(f"{url}/v1/model", headers={"X-API-Key": "s3cret"}).status_code == 200
        bearer = {"Authorization": "Bearer s3cret"}
        assert httpx.get(f"{url}/metrics", headers=bearer).status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200  # probes need no key
        assert httpx.get(f"{url}/").status_code == 200  # the page asks for the key itself
        assert "warning" not in server.stderr
    finally:
        assert server.stop() == 0


def test_a_non_loopback_address_without_a_key_is_warned_about(onnx_file, runner):
    # 192.0.2.1 (TEST-NET-1) is never this machine's: warned, then refused, nothing listens.
    result = runner.invoke(
        main, ["serve", "--model", str(onnx_file), "--host", "192.0.2.1", "--port", "0"]
    )
    assert result.exit_code == 2
    assert (
        "warning: --host 192.0.2.1 is reachable from other machines and no --api-key is set"
        in result.stderr
    )
    assert "--host 192.0.2.1 --port 0: cannot listen there" in result.stderr


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_full_queue_is_503_and_a_stop_drains_requests_in_flight(onnx_file, pngs, tmp_path, stop):
    args = ["--model", str(onnx_file), "--max-latency-ms", "1000", "--max-queue", "1"]
    server = Server(args, tmp_path)
    answers: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: answers.append(upload(server.url, pngs[:1])))
    waiting.start()
    time.sleep(0.3)  # the first image waits 1 s for company, holding the queue's one place
    busy = upload(server.url, pngs[1:2])
    assert busy.status_code == 503
    assert busy.headers["Retry-After"] == "1"
    assert busy.json()["error"].startswith("busy: 1 images are waiting")
    server.process.send_signal(stop)
    waiting.join(timeout=30)
    assert server.process.wait(timeout=30) == 0, server.stderr
    assert answers[0].status_code == 200
    assert answers[0].json()[0]["path"] == pngs[0].name
    server._reader.join(timeout=5)
    assert "stopped: every request in flight was answered" in server.stderr


# ------------------------------------------------------------------ the page, in a real browser

EVIL = "<img src=x onerror=\"document.title='pwned'\">"


@pytest.fixture
def browser():
    """Debian's headless Chromium, driven by its chromedriver (Selenium downloads nothing)."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    yield driver
    driver.quit()


def test_the_page_uploads_a_png_and_shows_its_class_as_text(browser, run_copy, pngs, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    classes = run_copy / "small" / "classes.json"
    names = [f"{EVIL}{i}" for i in range(10)]  # a class name that would run script as HTML
    classes.write_text(json.dumps(names))
    expected = predict_json(run_copy, pngs[:1])[0]["top"][0]["label"]
    server = Server(["--runs-dir", str(run_copy)], tmp_path)
    try:
        browser.get(f"{server.url}/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: "classification model" in d.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "files").send_keys(str(pngs[0]))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card .label"))
        labels = browser.find_elements(By.CSS_SELECTOR, "#results .card .label")
        assert labels[0].text == expected
        assert expected.startswith(EVIL)
        card = browser.find_element(By.CSS_SELECTOR, "#results .card")
        assert card.find_element(By.CSS_SELECTOR, ".name").text == pngs[0].name
        assert len(card.find_elements(By.TAG_NAME, "img")) == 1  # the preview; no injected one
        assert browser.title == "cnnctl serve"  # the onerror never ran
        assert "scored 1 image(s)" in browser.find_element(By.ID, "status").text
    finally:
        assert server.stop() == 0


def test_the_listening_socket_says_tcp_so_asyncio_turns_nagle_off():
    # A socket made without IPPROTO_TCP gets no TCP_NODELAY from asyncio: every keep-alive
    # response then waited 40 ms for the client's delayed ACK (measured: 20 -> 2,600 requests/s).
    import socket

    from cnnctl.serve.server import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
