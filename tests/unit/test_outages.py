"""Outage handling's pure parts: what counts as an outage, logging it once, waiting one
out at startup, holding back repeated client log lines, what each RPC needs, and the
gateway's guard. The producer test talks to a closed port (no broker at all)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

import confluent_kafka
import grpc
import kafka.errors
import kombu.exceptions
import pytest
import redis

from services.gateway.dependencies import Dependencies, needs
from shared.contracts.settings import WorkerSettings
from shared.observability.logs import RepeatFilter
from shared.transport.kafka import AsyncProducer
from shared.transport.outages import (
    KAFKA,
    REDIS,
    UNAVAILABLE_DETAILS,
    KafkaUnavailableError,
    Outages,
    dependency_of,
    until_reachable,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("exc", "dependency"),
    [
        (redis.ConnectionError("Error 111 connecting"), REDIS),
        (redis.TimeoutError("timed out"), REDIS),
        (redis.BusyLoadingError("loading"), REDIS),  # a restarted Redis reading its AOF
        (kombu.exceptions.OperationalError("broker"), REDIS),
        (KafkaUnavailableError("purged"), KAFKA),
        (kafka.errors.KafkaTimeoutError("no metadata"), KAFKA),
        (kafka.errors.KafkaConnectionError("refused"), KAFKA),
        (
            confluent_kafka.KafkaException(
                confluent_kafka.KafkaError(confluent_kafka.KafkaError._ALL_BROKERS_DOWN)
            ),
            KAFKA,
        ),
        (
            confluent_kafka.KafkaException(
                confluent_kafka.KafkaError(confluent_kafka.KafkaError.REBALANCE_IN_PROGRESS)
            ),
            None,
        ),
        (redis.ResponseError("WRONGTYPE"), None),
        (ValueError("a bug"), None),
    ],
)
def test_what_counts_as_an_outage(exc: BaseException, dependency: str | None) -> None:
    assert dependency_of(exc) == dependency


def test_an_outage_is_logged_once_and_its_end_with_its_length(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    changes: list[tuple[str, bool]] = []
    outages = Outages("intake", on_change=lambda d, up: changes.append((d, up)), clock=clock)
    with caplog.at_level(logging.INFO, logger="shared.transport.outages"):
        assert outages.lost(REDIS, redis.ConnectionError("x")) is True
        for _ in range(50):
            assert outages.lost(REDIS) is False
            assert outages.failed(redis.ConnectionError("again")) is True  # still an outage
        assert outages.down(REDIS) and not outages.down(KAFKA) and outages.any_down
        clock.now += 61.5
        assert outages.back(REDIS) is True
        assert outages.back(REDIS) is False
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "Redis unreachable; intake rides it out and resumes by itself",
        "Redis reachable again after 61.5 s",
    ]
    assert changes == [(REDIS, False), (REDIS, True)]
    assert not outages.any_down


def test_failed_ignores_what_is_no_outage() -> None:
    outages = Outages("worker")
    assert outages.failed(ValueError("bug")) is False
    assert not outages.any_down


def test_until_reachable_waits_an_outage_out() -> None:
    outages = Outages("worker")
    attempts = []

    def build() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise redis.ConnectionError("refused")
        return "client"

    assert until_reachable(build, outages, max_backoff_s=0.01) == "client"
    assert len(attempts) == 3
    assert not outages.any_down  # it said it was back


def test_until_reachable_raises_other_errors_and_stops_when_told() -> None:
    outages = Outages("worker")

    def broken() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        until_reachable(broken, outages)
    stop = threading.Event()
    stop.set()

    def never() -> None:
        raise AssertionError("not called once stopped")

    assert until_reachable(never, outages, stop) is None


def _record(name: str, message: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, (), None)


def test_repeated_client_lines_are_held_back_and_counted() -> None:
    clock = Clock()
    repeats = RepeatFilter(window_s=60, clock=clock)
    line = "FAIL [gateway#producer-1]: Connect to ipv4#127.0.0.1:{} failed: refused"
    assert repeats.filter(_record("librdkafka", line.format(40001)))
    # The same line with other numbers is a repeat.
    passed = [repeats.filter(_record("librdkafka", line.format(40001 + i))) for i in range(30)]
    assert not any(passed)
    assert repeats.filter(_record("librdkafka", "another message"))
    clock.now += 61
    again = _record("librdkafka", line.format(40001))
    assert repeats.filter(again)
    assert getattr(again, "repeated", 0) == 30
    # kafka-python's loggers too; the platform's own lines are never held back.
    assert repeats.filter(_record("kafka.cluster", "No node available"))
    assert not repeats.filter(_record("kafka.cluster", "No node available"))
    assert all(
        repeats.filter(_record("shared.runtime.intake", "dead-lettering record")) for _ in range(5)
    )


def test_what_each_rpc_needs() -> None:
    assert needs("/nlp.v1.Classification/Classify") == (REDIS, KAFKA)
    assert needs("/nlp.v1.Tasks/Submit") == (REDIS, KAFKA)
    assert needs("/nlp.v1.Tasks/SubmitBatch") == (REDIS, KAFKA)
    assert needs("/nlp.v1.Generation/GenerateStream") == (REDIS, KAFKA)
    assert needs("/nlp.v1.Tasks/Get") == (REDIS,)
    assert needs("/nlp.v1.Tasks/Wait") == (REDIS,)
    assert needs("/nlp.v1.Generation/StreamTask") == (REDIS,)
    assert needs("/nlp.v1.Models/List") == (REDIS,)
    assert needs("/grpc.health.v1.Health/Check") == ()
    assert needs("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") == ()


class AbortedError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class FakeContext:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AbortedError(code, details)


class FakeProducer:
    def __init__(self) -> None:
        self.available = True
        self.outages: Outages | None = None


async def _guarded(deps: Dependencies, method: str, error: BaseException | None = None) -> None:
    guard: Any = deps.guard(method, FakeContext())  # type: ignore[arg-type]
    async with guard:
        if error is not None:
            raise error


def test_the_guard_refuses_promptly_and_hides_internals() -> None:
    async def scenario() -> list[tuple[str, grpc.StatusCode, str]]:
        producer = FakeProducer()
        deps = Dependencies([producer], Outages("gateway"))  # type: ignore[list-item]
        assert producer.outages is deps.outages  # it hears of Kafka too
        seen = []

        async def outcome(label: str, method: str, error: Exception | None = None) -> None:
            try:
                await _guarded(deps, method, error)
            except AbortedError as exc:
                seen.append((label, exc.code, exc.details))
            else:
                seen.append((label, grpc.StatusCode.OK, ""))

        await outcome("served", "/nlp.v1.Tasks/Get")
        refused = redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")
        await outcome("failed", "/nlp.v1.Tasks/Get", refused)
        await outcome("refused while down", "/nlp.v1.Tasks/Get")
        deps.outages.back(REDIS)
        producer.available = False
        await outcome("needs Kafka", "/nlp.v1.Tasks/Submit")
        await outcome("Redis only", "/nlp.v1.Tasks/Get")
        await outcome("health", "/grpc.health.v1.Health/Check")
        await outcome("answered error", "/nlp.v1.Tasks/Get", redis.ResponseError("OOM at 10.0.0.7"))
        return seen

    seen = asyncio.run(scenario())
    redis_down = UNAVAILABLE_DETAILS[REDIS]
    assert seen == [
        ("served", grpc.StatusCode.OK, ""),
        ("failed", grpc.StatusCode.UNAVAILABLE, redis_down),
        ("refused while down", grpc.StatusCode.UNAVAILABLE, redis_down),
        ("needs Kafka", grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_DETAILS[KAFKA]),
        ("Redis only", grpc.StatusCode.OK, ""),
        ("health", grpc.StatusCode.OK, ""),
        ("answered error", grpc.StatusCode.UNAVAILABLE, redis_down),
    ]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_producer_without_brokers_fails_its_queued_sends_at_once() -> None:
    """librdkafka's "all brokers down" fails what is queued, instead of letting it wait
    for message.timeout.ms (an hour here: a hang would end in the asyncio timeout)."""
    outages = Outages("gateway")
    producer = AsyncProducer(
        {
            "bootstrap.servers": f"127.0.0.1:{_closed_port()}",
            "message.timeout.ms": 3_600_000,
            "reconnect.backoff.max.ms": 1000,
        },
        outages,
    )
    producer.start()

    async def send() -> list[Exception | None]:
        async with asyncio.timeout(30):
            return await producer.send_many([("topic", b"value", None, [])])

    try:
        (outcome,) = asyncio.run(send())
        assert isinstance(outcome, KafkaUnavailableError), outcome
        assert not producer.available
        assert outages.down(KAFKA)
        assert producer.probe(timeout=0.5) is False
    finally:
        producer.close(timeout=1)


def test_dependency_guard_passes_cancellation_through() -> None:
    async def scenario() -> None:
        deps = Dependencies([], Outages("gateway"))
        with pytest.raises(asyncio.CancelledError):
            await _guarded(deps, "/nlp.v1.Tasks/Get", asyncio.CancelledError())

    asyncio.run(scenario())


def test_celery_reconnects_to_redis_within_seconds() -> None:
    """Celery's own consumer waits 2, 4, ... 30 s between attempts; ours at most 2 s."""
    from types import SimpleNamespace

    from shared.transport.celery_app import RECONNECT_MAX_S, Consumer, make_celery

    app = make_celery("classification", WorkerSettings())
    assert app.conf.worker_consumer == "shared.transport.celery_app:Consumer"
    assert app.conf.broker_connection_max_retries is None  # never gives up

    asked: dict[str, Any] = {}

    class Conn:
        def ensure_connection(self, errback: Any, max_retries: Any, **kwargs: Any) -> Conn:
            asked.update(kwargs, max_retries=max_retries)
            errback(redis.ConnectionError("refused"), 0.5)  # logged quietly, no crash
            return self

    consumer = SimpleNamespace(app=app)
    Consumer.ensure_connected(consumer, Conn())  # type: ignore[arg-type]
    assert asked["max_retries"] is None
    assert asked["interval_max"] == RECONNECT_MAX_S <= 2
    assert consumer.first_connection_attempt is False


def test_closing_a_lost_celery_connection_does_not_end_the_worker() -> None:
    """kombu would build a Redis pool from a collected connection (AttributeError, and
    the worker process exits); the messages stay unacked in Redis instead."""
    from types import SimpleNamespace

    from shared.transport.celery_app import RedisTransport, make_celery

    app = make_celery("classification", WorkerSettings())
    assert app.conf.broker_transport is RedisTransport
    qos_cls = RedisTransport.Channel.QoS
    for transport in (None, SimpleNamespace(client=None)):
        qos = qos_cls.__new__(qos_cls)
        qos.channel = SimpleNamespace(connection=transport)  # type: ignore[assignment]
        qos.restore_unacked()  # returns, touching no Redis
        # Nor does a task that finishes after that (an ack or reject on the dead
        # connection): its message stays unacked, to be restored and skipped.
        qos.ack("tag-1")
        qos.reject("tag-2", requeue=True)
