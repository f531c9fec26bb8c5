"""The HTTP routes: predict, model, health, readiness, metrics, and the page at `/`.

Imported only by `cnnctl serve`, after it has checked that the `serve` extra is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from cnnctl.errors import CnnctlError, first_line
from cnnctl.serve.batcher import Batcher, QueueFull
from cnnctl.serve.metrics import Guard, Metrics
from cnnctl.serve.model import ServedModel
from cnnctl.serve.uploads import UploadError, decode_all, read_body, uploaded_images

STATIC = resources.files("cnnctl.serve") / "static"
UPLOAD_DOC = {
    "requestBody": {
        "description": "Images: multipart fields named `file` (repeatable), one raw image "
        'body (image/png, image/jpeg, ...), or JSON {"images": ["<base64>", ...]}.',
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"images": {"type": "array", "items": {"type": "string"}}},
                }
            },
        },
    }
}


@dataclass(frozen=True)
class ServeOptions:
    max_batch_size: int = 32
    max_latency_ms: float = 5.0
    max_queue: int = 1024  # images waiting; beyond it, 503
    workers: int = 1  # threads that run the model
    api_key: str | None = None


def create_app(served: ServedModel, options: ServeOptions) -> Any:
    """The ASGI application serving `served` (FastAPI, wrapped in the metrics and key guard)."""
    metrics = Metrics()
    batcher = Batcher(
        served.score,
        options.max_batch_size,
        options.max_latency_ms,
        options.max_queue,
        options.workers,
        metrics.observe_batch,
    )
    decoders = ThreadPoolExecutor(2, thread_name_prefix="cnnctl-decode")
    explainer = ThreadPoolExecutor(1, thread_name_prefix="cnnctl-explain")
    state = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        state["ready"] = True
        try:
            yield
        finally:  # uvicorn has drained the requests in flight by now
            state["ready"] = False
            await batcher.stop()
            decoders.shutdown(wait=True)
            explainer.shutdown(wait=True)

    app = FastAPI(
        title="cnnctl serve",
        summary=f"{served.source.task.name} model {served.source.model_file.name}",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's own /docs loads Swagger UI from a CDN: served offline below
        redoc_url=None,
    )

    def answer(data: Any, status: int = 200, headers: dict | None = None) -> Response:
        body = json.dumps(data).encode()
        return Response(body, status, headers=headers, media_type="application/json")

    @app.post("/v1/predict", openapi_extra=UPLOAD_DOC)
    async def predict(
        request: Request,
        top_k: int | None = Query(
            None, ge=1, le=10_000, description="Classes per image (default: the task's, as predict)"
        ),
        overlay: bool = Query(
            False, description="Segmentation: add each mask's coloured overlay (a PNG data URL)"
        ),
    ) -> Response:
        """What `cnnctl predict --format json` prints for the uploaded images."""
        if not state["ready"]:
            return answer({"error": "the model is not ready"}, 503, {"Retry-After": "1"})
        try:
            body = await read_body(request.stream(), request.headers.get("content-length"))
            images = uploaded_images(request.headers.get("content-type", ""), body)
            del body
            arrays = await asyncio.get_running_loop().run_in_executor(
                decoders, decode_all, images, served.input_shape
            )
            outputs = await batcher.submit(arrays)
        except UploadError as error:
            closing = {"Connection": "close"} if error.status in (408, 413) else None
            return answer({"error": error.message}, error.status, closing)
        except QueueFull as error:
            return answer({"error": f"busy: {error}"}, 503, {"Retry-After": "1"})
        except CnnctlError as error:  # the runtime failed on this model
            return answer({"error": error.message}, 500)
        names = [name for name, _ in images]
        try:
            if not overlay:
                return answer(served.rows(outputs, names, top_k))
            rows = await asyncio.get_running_loop().run_in_executor(
                decoders, served.rows, outputs, names, top_k, arrays
            )
        except Exception as error:  # outputs the task cannot read: still one line of JSON
            why = f"{type(error).__name__}: {first_line(error, 200)}"
            return answer({"error": f"cannot read the model's outputs ({why})"}, 500)
        return answer(rows)

    explaining = asyncio.Semaphore(1)  # one Grad-CAM at a time; a second waits, a third: 503
    waiting = {"explain": 0}

    @app.post("/v1/explain", openapi_extra=UPLOAD_DOC)
    async def explain(request: Request) -> Response:
        """Grad-CAM of one image, as `cnnctl explain` draws it (a Keras model only)."""
        if not state["ready"]:
            return answer({"error": "the model is not ready"}, 503, {"Retry-After": "1"})
        if served.keras_model is None:
            return answer(
                {
                    "error": f"{served.source.model_file.name}: explain needs gradients, which an "
                    "exported file does not give; serve the run's model.keras with --model"
                },
                501,
            )
        if waiting["explain"] >= 2:
            return answer(
                {"error": "busy: an explanation is being drawn"}, 503, {"Retry-After": "1"}
            )
        waiting["explain"] += 1
        try:
            body = await read_body(request.stream(), request.headers.get("content-length"))
            images = uploaded_images(request.headers.get("content-type", ""), body)
            del body
            if len(images) != 1:
                raise UploadError(422, f"{len(images)} images: explain takes one a request")
            loop = asyncio.get_running_loop()
            arrays = await loop.run_in_executor(decoders, decode_all, images, served.input_shape)
            async with explaining:
                row = await loop.run_in_executor(explainer, served.explain, arrays[0], images[0][0])
        except UploadError as error:
            closing = {"Connection": "close"} if error.status in (408, 413) else None
            return answer({"error": error.message}, error.status, closing)
        except CnnctlError as error:  # this model cannot be explained (no convolution, ...)
            return answer({"error": error.message}, 422)
        finally:
            waiting["explain"] -= 1
        return answer(row)

    @app.get("/v1/model")
    async def model() -> Response:
        """Task, class names, input shape, file, format, runtime, export parity, TTA, batching."""
        batching = {
            "max_batch_size": options.max_batch_size,
            "max_latency_ms": options.max_latency_ms,
            "max_queue": options.max_queue,
            "workers": options.workers,
        }
        return answer({**served.describe(), "batching": batching})

    @app.get("/healthz")
    async def healthz() -> Response:
        """The process is alive."""
        return answer({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        """The model is loaded and warmed up, and the server takes requests."""
        if not state["ready"]:
            return answer({"status": "not ready"}, 503)
        return answer({"status": "ready"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus metrics: requests, latency, batch sizes, queue depth."""
        text, kind = metrics.text()
        return Response(text, media_type=kind)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        """The OpenAPI page, with Swagger UI's files from the swagger-ui-bundle package."""
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="cnnctl serve - API",
            swagger_js_url="/static/docs/swagger-ui-bundle.js",
            swagger_css_url="/static/docs/swagger-ui.css",
            swagger_favicon_url="/static/docs/favicon-32x32.png",
        )

    app.mount("/static/docs", StaticFiles(directory=swagger_ui_path), name="docs")
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return Guard(app, metrics, options.api_key)
