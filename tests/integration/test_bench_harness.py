"""The benchmarks' broker warm-up, against the session stack's real broker."""

from __future__ import annotations

import asyncio

from kafka import KafkaAdminClient

from bench.harness import jit_cpu_s, warm_broker
from deploy.local.stack import LocalStack
from shared.settings import ServiceSettings


def test_warm_broker_produces_fetches_and_commits_through_the_broker(
    stack: LocalStack, settings: ServiceSettings
) -> None:
    assert stack.kafka is not None and stack.kafka.pid is not None
    warmed = asyncio.run(warm_broker(stack, seconds=1.0, settle_s=3.0))

    assert warmed.produced > 100
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
