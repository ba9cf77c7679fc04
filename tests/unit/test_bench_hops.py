"""The hop breakdown's bookkeeping: stage boundaries from a trace, and their statistics."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench.hops import (
    ENGINE,
    STAGES,
    IncompleteTraceError,
    Timed,
    boundaries,
    stages_ms,
    summarize,
)
from deploy.local.otlp import SpanRecord
from shared.contracts.names import Names
from shared.observability.telemetry import ATTR_TASK_ID, EVENT_FIRST_CHUNK, EVENT_FIRST_TOKEN

TRACE = "t" * 32
NAMES = Names()
MS = 1_000_000


def span(
    name: str,
    span_id: str,
    start_ms: float,
    end_ms: float,
    *,
    service: str = "nlp-worker",
    kind: int = 1,
    attributes: dict[str, Any] | None = None,
    links: tuple[tuple[str, str], ...] = (),
    events: tuple[tuple[str, float], ...] = (),
) -> SpanRecord:
    return SpanRecord(
        service=service,
        trace_id=TRACE,
        span_id=span_id,
        parent_span_id="",
        name=name,
        kind=kind,
        attributes=attributes or {},
        links=links,
        status_code=0,
        start_ns=int(start_ms * MS),
        end_ns=int(end_ms * MS),
        events=tuple((event, int(at * MS)) for event, at in events),
    )


def trace_of(kind: str, first_token: bool = True) -> list[SpanRecord]:
    """A task's spans at known times (ms): rpc 1, publish 2, process 5, Celery publish 7,
    run 10, inference 12 (first token 40, generation) ending 30, first chunk 42."""
    topic, queue = NAMES.task_topic(kind, "interactive"), NAMES.celery_queue(kind, "interactive")
    events = ((EVENT_FIRST_TOKEN, 40.0),) if first_token else ()
    return [
        span(
            "/nlp.v1.Generation/GenerateStream",
            "rpc",
            1,
            45,
            service="nlp-gateway",
            kind=2,
            attributes={ATTR_TASK_ID: "task-1"},
            events=((EVENT_FIRST_CHUNK, 42.0),),
        ),
        span(f"publish {topic}", "pub", 2, 6, service="nlp-gateway"),
        span(f"process {topic}", "proc", 5, 8, service="nlp-x-intake"),
        span(f"publish {queue}", "handoff", 7, 9, service="nlp-x-intake"),
        span(f"run {kind}", "run", 10, 44),
        # Another task's micro-batch: not linked to this run.
        span("inference other", "inf0", 11, 20, links=((TRACE, "elsewhere"),)),
        span("inference model", "inf", 12, 30, links=((TRACE, "run"),), events=events),
    ]


def test_generation_stages_run_from_the_call_to_the_first_chunk_at_the_client() -> None:
    timed = Timed("task-1", sent_ns=0, answered_ns=43 * MS)
    points = boundaries("generation", NAMES, trace_of("generation"), timed)
    assert [p / MS for p in points] == [0, 1, 2, 5, 7, 10, 12, 40, 42, 43]
    assert len(stages_ms(points)) == len(STAGES["generation"])
    assert dict(zip(STAGES["generation"], stages_ms(points), strict=True)) == {
        "grpc in": 1,
        "gateway": 1,
        "kafka": 3,
        "intake": 2,
        "celery": 3,
        "worker": 2,
        ENGINE: 28,
        "relay": 2,
        "grpc out": 1,
    }


def test_analysis_stages_end_with_the_batch_and_the_reply() -> None:
    timed = Timed("task-1", sent_ns=0, answered_ns=46 * MS)
    points = boundaries("classification", NAMES, trace_of("classification"), timed)
    stages = dict(zip(STAGES["classification"], stages_ms(points), strict=True))
    assert stages["batching"] == 2 and stages[ENGINE] == 18
    assert stages["reply"] == 15 and stages["grpc out"] == 1
    assert sum(stages.values()) == 46


def test_a_missing_marker_makes_the_trace_incomplete() -> None:
    timed = Timed("task-1", 0, 43 * MS)
    with pytest.raises(IncompleteTraceError, match="first token"):
        boundaries("generation", NAMES, trace_of("generation", first_token=False), timed)
    with pytest.raises(IncompleteTraceError, match="run generation"):
        spans = [s for s in trace_of("generation") if s.name != "run generation"]
        boundaries("generation", NAMES, spans, timed)
    with pytest.raises(IncompleteTraceError, match="RPC"):
        boundaries("generation", NAMES, trace_of("generation"), Timed("task-2", 0, 1))


def test_summarize_gives_shares_of_the_mean_total_and_the_platforms_part() -> None:
    stages = STAGES["generation"]
    engine = stages.index(ENGINE)
    rows = []
    for engine_ms in (20.0, 40.0):
        row = [1.0] * len(stages)
        row[engine] = engine_ms
        rows.append(row)
    report = summarize("generation", rows, [3.0, 5.0], [])
    assert report.requests == 2
    assert report.total.mean_ms == 38.0  # 8 hops of 1 ms + 30 engine
    assert report.platform.mean_ms == 8.0
    assert report.stages[ENGINE].mean_ms == 30.0
    assert report.engine_share == pytest.approx(30 / 38)
    assert sum(s.share for s in report.stages.values()) == pytest.approx(1.0)
    assert report.produce_ack_mean_ms == 4.0


def test_summarize_of_nothing_is_nan_not_a_crash() -> None:
    report = summarize("classification", [], [], ["request 0: failed"])
    assert report.requests == 0
    assert math.isnan(report.total.mean_ms) and math.isnan(report.engine_share)
