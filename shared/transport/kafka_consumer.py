"""The consuming side of Kafka: the intake's consumer-group member (confluent-kafka),
which commits only when told to, and the records it hands out.

Apart from :mod:`shared.transport.kafka` (producers, topics, headers) because only the
intake and the bench consume; the gateway and the workers only produce.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import confluent_kafka
import confluent_kafka.admin

from shared.contracts.settings import ServiceSettings
from shared.transport.kafka import LIBRDKAFKA_LOG
from shared.transport.outages import (
    KAFKA,
    KAFKA_RECONNECT_BACKOFF_MAX_MS,
    Outages,
    kafka_error_is_outage,
)

log = logging.getLogger(__name__)


class Partition(NamedTuple):
    topic: str
    partition: int


class Record(NamedTuple):
    """One consumed message: what the intake reads of it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


class TaskConsumer:
    """A consumer-group member that commits only when told to (confluent-kafka).

    Fetching, decoding and the group protocol run in librdkafka's own threads: with
    kafka-python, its I/O thread alone cost the intake 0.18 ms of CPU per task (40 % of
    the intake) at saturation.
    """

    def __init__(
        self,
        config: dict[str, Any],
        admin_config: dict[str, Any],
        outages: Outages | None = None,
    ) -> None:
        self.outages = outages or Outages("kafka consumer")
        self._consumer = confluent_kafka.Consumer(config)
        # Log end offsets come through a connection of their own: on the consumer's, a
        # ListOffsets request waits behind the long-polling fetch (~0.5 s per partition).
        self._admin_config = admin_config
        self._admin: confluent_kafka.admin.AdminClient | None = None

    def partitions_for_topic(self, topic: str, timeout: float = 5.0) -> set[int]:
        """The topic's partition ids; empty while the cluster does not know the topic."""
        try:
            metadata = self._consumer.list_topics(topic, timeout=timeout)
        except confluent_kafka.KafkaException as exc:
            log.warning("no metadata for %s yet: %s", topic, exc)
            return set()
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            return set()
        return set(described.partitions)

    def subscribe(
        self, topics: Sequence[str], on_revoke: Callable[[set[Partition]], None] | None = None
    ) -> None:
        """Join the group for ``topics``. ``on_revoke`` runs inside :meth:`poll` before a
        rebalance takes partitions away, while their offsets can still be committed."""
        if on_revoke is None:
            self._consumer.subscribe(list(topics))
            return
        revoke = on_revoke

        def revoked(_: Any, partitions: list[confluent_kafka.TopicPartition]) -> None:
            revoke({_key(tp) for tp in partitions})

        self._consumer.subscribe(list(topics), on_revoke=revoked)

    def poll(self, timeout_ms: int, max_records: int) -> dict[Partition, list[Record]]:
        """Records by partition, in offset order: up to ``max_records`` already fetched,
        or the first that arrives within ``timeout_ms``; empty when none does.

        One blocking ``poll`` and then a non-blocking ``consume``: ``consume`` alone waits
        for its whole count (or the timeout) even when fewer records are there.
        """
        first = self._consumer.poll(timeout_ms / 1000)
        if first is None:
            return {}
        messages = [first]
        if max_records > 1:
            messages += self._consumer.consume(max_records - 1, 0)
        batch: dict[Partition, list[Record]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise confluent_kafka.KafkaException(error)
                # Transient (broker down, leader moving): librdkafka retries by itself.
                if kafka_error_is_outage(error):
                    self.outages.lost(KAFKA, error)
                else:
                    log.warning("consumer error: %s", error)
                continue
            self.outages.back(KAFKA)
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            assert topic is not None and partition is not None and offset is not None
            raw = message.headers() or []
            pairs = raw.items() if isinstance(raw, dict) else raw  # a consumer gets a list
            headers = [(k, _header_bytes(v)) for k, v in pairs]
            batch.setdefault(Partition(topic, partition), []).append(
                Record(topic, partition, offset, message.key(), message.value(), headers)
            )
        return batch

    def assignment(self) -> set[Partition]:
        return {_key(tp) for tp in self._consumer.assignment()}

    def pause(self, *partitions: Partition) -> None:
        """Stop fetching these partitions; what was fetched and not yet polled is
        dropped and fetched again on resume."""
        if partitions:
            self._consumer.pause([confluent_kafka.TopicPartition(*p) for p in partitions])

    def resume(self, *partitions: Partition) -> None:
        if partitions:
            self._consumer.resume([confluent_kafka.TopicPartition(*p) for p in partitions])

    def seek(self, partition: Partition, offset: int) -> None:
        """Poll ``partition`` again from ``offset``."""
        self._consumer.seek(confluent_kafka.TopicPartition(*partition, offset))

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit the next offsets to read (synchronously); KafkaException when refused."""
        committed = self._consumer.commit(
            offsets=[confluent_kafka.TopicPartition(*p, o) for p, o in offsets.items()],
            asynchronous=False,
        )
        failed = [tp for tp in committed if tp.error is not None]
        if failed:
            raise confluent_kafka.KafkaException(failed[0].error)

    def rewind(self, timeout: float = 10.0) -> None:
        """Poll every assigned partition again from its committed offset (its start
        when none was committed)."""
        assigned = self._consumer.assignment()
        if not assigned:
            return
        for tp in self._consumer.committed(assigned, timeout=timeout):
            if tp.offset < 0:
                tp.offset = confluent_kafka.OFFSET_BEGINNING
            self._consumer.seek(tp)

    def lag(self, timeout: float = 5.0) -> dict[Partition, int]:
        """Per assigned partition: the log end minus our position (the next offset this
        member reads: polled, else committed, else the log start). Asked of the broker,
        since paused partitions fetch nothing."""
        assigned = self._consumer.assignment()
        if not assigned:
            return {}
        positions = {_key(tp): tp.offset for tp in self._consumer.position(assigned)}
        unknown = [tp for tp in assigned if positions[_key(tp)] < 0]
        if unknown:
            positions |= {
                _key(tp): tp.offset for tp in self._consumer.committed(unknown, timeout=timeout)
            }
        spec = confluent_kafka.admin.OffsetSpec  # type: ignore[attr-defined]  # re-exported
        earliest, latest = spec.earliest(), spec.latest()  # type: ignore[no-untyped-call]
        starts = self._offsets(
            [tp for tp in assigned if positions[_key(tp)] < 0], earliest, timeout
        )
        ends = self._offsets(assigned, latest, timeout)
        return {
            p: max(0, end - (positions[p] if positions[p] >= 0 else starts[p]))
            for p, end in ends.items()
        }

    def _offsets(
        self, partitions: Sequence[confluent_kafka.TopicPartition], spec: Any, timeout: float
    ) -> dict[Partition, int]:
        if not partitions:
            return {}
        if self._admin is None:
            # Critical lines only: nothing polls this client to serve a logger, and its
            # failed reconnections (errors) while a broker is down say nothing the
            # consumer does not; its requests' own failures are raised.
            self._admin = confluent_kafka.admin.AdminClient({**self._admin_config, "log_level": 2})
        futures = self._admin.list_offsets(
            {confluent_kafka.TopicPartition(tp.topic, tp.partition): spec for tp in partitions},
            request_timeout=timeout,
        )
        try:
            return {_key(tp): int(f.result(timeout=timeout).offset) for tp, f in futures.items()}
        except Exception:
            # After a broker died its requests could keep timing out (seen after a
            # partition leader was killed): the next measurement starts afresh.
            self._admin = None
            raise

    def close(self) -> None:
        """Leave the group (without committing: offsets are committed explicitly)."""
        self._consumer.close()
        self._admin = None


def _key(tp: confluent_kafka.TopicPartition) -> Partition:
    return Partition(tp.topic, tp.partition)


def _header_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def make_consumer(
    settings: ServiceSettings, group_id: str, outages: Outages | None = None, **overrides: Any
) -> TaskConsumer:
    """Consumer in ``group_id`` that commits only when told to; ``outages`` hears when the
    cluster becomes unreachable and when records flow again."""
    connection = {
        **settings.librdkafka_config(),
        "reconnect.backoff.max.ms": KAFKA_RECONNECT_BACKOFF_MAX_MS,
        "log_level": 4,  # warnings and worse
    }
    config: dict[str, Any] = {
        **connection,
        "logger": LIBRDKAFKA_LOG,  # served by poll(), as for the producer
        "client.id": settings.service_name,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "allow.auto.create.topics": False,
        "max.partition.fetch.bytes": settings.limits.max_text_bytes * 2 + 64 * 1024,
        # The group waits this long for a member that went away before handing its
        # partitions on, also after a broker restart (the members rejoin then): 6 s, the
        # broker's minimum, measured 19 s -> ~6 s from the broker's return to the first
        # task handed off (20 s before). Heartbeats come from librdkafka's own thread.
        "session.timeout.ms": 6_000,
        "heartbeat.interval.ms": 1_000,
        "max.poll.interval.ms": 300_000,
    }
    config.update(overrides)
    return TaskConsumer(config, connection, outages)
