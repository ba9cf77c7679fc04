"""Micro-batching: many worker threads submit single requests, one thread runs batches.

Up to ``max_size`` requests, or whatever arrived within ``max_wait_ms`` of the first,
go through the engine together; each caller gets exactly its own output back. When
a batch fails, its requests are run one by one so that a single bad input fails
alone instead of taking its batch-mates with it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass(frozen=True)
class Batched(Generic[Resp]):
    """An output and the size of the batch that produced it."""

    output: Resp
    batch_size: int


class MicroBatcher(Generic[Req, Resp]):
    """Collects requests from many threads into batches for ``run_batch``."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[Req]], Sequence[Resp]],
        max_size: int,
        max_wait_ms: float,
        name: str = "batcher",
        on_batch: Callable[[int], None] | None = None,
        runners: int = 1,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.run_batch = run_batch
        self.max_size = max_size
        self.max_wait_s = max_wait_ms / 1000
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue[tuple[Req, Future[Batched[Resp]]] | None] = (
            queue.SimpleQueue()
        )
        # Several runners: a long batch (a huge document) does not stall every other.
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
            for i in range(runners)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, request: Req) -> Future[Batched[Resp]]:
        future: Future[Batched[Resp]] = Future()
        self._queue.put((request, future))
        return future

    def __call__(self, request: Req) -> Batched[Resp]:
        """Run one request as part of a batch; blocks until its output is ready."""
        return self.submit(request).result()

    def close(self) -> None:
        self._queue.put(None)  # each runner passes it on before it stops
        for thread in self._threads:
            thread.join(timeout=30)

    def _collect(self, first: tuple[Req, Future[Batched[Resp]]]) -> list[Any]:
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_size:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # let the loop see the stop after this batch
                break
            batch.append(item)
        return batch

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._queue.put(None)  # the other runners stop too
                return
            batch = self._collect(first)
            if self.on_batch is not None:
                self.on_batch(len(batch))
            self._run([r for r, _ in batch], [f for _, f in batch])

    def _run(self, requests: list[Req], futures: list[Future[Batched[Resp]]]) -> None:
        try:
            outputs = self.run_batch(requests)
            if len(outputs) != len(requests):
                raise RuntimeError(f"engine returned {len(outputs)} outputs for {len(requests)}")
        except Exception as exc:
            if len(requests) == 1:
                futures[0].set_exception(exc)
                return
            log.warning("batch of %d failed; running its requests one by one", len(requests))
            for request, future in zip(requests, futures, strict=True):
                self._run([request], [future])
            return
        for output, future in zip(outputs, futures, strict=True):
            future.set_result(Batched(output, len(requests)))
