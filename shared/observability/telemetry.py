"""OpenTelemetry tracing for every process, configured only by the standard ``OTEL_*`` variables.

Tracing is on when an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) or ``OTEL_TRACES_EXPORTER=console``, and
``OTEL_SDK_DISABLED`` is not true. Otherwise nothing is installed: the API's no-op
tracer answers every call and no instrumentation wraps any client.

A task's trace context travels as W3C ``traceparent``/``tracestate`` in the Kafka
record's headers, then (one context per task of a bundle) in the Celery message's
``nlp_trace`` header. Helpers here carry it across those hops; the maintained
instrumentations (gRPC, Celery, kafka-python, redis) cover the rest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

tracer = trace.get_tracer("nlp-platform")

# Span attribute names of the platform (beside the OpenTelemetry semantic conventions).
ATTR_TASK_ID = "nlp.task_id"
ATTR_KIND = "nlp.kind"
ATTR_LANE = "nlp.lane"
ATTR_BATCH_ID = "nlp.batch_id"
ATTR_MODEL_NAME = "nlp.model.name"
ATTR_MODEL_VERSION = "nlp.model.version"
ATTR_BATCH_SIZE = "nlp.batch.size"
ATTR_TOKENS_IN = "nlp.tokens.input"
ATTR_TOKENS_OUT = "nlp.tokens.output"
ATTR_STATUS = "nlp.task.status"
ATTR_BUNDLE_SIZE = "nlp.bundle.size"

# Span events of a generation's first token: on the worker's inference span when the
# engine produced it, on the gateway's RPC span when it went to the caller (where time to
# first token goes: bench.hops).
EVENT_FIRST_TOKEN = "first token"
EVENT_FIRST_CHUNK = "first chunk"

Headers = Sequence[tuple[str, bytes | None]]


class OtelSettings(BaseSettings):
    """The standard OpenTelemetry variables this module reads itself (the SDK reads the rest:
    sampler, batch processor, exporter headers, timeouts, resource attributes)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    otel_sdk_disabled: bool = False
    otel_service_name: str = ""
    otel_traces_exporter: str = Field("otlp", description="otlp, zipkin, console or none")
    otel_exporter_otlp_endpoint: str = ""
    otel_exporter_otlp_traces_endpoint: str = ""
    otel_exporter_otlp_protocol: str = "grpc"
    otel_exporter_otlp_traces_protocol: str = ""

    @property
    def exporter(self) -> str:
        """``otlp``, ``zipkin``, ``console`` or ``none``: what this process exports traces
        to (``zipkin``: to ``OTEL_EXPORTER_ZIPKIN_ENDPOINT``, which the exporter reads)."""
        name = self.otel_traces_exporter.strip().lower() or "otlp"
        if self.otel_sdk_disabled or name == "none":
            return "none"
        if name == "otlp" and not (
            self.otel_exporter_otlp_endpoint or self.otel_exporter_otlp_traces_endpoint
        ):
            return "none"
        return name

    @property
    def protocol(self) -> str:
        return (self.otel_exporter_otlp_traces_protocol or self.otel_exporter_otlp_protocol).lower()


def _exporter(settings: OtelSettings) -> SpanExporter:
    if settings.exporter == "console":
        return ConsoleSpanExporter()
    if settings.exporter == "zipkin":
        from opentelemetry.exporter.zipkin.json import ZipkinExporter

        return ZipkinExporter()
    if settings.exporter != "otlp":
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={settings.exporter!r}: expected otlp, zipkin, console or none"
        )
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if settings.protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter()
    raise ValueError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL={settings.protocol!r}: expected grpc or http/protobuf"
    )


_install_lock = threading.Lock()


def setup_tracing(service: str, settings: OtelSettings | None = None) -> TracerProvider | None:
    """Install the SDK for this process (once); None when tracing is off.

    ``service`` names the process when ``OTEL_SERVICE_NAME`` is not set. The sampler
    comes from ``OTEL_TRACES_SAMPLER``/``_ARG`` (parent-based always-on by default), so
    a sampled-out request stays sampled out in every downstream process.
    """
    settings = settings or OtelSettings()
    with _install_lock:
        current = _provider()
        if current is not None:
            return current
        if settings.exporter == "none":
            log.info("tracing off (no OTLP endpoint, or OTEL_SDK_DISABLED/OTEL_TRACES_EXPORTER)")
            return None
        attributes: dict[str, str] = {
            "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
        }
        if not settings.otel_service_name:
            attributes["service.name"] = service
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
        trace.set_tracer_provider(provider)
        log.info(
            "tracing on",
            extra={"exporter": settings.exporter, "protocol": settings.protocol},
        )
        return provider


def _provider() -> TracerProvider | None:
    provider = trace.get_tracer_provider()
    return provider if isinstance(provider, TracerProvider) else None


def tracing_enabled() -> bool:
    """True once :func:`setup_tracing` installed the SDK in this process."""
    return _provider() is not None


def instrument_redis(client: Any) -> None:
    """Trace the commands of one of our Redis clients (sync or asyncio).

    Only the platform's own clients, not kombu's: the Celery consumer's blocking pops
    would otherwise each start a trace of their own.
    """
    if tracing_enabled():
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        RedisInstrumentor.instrument_client(client)


def instrument_celery() -> None:
    """Celery run spans, and publish spans of retries (signals; in the worker process,
    before the pool starts). The intake's publish span is made by hand: the
    instrumentation's publish hooks need the task registered in the sending process."""
    if tracing_enabled():
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def instrument_kafka_python() -> None:
    """Producer spans (and injected context) for kafka-python sends: dead letters and
    results. Its consumer side wraps only iteration, not ``poll()``: the intake
    extracts the context itself (:func:`extract_headers`)."""
    if tracing_enabled():
        from opentelemetry.instrumentation.kafka import KafkaInstrumentor

        instrumentor = KafkaInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def instrument_grpc_server() -> None:
    """Server spans for every RPC of ``grpc.aio`` servers created after this call, except
    health checks (probes every few seconds would each start a trace)."""
    if tracing_enabled():
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer, filters

        instrumentor = GrpcAioInstrumentorServer(  # type: ignore[no-untyped-call]
            filter_=filters.negate(filters.health_check())
        )
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def instrument_grpc_client() -> None:
    """Client spans for the (synchronous) channels created after this call: the CLI."""
    if tracing_enabled():
        from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient

        instrumentor = GrpcInstrumentorClient()  # type: ignore[no-untyped-call]
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


@contextlib.contextmanager
def housekeeping() -> Iterator[None]:
    """Background work (heartbeats, sweeps, health probes, back-pressure checks) makes no
    spans: it belongs to no task, and would otherwise start a trace per call."""
    with suppress_instrumentation():
        yield


# --- messaging spans -------------------------------------------------------------------


def messaging_attributes(
    system: str,
    destination: str,
    *,
    partition: int | None = None,
    offset: int | None = None,
    message_id: str | None = None,
    batch_count: int | None = None,
) -> dict[str, str | int]:
    """The OpenTelemetry messaging attributes of a span that sends or receives on
    ``destination`` (a Kafka topic, a Celery queue) of ``system`` (``kafka``,
    ``celery``); each optional one only when given."""
    attributes: dict[str, str | int] = {
        "messaging.system": system,
        "messaging.destination.name": destination,
    }
    if partition is not None:
        attributes["messaging.destination.partition.id"] = str(partition)
    if offset is not None:
        attributes["messaging.kafka.offset"] = offset
    if message_id is not None:
        attributes["messaging.message.id"] = message_id
    if batch_count is not None:
        attributes["messaging.batch.message_count"] = batch_count
    return attributes


# --- carrying the context ---------------------------------------------------------------


class _HeaderGetter(Getter[Headers]):
    def get(self, carrier: Headers, key: str) -> list[str] | None:
        values = [(v or b"").decode("latin-1") for k, v in carrier if k == key]
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        return [k for k, _ in carrier]


class _HeaderSetter(Setter[list[tuple[str, bytes]]]):
    def set(self, carrier: list[tuple[str, bytes]], key: str, value: str) -> None:
        carrier.append((key, value.encode("latin-1")))


_header_getter = _HeaderGetter()
_header_setter = _HeaderSetter()


def inject_headers(ctx: Context | None = None) -> list[tuple[str, bytes]]:
    """The W3C context (``traceparent``, ``tracestate``) as Kafka headers."""
    carrier: list[tuple[str, bytes]] = []
    propagate.inject(carrier, context=ctx, setter=_header_setter)
    return carrier


def extract_headers(headers: Headers) -> Context:
    """The context a Kafka record's headers carry (empty when they carry none)."""
    return propagate.extract(headers, getter=_header_getter)


def carrier_of(ctx: Context | None = None) -> dict[str, str]:
    """The W3C context as a plain mapping (one Celery ``nlp_trace`` entry)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return carrier


def context_of(carrier: Mapping[str, str] | None) -> Context:
    """The context of a mapping made by :func:`carrier_of` (empty when there is none)."""
    return propagate.extract(dict(carrier or {}))


def links_to(spans: Sequence[trace.Span]) -> list[trace.Link]:
    """Links to the valid ones of ``spans``."""
    return [trace.Link(s.get_span_context()) for s in spans if s.get_span_context().is_valid]


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, when there is a real one."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id)


@contextlib.contextmanager
def attached(ctx: Context) -> Iterator[None]:
    """Make ``ctx`` current for the block."""
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


# --- token counts of a model run ----------------------------------------------------------

_tokens = threading.local()


@contextlib.contextmanager
def counting_tokens() -> Iterator[list[int]]:
    """Collect what :func:`count_tokens` reports in this thread during the block:
    yields ``[input, output]``."""
    counts = [0, 0]
    previous = getattr(_tokens, "counts", None)
    _tokens.counts = counts
    try:
        yield counts
    finally:
        _tokens.counts = previous


def count_tokens(input_tokens: int = 0, output_tokens: int = 0) -> None:
    """Called by engines inside ``run_batch``: the tokens the model read and wrote."""
    counts = getattr(_tokens, "counts", None)
    if counts is not None:
        counts[0] += input_tokens
        counts[1] += output_tokens
