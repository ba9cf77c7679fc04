"""A real local Kafka broker (deploy.local.kafka) against the kafka-python client."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.local.kafka import KAFKA_VERSION, KafkaBroker

kafka: Any = pytest.importorskip("kafka")
from kafka.admin import KafkaAdminClient, NewTopic  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java 17+")


def _rss_mib(pid: int | None) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    b = KafkaBroker(data_dir=tmp_path_factory.mktemp("kafka"))
    b.start()
    try:
        b.wait_ready(timeout=120)
        print(
            f"\nkafka {KAFKA_VERSION} cold start {b.startup_seconds:.1f}s, "
            f"rss {_rss_mib(b.pid):.0f} MiB"
        )
        yield b
    finally:
        t0 = time.monotonic()
        b.stop()
        print(f"\nkafka stop {time.monotonic() - t0:.1f}s")


def _create_topic(bootstrap: str, partitions: int = 3) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        admin.wait_for_topics([name], timeout_ms=20000)
        (desc,) = admin.describe_topics([name])
        assert len(desc["partitions"]) == partitions
    finally:
        admin.close()
    return name


def _poll_n(consumer: Any, n: int, timeout: float = 30.0) -> list[Any]:
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(records) < n and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    return records


def _consumer(bootstrap: str, group: str, topic: str) -> Any:
    c = kafka.KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    c.subscribe([topic])
    return c


def test_produce_consume_commit_pause_resume(broker: KafkaBroker) -> None:
    topic = _create_topic(broker.bootstrap)
    producer = kafka.KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        acks="all",
        enable_idempotence=True,
    )
    headers = [("trace-id", b"abc"), ("schema", b"v1")]
    for i in range(30):
        producer.send(topic, key=str(i % 3).encode(), value=f"m{i}".encode(), headers=headers)
    producer.flush(timeout=30)

    group = f"g-{uuid.uuid4().hex[:8]}"
    c1 = _consumer(broker.bootstrap, group, topic)
    got = _poll_n(c1, 30)
    assert sorted(r.value for r in got) == sorted(f"m{i}".encode() for i in range(30))
    assert all(list(r.headers) == headers for r in got)
    c1.commit()

    # Paused partitions return nothing even with new data; resume delivers it.
    parts = c1.assignment()
    assert len(parts) == 3
    c1.pause(*parts)
    for i in range(30, 40):
        producer.send(topic, value=f"m{i}".encode(), headers=headers)
    producer.flush(timeout=30)
    assert _poll_n(c1, 1, timeout=2.0) == []
    c1.resume(*parts)
    assert len(_poll_n(c1, 10)) == 10
    c1.close(autocommit=False)  # the 10 new ones stay uncommitted

    # Same group, new member: starts from the committed offsets, i.e. only the 10 new ones.
    c2 = _consumer(broker.bootstrap, group, topic)
    again = _poll_n(c2, 10)
    assert sorted(r.value for r in again) == sorted(f"m{i}".encode() for i in range(30, 40))
    assert _poll_n(c2, 1, timeout=2.0) == []
    c2.close(autocommit=False)
    producer.close()


def test_second_broker_coexists(broker: KafkaBroker, tmp_path: Path) -> None:
    other = KafkaBroker(data_dir=tmp_path / "kafka2", heap="512m")
    assert other.port != broker.port
    with other:
        other.wait_ready(timeout=120)
        print(
            f"\nsecond broker start {other.startup_seconds:.1f}s, rss {_rss_mib(other.pid):.0f} MiB"
        )
        topic = _create_topic(other.bootstrap, partitions=1)
        producer = kafka.KafkaProducer(bootstrap_servers=other.bootstrap, acks="all")
        producer.send(topic, b"x").get(timeout=30)
        producer.close()
        assert broker.running and other.running
    assert not other.running
