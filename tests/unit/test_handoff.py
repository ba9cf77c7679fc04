"""How the intake bundles a poll's tasks into Celery messages, against stand-ins for
Celery and the result store."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from nlp.v1 import tasks_pb2
from shared.contracts.envelope import decode_b64
from shared.contracts.names import CELERY_HEADER_TRACE, CELERY_KWARG_ENVELOPES, Names
from shared.contracts.settings import WorkerSettings
from tests.factories import classification_envelope
from tests.unit.fakes import FakeCelery, FakeIntakeStore, make_intake


def handed(count: int, limit: int) -> tuple[list[str], FakeCelery, FakeIntakeStore]:
    celery, store = FakeCelery(), FakeIntakeStore()
    intake = make_intake(WorkerSettings(handoff_max_tasks=limit), celery=celery, store=store)
    tasks: list[tuple[tasks_pb2.TaskEnvelope, trace.Span]] = []
    for i in range(count):
        # Each task's intake span (as the intake's process span would be).
        span = trace.NonRecordingSpan(
            trace.SpanContext(i + 1, i + 2, is_remote=False, trace_flags=trace.TraceFlags(1))
        )
        tasks.append((classification_envelope(f"text {i}", ("a",)), span))
    intake.hand_off(tasks)
    return [envelope.task_id for envelope, _ in tasks], celery, store


@pytest.mark.parametrize(
    ("count", "limit", "sizes"),
    [(1, 16, [1]), (16, 16, [16]), (17, 16, [9, 8]), (20, 16, [10, 10]), (5, 1, [1] * 5)],
)
def test_even_bundles_of_at_most_the_limit(count: int, limit: int, sizes: list[int]) -> None:
    ids, celery, store = handed(count, limit)
    assert [len(m["kwargs"][CELERY_KWARG_ENVELOPES]) for m in celery.sent] == sizes
    assert store.queued == ids  # QUEUED (in flight) before any message is published
    assert all(m["name"] == Names.celery_task("classification") for m in celery.sent)


def test_every_task_is_sent_once_in_order_with_its_own_trace_context() -> None:
    ids, celery, _ = handed(20, 16)
    sent = [decode_b64(b).task_id for m in celery.sent for b in m["kwargs"][CELERY_KWARG_ENVELOPES]]
    assert sent == ids
    traces = [t["traceparent"] for m in celery.sent for t in m["headers"][CELERY_HEADER_TRACE]]
    assert traces == [f"00-{i + 1:032x}-{i + 2:016x}-01" for i in range(20)]


def test_a_lone_task_keeps_its_id_as_the_celery_task_id() -> None:
    ids, celery, _ = handed(1, 16)
    assert celery.sent[0]["task_id"] == ids[0]
    _, celery, _ = handed(3, 16)
    assert celery.sent[0]["task_id"] not in ids
