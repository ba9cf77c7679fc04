"""Lanes on the real stack: an interactive call does not wait behind a bulk backlog, the
backlog still drains, and a restarted worker serves the interactive lane first.

Timing belongs to ``bench.lanes``: these tests assert generous multiples only.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import redis

from deploy.local.stack import LocalStack
from nlp.v1 import classification_pb2_grpc, common_pb2, tasks_pb2, tasks_pb2_grpc
from shared.contracts.settings import ServiceSettings, WorkerSettings
from tests.factories import classify_request, submit_classification
from tests.integration.support import wait_terminal

KIND = "classification"


def _batch(count: int, batch_id: str) -> Iterator[tasks_pb2.SubmitBatchRequest]:
    for start in range(0, count, 200):
        yield tasks_pb2.SubmitBatchRequest(
            batch_id=batch_id if start == 0 else "",
            items=[
                tasks_pb2.BatchItem(
                    item_id=f"doc-{i}",
                    task=submit_classification(f"Bulk document {i} about the match and the vote."),
                )
                for i in range(start, min(count, start + 200))
            ],
        )


def _submit_batch(tasks: tasks_pb2_grpc.TasksStub, count: int) -> str:
    """A batch of ``count`` classifications (the batch lane by default); its id."""
    batch_id = f"lanes-{uuid.uuid4().hex[:12]}"
    for response in tasks.SubmitBatch(_batch(count, batch_id), timeout=120):
        assert all(not ack.HasField("error") for ack in response.acks)
    return batch_id


def _status(tasks: tasks_pb2_grpc.TasksStub, batch_id: str) -> tasks_pb2.BatchStatus:
    return tasks.GetBatch(tasks_pb2.GetBatchRequest(batch_id=batch_id), timeout=10)


def _latency_ms(classifier: classification_pb2_grpc.ClassificationStub, count: int) -> float:
    times = []
    for i in range(count):
        began = time.perf_counter()
        classifier.Classify(classify_request(f"Is this about sport? Call {i}."), timeout=60)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def test_an_interactive_call_does_not_wait_behind_a_bulk_backlog(
    classifier: classification_pb2_grpc.ClassificationStub, tasks: tasks_pb2_grpc.TasksStub
) -> None:
    idle_ms = _latency_ms(classifier, 8)
    batch_id = _submit_batch(tasks, 3000)
    # Thousands of batch-lane tasks are ahead (in Kafka, Redis and the worker).
    deadline = time.monotonic() + 60
    while _status(tasks, batch_id).pending < 1000:
        assert time.monotonic() < deadline, "the backlog never built up"
        time.sleep(0.2)
    busy_ms = _latency_ms(classifier, 8)
    status = _status(tasks, batch_id)
    assert status.pending > 0, "the batch drained before the calls: nothing was measured"
    # Without lanes: ~200x (seconds behind the backlog). Asserted generously.
    assert busy_ms < max(10 * idle_ms, idle_ms + 500), (idle_ms, busy_ms)
    # The batch lane drains completely while interactive traffic goes on.
    stop = threading.Event()
    calls: list[float] = []

    def interactive() -> None:
        while not stop.is_set():
            calls.append(_latency_ms(classifier, 1))

    caller = threading.Thread(target=interactive, daemon=True)
    caller.start()
    try:
        deadline = time.monotonic() + 300
        while not (status := _status(tasks, batch_id)).complete:
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
    finally:
        stop.set()
        caller.join(60)
    assert status.succeeded == 3000, status
    assert calls, "no interactive call ran while the batch drained"


def test_a_restarted_worker_serves_the_interactive_lane_first(
    stack: LocalStack,
    tasks: tasks_pb2_grpc.TasksStub,
    redis_client: redis.Redis,
    settings: ServiceSettings,
) -> None:
    """With the worker stopped, a batch backlog and then one interactive task are queued;
    on restart the interactive one finishes before all but the first micro-batches of
    the others (those the general runners may start at the same moment)."""
    worker = stack.services[f"{KIND}-worker"]
    worker.stop()
    try:
        batch_id = _submit_batch(tasks, 400)
        queues = settings.names.celery_queues(KIND)
        deadline = time.monotonic() + 60
        while not redis_client.llen(queues["batch"]):
            assert time.monotonic() < deadline, "the batch never reached its Celery queue"
            time.sleep(0.1)
        urgent = submit_classification("The striker scored in the final minute.")
        urgent.lane = common_pb2.LANE_INTERACTIVE
        urgent_id = tasks.Submit(urgent, timeout=10).task_id
        while not redis_client.llen(queues["interactive"]):
            assert time.monotonic() < deadline, "the interactive task never reached its queue"
            time.sleep(0.05)
    finally:
        stack.restart(f"{KIND}-worker")
    urgent_done = wait_terminal(tasks, urgent_id, timeout=120)
    assert urgent_done.status == common_pb2.TASK_STATUS_SUCCEEDED
    finished_at = urgent_done.timings.finished_at.ToNanoseconds()
    deadline = time.monotonic() + 300
    while not (status := _status(tasks, batch_id)).complete:
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    stream = tasks.StreamBatchResults(
        tasks_pb2.StreamBatchResultsRequest(batch_id=batch_id, no_follow=True), timeout=60
    )
    earlier = sum(
        1 for item in stream if item.result.timings.finished_at.ToNanoseconds() < finished_at
    )
    defaults = WorkerSettings()  # the stack's worker runs with the defaults of these
    assert earlier <= defaults.batch_runners * defaults.batch_max_size, earlier


def test_a_lane_above_the_tenants_is_refused_and_an_unknown_one_is_invalid(
    tasks: tasks_pb2_grpc.TasksStub,
) -> None:
    """The stack runs in development mode (no tenants: every lane is allowed); an
    unknown lane is INVALID_ARGUMENT. The per-tenant cap is in test_security."""
    request = submit_classification("hello")
    request.lane = common_pb2.LANE_BATCH
    assert tasks.Submit(request, timeout=10).task_id
    request.lane = 7  # type: ignore[assignment]
    try:
        tasks.Submit(request, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    else:
        raise AssertionError("an unknown lane was accepted")
