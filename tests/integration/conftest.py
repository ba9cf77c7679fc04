"""One real local stack per test session (Kafka, Redis, gateway, intake, Celery worker).

Settings that make failure paths quick to observe (short visibility timeout,
low back-pressure marks) are passed to every service through the environment,
exactly as an operator would.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from deploy.local.kafka import interrupt_on_termination
from deploy.local.otlp import OtlpSink
from deploy.local.stack import LocalStack
from nlp.v1 import classification_pb2_grpc, tasks_pb2_grpc
from shared.contracts.settings import ServiceSettings
from shared.transport.kafka import make_producer
from tests.integration.support import TopicTail

STACK_ENV = {
    # Tasks of a killed worker (silent: no heartbeat) are re-sent by the intake's
    # sweep after a few seconds rather than half a minute.
    "NLP_HEARTBEAT_S": "1",
    "NLP_REDELIVER_AFTER_S": "4",
    "NLP_SWEEP_INTERVAL_S": "1",
    # Tasks.Submit's lane (the tests' own lanes tests set theirs).
    "NLP_QUEUE_HIGH_WATER__STANDARD": "20",
    "NLP_QUEUE_LOW_WATER__STANDARD": "5",
    "NLP_POLL_MAX_RECORDS": "10",
    "NLP_RETRY_BACKOFF_S": "0.2",
}


def pytest_configure(config: pytest.Config) -> None:
    # A SIGTERM'd test run (`kill`, a CI timeout) tears its stack down as Ctrl-C does,
    # instead of leaving every process of it running.
    interrupt_on_termination()


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpSink]:
    """The OTLP/gRPC receiver every process of the stack exports its spans to."""
    with OtlpSink() as sink:
        yield sink


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, otlp: OtlpSink) -> Iterator[LocalStack]:
    # Tracing is on for the whole suite, as in production: every test also checks that it
    # breaks nothing. Spans are exported within 100 ms rather than 5 s.
    env = {
        **STACK_ENV,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    data_dir = tmp_path_factory.mktemp("stack")
    with LocalStack(data_dir=data_dir, env=env) as s:
        yield s


@pytest.fixture(scope="session")
def settings(stack: LocalStack) -> ServiceSettings:
    return stack.settings()


@pytest.fixture(scope="session")
def channel(stack: LocalStack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.gateway_target) as ch:
        yield ch


@pytest.fixture(scope="session")
def classifier(channel: grpc.Channel) -> classification_pb2_grpc.ClassificationStub:
    return classification_pb2_grpc.ClassificationStub(channel)


@pytest.fixture(scope="session")
def tasks(channel: grpc.Channel) -> tasks_pb2_grpc.TasksStub:
    return tasks_pb2_grpc.TasksStub(channel)


@pytest.fixture(scope="session")
def producer(settings: ServiceSettings) -> Iterator[KafkaProducer]:
    p = make_producer(settings)
    yield p
    p.close(timeout=10)


@pytest.fixture(scope="session")
def redis_client(stack: LocalStack) -> Iterator[redis.Redis]:
    assert stack.redis is not None
    client = redis.Redis.from_url(stack.redis.url)
    yield client
    client.close()


@pytest.fixture
def tail(settings: ServiceSettings) -> Iterator[Callable[[str], TopicTail]]:
    consumers: list[KafkaConsumer] = []

    def make(topic: str) -> TopicTail:
        consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id=f"test-tail-{uuid.uuid4().hex[:6]}",
        )
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_end(*partitions)
        for tp in partitions:
            consumer.position(tp)  # resolve "end" now, before the test writes anything
        consumers.append(consumer)
        return TopicTail(consumer)

    yield make
    for c in consumers:
        c.close()


@pytest.fixture
def paused_worker(stack: LocalStack) -> Iterator[Callable[[], None]]:
    """Freeze the Celery worker (SIGSTOP) for the test; returns a function that thaws it."""
    worker = stack.services["classification-worker"]
    worker.signal(signal.SIGSTOP)
    thawed = False

    def thaw() -> None:
        nonlocal thawed
        if not thawed:
            worker.signal(signal.SIGCONT)
            thawed = True

    try:
        yield thaw
    finally:
        thaw()
