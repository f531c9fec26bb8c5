"""Prometheus metrics, and the ASGI layer that counts every request and checks the API key.

Routes are labelled by the server's own route names (anything else is `other`), so a client
that asks for a million random paths cannot make a million time series.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

ROUTES = (
    "/",
    "/v1/predict",
    "/v1/explain",
    "/v1/model",
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
)
OPEN = {"/", "/healthz", "/readyz", "/static", "/docs", "/openapi.json"}  # no key needed


class Metrics:
    """requests by route and status, latency, batch sizes, queue depth; a registry of its own."""

    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
        )

        disable_created_metrics()  # the *_created series: noise for a server's own counters
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cnnctl_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cnnctl_request_seconds",
            "Time to answer a request",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )
        self.batch = Histogram(
            "cnnctl_batch_size",
            "Images per call of the model",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.queue = Gauge(
            "cnnctl_queue_images", "Images waiting to be scored", registry=self.registry
        )

    def observe_batch(self, size: int, queued: int) -> None:
        if size:
            self.batch.observe(size)
        self.queue.set(queued)

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def route_of(path: str) -> str:
    if path.startswith("/static/"):
        return "/static"
    return path if path in ROUTES or path == "/openapi.json" else "other"


class Guard:
    """Counts and times each request; with an API key, refuses requests without it (401)."""

    def __init__(self, app: Any, metrics: Metrics, api_key: str | None) -> None:
        self.app, self.metrics, self.api_key = app, metrics, api_key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_of(scope["path"])
        started = time.perf_counter()
        status = [500]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.api_key and route not in OPEN and not self._allowed(scope):
                await _refuse(sending, 401, "missing or wrong API key: send X-API-Key: KEY")
            else:
                await self.app(scope, receive, sending)
        finally:
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    def _allowed(self, scope: dict) -> bool:
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key", b"")
        bearer = headers.get(b"authorization", b"")
        if bearer.lower().startswith(b"bearer "):
            given = given or bearer[7:].strip()
        return hmac.compare_digest(given, self.api_key.encode())


async def _refuse(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="cnnctl"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
