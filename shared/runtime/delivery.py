"""One delivery of a Celery bundle message, as the worker runtime's steps pass it on.

A :class:`Delivery` carries what every step needs about the message being run: its
bundle, which attempt this is, when it started, each task's trace context and ``run``
span, and the count of outcomes so far.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry import trace

from nlp.v1 import tasks_pb2
from shared.contracts.envelope import seconds, timestamp
from shared.transport.bundle import Bundle

# A task and the terminal result decided for it.
Finished = tuple[tasks_pb2.TaskEnvelope, tasks_pb2.TaskResult]


class TaskRequest(Protocol):
    """What the runtime reads of a Celery task's current request."""

    @property
    def retries(self) -> int: ...

    @property
    def delivery_info(self) -> Mapping[str, object] | None: ...


class RetryableTask(Protocol):
    """The bound Celery task a bundle runs under (:meth:`celery.Task.retry` re-sends it)."""

    @property
    def request(self) -> TaskRequest: ...

    def retry(
        self,
        *,
        kwargs: dict[str, Any] | None = None,
        exc: Exception | None = None,
        countdown: float | None = None,
        headers: dict[str, str] = ...,
    ) -> Exception: ...


@dataclass
class Delivery:
    """One run of one Celery message's bundle on this worker."""

    bundle: Bundle
    # Retries of this message so far (Celery's ``request.retries``).
    retries: int
    # Epoch seconds the run began.
    started: float
    outcome: Counter[str] = field(default_factory=Counter)
    # Per task id: the trace context its bundle entry carried, and its open ``run`` span.
    contexts: dict[str, Mapping[str, str]] = field(default_factory=dict)
    spans: dict[str, trace.Span] = field(default_factory=dict)
    # Decoded tasks still in time, and the expired ones with their results.
    live: list[tasks_pb2.TaskEnvelope] = field(default_factory=list)
    late: list[Finished] = field(default_factory=list)

    @property
    def attempt(self) -> int:
        """1 for the first run of the message."""
        return self.retries + 1

    @property
    def handed_at(self) -> float:
        return self.bundle.handed_at

    def span(self, task_id: str) -> trace.Span:
        """The task's open ``run`` span (a no-op span once it ended)."""
        return self.spans.get(task_id, trace.INVALID_SPAN)

    def take_span(self, task_id: str) -> trace.Span:
        """The task's ``run`` span, no longer kept here: the caller ends it."""
        return self.spans.pop(task_id, trace.INVALID_SPAN)

    def end_spans(self) -> None:
        """End the spans still open (tasks retried, or an error escaped)."""
        for span in self.spans.values():
            span.end()
        self.spans.clear()

    def retry_bundle(self, envelopes: list[tasks_pb2.TaskEnvelope]) -> Bundle:
        """The bundle of a retry carrying only ``envelopes``, with their trace contexts."""
        traces = [dict(self.contexts.get(e.task_id, {})) for e in envelopes]
        return Bundle.of(envelopes, self.handed_at, traces)

    def stamp(
        self, result: tasks_pb2.TaskResult, envelope: tasks_pb2.TaskEnvelope, now: float
    ) -> None:
        """Set the result's stage timings from this delivery's times."""
        created = seconds(envelope.created_at)
        result.timings.queued_ms = max(0.0, (self.handed_at - created) * 1000)
        result.timings.waited_ms = max(0.0, (self.started - self.handed_at) * 1000)
        result.timings.ran_ms = (now - self.started) * 1000
        result.timings.finished_at.CopyFrom(timestamp(now))
