"""Typed stand-ins for the intake's and the worker's clients (the Protocols of
:mod:`shared.runtime.ports`), recording what they were asked to do."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka
import redis

from nlp.v1 import tasks_pb2
from shared.contracts.names import Names
from shared.contracts.settings import WorkerSettings
from shared.observability.metrics import IntakeMetrics
from shared.runtime.intake import Intake
from shared.runtime.ports import PubSubClient
from shared.transport.kafka_consumer import Partition, Record

# The fake intake's kind (classification): partitions of its batch and interactive topics.
BATCH_TOPIC = Names().task_topic("classification", "batch")
INTERACTIVE_TOPIC = Names().task_topic("classification", "interactive")
P0, P1, P2 = (Partition(BATCH_TOPIC, i) for i in range(3))
I0 = Partition(INTERACTIVE_TOPIC, 0)


@dataclass
class FakeConsumer:
    """A group member assigned ``assigned``; commits are recorded, or refused as during
    a rebalance."""

    assigned: set[Partition] = field(default_factory=lambda: {P0, P1})
    paused: set[Partition] = field(default_factory=set)
    commits: list[dict[Partition, int]] = field(default_factory=list)
    refuse: bool = False
    rewinds: int = 0

    def partitions_for_topic(self, topic: str, /) -> set[int]:
        return {p.partition for p in self.assigned if p.topic == topic}

    def subscribe(
        self, topics: Sequence[str], on_revoke: Callable[[set[Partition]], None] | None = None
    ) -> None:
        pass

    def poll(self, timeout_ms: int, max_records: int) -> dict[Partition, list[Record]]:
        return {}

    def assignment(self) -> set[Partition]:
        return set(self.assigned)

    def pause(self, *partitions: Partition) -> None:
        self.paused |= set(partitions)

    def resume(self, *partitions: Partition) -> None:
        self.paused -= set(partitions)

    def seek(self, partition: Partition, offset: int, /) -> None:
        pass

    def commit(self, offsets: Mapping[Partition, int], /) -> None:
        if self.refuse:
            raise confluent_kafka.KafkaException(
                confluent_kafka.KafkaError(confluent_kafka.KafkaError.REBALANCE_IN_PROGRESS)
            )
        self.commits.append(dict(offsets))

    def rewind(self) -> None:
        self.rewinds += 1

    def lag(self, timeout: float = 5.0) -> dict[Partition, int]:
        return {}


class Sent:
    """A send that was acknowledged at once."""

    def get(self, timeout: float | None = None) -> None:
        return None


@dataclass
class FakeProducer:
    """Records (topic, value, key, headers) of every send."""

    sent: list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]] = field(
        default_factory=list
    )

    def send(
        self,
        topic: str,
        *,
        value: bytes,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Sent:
        self.sent.append((topic, value, key, list(headers)))
        return Sent()

    def close(self, timeout: float | None = None) -> None:
        pass


@dataclass
class FakeCelery:
    """Records the options of every ``send_task``."""

    sent: list[dict[str, Any]] = field(default_factory=list)

    @contextlib.contextmanager
    def producer_or_acquire(self) -> Iterator[None]:
        yield None

    def send_task(
        self,
        name: str,
        *,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        queue: str | None = None,
        headers: dict[str, Any] | None = None,
        producer: Any = None,
    ) -> None:
        self.sent.append(
            {"name": name, "kwargs": kwargs, "task_id": task_id, "queue": queue, "headers": headers}
        )


@dataclass
class FakeRedis:
    """The Celery queues' lengths (``depths`` by queue name, else ``depth``), or an outage
    (``down``) or another Redis ``error``."""

    depth: int = 0
    depths: dict[str, int] = field(default_factory=dict)
    down: bool = False
    error: Exception | None = None

    def llen(self, name: str, /) -> int:
        if self.down:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")
        if self.error is not None:
            raise self.error
        return self.depths.get(name, self.depth)


@dataclass
class FakeIntakeStore:
    """Records what was marked QUEUED and what was finished; ``done`` have a result.
    ``marks``: what each durable_mark answers in turn (then ``("", True)``, no replicas)."""

    done: set[str] = field(default_factory=set)
    queued: list[str] = field(default_factory=list)
    results: list[tasks_pb2.TaskResult] = field(default_factory=list)
    marks: list[tuple[str, bool]] = field(default_factory=list)

    def durable_mark(self) -> tuple[str, bool]:
        return self.marks.pop(0) if self.marks else ("", True)

    def finished(self, task_ids: Sequence[str]) -> set[str]:
        return {t for t in task_ids if t in self.done}

    def mark_queued(
        self,
        envelopes: Sequence[tasks_pb2.TaskEnvelope],
        traces: Sequence[Mapping[str, str]] = (),
    ) -> None:
        self.queued += [e.task_id for e in envelopes]

    def silent_tasks(
        self, kind: str, silent_for_s: float, queue_empty: bool
    ) -> list[tuple[bytes, dict[str, str]]]:
        return []

    def finish(self, result: tasks_pb2.TaskResult) -> bool:
        self.results.append(result)
        return True


def make_intake(
    settings: WorkerSettings,
    consumer: FakeConsumer | None = None,
    celery: FakeCelery | None = None,
    store: FakeIntakeStore | None = None,
    client: FakeRedis | None = None,
    clock: Callable[[], float] | None = None,
) -> Intake:
    """An intake of the classification kind on fakes (fresh ones unless given)."""
    intake = Intake(
        kind="classification",
        settings=settings,
        consumer=consumer or FakeConsumer(),
        producer=FakeProducer(),
        celery=celery or FakeCelery(),
        store=store or FakeIntakeStore(),
        redis=client or FakeRedis(),
        metrics=IntakeMetrics("classification"),
    )
    if clock is not None:
        intake.clock = clock
    return intake


# --- the worker's store -------------------------------------------------------------------


class Silence:
    """A done channel on which nothing is announced."""

    def pubsub(self, *, ignore_subscribe_messages: bool = False) -> Silence:
        return self

    def subscribe(self, channel: str, /) -> None:
        pass

    def get_message(self, timeout: float = 0.0) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        pass


@dataclass
class FakeWorkerStore:
    """``done`` already have a result; results are kept, the first one per task wins."""

    done: set[str] = field(default_factory=set)
    results: dict[str, tasks_pb2.TaskResult] = field(default_factory=dict)
    client: PubSubClient = field(default_factory=Silence)

    def start(self, tasks: Sequence[tasks_pb2.TaskEnvelope], attempt: int) -> list[bool]:
        return [envelope.task_id not in self.done for envelope in tasks]

    def finish_many(self, results: Sequence[tasks_pb2.TaskResult]) -> list[bool]:
        stored = []
        for result in results:
            stored.append(result.task_id not in self.results)
            self.results.setdefault(result.task_id, result)
        return stored

    def heartbeat(self, kind: str, task_ids: Iterable[str]) -> None:
        pass
