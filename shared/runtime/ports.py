"""What the intake and the worker runtime need of their clients, as Protocols.

The real ones (confluent-kafka consumer, kafka-python producer, Celery app, Redis and
the :class:`~shared.transport.results.ResultStore`) are built by ``serve``/
``serve_worker``; tests pass small fakes of just these methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from nlp.v1 import tasks_pb2
from shared.transport.idempotency import Ask, Claim
from shared.transport.kafka_consumer import Partition, Record

# --- Kafka -----------------------------------------------------------------------------


class PendingSend(Protocol):
    """A send in flight (kafka-python's future)."""

    def get(self, timeout: float | None = None) -> Any: ...


class RecordProducer(Protocol):
    """Produces the rare records of intakes and workers: dead letters and results."""

    def send(
        self,
        topic: str,
        *,
        value: bytes,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> PendingSend: ...

    def close(self, timeout: float | None = None) -> None: ...


class TaskSource(Protocol):
    """The intake's consumer-group member (:class:`~shared.transport.kafka_consumer.TaskConsumer`)."""

    def partitions_for_topic(self, topic: str, /) -> set[int]: ...

    def subscribe(
        self, topics: Sequence[str], on_revoke: Callable[[set[Partition]], None] | None = None
    ) -> None: ...

    def poll(self, timeout_ms: int, max_records: int) -> dict[Partition, list[Record]]: ...

    def assignment(self) -> set[Partition]: ...

    def pause(self, *partitions: Partition) -> None: ...

    def resume(self, *partitions: Partition) -> None: ...

    def seek(self, partition: Partition, offset: int, /) -> None: ...

    def commit(self, offsets: Mapping[Partition, int], /) -> None: ...

    def rewind(self) -> None: ...

    def lag(self, timeout: float = ...) -> dict[Partition, int]: ...


# --- Celery and Redis ------------------------------------------------------------------


class TaskSender(Protocol):
    """Sends Celery messages by task name (the Celery app)."""

    def producer_or_acquire(self) -> AbstractContextManager[Any]: ...

    def send_task(
        self,
        name: str,
        *,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        queue: str | None = None,
        headers: dict[str, Any] | None = None,
        producer: Any = None,
    ) -> object: ...


class QueueLengths(Protocol):
    """Redis, as far as the intake reads it directly: the Celery queue's length."""

    def llen(self, name: str, /) -> Any: ...


class IntakeStore(Protocol):
    """The result store as the intake uses it."""

    def finished(self, task_ids: Sequence[str]) -> set[str]: ...

    def mark_queued(
        self,
        envelopes: Sequence[tasks_pb2.TaskEnvelope],
        traces: Sequence[Mapping[str, str]] = (),
    ) -> None: ...

    def silent_tasks(
        self, kind: str, silent_for_s: float, queue_empty: bool
    ) -> list[tuple[bytes, dict[str, str]]]: ...

    def finish(self, result: tasks_pb2.TaskResult) -> bool: ...

    def durable_mark(self) -> tuple[str, bool]: ...


class DoneSubscription(Protocol):
    """A pub/sub subscription (redis-py's ``PubSub``)."""

    def subscribe(self, channel: str, /) -> Any: ...

    def get_message(self, timeout: float = 0.0) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


class PubSubClient(Protocol):
    def pubsub(self, *, ignore_subscribe_messages: bool = False) -> DoneSubscription: ...


class WorkerStore(Protocol):
    """The result store as the worker runtime uses it."""

    @property
    def client(self) -> PubSubClient: ...

    def start(self, tasks: Sequence[tasks_pb2.TaskEnvelope], attempt: int) -> list[bool]: ...

    def finish_many(self, results: Sequence[tasks_pb2.TaskResult]) -> list[bool]: ...

    def heartbeat(self, kind: str, task_ids: Iterable[str]) -> None: ...


class KeyClaims(Protocol):
    """Idempotency claims as the intake makes them (shared.transport.idempotency)."""

    def claim_many(self, asks: Sequence[Ask]) -> list[Claim]: ...
