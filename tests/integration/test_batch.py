"""Bulk submission on the real stack: SubmitBatch, GetBatch, StreamBatchResults and the
results topic, including a worker SIGKILLed in the middle of a batch."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from kafka import KafkaProducer

from deploy.local.stack import LocalStack
from nlp.v1 import common_pb2, tasks_pb2, tasks_pb2_grpc
from shared.contracts import names
from shared.contracts.envelope import make_envelope, seconds
from shared.contracts.errors import Code
from shared.contracts.idempotency import batch_item_key, fingerprint
from shared.contracts.settings import ServiceSettings
from shared.transport.idempotency import Ask, IdempotencyKeys, Outcome
from shared.transport.kafka import header
from shared.transport.outages import async_redis_client
from shared.transport.results import AsyncResultStore
from tests.factories import submit_classification
from tests.integration.support import TopicTail

_TOPICS = ["sports", "politics", "technology", "weather", "markets"]


def _item(i: int) -> tasks_pb2.BatchItem:
    text = f"Document {i}: a short note about {_TOPICS[i % len(_TOPICS)]} and item {i * 7919}."
    return tasks_pb2.BatchItem(item_id=f"doc-{i}", task=submit_classification(text))


def _messages(
    items: list[tasks_pb2.BatchItem], chunk: int = 100, batch_id: str = ""
) -> Iterator[tasks_pb2.SubmitBatchRequest]:
    for start in range(0, len(items), chunk):
        yield tasks_pb2.SubmitBatchRequest(
            batch_id=batch_id if start == 0 else "",
            items=items[start : start + chunk],
            publish_results=True,
        )


def _status(tasks: tasks_pb2_grpc.TasksStub, batch_id: str) -> tasks_pb2.BatchStatus:
    return tasks.GetBatch(tasks_pb2.GetBatchRequest(batch_id=batch_id), timeout=10)


def _results_on_topic(tail: TopicTail, batch_id: str, want: set[str], timeout: float) -> set[str]:
    """Task ids of the batch's results read from the results topic (duplicates allowed:
    the topic is at least once)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while not want <= seen and time.monotonic() < deadline:
        for record in tail.read(1, timeout=1.0):
            if record.key == batch_id.encode():
                assert header(record.headers, names.HEADER_BATCH_ID) == batch_id
                seen.add(tasks_pb2.TaskResult.FromString(record.value).task_id)
    return seen


def test_5000_documents_with_a_worker_killed_midway(
    stack: LocalStack,
    tasks: tasks_pb2_grpc.TasksStub,
    settings: ServiceSettings,
    tail: Callable[[str], TopicTail],
) -> None:
    results_topic = tail(settings.names.results_topic)
    items = [_item(i) for i in range(5000)]
    acks: list[tasks_pb2.BatchItemAck] = []
    batch_ids: list[str] = []

    def submit() -> None:
        for response in tasks.SubmitBatch(_messages(items), timeout=600):
            batch_ids.append(response.batch_id)
            acks.extend(response.acks)

    submitter = threading.Thread(target=submit)
    submitter.start()
    deadline = time.monotonic() + 300
    while not batch_ids:
        assert time.monotonic() < deadline, "no acknowledgement"
        time.sleep(0.1)
    batch_id = batch_ids[0]
    # Kill the worker once a fair part of the batch is done and much is still to do.
    while _status(tasks, batch_id).succeeded < 800:
        assert time.monotonic() < deadline, "the batch made no progress"
        time.sleep(0.2)
    worker = stack.services["classification-worker"]
    assert worker.proc is not None
    worker.signal(signal.SIGKILL)
    worker.proc.wait(10)
    before_restart = _status(tasks, batch_id)
    stack.restart("classification-worker")
    submitter.join(300)
    assert not submitter.is_alive()

    assert set(batch_ids) == {batch_id}
    assert len(acks) == 5000
    assert [a.index for a in acks] == list(range(5000))
    assert [a.item_id for a in acks] == [f"doc-{i}" for i in range(5000)]
    assert all(a.task_id and not a.error.message for a in acks)
    acked = {a.task_id for a in acks}
    assert len(acked) == 5000

    streamed = list(
        tasks.StreamBatchResults(
            tasks_pb2.StreamBatchResultsRequest(batch_id=batch_id), timeout=600
        )
    )
    ids = [r.result.task_id for r in streamed]
    assert len(ids) == 5000
    assert set(ids) == acked
    assert all(r.result.status == common_pb2.TASK_STATUS_SUCCEEDED for r in streamed)
    by_task = {a.task_id: a.item_id for a in acks}
    assert all(r.result.correlation_id == by_task[r.result.task_id] for r in streamed)
    assert all(r.result.batch_id == batch_id for r in streamed)
    assert before_restart.submitted + before_restart.pending > 0
    assert before_restart.complete is False

    final = _status(tasks, batch_id)
    assert (final.submitted, final.succeeded, final.pending, final.running) == (5000, 5000, 0, 0)
    assert final.complete and final.sealed and final.rejected == 0

    on_topic = _results_on_topic(results_topic, batch_id, acked, timeout=120)
    assert on_topic == acked


def test_batch_items_are_validated_one_by_one(tasks: tasks_pb2_grpc.TasksStub) -> None:
    good = _item(1)
    no_request = tasks_pb2.BatchItem(item_id="empty", task=tasks_pb2.SubmitRequest())
    blank = tasks_pb2.BatchItem(item_id="blank", task=submit_classification("   "))
    long_id = tasks_pb2.BatchItem(item_id="x" * 300, task=submit_classification("fine text"))
    responses = list(
        tasks.SubmitBatch(_messages([good, no_request, blank, long_id, _item(2)]), timeout=60)
    )
    acks = [a for r in responses for a in r.acks]
    assert [bool(a.task_id) for a in acks] == [True, False, False, False, True]
    assert all(a.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for a in acks[1:4])
    assert "required" in acks[1].error.message
    assert "256" in acks[3].error.message
    batch_id = responses[0].batch_id
    results = list(
        tasks.StreamBatchResults(
            tasks_pb2.StreamBatchResultsRequest(batch_id=batch_id), timeout=120
        )
    )
    assert {r.result.correlation_id for r in results} == {"doc-1", "doc-2"}
    status = _status(tasks, batch_id)
    assert (status.submitted, status.rejected, status.succeeded) == (2, 3, 2)
    assert status.complete


def test_bad_batch_ids_and_cursors(tasks: tasks_pb2_grpc.TasksStub) -> None:
    with pytest.raises(grpc.RpcError) as bad_id:
        list(tasks.SubmitBatch(_messages([_item(1)], batch_id="no spaces!"), timeout=30))
    assert bad_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    def mixed() -> Iterator[tasks_pb2.SubmitBatchRequest]:
        yield tasks_pb2.SubmitBatchRequest(batch_id="mixed-a", items=[_item(1)])
        yield tasks_pb2.SubmitBatchRequest(batch_id="mixed-b", items=[_item(2)])

    with pytest.raises(grpc.RpcError) as two_ids:
        list(tasks.SubmitBatch(mixed(), timeout=30))
    assert two_ids.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    for call in (
        lambda: tasks.GetBatch(tasks_pb2.GetBatchRequest(batch_id="never-submitted"), timeout=10),
        lambda: list(
            tasks.StreamBatchResults(
                tasks_pb2.StreamBatchResultsRequest(batch_id="never-submitted"), timeout=10
            )
        ),
    ):
        with pytest.raises(grpc.RpcError) as missing:
            call()
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as empty:
        tasks.GetBatch(tasks_pb2.GetBatchRequest(), timeout=10)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    responses = list(tasks.SubmitBatch(_messages([_item(i) for i in range(20)]), timeout=60))
    batch_id = responses[0].batch_id
    with pytest.raises(grpc.RpcError) as cursor:
        list(
            tasks.StreamBatchResults(
                tasks_pb2.StreamBatchResultsRequest(batch_id=batch_id, cursor="nope"), timeout=10
            )
        )
    assert cursor.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # Resuming from a cursor gives exactly the results after it.
    everything = list(
        tasks.StreamBatchResults(
            tasks_pb2.StreamBatchResultsRequest(batch_id=batch_id), timeout=120
        )
    )
    assert len(everything) == 20
    rest = list(
        tasks.StreamBatchResults(
            tasks_pb2.StreamBatchResultsRequest(
                batch_id=batch_id, cursor=everything[7].cursor, no_follow=True
            ),
            timeout=30,
        )
    )
    assert [r.result.task_id for r in rest] == [r.result.task_id for r in everything[8:]]


def test_cancelled_batch_task_is_counted_and_published(
    tasks: tasks_pb2_grpc.TasksStub,
    settings: ServiceSettings,
    tail: Callable[[str], TopicTail],
    paused_worker: Callable[[], None],
) -> None:
    results_topic = tail(settings.names.results_topic)
    responses = list(tasks.SubmitBatch(_messages([_item(i) for i in range(3)]), timeout=60))
    batch_id = responses[0].batch_id
    acks = [a for r in responses for a in r.acks]
    open_status = _status(tasks, batch_id)
    assert (open_status.submitted, open_status.pending, open_status.complete) == (3, 3, False)
    cancel = tasks.Cancel(tasks_pb2.CancelTaskRequest(task_id=acks[0].task_id), timeout=10)
    assert cancel.cancelled
    paused_worker()
    done = list(
        tasks.StreamBatchResults(
            tasks_pb2.StreamBatchResultsRequest(batch_id=batch_id), timeout=120
        )
    )
    assert done[0].result.status == common_pb2.TASK_STATUS_CANCELLED
    assert done[0].result.correlation_id == "doc-0"
    status = _status(tasks, batch_id)
    assert (status.cancelled, status.succeeded, status.complete) == (1, 2, True)
    assert _results_on_topic(results_topic, batch_id, {a.task_id for a in acks}, 60) == {
        a.task_id for a in acks
    }


def test_a_rerun_of_a_named_batch_submits_nothing_twice(
    tasks: tasks_pb2_grpc.TasksStub,
) -> None:
    batch_id = f"rerun-{uuid.uuid4().hex[:12]}"
    items = [_item(i) for i in range(150)]

    def acks(sent: list[tasks_pb2.BatchItem]) -> dict[str, tasks_pb2.BatchItemAck]:
        responses = tasks.SubmitBatch(_messages(sent, batch_id=batch_id), timeout=120)
        return {ack.item_id: ack for response in responses for ack in response.acks}

    # An interrupted first run: only its first 100 items went out.
    first = acks(items[:100])
    assert all(ack.task_id for ack in first.values())
    # The re-run sends every item again: the first 100 name their tasks, 50 are new.
    second = acks(items)
    assert all(second[i].task_id == first[i].task_id for i in first)
    assert len({ack.task_id for ack in second.values()}) == 150
    status = _status(tasks, batch_id)
    assert (status.submitted, status.rejected) == (150, 0)
    # An item id reused for another document fails that item alone.
    changed = tasks_pb2.BatchItem(item_id="doc-3", task=submit_classification("Another text."))
    third = acks([changed, _item(150)])
    assert third["doc-3"].error.code == Code.ALREADY_EXISTS
    assert first["doc-3"].task_id in third["doc-3"].error.message
    assert third["doc-150"].task_id
    deadline = time.monotonic() + 120
    while (status := _status(tasks, batch_id)).succeeded < 151:
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert (status.submitted, status.rejected, status.succeeded) == (151, 1, 151)


def test_a_rerun_after_the_gateway_died_mid_message_counts_each_item_once(
    tasks: tasks_pb2_grpc.TasksStub,
    settings: ServiceSettings,
    producer: KafkaProducer,
) -> None:
    """A gateway SIGKILLed between recording a message's items and marking their claims
    published leaves them claimed, PENDING and counted, half of them in Kafka. The
    re-run takes the claims over under the same task ids and counts no item twice, so
    the batch completes."""
    batch_id = f"died-{uuid.uuid4().hex[:12]}"
    items = [_item(i) for i in range(20)]
    envelopes = []
    for item in items:  # as the gateway that died prepared them
        item.task.reply.correlation_id = item.item_id
        item.task.reply.publish_result = True
        envelope = make_envelope(
            "classification",
            item.task.classification,
            deadline_s=300,
            lane=common_pb2.LANE_BATCH,
            reply=item.task.reply,
            batch_id=batch_id,
        )
        envelopes.append(envelope)

    async def left_behind() -> None:
        client = async_redis_client(settings)
        try:
            store = AsyncResultStore(client, settings.names, settings.result_ttl_s)
            keys = IdempotencyKeys(client, settings.names, settings.result_ttl_s, lease_s=0.0)
            asks = [
                Ask(
                    "",
                    batch_item_key(batch_id, item.item_id),
                    fingerprint("batch-item", item.task),
                    e.task_id,
                    e.kind,
                    seconds(e.deadline),
                )
                for item, e in zip(items, envelopes, strict=True)
            ]
            claims = await keys.claim_many(asks)
            assert {c.outcome for c in claims} == {Outcome.WON}
            for ask in asks:  # made long enough ago for their lease to have run out
                await client.hset(
                    settings.names.idempotency_key("", ask.key), "at", time.time() - 600
                )
            await store.open_batch(batch_id)
            assert all(await store.record_pending(envelopes, batch=(batch_id, 0)))
        finally:
            await client.aclose()

    asyncio.run(left_behind())
    topic = settings.names.task_topic("classification", "batch")
    for envelope in envelopes[:10]:  # acknowledged by Kafka just before the kill
        producer.send(topic, value=envelope.SerializeToString())
    producer.flush(timeout=30)

    responses = tasks.SubmitBatch(_messages(items, batch_id=batch_id), timeout=120)
    acks = {ack.item_id: ack for response in responses for ack in response.acks}
    assert [acks[i.item_id].task_id for i in items] == [e.task_id for e in envelopes]
    deadline = time.monotonic() + 120
    while not (status := _status(tasks, batch_id)).complete:
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert (status.submitted, status.rejected, status.succeeded) == (20, 0, 20)
