"""Kafka producers built from settings, topic creation, and the records and headers
the platform writes (tasks, results, dead letters).

The hot paths use confluent-kafka (librdkafka: batching, fetching, decoding, network
and delivery reports in C, off the GIL): the gateway's producer and the intake's
consumer (:mod:`shared.transport.kafka_consumer`). The rare sends of intakes and
workers (dead letters, results) use kafka-python.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import confluent_kafka
import confluent_kafka.admin
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from nlp.v1 import tasks_pb2
from shared.contracts import names
from shared.contracts.names import ALL_KINDS
from shared.contracts.settings import ServiceSettings
from shared.transport.outages import (
    KAFKA,
    KAFKA_RECONNECT_BACKOFF_MAX_MS,
    KafkaUnavailableError,
    Outages,
    PublishUnconfirmedError,
    kafka_delivery_unconfirmed,
    kafka_error_is_outage,
)

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]

# Where librdkafka's own log lines go (see shared.observability.logs.RepeatFilter).
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")

# Partitions per task topic: the most intake consumers one kind can use in parallel.
TASK_TOPIC_PARTITIONS = 6


def make_producer(settings: ServiceSettings, **overrides: Any) -> KafkaProducer:
    """Idempotent producer with acks=all: an acknowledged send is durable in the broker."""
    config: dict[str, Any] = {
        **settings.kafka_python_config(),
        "client_id": settings.service_name,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 2,
        "max_block_ms": 10_000,
        "request_timeout_ms": 15_000,
        "delivery_timeout_ms": 30_000,
        "max_request_size": settings.limits.max_text_bytes * 2 + 64 * 1024,
        "allow_auto_create_topics": False,
    }
    config.update(overrides)
    return KafkaProducer(**config)


class AsyncProducer:
    """Idempotent acks=all producer for asyncio code (confluent-kafka).

    :meth:`send` never blocks the event loop: librdkafka queues the message and a
    thread serves its delivery reports, which settle the awaiting coroutine.

    When every broker is down, the messages still queued are failed at once
    (:class:`KafkaUnavailableError`) instead of waiting for their timeout, and
    :attr:`available` is False until a delivery or a :meth:`probe` succeeds again;
    ``outages`` hears of both. Delivery reports are served once :meth:`start` was called
    (:func:`make_async_producer` does).
    """

    def __init__(self, config: dict[str, Any], outages: Outages | None = None) -> None:
        self.outages = outages
        self._available = True
        self._purge = threading.Event()
        self._producer = confluent_kafka.Producer({**config, "error_cb": self._on_error})
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)

    def start(self) -> None:
        """Start serving delivery reports (before the first send: none settles without)."""
        self._poller.start()

    @property
    def available(self) -> bool:
        """False from the moment every broker went down until one acknowledges again."""
        return self._available

    def _on_error(self, error: confluent_kafka.KafkaError) -> None:
        # Runs in the poller thread, inside poll().
        if error.code() == confluent_kafka.KafkaError._ALL_BROKERS_DOWN:
            self._set_available(False, error)
            self._purge.set()
        elif error.fatal():
            log.error("kafka producer: fatal error: %s", error)
        else:
            log.debug("kafka producer: %s", error)

    def _set_available(self, up: bool, error: Any = None) -> None:
        if up == self._available:
            return
        self._available = up
        if self.outages is not None:
            if up:
                self.outages.back(KAFKA)
            else:
                self.outages.lost(KAFKA, error)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)
            if self._purge.is_set():
                self._purge.clear()
                # Queued messages would otherwise wait up to message.timeout.ms for a
                # broker; failed now, they are never sent later either.
                self._producer.purge(in_queue=True, in_flight=False)

    def probe(self, timeout: float = 1.0) -> bool:
        """Ask the cluster for metadata (blocking); whether a broker answered."""
        try:
            self._producer.list_topics(timeout=timeout)
        except confluent_kafka.KafkaException as exc:
            self._set_available(False, exc)
            return False
        self._set_available(True)
        return True

    async def send(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> None:
        """Produce one message and return once the broker acknowledged it (acks=all).

        Raises :class:`KafkaDeliveryError` when it could not be delivered, or
        BufferError when librdkafka's queue is full (the broker is not keeping up).
        """
        (error,) = await self.send_many([(topic, value, key, headers)])
        if error is not None:
            raise error

    async def send_many(
        self, messages: Sequence[tuple[str, bytes, bytes | None, Headers]]
    ) -> list[Exception | None]:
        """Produce (topic, value, key, headers) messages; once every one is acknowledged
        or failed, their outcomes in order (None: acknowledged with acks=all).

        One wake-up of the event loop for the whole group, not one per message.
        """
        if not messages:
            return []
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        outcomes: list[Exception | None] = [None] * len(messages)
        left = [len(messages)]
        lock = threading.Lock()

        def settle() -> None:
            if not done.done():
                done.set_result(None)

        def finished(index: int, error: Exception | None) -> None:
            outcomes[index] = error
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                loop.call_soon_threadsafe(settle)

        def on_delivery(index: int) -> Callable[[Any, Any], None]:
            def delivered(error: Any, _message: Any) -> None:
                if error is None:
                    self._set_available(True)
                    finished(index, None)
                elif kafka_delivery_unconfirmed(error):
                    finished(index, PublishUnconfirmedError(str(error)))
                elif kafka_error_is_outage(error):
                    finished(index, KafkaUnavailableError(str(error)))
                else:
                    finished(index, KafkaDeliveryError(str(error)))

            return delivered

        for index, (topic, value, key, headers) in enumerate(messages):
            kafka_headers: list[tuple[str, str | bytes | None]] = list(headers)
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=kafka_headers,
                    on_delivery=on_delivery(index),
                )
            except BufferError as exc:
                finished(index, exc)
            except confluent_kafka.KafkaException as exc:
                error = exc.args[0] if exc.args else None
                outage = isinstance(error, confluent_kafka.KafkaError) and kafka_error_is_outage(
                    error
                )
                finished(index, KafkaUnavailableError(str(exc)) if outage else exc)
        await done
        return outcomes

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout`` seconds), then stop."""
        self._producer.flush(timeout)
        self._stop.set()
        if self._poller.is_alive():
            self._poller.join(timeout=1)


class KafkaDeliveryError(Exception):
    """The broker did not acknowledge a message."""


def make_async_producer(
    settings: ServiceSettings,
    linger_ms: float = 2.0,
    client_id: str = "",
    outages: Outages | None = None,
    timeout_s: float = 30.0,
) -> AsyncProducer:
    """The gateway's producer, started: same guarantees as :func:`make_producer`.
    ``linger_ms`` trades latency at low load for fewer, larger produce requests at high
    load."""
    producer = AsyncProducer(
        {
            **settings.librdkafka_config(),
            "client.id": client_id or settings.service_name,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "message.max.bytes": settings.limits.max_text_bytes * 2 + 64 * 1024,
            "request.timeout.ms": min(15_000, int(timeout_s * 1000)),
            # librdkafka gives up on a message when its sender does (``timeout_s``), so
            # no message lands after its sender reported it unconfirmed for longer than
            # that: an idempotency claim's lease relies on it.
            "message.timeout.ms": int(timeout_s * 1000),
            "reconnect.backoff.max.ms": KAFKA_RECONNECT_BACKOFF_MAX_MS,
            "log_level": 4,  # warnings and worse
            # Through logging (JSON, repeats held back), served by the delivery thread.
            "logger": LIBRDKAFKA_LOG,
        },
        outages,
    )
    producer.start()
    return producer


def ensure_topics(
    settings: ServiceSettings,
    kinds: Iterable[str] = ALL_KINDS,
    partitions: int = TASK_TOPIC_PARTITIONS,
    replication: int = 1,
    min_insync: int | None = None,
) -> list[str]:
    """Create the task topics (every lane's), the dead-letter and results topics of the
    namespace; returns their names. ``min_insync`` (default: one less than
    ``replication``, at least 1) is each topic's ``min.insync.replicas``: acks=all
    then means that many copies, whatever the brokers' default."""
    n = settings.names
    wanted = [topic for kind in kinds for topic in n.task_topics(kind).values()]
    wanted += [n.dead_letter_topic, n.results_topic]
    create_topics(settings, wanted, partitions, replication, min_insync)
    return wanted


def create_topics(
    settings: ServiceSettings,
    wanted: Sequence[str],
    partitions: int,
    replication: int = 1,
    min_insync: int | None = None,
) -> None:
    """Create those of ``wanted`` that do not exist yet."""
    insync = max(1, replication - 1) if min_insync is None else min_insync
    admin = KafkaAdminClient(**settings.kafka_python_config(), client_id=settings.service_name)
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=replication,
                topic_configs={"min.insync.replicas": str(insync)},
            )
            for name in wanted
            if name not in existing
        ]
        if new:
            # Created concurrently by another process: the same outcome.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new, timeout_ms=30_000, wait_for_metadata=True)
    finally:
        admin.close()


def task_headers(task_id: str, kind: str, extra: Sequence[tuple[str, bytes]] = ()) -> Headers:
    return [
        (names.HEADER_TASK_ID, task_id.encode()),
        (names.HEADER_KIND, kind.encode()),
        *extra,
    ]


def result_record(result: tasks_pb2.TaskResult) -> tuple[bytes, bytes, Headers]:
    """Key, value and headers of ``result`` on the results topic.

    The key is the batch id for batch tasks (a batch's results share one partition, in
    completion order) and the task id otherwise.
    """
    key = result.batch_id or result.task_id
    headers = task_headers(result.task_id, names.KIND_NAMES.get(result.kind, "unknown"))
    if result.batch_id:
        headers.append((names.HEADER_BATCH_ID, result.batch_id.encode()))
    return key.encode(), result.SerializeToString(), headers


def publish_results(
    producer: KafkaProducer, topic: str, results: Sequence[tasks_pb2.TaskResult]
) -> None:
    """Produce results to the results topic and wait for every acknowledgement.

    Callers publish before they store a result: a crash in between repeats the result
    on the topic (at least once; consumers dedupe by task id) instead of losing it.
    """
    sends = []
    for result in results:
        key, value, headers = result_record(result)
        sends.append(producer.send(topic, value=value, key=key, headers=headers))
    for send in sends:
        send.get(timeout=30)


def header(headers: Sequence[tuple[str, bytes | None]] | None, key: str) -> str | None:
    """First value of header ``key`` as text, or None."""
    for k, v in headers or ():
        if k == key:
            return (v or b"").decode("utf-8", "replace")
    return None
