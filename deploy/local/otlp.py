"""An in-process OTLP/gRPC trace receiver (the collector's TraceService, from
opentelemetry-proto): the tests and the tracing benchmark point the stack's
``OTEL_EXPORTER_OTLP_ENDPOINT`` at it and read back what every process exported.

    with OtlpSink() as sink:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint}
        ...
        spans = sink.trace(trace_id)
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from deploy.local.lifecycle import Started


@dataclass(frozen=True)
class SpanRecord:
    """One received span, flattened."""

    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]
    status_code: int
    start_ns: int
    end_ns: int
    # (name, time) of each span event, in the order they were added.
    events: tuple[tuple[str, int], ...] = ()

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    def event_ns(self, name: str) -> int | None:
        """When the first event called ``name`` happened; None if there was none."""
        return next((at for event, at in self.events if event == name), None)


def _value(value: common_pb2.AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which) if which else None


def _records(request: trace_service_pb2.ExportTraceServiceRequest) -> Iterable[SpanRecord]:
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield SpanRecord(
                    service=service,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    name=span.name,
                    kind=span.kind,
                    attributes={a.key: _value(a.value) for a in span.attributes},
                    links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                    status_code=span.status.code,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    events=tuple((e.name, e.time_unix_nano) for e in span.events),
                )


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: OtlpSink) -> None:
        self.sink = sink

    def Export(  # noqa: N802 (gRPC method name)
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        if self.sink.keep:
            self.sink.add(_records(request))
        else:
            self.sink.add_count(
                sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            )
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpSink(Started):
    """Collects spans exported over OTLP/gRPC to ``endpoint`` (plaintext, 127.0.0.1)."""

    def __init__(self, keep: bool = True) -> None:
        """``keep=False`` only counts spans (cheap: for benchmarks, not assertions)."""
        self.keep = keep
        self._lock = threading.Condition()
        self._by_trace: defaultdict[str, list[SpanRecord]] = defaultdict(list)
        self._count = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _TraceService(self), self._server
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def count(self) -> int:
        """Spans received so far."""
        with self._lock:
            return self._count

    def add(self, records: Iterable[SpanRecord]) -> None:
        with self._lock:
            for record in records:
                self._by_trace[record.trace_id].append(record)
                self._count += 1
            self._lock.notify_all()

    def add_count(self, count: int) -> None:
        with self._lock:
            self._count += count
            self._lock.notify_all()

    def trace(self, trace_id: str) -> list[SpanRecord]:
        with self._lock:
            return list(self._by_trace.get(trace_id, ()))

    def spans(self) -> list[SpanRecord]:
        with self._lock:
            return [s for spans in self._by_trace.values() for s in spans]

    def find(self, name: str | None = None, **attributes: Any) -> list[SpanRecord]:
        """Spans with this name (if given) whose attributes include ``attributes``
        (dots in attribute names written as ``__``: ``nlp__task_id=...``)."""
        wanted = {k.replace("__", "."): v for k, v in attributes.items()}
        return [
            s
            for s in self.spans()
            if (name is None or s.name == name)
            and all(s.attributes.get(k) == v for k, v in wanted.items())
        ]

    def wait_until(self, done: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Wait until ``done()`` holds (checked after every export); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.5))
            return True

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=1).wait()
