"""Guarantees under bad input and failure, on the real stack: dead letters, deadlines,
a SIGKILLed worker, back-pressure and cancellation."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Callable

import pytest
import redis
from kafka import KafkaProducer

from deploy.local.otlp import OtlpSink
from deploy.local.stack import LocalStack
from nlp.v1 import (
    classification_pb2_grpc,
    common_pb2,
    tasks_pb2,
    tasks_pb2_grpc,
)
from shared.contracts import names
from shared.contracts.envelope import make_envelope
from shared.contracts.settings import ServiceSettings
from shared.transport.kafka import header
from tests.factories import classification_envelope, classify_request, submit_classification
from tests.integration.support import TopicTail, status_name, wait_terminal

KIND = "classification"


def test_garbage_and_invalid_envelopes_are_dead_lettered_and_do_not_block(
    settings: ServiceSettings,
    producer: KafkaProducer,
    tasks: tasks_pb2_grpc.TasksStub,
    tail: Callable[[str], TopicTail],
) -> None:
    topic = settings.names.task_topic(KIND, "batch")  # where direct producers write
    dead = tail(settings.names.dead_letter_topic)

    wrong_kind = classification_envelope("about politics")
    wrong_kind.kind = common_pb2.KIND_NER
    empty_text = classification_envelope("x")
    empty_text.classification.text = "   "
    no_id = classification_envelope("about sports")
    no_id.task_id = ""
    no_request = classification_envelope("x")
    no_request.ClearField("request")
    past_created = classification_envelope("x")
    past_created.deadline.seconds = past_created.created_at.seconds - 10
    jumps_the_queue = classification_envelope("x")
    jumps_the_queue.lane = common_pb2.LANE_INTERACTIVE
    bad: dict[str, bytes] = {
        "garbage": os.urandom(512),
        "text": b"this is not a protobuf at all \xff\xfe",
        "empty": b"",
        "wrong-kind": wrong_kind.SerializeToString(),
        "empty-text": empty_text.SerializeToString(),
        "no-task-id": no_id.SerializeToString(),
        "no-request": no_request.SerializeToString(),
        "deadline-before-created": past_created.SerializeToString(),
        "wrong-lane": jumps_the_queue.SerializeToString(),
    }
    good = [classification_envelope(f"The team won the match number {i}.") for i in range(5)]
    # One partition, bad records first: the good ones must still get through.
    for marker, value in bad.items():
        producer.send(topic, value=value, partition=0, headers=[("test-marker", marker.encode())])
    for envelope in good:
        producer.send(topic, value=envelope.SerializeToString(), partition=0)
    producer.flush(timeout=30)

    for envelope in good:
        result = wait_terminal(tasks, envelope.task_id)
        assert status_name(result.status) == "TASK_STATUS_SUCCEEDED"

    records = dead.read(len(bad), timeout=60)
    by_marker = {str(header(r.headers, "test-marker")): r for r in records}
    assert set(by_marker) == set(bad)
    for marker, record in by_marker.items():
        reason = header(record.headers, names.HEADER_DLQ_REASON)
        assert reason, marker
        assert record.value == bad[marker]
        assert header(record.headers, names.HEADER_DLQ_SOURCE_TOPIC) == topic
        assert header(record.headers, names.HEADER_DLQ_STAGE) == "intake"
    assert "kind" in (header(by_marker["wrong-kind"].headers, names.HEADER_DLQ_REASON) or "")
    assert "empty" in (header(by_marker["empty-text"].headers, names.HEADER_DLQ_REASON) or "")
    wrong_lane = header(by_marker["wrong-lane"].headers, names.HEADER_DLQ_REASON) or ""
    assert "lane 'interactive' on the 'batch' topic" in wrong_lane

    # An invalid envelope with a usable id also ends its task, so no waiter hangs.
    failed = wait_terminal(tasks, empty_text.task_id)
    assert status_name(failed.status) == "TASK_STATUS_FAILED"
    assert failed.error.code == 3  # INVALID_ARGUMENT


def test_expired_task_ends_deadline_exceeded_without_running(
    settings: ServiceSettings, producer: KafkaProducer, tasks: tasks_pb2_grpc.TasksStub
) -> None:
    envelope = make_envelope(KIND, classify_request("late"), deadline_s=5, now=time.time() - 60)
    producer.send(settings.names.task_topic(KIND, "batch"), value=envelope.SerializeToString())
    producer.flush(timeout=30)
    result = wait_terminal(tasks, envelope.task_id)
    assert status_name(result.status) == "TASK_STATUS_DEADLINE_EXCEEDED"
    assert result.WhichOneof("output") is None
    assert result.error.code == 4


def test_grpc_deadline_becomes_the_envelope_deadline(
    classifier: classification_pb2_grpc.ClassificationStub,
    tasks: tasks_pb2_grpc.TasksStub,
    tail: Callable[[str], TopicTail],
    settings: ServiceSettings,
    paused_worker: Callable[[], None],
) -> None:
    import grpc

    topic = tail(settings.names.task_topic(KIND, "interactive"))
    request = classify_request("The striker scored twice in the final.")
    with pytest.raises(grpc.RpcError) as info:
        classifier.Classify(request, timeout=1.0)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    (record,) = topic.read(1)
    envelope = tasks_pb2.TaskEnvelope.FromString(record.value)
    budget = envelope.deadline.ToMilliseconds() - envelope.created_at.ToMilliseconds()
    assert 500 < budget <= 1100  # gRPC rounds the propagated deadline up slightly
    # Thaw only once the deadline has surely passed: the worker must then not run it.
    time.sleep(max(0.0, envelope.deadline.ToMilliseconds() / 1000 - time.time()) + 0.2)
    paused_worker()
    result = wait_terminal(tasks, envelope.task_id)
    assert status_name(result.status) == "TASK_STATUS_DEADLINE_EXCEEDED"


def test_submitted_task_with_a_short_deadline_expires(
    tasks: tasks_pb2_grpc.TasksStub, paused_worker: Callable[[], None]
) -> None:
    request = submit_classification("The striker scored twice in the final.")
    request.deadline_ms = 300
    submitted = tasks.Submit(request, timeout=10)
    time.sleep(0.5)
    paused_worker()
    result = wait_terminal(tasks, submitted.task_id)
    assert status_name(result.status) == "TASK_STATUS_DEADLINE_EXCEEDED"


def test_cancelled_task_never_runs(
    tasks: tasks_pb2_grpc.TasksStub, paused_worker: Callable[[], None]
) -> None:
    submitted = tasks.Submit(submit_classification("The striker scored twice."), timeout=10)
    cancelled = tasks.Cancel(tasks_pb2.CancelTaskRequest(task_id=submitted.task_id), timeout=10)
    assert cancelled.cancelled
    assert status_name(cancelled.result.status) == "TASK_STATUS_CANCELLED"
    paused_worker()
    time.sleep(1.0)
    final = tasks.Get(tasks_pb2.GetTaskRequest(task_id=submitted.task_id), timeout=10)
    assert status_name(final.status) == "TASK_STATUS_CANCELLED"
    again = tasks.Cancel(tasks_pb2.CancelTaskRequest(task_id=submitted.task_id), timeout=10)
    assert not again.cancelled


def tasks_in_queue(client: redis.Redis, queue: str) -> int:
    """Tasks in the Celery messages waiting in ``queue`` (kombu's JSON envelope)."""
    total = 0
    for raw in client.lrange(queue, 0, -1):
        _args, kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        total += len(kwargs[names.CELERY_KWARG_ENVELOPES])
    return total


def test_intake_pauses_above_the_high_water_mark(
    stack: LocalStack,
    tasks: tasks_pb2_grpc.TasksStub,
    redis_client: redis.Redis,
    settings: ServiceSettings,
    paused_worker: Callable[[], None],
) -> None:
    queue = settings.names.celery_queue(KIND, "standard")
    high = int(stack.env["NLP_QUEUE_HIGH_WATER__STANDARD"])
    batch = int(stack.env["NLP_POLL_MAX_RECORDS"])
    ids = [
        tasks.Submit(
            submit_classification(f"Match report {i}: the striker scored."), timeout=10
        ).task_id
        for i in range(80)
    ]
    # The queue fills up to the high-water mark (plus at most one poll), then stays there.
    deadline = time.monotonic() + 30
    depths = []
    while time.monotonic() < deadline:
        depths.append(int(redis_client.llen(queue)))
        if depths[-1] >= high and len(depths) > 20:
            break
        time.sleep(0.1)
    time.sleep(2.0)
    held = int(redis_client.llen(queue))
    assert high <= held <= high + batch, depths
    assert max(depths) <= high + batch
    pending = [
        tasks.Get(tasks_pb2.GetTaskRequest(task_id=i), timeout=10).status for i in ids
    ].count(common_pb2.TASK_STATUS_PENDING)
    # Messages are bundles of tasks: what is not in those messages still waits in Kafka
    # (8: tasks of messages the worker had taken before it froze).
    assert pending >= 80 - tasks_in_queue(redis_client, queue) - 8
    paused_worker()
    for task_id in ids:
        assert status_name(wait_terminal(tasks, task_id).status) == "TASK_STATUS_SUCCEEDED"


def test_sigkilled_worker_loses_no_task(
    stack: LocalStack, tasks: tasks_pb2_grpc.TasksStub, redis_client: redis.Redis
) -> None:
    worker = stack.services["classification-worker"]
    # Long documents (many model windows) keep each task running long enough to be
    # caught in flight.
    text = " ".join(["The striker scored twice in the final and the crowd cheered."] * 150)
    ids = [
        tasks.Submit(submit_classification(f"{i}: {text}"), timeout=10).task_id for i in range(8)
    ]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = [
            i
            for i in ids
            if tasks.Get(tasks_pb2.GetTaskRequest(task_id=i), timeout=10).status
            == common_pb2.TASK_STATUS_RUNNING
        ]
        if running:
            break
        time.sleep(0.05)
    assert running, "no task was ever seen running"
    assert worker.proc is not None
    killed_pid = worker.proc.pid
    worker.signal(signal.SIGKILL)
    worker.proc.wait(10)
    unfinished = [
        i
        for i in ids
        if tasks.Get(tasks_pb2.GetTaskRequest(task_id=i), timeout=10).status
        not in (common_pb2.TASK_STATUS_SUCCEEDED,)
    ]
    assert unfinished, "every task finished before the kill; the test proved nothing"
    stack.restart("classification-worker")
    for task_id in ids:
        result = wait_terminal(tasks, task_id, timeout=120)
        assert status_name(result.status) == "TASK_STATUS_SUCCEEDED", task_id
    # Tasks that were running when the worker died were run again by the new worker.
    for task_id in running:
        result = tasks.Get(tasks_pb2.GetTaskRequest(task_id=task_id), timeout=10)
        assert not result.worker.endswith(f":{killed_pid}"), result.worker


def test_task_lost_by_the_celery_broker_is_sent_again(
    stack: LocalStack,
    tasks: tasks_pb2_grpc.TasksStub,
    redis_client: redis.Redis,
    settings: ServiceSettings,
    paused_worker: Callable[[], None],
    otlp: OtlpSink,
) -> None:
    """A message a dying worker popped from Redis but never recorded is gone from the
    Celery queue; the intake's sweep must notice the silent task and send it again, in
    the task's own trace."""
    submitted = tasks.Submit(submit_classification("The striker scored twice."), timeout=10)
    queue = settings.names.celery_queue(KIND, "standard")
    deadline = time.monotonic() + 30
    while not redis_client.llen(queue):
        assert time.monotonic() < deadline, "the task never reached the Celery queue"
        time.sleep(0.05)
    redis_client.delete(queue)  # the loss
    paused_worker()
    result = wait_terminal(tasks, submitted.task_id, timeout=60)
    assert status_name(result.status) == "TASK_STATUS_SUCCEEDED"

    def traced() -> set[str]:
        submit = otlp.find("/nlp.v1.Tasks/Submit", nlp__task_id=submitted.task_id)
        if not submit:
            return set()
        return {s.name for s in otlp.trace(submit[0].trace_id)}

    # The re-sent task ran in the trace its Submit started.
    assert otlp.wait_until(
        lambda: {"redeliver nlp.tasks.classification.standard", "run classification"} <= traced(),
        timeout=30,
    ), traced()
