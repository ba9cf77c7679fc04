"""The dead-letter topic's wire format, and reading it back for operators.

A dead letter is the refused record's value (at the intake) or the failed task's
envelope (at the worker), with headers: the original ones but the trace context, then
``nlp-dlq-reason``, ``-stage``, ``-source-topic``, ``-source-partition`` and
``-source-offset``, and ``nlp-replay-count`` once its task was replayed. One codec:
:func:`dead_letter_headers` writes them, :func:`describe` reads them back.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import confluent_kafka

from nlp.v1 import common_pb2, deadletters_pb2
from shared.contracts import names
from shared.contracts.envelope import decode_envelope, timestamp
from shared.contracts.names import KINDS_BY_NAME, Names
from shared.contracts.settings import ServiceSettings
from shared.observability.telemetry import tracing_enabled
from shared.transport.outages import KafkaUnavailableError

Headers = list[tuple[str, bytes]]

STAGES = ("intake", "worker")
# How much of an undecodable record's value Get shows.
VALUE_SHOWN = 64 * 1024


def dead_letter_headers(
    reason: str,
    stage: str,
    topic: str,
    partition: int,
    offset: int,
    original: Sequence[tuple[str, bytes | None]] = (),
    replays: int = 0,
) -> Headers:
    """Headers of a dead-lettered message: the original headers plus why and where from
    (and, for a task replayed before, how often: when the original headers do not say).

    With tracing on, the original trace context is dropped: the kafka-python
    instrumentation adds the dead-letter send's own (a descendant in the same trace),
    and two ``traceparent`` headers would leave consumers guessing.
    """
    traced = tracing_enabled()
    kept = [
        (k, v or b"")
        for k, v in original
        if not k.startswith("nlp-dlq-")
        and not (traced and k in (names.HEADER_TRACEPARENT, names.HEADER_TRACESTATE))
    ]
    if replays and all(k != names.HEADER_REPLAY_COUNT for k, _ in kept):
        kept += replay_headers(replays)
    return [
        *kept,
        (names.HEADER_DLQ_REASON, reason.encode("utf-8", "replace")[:4096]),
        (names.HEADER_DLQ_STAGE, stage.encode()),
        (names.HEADER_DLQ_SOURCE_TOPIC, topic.encode()),
        (names.HEADER_DLQ_SOURCE_PARTITION, str(partition).encode()),
        (names.HEADER_DLQ_SOURCE_OFFSET, str(offset).encode()),
    ]


def replay_headers(replays: int) -> Headers:
    """The header that says a record is its task's ``replays``-th replay."""
    return [(names.HEADER_REPLAY_COUNT, str(replays).encode())]


@dataclass(frozen=True)
class DeadLetterRecord:
    """One record of the dead-letter topic, as read."""

    partition: int
    offset: int
    written_at_s: float
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    @property
    def id(self) -> str:
        return record_id(self.partition, self.offset)

    def header(self, name: str) -> str:
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", "replace")
        return ""


def record_id(partition: int, offset: int) -> str:
    """A dead letter's id: ``<partition>:<offset>``."""
    return f"{partition}:{offset}"


def parse_record_id(text: str) -> tuple[int, int]:
    """(partition, offset) of a dead letter's id; ValueError when it is not one."""
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"{text[:40]!r} is not a dead letter id (<partition>:<offset>)")
    return int(partition), int(offset)


def _int(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def describe(
    record: DeadLetterRecord, names_: Names, full: bool = False
) -> deadletters_pb2.DeadLetter:
    """The record as the API shows it; ``full`` adds its headers and decoded envelope."""
    source = record.header(names.HEADER_DLQ_SOURCE_TOPIC)
    letter = deadletters_pb2.DeadLetter(
        id=record.id,
        written_at=timestamp(record.written_at_s),
        stage=record.header(names.HEADER_DLQ_STAGE),
        reason=record.header(names.HEADER_DLQ_REASON),
        source_topic=source,
        source_partition=_int(record.header(names.HEADER_DLQ_SOURCE_PARTITION), -1),
        source_offset=_int(record.header(names.HEADER_DLQ_SOURCE_OFFSET), -1),
        replays=max(0, _int(record.header(names.HEADER_REPLAY_COUNT), 0)),
        task_id=record.header(names.HEADER_TASK_ID),
        value_bytes=len(record.value),
    )
    origin = names_.source_of(source)
    if origin is not None:
        letter.kind = KINDS_BY_NAME[origin[0]]
    try:
        envelope = decode_envelope(record.value)
    except Exception as exc:
        if full:
            letter.undecodable = f"{type(exc).__name__}: {exc}"[:1000]
            letter.value = record.value[:VALUE_SHOWN]
    else:
        if envelope.kind != common_pb2.KIND_UNSPECIFIED:
            letter.kind = envelope.kind
        letter.task_id = envelope.task_id or letter.task_id
        letter.tenant = envelope.tenant
        if full:
            letter.envelope.CopyFrom(envelope)
    if full:
        letter.headers.extend(
            deadletters_pb2.DeadLetterHeader(name=k, value=v) for k, v in record.headers
        )
    return letter


# The particulars of a reason: quoted names, ids and numbers.
_PARTICULARS = re.compile(r"'[^']*'|\"[^\"]*\"|\b[0-9a-f]{12,}\b|\b\d+(?:\.\d+)?\b")


def reason_pattern(reason: str) -> str:
    """The reason with its particulars replaced by "…", so that records that failed the
    same way count together."""
    return _PARTICULARS.sub("…", reason)[:300]


def matches(letter: deadletters_pb2.DeadLetter, record: DeadLetterRecord, filter_: Filter) -> bool:
    """Whether a described record passes the filter."""
    return (
        record.written_at_s >= filter_.since_s
        and (not filter_.kind or letter.kind == filter_.kind)
        and (not filter_.stage or letter.stage == filter_.stage)
        and (not filter_.reason or filter_.reason.lower() in letter.reason.lower())
    )


@dataclass(frozen=True)
class Filter:
    """A checked :class:`deadletters_pb2.DeadLetterFilter`."""

    since_s: float = 0.0
    kind: int = 0
    stage: str = ""
    reason: str = ""

    @property
    def empty(self) -> bool:
        return self == Filter()


class DeadLetterReader:
    """Reads the dead-letter topic without a consumer group's offsets: each call uses a
    consumer of its own, assigned the partitions it reads (an operator's tool, not a hot
    path). Blocking; Kafka's failures are raised as :class:`KafkaUnavailableError`."""

    def __init__(self, settings: ServiceSettings, max_scan: int, timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.topic = settings.names.dead_letter_topic
        # Records read at most by one scan, the newest of each partition.
        self.max_scan = max_scan
        self.timeout_s = timeout_s

    def _consumer(self) -> confluent_kafka.Consumer:
        return confluent_kafka.Consumer(
            {
                **self.settings.librdkafka_config(),
                # Never joined nor committed: assign() only, but librdkafka wants one.
                "group.id": f"{self.settings.service_name}-dead-letters",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "log_level": 3,
            }
        )

    def scan(self, since_s: float = 0.0) -> tuple[list[DeadLetterRecord], bool]:
        """The records written since ``since_s`` (all for 0) up to now, oldest first per
        partition, and whether the scan stopped at :attr:`max_scan`."""
        try:
            return self._scan(since_s)
        except confluent_kafka.KafkaException as exc:
            raise KafkaUnavailableError(str(exc)) from exc

    def read(self, places: Sequence[tuple[int, int]]) -> list[DeadLetterRecord | None]:
        """The records at these (partition, offset) places, in order; None for a place
        the topic has no record at (any more)."""
        try:
            consumer = self._consumer()
            try:
                ends = self._ends(consumer)
                found: list[DeadLetterRecord | None] = []
                for partition, offset in places:
                    low, high = ends.get(partition, (0, 0))
                    if not low <= offset < high:
                        found.append(None)
                        continue
                    records = self._read(consumer, {partition: (offset, offset + 1)})
                    found.append(next((r for r in records if r.offset == offset), None))
            finally:
                consumer.close()
        except confluent_kafka.KafkaException as exc:
            raise KafkaUnavailableError(str(exc)) from exc
        return found

    def _ends(self, consumer: confluent_kafka.Consumer) -> dict[int, tuple[int, int]]:
        """Each partition's (low, high) watermark offsets."""
        meta = consumer.list_topics(self.topic, timeout=self.timeout_s)
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise confluent_kafka.KafkaException(
                topic.error if topic is not None else "no such topic"
            )
        return {
            p: consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(self.topic, p), timeout=self.timeout_s
            )
            for p in sorted(topic.partitions)
        }

    def _scan(self, since_s: float) -> tuple[list[DeadLetterRecord], bool]:
        consumer = self._consumer()
        try:
            ends = self._ends(consumer)
            starts = {p: low for p, (low, _) in ends.items()}
            if since_s > 0:
                asked = [
                    confluent_kafka.TopicPartition(self.topic, p, int(since_s * 1000)) for p in ends
                ]
                for tp in consumer.offsets_for_times(asked, timeout=self.timeout_s):
                    # -1: nothing written since then.
                    starts[tp.partition] = tp.offset if tp.offset >= 0 else ends[tp.partition][1]
            cap = max(1, self.max_scan // max(1, len(ends)))
            truncated = False
            spans: dict[int, tuple[int, int]] = {}
            for p, (_, high) in ends.items():
                start = starts[p]
                if high - start > cap:
                    start, truncated = high - cap, True
                if start < high:
                    spans[p] = (start, high)
            return self._read(consumer, spans), truncated
        finally:
            consumer.close()

    def _read(
        self, consumer: confluent_kafka.Consumer, spans: dict[int, tuple[int, int]]
    ) -> list[DeadLetterRecord]:
        """The records of each partition's [start, end) offsets."""
        if not spans:
            return []
        consumer.assign(
            [
                confluent_kafka.TopicPartition(self.topic, p, start)
                for p, (start, _) in spans.items()
            ]
        )
        todo = set(spans)
        records: list[DeadLetterRecord] = []
        deadline = time.monotonic() + self.timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise KafkaUnavailableError("the dead-letter topic was not read in time")
            for message in consumer.consume(500, timeout=0.5):
                error = message.error()
                if error is not None:
                    if error.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                        todo.discard(message.partition() or 0)
                        continue
                    raise confluent_kafka.KafkaException(error)
                record = _record(message)
                end = spans.get(record.partition, (0, 0))[1]
                if record.offset < end:
                    records.append(record)
                if record.offset >= end - 1:
                    todo.discard(record.partition)
        return records


def _record(message: confluent_kafka.Message) -> DeadLetterRecord:
    headers = []
    for pair in message.headers() or ():
        name, value = pair[0], pair[1]
        headers.append(
            (str(name), value if isinstance(value, bytes) else str(value or "").encode())
        )
    return DeadLetterRecord(
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        written_at_s=message.timestamp()[1] / 1000,
        key=message.key() if isinstance(message.key(), bytes) else None,
        value=message.value() or b"",
        headers=tuple(headers),
    )
