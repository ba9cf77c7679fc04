"""The worker runtime on a bundle of tasks, against stand-ins for Celery's task, the
result store and the engine (the real ones are exercised by the integration tests)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery.exceptions import Retry

from nlp.v1 import classification_pb2, common_pb2, generation_pb2, tasks_pb2
from shared.contracts.envelope import decode_b64, make_envelope
from shared.contracts.errors import Code, InvalidRequestError
from shared.contracts.names import CELERY_HEADER_TRACE, CELERY_KWARG_ENVELOPES
from shared.contracts.settings import WorkerSettings
from shared.observability.metrics import WorkerMetrics
from shared.runtime.batching import Batched
from shared.runtime.engines import Job, ModelRegistry, TaskAborted
from shared.runtime.worker import WorkerRuntime
from shared.transport.bundle import Bundle
from tests.factories import classification_envelope
from tests.unit.fakes import FakeProducer, FakeWorkerStore


class FlakyEngine:
    """Labels each text with its own text; fails on texts starting "fail", refuses "bad"."""

    info = common_pb2.ModelInfo(name="echo", version="1")

    def run_batch(self, requests: Sequence[Any]) -> list[classification_pb2.ClassifyResponse]:
        if any(r.text.startswith("bad") for r in requests):
            raise InvalidRequestError(["bad input"])
        if any(r.text.startswith("fail") for r in requests):
            raise RuntimeError("engine fault")
        return [classification_pb2.ClassifyResponse(top_label=r.text) for r in requests]


@dataclass
class FakeRequest:
    retries: int = 0
    delivery_info: dict[str, Any] | None = None


@dataclass
class FakeTask:
    request: FakeRequest = field(default_factory=FakeRequest)
    retried: dict[str, Any] = field(default_factory=dict)

    def retry(self, **options: Any) -> Retry:
        self.retried = options
        return Retry()


def runtime(
    store: FakeWorkerStore, max_retries: int = 3, producer: FakeProducer | None = None
) -> WorkerRuntime:
    def produce() -> FakeProducer:
        if producer is None:
            pytest.fail("nothing should be produced")
        return producer

    rt = WorkerRuntime(
        kind="classification",
        settings=WorkerSettings(max_retries=max_retries, batch_max_size=4),
        store=store,
        registry=ModelRegistry("classification", {"echo": FlakyEngine()}, {"echo": "fake"}, "echo"),
        producer_factory=produce,
        metrics=WorkerMetrics("classification"),
    )
    rt.start()
    return rt


def bundle(*texts: str) -> list[tasks_pb2.TaskEnvelope]:
    return [classification_envelope(text, ("a",), deadline_s=60) for text in texts]


def test_each_task_of_a_bundle_gets_its_own_result() -> None:
    store = FakeWorkerStore()
    envelopes = bundle(*(f"text {i}" for i in range(10)))
    outcome = runtime(store).execute(FakeTask(), Bundle.of(envelopes, 0.0))
    assert outcome == {"SUCCEEDED": 10}
    for e in envelopes:
        result = store.results[e.task_id]
        assert result.classification.top_label == e.classification.text
        assert 1 <= result.batch_size <= 4


def test_finished_tasks_are_skipped_and_refused_inputs_fail_alone() -> None:
    store = FakeWorkerStore()
    ok, skipped, bad = bundle("fine", "already done", "bad one")
    store.done.add(skipped.task_id)
    outcome = runtime(store).execute(FakeTask(), Bundle.of([ok, skipped, bad], 0.0))
    assert outcome == {"SUCCEEDED": 1, "SKIPPED": 1, "FAILED": 1}
    assert store.results[bad.task_id].error.code == int(Code.INVALID_ARGUMENT)
    assert skipped.task_id not in store.results


def test_failing_tasks_are_retried_together_without_their_bundle_mates() -> None:
    store = FakeWorkerStore()
    envelopes = bundle("fine 1", "fail 1", "fine 2", "fail 2")
    task = FakeTask()
    trace = [{"traceparent": f"t{i}"} for i in range(4)]
    with pytest.raises(Retry):
        runtime(store).execute(task, Bundle.of(envelopes, 0.0, trace))
    assert set(store.results) == {envelopes[0].task_id, envelopes[2].task_id}
    retried = [decode_b64(b).task_id for b in task.retried["kwargs"][CELERY_KWARG_ENVELOPES]]
    assert sorted(retried) == sorted([envelopes[1].task_id, envelopes[3].task_id])
    by_id = dict(zip(retried, task.retried["headers"][CELERY_HEADER_TRACE], strict=True))
    assert by_id[envelopes[1].task_id] == {"traceparent": "t1"}


def test_after_the_last_retry_a_failing_task_fails() -> None:
    store = FakeWorkerStore()
    (envelope,) = bundle("fail always")
    producer = FakeProducer()
    rt = runtime(store, max_retries=0, producer=producer)
    outcome = rt.execute(FakeTask(), Bundle.of([envelope], 0.0))
    assert outcome == {"FAILED": 1}
    assert "engine fault" in store.results[envelope.task_id].error.message
    assert [key for _, _, key, _ in producer.sent] == [envelope.task_id.encode()]  # dead-lettered


class FakeStreamer:
    """A continuously batching engine: "ok" finishes at once, "late" passes its deadline,
    anything else runs until aborted."""

    info = common_pb2.ModelInfo(name="gen", version="1")

    def __init__(self) -> None:
        self.running: dict[str, Future[Batched[Any]]] = {}
        self.jobs: list[Job] = []

    def bind(self, metrics: WorkerMetrics) -> None:
        pass

    def start(self, request: Any, job: Job) -> Future[Batched[Any]]:
        self.jobs.append(job)
        future: Future[Batched[Any]] = Future()
        if request.prompt == "ok":
            future.set_result(Batched(generation_pb2.GenerateResponse(text="done"), 3))
        elif request.prompt == "late":
            future.set_exception(
                TaskAborted(
                    common_pb2.TASK_STATUS_DEADLINE_EXCEEDED, Code.DEADLINE_EXCEEDED, "too late"
                ).with_output(generation_pb2.GenerateResponse(text="par"))
            )
        else:
            self.running[job.task_id] = future
        return future

    def abort(self, task_id: str, reason: TaskAborted) -> bool:
        future = self.running.pop(task_id, None)
        if future is None:
            return False
        future.set_exception(reason.with_output(generation_pb2.GenerateResponse(text="partial")))
        return True

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        pass


class CancelChannel:
    """The done channel as the worker's subscription sees it: announces ``task_id``."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id

    def pubsub(self, *, ignore_subscribe_messages: bool = False) -> CancelChannel:
        return self

    def subscribe(self, channel: str, /) -> None:
        pass

    def get_message(self, timeout: float = 0.0) -> dict[str, Any]:
        time.sleep(0.05)
        return {"type": "message", "data": self.task_id.encode() + b"\0result"}

    def close(self) -> None:
        pass


def test_streaming_engines_run_each_task_and_a_cancel_aborts_it() -> None:
    requests = [generation_pb2.GenerateRequest(prompt=p) for p in ("ok", "runs", "late")]
    ok, runs, late = (make_envelope("generation", r, deadline_s=60) for r in requests)
    store = FakeWorkerStore(client=CancelChannel(runs.task_id))
    engine = FakeStreamer()
    rt = WorkerRuntime(
        kind="generation",
        settings=WorkerSettings(),
        store=store,
        registry=ModelRegistry("generation", {"gen": engine}, {"gen": "fake"}, "gen"),
        producer_factory=lambda: pytest.fail("nothing should be produced"),
        metrics=WorkerMetrics("generation"),
    )
    rt.start()
    try:
        outcome = rt.execute(FakeTask(), Bundle.of([ok, runs, late], 0.0))
    finally:
        rt.close()
    assert outcome == {"SUCCEEDED": 1, "CANCELLED": 1, "DEADLINE_EXCEEDED": 1}
    assert store.results[ok.task_id].generation.text == "done"
    assert store.results[ok.task_id].batch_size == 3
    cancelled = store.results[runs.task_id]
    assert cancelled.error.code == int(Code.CANCELLED)
    assert cancelled.generation.text == "partial"  # what it wrote before the abort
    assert cancelled.model.name == "gen"
    assert store.results[late.task_id].generation.text == "par"
    # Each job carries its task's deadline and attempt.
    assert {j.task_id: j.attempt for j in engine.jobs} == {e.task_id: 1 for e in (ok, runs, late)}
    assert all(abs(j.deadline - time.time() - 60) < 5 for j in engine.jobs)
