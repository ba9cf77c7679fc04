"""Tracing configuration, context carriers, token counts and the metric helpers (pure logic:
no SDK is installed in this process, so spans here are built from explicit contexts)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import pytest
from opentelemetry import trace
from prometheus_client import generate_latest

from shared.observability.logs import JsonFormatter, _ServiceFilter
from shared.observability.metrics import Endpoints, IntakeMetrics, WorkerMetrics
from shared.observability.telemetry import (
    OtelSettings,
    attached,
    carrier_of,
    context_of,
    count_tokens,
    counting_tokens,
    extract_headers,
    inject_headers,
    setup_tracing,
    tracing_enabled,
)
from shared.runtime.batching import BatchRun, MicroBatcher

TRACE_ID, SPAN_ID = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _span() -> trace.Span:
    return trace.NonRecordingSpan(
        trace.SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=trace.TraceFlags(1))
    )


@pytest.mark.parametrize(
    ("env", "exporter"),
    [
        ({}, "none"),
        ({"otel_exporter_otlp_endpoint": "http://collector:4317"}, "otlp"),
        ({"otel_exporter_otlp_traces_endpoint": "http://collector:4317/v1/traces"}, "otlp"),
        ({"otel_exporter_otlp_endpoint": "http://c:4317", "otel_sdk_disabled": True}, "none"),
        ({"otel_exporter_otlp_endpoint": "http://c:4317", "otel_traces_exporter": "none"}, "none"),
        ({"otel_traces_exporter": "console"}, "console"),
    ],
)
def test_tracing_is_on_only_with_somewhere_to_send_spans(
    env: dict[str, object], exporter: str
) -> None:
    assert OtelSettings.model_validate(env).exporter == exporter


def test_settings_read_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    settings = OtelSettings()
    assert settings.protocol == "http/protobuf"
    assert settings.exporter == "none"


def test_no_endpoint_installs_nothing() -> None:
    assert setup_tracing("nlp-test", OtelSettings()) is None
    assert not tracing_enabled()


def test_unknown_protocol_is_a_clear_error() -> None:
    settings = OtelSettings(
        otel_exporter_otlp_endpoint="http://c:4317", otel_exporter_otlp_protocol="carrier-pigeon"
    )
    with pytest.raises(ValueError, match="carrier-pigeon"):
        setup_tracing("nlp-test", settings)
    assert not tracing_enabled()


def test_kafka_headers_carry_the_context_both_ways() -> None:
    headers = inject_headers(trace.set_span_in_context(_span()))
    assert headers == [("traceparent", TRACEPARENT.encode())]
    extracted = trace.get_current_span(extract_headers([("nlp-kind", b"ner"), *headers]))
    assert extracted.get_span_context().trace_id == TRACE_ID
    assert extracted.get_span_context().span_id == SPAN_ID
    assert not trace.get_current_span(extract_headers([])).get_span_context().is_valid


def test_celery_entries_carry_the_context_both_ways() -> None:
    carrier = carrier_of(trace.set_span_in_context(_span()))
    assert carrier == {"traceparent": TRACEPARENT}
    assert trace.get_current_span(context_of(carrier)).get_span_context().span_id == SPAN_ID
    assert not trace.get_current_span(context_of(None)).get_span_context().is_valid


def test_logs_carry_the_current_trace_and_span_ids() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    with attached(trace.set_span_in_context(_span())):
        _ServiceFilter("svc").filter(record)
    line = JsonFormatter().format(record)
    assert f'"trace_id": "{TRACEPARENT[3:35]}"' in line
    assert '"span_id": "b7ad6b7169203331"' in line
    outside = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    _ServiceFilter("svc").filter(outside)
    assert "trace_id" not in JsonFormatter().format(outside)


def test_token_counts_belong_to_their_block() -> None:
    count_tokens(5)  # outside any block: ignored
    with counting_tokens() as outer:
        count_tokens(3, 1)
        with counting_tokens() as inner:
            count_tokens(10)
        count_tokens(2)
    assert outer == [5, 1]
    assert inner == [10, 0]


class CountingEngine:
    def __call__(self, items: Sequence[str]) -> list[str]:
        time.sleep(0.01)
        count_tokens(sum(len(i) for i in items), len(items))
        return [i.upper() for i in items]


def test_batcher_reports_each_run_with_its_tokens_and_times() -> None:
    runs: list[BatchRun] = []
    batcher: MicroBatcher[str, str] = MicroBatcher(
        CountingEngine(), max_size=8, max_wait_ms=50, on_batch=runs.append
    )
    batcher.start()
    try:
        futures = [batcher.submit(text, _span()) for text in ("ab", "cde", "f")]
        outputs = [f.result(timeout=10) for f in futures]
    finally:
        batcher.close()
    assert [o.output for o in outputs] == ["AB", "CDE", "F"]
    assert sum(r.size for r in runs) == 3
    assert sum(r.tokens_in for r in runs) == 6 and sum(r.tokens_out for r in runs) == 3
    assert all(o.inference_s >= 0.01 and o.batched_s >= 0 for o in outputs)


def _samples(text: bytes, name: str) -> dict[str, float]:
    out = {}
    for line in text.decode().splitlines():
        if line.startswith(name):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_lag_of_partitions_no_longer_assigned_is_dropped() -> None:
    metrics = IntakeMetrics("ner")
    metrics.lag({("batch", 0): 5, ("batch", 1): 7, ("interactive", 0): 1})
    metrics.lag({("batch", 1): 2})
    lag = _samples(generate_latest(metrics.registry), "nlp_kafka_consumer_lag{")
    assert lag == {'nlp_kafka_consumer_lag{kind="ner",lane="batch",partition="1"}': 2.0}


def test_worker_metrics_record_stages_codes_and_tokens() -> None:
    metrics = WorkerMetrics("ner")
    metrics.finished("interactive", "SUCCEEDED", None, {"queued": 12.0, "ran": 30.0})
    metrics.finished("interactive", "FAILED", "INVALID_ARGUMENT", {"queued": 1.0, "ran": 2.0})
    metrics.finished("batch", "SUCCEEDED", None, {"queued": 900.0, "ran": 30.0})
    metrics.batch("spacy-sm", 4, 0.02, 100, 0)
    text = generate_latest(metrics.registry)
    counts = _samples(text, "nlp_task_stage_seconds_count")
    assert (
        counts['nlp_task_stage_seconds_count{kind="ner",lane="interactive",stage="queued"}'] == 2.0
    )
    assert counts['nlp_task_stage_seconds_count{kind="ner",lane="batch",stage="queued"}'] == 1.0
    errors = _samples(text, "nlp_task_errors_total")
    assert errors == {'nlp_task_errors_total{code="INVALID_ARGUMENT",kind="ner"}': 1.0}
    tokens = _samples(text, "nlp_tokens_total")
    assert tokens == {'nlp_tokens_total{direction="input",kind="ner",model="spacy-sm"}': 100.0}


def _get(endpoints: Endpoints, path: str) -> tuple[str, bytes]:
    status: list[str] = []
    body = b"".join(
        endpoints.app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, lambda s, h: status.append(s))
    )
    return status[0], body


def test_readiness_follows_the_process_and_liveness_does_not() -> None:
    endpoints = Endpoints(WorkerMetrics("ner").registry)
    assert _get(endpoints, "/healthz")[0].startswith("200")
    assert _get(endpoints, "/readyz")[0].startswith("503")
    endpoints.mark_ready()
    assert _get(endpoints, "/readyz")[0].startswith("200")
    assert _get(endpoints, "/nope")[0].startswith("404")


def test_liveness_fails_once_an_engine_is_dead() -> None:
    endpoints = Endpoints(WorkerMetrics("generation").registry)
    engine_ok = [True]
    endpoints.alive = lambda: engine_ok[0]
    assert _get(endpoints, "/healthz")[0].startswith("200")
    engine_ok[0] = False
    status, body = _get(endpoints, "/healthz")
    assert status.startswith("503") and b"engine" in body
