"""Micro-batching: many worker threads submit single requests, runner threads run batches.

Up to ``max_size`` requests, or whatever arrived within ``max_wait_ms`` of the first,
go through the engine together; each caller gets exactly its own output back. When
a batch fails, its requests are run one by one so that a single bad input fails
alone instead of taking its batch-mates with it.

Requests wait in one FIFO per lane (docs/lanes.md). A batch's first place goes to the
lane :class:`~shared.transport.lanes.WeightedLanes` picks among the lanes with work
waiting (so a lower lane always moves), its remaining places to the highest lanes
first. ``interactive_runners`` further runners take interactive requests only: an
interactive request never waits for a running bulk batch to finish.

Each model run is one ``inference`` span: a child of its first request's span, linked
to every request's span (the requests usually belong to as many traces).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from opentelemetry import trace

from shared.contracts.names import ALL_LANES
from shared.observability.telemetry import (
    ATTR_BATCH_SIZE,
    ATTR_TOKENS_IN,
    ATTR_TOKENS_OUT,
    counting_tokens,
    links_to,
    tracer,
)
from shared.transport.lanes import WeightedLanes

log = logging.getLogger(__name__)

# WorkerSettings.lane_weights' defaults, for batchers built without settings.
DEFAULT_LANE_WEIGHTS: Mapping[str, int] = {"interactive": 16, "standard": 4, "batch": 1}
INTERACTIVE = "interactive"

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def lower_priority(nice: int) -> None:
    """Set the calling thread's niceness to ``nice`` (Linux: niceness is per thread;
    a no-op elsewhere). A model call releases the GIL, so the kernel's choice holds."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError as exc:  # e.g. a seccomp profile that refuses it
            log.warning("could not lower a bulk runner's priority", extra={"error": str(exc)})


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
    once :meth:`start` was called, until :meth:`close`.

    ``runners`` general runners take every lane; ``interactive_runners`` further ones
    take interactive requests only. ``lane_weights`` (lane → weight; None: 16/4/1)
    share each batch's first place between the lanes that have requests waiting.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[Req]], Sequence[Resp]],
        max_size: int,
        max_wait_ms: float,
        name: str = "batcher",
        on_batch: Callable[[BatchRun], None] | None = None,
        runners: int = 1,
        span_attributes: dict[str, str] | None = None,
        lane_weights: Mapping[str, int] | None = None,
        interactive_runners: int = 0,
        bulk_nice: int = 0,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        if runners < 1:
            raise ValueError("runners must be at least 1")
        if interactive_runners < 0:
            raise ValueError("interactive_runners must not be negative")
        self.run_batch = run_batch
        self.max_size = max_size
        self.max_wait_s = max_wait_ms / 1000
        self.on_batch = on_batch
        self.name = name
        self.span_attributes = dict(span_attributes or {})
        self.runners = runners
        self.interactive_runners = interactive_runners
        # Only beside an interactive runner: otherwise the bulk runners serve every lane.
        self.bulk_nice = bulk_nice if interactive_runners else 0
        self._policy = WeightedLanes(DEFAULT_LANE_WEIGHTS if lane_weights is None else lane_weights)
        self._lanes: dict[str, deque[_Item[Req, Resp]]] = {lane: deque() for lane in ALL_LANES}
        # One lock, two wait lists: a request of a lower lane wakes no interactive runner.
        self._lock = threading.Lock()
        self._any_waiting = threading.Condition(self._lock)
        self._interactive_waiting = threading.Condition(self._lock)
        self._closing = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the runner threads; requests submitted before wait for them."""
        # Several runners: a long batch (a huge document) does not stall every other.
        self._threads = [
            threading.Thread(target=self._loop, name=f"{self.name}-{i}", daemon=True)
            for i in range(self.runners)
        ] + [
            threading.Thread(
                target=self._loop,
                args=(True,),
                name=f"{self.name}-interactive-{i}",
                daemon=True,
            )
            for i in range(self.interactive_runners)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, request: Req, span: trace.Span | None = None, lane: str = "standard"
    ) -> Future[Batched[Resp]]:
        """Queue ``request`` in ``lane``'s FIFO; ``span`` (its task's) is linked from the
        batch's span. After :meth:`close`, the future fails with RuntimeError."""
        try:
            fifo = self._lanes[lane]
        except KeyError:
            raise ValueError(f"unknown lane {lane!r}") from None
        future: Future[Batched[Resp]] = Future()
        item = _Item(request, future, span or trace.INVALID_SPAN)
        with self._lock:
            if self._closing:
                future.set_exception(RuntimeError(f"micro-batcher {self.name} is closed"))
                return future
            fifo.append(item)
            if lane == INTERACTIVE:
                self._interactive_waiting.notify()
            # Interactive too: every interactive runner may be busy.
            self._any_waiting.notify()
        return future

    def __call__(self, request: Req) -> Batched[Resp]:
        """Run one request as part of a batch; blocks until its output is ready."""
        return self.submit(request).result()

    def close(self) -> None:
        """Stop every runner once the requests already queued have run; later
        submissions fail. Requests left when no runner runs (never started) fail."""
        with self._lock:
            self._closing = True
            self._any_waiting.notify_all()
            self._interactive_waiting.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
        if any(thread.is_alive() for thread in self._threads):
            return  # a stuck batch: the runners still drain the queues when it ends
        with self._lock:
            left = [item for fifo in self._lanes.values() for item in fifo]
            for fifo in self._lanes.values():
                fifo.clear()
        for item in left:
            item.future.set_exception(RuntimeError(f"micro-batcher {self.name} is closed"))

    def _waiting(self, interactive_only: bool) -> list[str]:
        lanes = (INTERACTIVE,) if interactive_only else ALL_LANES
        return [lane for lane in lanes if self._lanes[lane]]

    def _fill(self, batch: list[_Item[Req, Resp]], interactive_only: bool) -> None:
        """Top ``batch`` up to max_size, highest lane first (with the lock held)."""
        for lane in (INTERACTIVE,) if interactive_only else ALL_LANES:
            fifo = self._lanes[lane]
            while fifo and len(batch) < self.max_size:
                batch.append(fifo.popleft())

    def _next_batch(self, interactive_only: bool) -> list[_Item[Req, Resp]] | None:
        """The next batch to run, waiting for its first request; None once closed
        and nothing this runner takes is left."""
        wake = self._interactive_waiting if interactive_only else self._any_waiting
        with self._lock:
            while not (waiting := self._waiting(interactive_only)):
                if self._closing:
                    return None
                wake.wait()
            lane = self._policy.pick(waiting)
            assert lane is not None  # waiting is not empty
            batch = [self._lanes[lane].popleft()]
            self._fill(batch, interactive_only)
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_size and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wake.wait(remaining)
                self._fill(batch, interactive_only)
        return batch

    def _loop(self, interactive_only: bool = False) -> None:
        if self.bulk_nice and not interactive_only:
            lower_priority(self.bulk_nice)
        while (batch := self._next_batch(interactive_only)) is not None:
            self._run(batch)

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
