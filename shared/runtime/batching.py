"""Micro-batching: many worker threads submit single requests, one thread runs batches.

Up to ``max_size`` requests, or whatever arrived within ``max_wait_ms`` of the first,
go through the engine together; each caller gets exactly its own output back. When
a batch fails, its requests are run one by one so that a single bad input fails
alone instead of taking its batch-mates with it.

Each model run is one ``inference`` span: a child of its first request's span, linked
to every request's span (the requests usually belong to as many traces).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from opentelemetry import trace

from shared.observability.telemetry import (
    ATTR_BATCH_SIZE,
    ATTR_TOKENS_IN,
    ATTR_TOKENS_OUT,
    counting_tokens,
    links_to,
    tracer,
)

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass(frozen=True)
class Batched(Generic[Resp]):
    """An output, the size of the batch that produced it, how long its request waited
    for that batch and how long the batch's model run took."""

    output: Resp
    batch_size: int
    batched_s: float = 0.0
    inference_s: float = 0.0


@dataclass(frozen=True)
class BatchRun:
    """One model run, as reported to ``on_batch``."""

    size: int
    seconds: float
    tokens_in: int
    tokens_out: int


@dataclass
class _Item(Generic[Req, Resp]):
    request: Req
    future: Future[Batched[Resp]]
    span: trace.Span
    submitted: float = field(default_factory=time.monotonic)


class MicroBatcher(Generic[Req, Resp]):
    """Collects requests from many threads into batches for ``run_batch``; runs them
    once :meth:`start` was called, until :meth:`close`."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[Req]], Sequence[Resp]],
        max_size: int,
        max_wait_ms: float,
        name: str = "batcher",
        on_batch: Callable[[BatchRun], None] | None = None,
        runners: int = 1,
        span_attributes: dict[str, str] | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.run_batch = run_batch
        self.max_size = max_size
        self.max_wait_s = max_wait_ms / 1000
        self.on_batch = on_batch
        self.name = name
        self.span_attributes = dict(span_attributes or {})
        self.runners = runners
        self._queue: queue.SimpleQueue[_Item[Req, Resp] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the runner threads; requests submitted before wait for them."""
        # Several runners: a long batch (a huge document) does not stall every other.
        self._threads = [
            threading.Thread(target=self._loop, name=f"{self.name}-{i}", daemon=True)
            for i in range(self.runners)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, request: Req, span: trace.Span | None = None) -> Future[Batched[Resp]]:
        """Queue ``request``; ``span`` (its task's) is linked from the batch's span."""
        future: Future[Batched[Resp]] = Future()
        self._queue.put(_Item(request, future, span or trace.INVALID_SPAN))
        return future

    def __call__(self, request: Req) -> Batched[Resp]:
        """Run one request as part of a batch; blocks until its output is ready."""
        return self.submit(request).result()

    def close(self) -> None:
        self._queue.put(None)  # each runner passes it on before it stops
        for thread in self._threads:
            thread.join(timeout=30)

    def _collect(self, first: _Item[Req, Resp]) -> list[_Item[Req, Resp]]:
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
            self._run(self._collect(first))

    def _run(self, items: list[_Item[Req, Resp]]) -> None:
        requests = [item.request for item in items]
        began = time.monotonic()
        links = links_to([i.span for i in items])
        with (
            tracer.start_as_current_span(
                f"inference {self.name}",
                # A child of its first task, linked to all of them.
                context=trace.set_span_in_context(trace.NonRecordingSpan(links[0].context))
                if links
                else None,
                links=links,
                attributes={**self.span_attributes, ATTR_BATCH_SIZE: len(items)},
                record_exception=False,
                set_status_on_exception=False,
            ) as span,
            counting_tokens() as tokens,
        ):
            try:
                outputs = self.run_batch(requests)
                if len(outputs) != len(requests):
                    raise RuntimeError(
                        f"engine returned {len(outputs)} outputs for {len(requests)}"
                    )
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
                failed: Exception | None = exc
            else:
                failed = None
                span.set_attribute(ATTR_TOKENS_IN, tokens[0])
                span.set_attribute(ATTR_TOKENS_OUT, tokens[1])
        seconds = time.monotonic() - began
        if failed is not None:
            if len(items) == 1:
                items[0].future.set_exception(failed)
                return
            log.warning("batch of %d failed; running its requests one by one", len(items))
            for item in items:
                self._run([item])
            return
        if self.on_batch is not None:
            self.on_batch(BatchRun(len(items), seconds, tokens[0], tokens[1]))
        for output, item in zip(outputs, items, strict=True):
            item.future.set_result(Batched(output, len(items), began - item.submitted, seconds))
