"""The intake: Kafka consumer group of one kind → that kind's Celery queue.

Guarantees (see the architecture): offsets are committed only after every
record of a poll was handed to Celery, dead-lettered or finished; a record that
cannot be decoded or validated goes to the dead-letter topic with the reason
and never blocks its partition; expired tasks end as DEADLINE_EXCEEDED without
running; the partitions are paused while the Celery queue is above the
high-water mark (polling continues, so the group membership stays alive).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata, TopicPartition

from nlp.v1 import common_pb2, tasks_pb2
from shared.envelope import (
    deadline_exceeded,
    decode_envelope,
    encode_b64,
    error_result,
    expired,
    valid_task_id,
    validate_envelope,
)
from shared.errors import Code, InvalidRequestError
from shared.kafka import dead_letter_headers, publish_results
from shared.names import (
    CELERY_HEADER_TRACE,
    CELERY_KWARG_ENVELOPES,
    CELERY_KWARG_HANDED_AT,
    HEADER_TRACEPARENT,
    HEADER_TRACESTATE,
    Names,
)
from shared.results import ResultStore
from shared.settings import WorkerSettings

log = logging.getLogger(__name__)


def _trace_context(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    """The W3C trace context among a Kafka record's headers."""
    return {
        k: v.decode("latin-1")
        for k, v in headers
        if k in (HEADER_TRACEPARENT, HEADER_TRACESTATE) and v
    }


@dataclass
class Intake:
    """Moves tasks of one kind from Kafka to Celery. Clients are built by the caller."""

    kind: str
    settings: WorkerSettings
    consumer: KafkaConsumer
    producer: KafkaProducer
    celery: Celery
    store: ResultStore
    redis: redis.Redis
    stats: Counter[str] = field(default_factory=Counter)
    paused: bool = False

    @property
    def names(self) -> Names:
        return self.settings.names

    def queue_depth(self) -> int:
        return int(self.redis.llen(self.names.celery_queue(self.kind)))

    def run(self, stop: threading.Event, on_first_poll: Callable[[], None] | None = None) -> None:
        """Poll until ``stop`` is set."""
        topic = self.names.task_topic(self.kind)
        # Join the group only once the topic's partitions are known: a member that joins
        # without them gets no partitions assigned and may sit idle until some later
        # rebalance (seen right after a broker start).
        while not self.consumer.partitions_for_topic(topic):
            if stop.wait(0.2):
                return
        self.consumer.subscribe([topic])
        first = True
        next_sweep = time.monotonic() + self.settings.sweep_interval_s
        while not stop.is_set():
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.settings.sweep_interval_s
                try:
                    self.redeliver_silent()
                except Exception:
                    log.exception("redelivery sweep failed; will retry")
            self.apply_backpressure()
            batch = self.consumer.poll(
                timeout_ms=self.settings.poll_timeout_ms,
                max_records=self.settings.poll_max_records,
            )
            if first and on_first_poll is not None:
                on_first_poll()
                first = False
            if batch:
                self.handle_batch(batch)

    def apply_backpressure(self) -> None:
        depth = self.queue_depth()
        assigned = self.consumer.assignment()
        if not self.paused and depth >= self.settings.queue_high_water:
            self.paused = True
            self.stats["paused"] += 1
            log.info("celery queue above high-water; pausing", extra={"depth": depth})
        elif self.paused and depth <= self.settings.queue_low_water:
            self.paused = False
            self.consumer.resume(*assigned)
            log.info("celery queue below low-water; resuming", extra={"depth": depth})
        if self.paused and assigned:
            # Re-applied every loop: partitions assigned by a rebalance start unpaused.
            self.consumer.pause(*assigned)

    def handle_batch(self, batch: dict[TopicPartition, Sequence[ConsumerRecord]]) -> None:
        """Hand off, dead-letter or finish every record, then commit; rewind on failure."""
        try:
            pending = self.process([r for records in batch.values() for r in records])
            for future in pending:
                future.get(timeout=30)  # the dead letter must be durable before we commit
        except Exception:
            log.exception("hand-off failed; rewinding the batch to retry it")
            for tp, records in batch.items():
                self.consumer.seek(tp, records[0].offset)
            time.sleep(1.0)
            return
        offsets = {
            tp: OffsetAndMetadata(records[-1].offset + 1, "", -1) for tp, records in batch.items()
        }
        self.consumer.commit(offsets)

    def process(self, records: Sequence[ConsumerRecord]) -> list[Any]:
        """Process a poll's records together (one Redis round trip per step, not per
        record); returns the pending dead-letter sends."""
        pending: list[Any] = []
        valid: list[tuple[tasks_pb2.TaskEnvelope, ConsumerRecord]] = []
        for record in records:
            checked = self.check(record)
            if isinstance(checked, tasks_pb2.TaskEnvelope):
                valid.append((checked, record))
            elif checked is not None:
                pending.append(checked)
        if not valid:
            return pending
        finished = self.store.finished([envelope.task_id for envelope, _ in valid])
        now = time.time()
        ready: list[tuple[tasks_pb2.TaskEnvelope, Sequence[tuple[str, bytes | None]]]] = []
        for envelope, record in valid:
            if envelope.task_id in finished:
                self.stats["skipped"] += 1  # cancelled before it got here, or a replay
            elif expired(envelope, now):
                self.finish(envelope, deadline_exceeded(envelope, "intake"))
                self.stats["expired"] += 1
            else:
                ready.append((envelope, record.headers or ()))
        self.hand_off(ready)
        return pending

    def check(self, record: ConsumerRecord) -> tasks_pb2.TaskEnvelope | Any:
        """The record's envelope if it is a valid task; else dead-letter it and return
        the pending send."""
        try:
            envelope = decode_envelope(record.value)
        except Exception as exc:
            return self.dead_letter(record, f"undecodable: {type(exc).__name__}: {exc}")
        try:
            validate_envelope(envelope, self.kind, self.settings.limits)
        except InvalidRequestError as exc:
            if valid_task_id(envelope.task_id):
                # Someone may be waiting on this id: tell them why it will never run.
                result = error_result(
                    envelope,
                    common_pb2.TASK_STATUS_FAILED,
                    Code.INVALID_ARGUMENT,
                    f"invalid task: {exc}",
                )
                result.dead_lettered = True
                self.finish(envelope, result)
            return self.dead_letter(record, f"invalid: {exc}")
        return envelope

    def redeliver_silent(self) -> None:
        """Hand off again tasks that went silent after hand-off (lost by a dead worker).

        Tasks are idempotent by id, so a task that was only slow runs at most twice
        and keeps its first result.
        """
        silent = self.store.silent_tasks(
            self.kind, self.settings.redeliver_after_s, queue_empty=self.queue_depth() == 0
        )
        for data in silent:
            envelope = decode_envelope(data)
            if expired(envelope):
                self.finish(envelope, deadline_exceeded(envelope, "redelivery"))
                continue
            log.warning("re-sending a silent task", extra={"task_id": envelope.task_id})
            self.stats["redelivered"] += 1
            self.hand_off([(envelope, ())])

    def hand_off(
        self, tasks: Sequence[tuple[tasks_pb2.TaskEnvelope, Sequence[tuple[str, bytes | None]]]]
    ) -> None:
        """Record the tasks as QUEUED (in flight), then publish them to Celery in bundles
        of at most ``handoff_max_tasks`` (per-message costs are paid per bundle)."""
        if not tasks:
            return
        self.store.mark_queued([envelope for envelope, _ in tasks])
        handed_at = time.time()
        # Even bundles: 20 tasks with a limit of 16 go as 10 + 10, not 16 + 4.
        count = -(-len(tasks) // self.settings.handoff_max_tasks)
        size = -(-len(tasks) // count)
        # One broker connection for the whole poll instead of one per message.
        with self.celery.producer_or_acquire() as producer:
            for start in range(0, len(tasks), size):
                bundle = tasks[start : start + size]
                self.celery.send_task(
                    Names.celery_task(self.kind),
                    kwargs={
                        CELERY_KWARG_ENVELOPES: [encode_b64(envelope) for envelope, _ in bundle],
                        CELERY_KWARG_HANDED_AT: handed_at,
                    },
                    # A lone task keeps its id in Celery's tools (inspect, revoke).
                    task_id=bundle[0][0].task_id if len(bundle) == 1 else uuid.uuid4().hex,
                    queue=self.names.celery_queue(self.kind),
                    headers={CELERY_HEADER_TRACE: [_trace_context(h) for _, h in bundle]},
                    producer=producer,
                )
                self.stats["messages"] += 1
        self.stats["handed"] += len(tasks)

    def finish(self, envelope: tasks_pb2.TaskEnvelope, result: tasks_pb2.TaskResult) -> None:
        """Store a terminal result decided here, published first when the task asks."""
        if envelope.reply.publish_result or self.settings.publish_results:
            publish_results(self.producer, self.names.results_topic, [result])
        self.store.finish(result)

    def dead_letter(self, record: ConsumerRecord, reason: str) -> Any:
        self.stats["dead_lettered"] += 1
        log.warning(
            "dead-lettering record",
            extra={"partition": record.partition, "offset": record.offset, "reason": reason},
        )
        headers = dead_letter_headers(
            reason, "intake", record.topic, record.partition, record.offset, record.headers or ()
        )
        return self.producer.send(
            self.names.dead_letter_topic, value=record.value or b"", key=record.key, headers=headers
        )


def serve(kind: str, settings: WorkerSettings) -> None:
    """Entry point of a kind's intake process: build the clients, run until SIGTERM/SIGINT."""
    import signal

    from shared.celery_app import make_celery
    from shared.kafka import make_consumer, make_producer
    from shared.logs import configure_logging
    from shared.readiness import mark_ready

    configure_logging(f"{kind}-intake", settings.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    client = redis.Redis.from_url(settings.redis_url)
    consumer = make_consumer(settings, settings.names.consumer_group(kind))
    producer = make_producer(settings)
    intake = Intake(
        kind=kind,
        settings=settings,
        consumer=consumer,
        producer=producer,
        celery=make_celery(kind, settings),
        store=ResultStore(client, settings.names, settings.result_ttl_s),
        redis=client,
    )
    log.info("intake starting", extra={"topic": settings.names.task_topic(kind)})
    try:
        intake.run(stop, on_first_poll=lambda: mark_ready(settings))
    finally:
        consumer.close(autocommit=False)
        producer.close(timeout=10)
        log.info("intake stopped", extra={"stats": dict(intake.stats)})
