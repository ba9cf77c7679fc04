"""Building the long-lived parts starts no threads: the code that builds them calls
``start()`` (and ``close()``/``stop()`` ends them)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from nlp.v1 import classification_pb2, common_pb2
from shared.contracts.settings import WorkerSettings
from shared.observability.metrics import WorkerMetrics
from shared.runtime.batching import MicroBatcher
from shared.runtime.engines import ModelRegistry
from shared.runtime.worker import WorkerRuntime
from shared.transport.kafka import AsyncProducer
from tests.unit.fakes import FakeWorkerStore


class Echo:
    info = common_pb2.ModelInfo(name="echo", version="1")

    def run_batch(
        self, requests: Sequence[classification_pb2.ClassifyRequest]
    ) -> list[classification_pb2.ClassifyResponse]:
        return [classification_pb2.ClassifyResponse(top_label=r.text) for r in requests]


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def test_the_worker_runtime_starts_its_threads_in_start() -> None:
    before = _threads()
    rt = WorkerRuntime(
        kind="classification",
        settings=WorkerSettings(batch_runners=2),
        store=FakeWorkerStore(),
        registry=ModelRegistry("classification", {"echo": Echo()}, {"echo": "fake"}, "echo"),
        producer_factory=lambda: pytest.fail("nothing should be produced"),
        metrics=WorkerMetrics("classification"),
    )
    assert _threads() == before
    rt.start()
    try:
        names = {t.name for t in _threads() - before}
        assert names == {"heartbeat", "echo-0", "echo-1", "echo-interactive-0"}
    finally:
        rt.close()


def test_a_micro_batcher_starts_its_runners_in_start() -> None:
    before = _threads()
    batcher: MicroBatcher[str, str] = MicroBatcher(list, max_size=4, max_wait_ms=1, name="b")
    assert _threads() == before
    batcher.start()
    try:
        assert batcher("x").output == "x"
    finally:
        batcher.close()
    assert not any(t.is_alive() for t in _threads() - before)


def test_an_async_producer_starts_its_delivery_thread_in_start() -> None:
    before = _threads()
    producer = AsyncProducer({"bootstrap.servers": "127.0.0.1:1"})
    assert not any(t.name == "kafka-delivery" for t in _threads() - before)
    producer.start()
    try:
        assert any(t.name == "kafka-delivery" for t in _threads() - before)
    finally:
        producer.close(timeout=0)
