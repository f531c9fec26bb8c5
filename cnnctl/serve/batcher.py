"""Adaptive batching: requests that arrive together are scored in one call of the model.

The first request waits at most `max_latency` for others; a batch closes at `max_batch_size`
images. While the model scores one batch, new requests gather into the next, so a busy server
scores large batches and an idle one answers at once. The queue is bounded (in images): a
request that would pass it is refused at once (HTTP 503) instead of waiting ever longer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class QueueFull(Exception):
    """The queue holds as many images as it may; the request should be retried later."""


class Batcher:
    """Gathers `submit`ted image arrays into batches for `score`, run on `workers` threads."""

    def __init__(
        self,
        score: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int,
        max_latency_ms: float,
        max_queue: int,
        workers: int = 1,
        observe: Callable[[int, int], None] | None = None,
    ) -> None:
        self._score = score
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000
        self.max_queue = max_queue
        self.workers = workers
        self._observe = observe or (lambda batch, queued: None)  # batch size, images queued
        self.queued = 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.workers)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cnnctl-model")
        self._task = asyncio.create_task(self._gather())

    async def stop(self) -> None:
        """After the last request in flight has its answer (uvicorn drains them first)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """The model's outputs for `images` (N, H, W, C), scored with whatever else is waiting."""
        if self.queued + len(images) > self.max_queue:
            raise QueueFull(f"{self.queued} images are waiting (the queue holds {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self.queued += len(images)
        self._queue.put_nowait((images, future))
        self._observe(0, self.queued)
        return await future

    async def _gather(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()  # a free runner first: meanwhile requests pile up
            items = [await self._queue.get()]
            count = len(items[0][0])
            deadline = loop.time() + self.max_latency
            while count < self.max_batch_size:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), left)
                    except TimeoutError:
                        break
                items.append(item)
                count += len(item[0])
            self.queued -= count
            self._observe(count, self.queued)
            asyncio.create_task(self._run(items))

    async def _run(self, items: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        try:
            batch = np.concatenate([images for images, _ in items]).astype(np.float32)
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._chunked, batch
            )
            start = 0
            for images, future in items:
                if not future.done():  # the client may have gone
                    future.set_result(outputs[start : start + len(images)])
                start += len(images)
        except Exception as error:  # the model failed: every waiting request hears why
            for _, future in items:
                if not future.done():
                    future.set_exception(error)
        finally:
            self._slots.release()

    def _chunked(self, batch: np.ndarray) -> np.ndarray:
        """A request of more images than a batch holds is scored in batch-sized calls."""
        size = self.max_batch_size
        parts = [self._score(batch[i : i + size]) for i in range(0, len(batch), size)]
        return np.concatenate(parts)
