"""The benchmarks' broker warm-up and hop breakdown, against the session stack."""

from __future__ import annotations

import asyncio

import pytest
from kafka import KafkaAdminClient

from bench.harness import jit_cpu_s, warm_broker
from bench.hops import ENGINE, STAGES, measure, summarize
from deploy.local.otlp import OtlpSink
from deploy.local.stack import LocalStack
from shared.contracts.settings import ServiceSettings


def test_warm_broker_produces_fetches_and_commits_through_the_broker(
    stack: LocalStack, settings: ServiceSettings
) -> None:
    assert stack.kafka is not None and stack.kafka.pid is not None
    warmed = asyncio.run(warm_broker(stack, seconds=1.0, settle_s=3.0))

    # Traffic flowed (how much in a second depends on the machine, so no rate here).
    assert warmed.produced > 0
    assert warmed.consumed == warmed.produced
    topic = settings.names.bench_topic("warm-broker")
    admin = KafkaAdminClient(**settings.kafka_python_config())
    try:
        committed = admin.list_group_offsets(topic)[topic]
    finally:
        admin.close()
    assert {tp.topic for tp in committed} == {topic}
    assert sum(meta.offset for meta in committed.values()) == warmed.produced
    # The broker's compiler threads are found (a JVM compiles from its first seconds).
    assert jit_cpu_s(stack.kafka.pid) > 0


@pytest.mark.parametrize("kind", ["generation", "classification"])
def test_hops_break_a_request_down_from_its_real_trace(
    kind: str, stack: LocalStack, otlp: OtlpSink
) -> None:
    rows, acks, failures = measure(stack, otlp, kind, requests=3, warmup=1, max_tokens=4)

    assert failures == []
    assert len(rows) == 3 and len(acks) == 3
    stages = STAGES[kind]
    for row in rows:
        by_stage = dict(zip(stages, row, strict=True))
        # Causal across processes (one clock): the record leaves the gateway before the
        # intake reads it, the Celery message before the worker runs it.
        assert by_stage["kafka"] > 0 and by_stage["celery"] > 0
        assert by_stage[ENGINE] > 0
        # Same-process stages are ordered by construction.
        assert by_stage["intake"] >= 0 and by_stage["gateway"] >= 0
    report = summarize(kind, rows, acks, failures)
    assert 0 < report.engine_share < 1
    assert report.platform.mean_ms > 0
