"""Idempotency keys on the real stack: one task per key however a request is repeated
(in turn, at once, across a gateway SIGKILL), a key reused for another request refused,
and each tenant with its own keys."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import redis
from kafka import KafkaProducer

from deploy.local.stack import LocalStack
from nlp.v1 import (
    classification_pb2_grpc,
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from shared.contracts import names
from shared.contracts.envelope import new_task_id
from shared.contracts.errors import Code
from shared.contracts.idempotency import fingerprint
from shared.contracts.names import METADATA_IDEMPOTENCY_KEY
from shared.contracts.settings import ServiceSettings
from shared.transport.kafka import header
from tests.factories import (
    classification_envelope,
    classify_request,
    greedy_request,
    submit_classification,
)
from tests.integration.support import TopicTail, scrape, value, wait_terminal

KIND = "classification"


def keyed(text: str, key: str, tenant: str = "") -> tasks_pb2.SubmitRequest:
    request = submit_classification(text)
    request.idempotency_key = key
    request.tenant = tenant
    return request


def published(stack: LocalStack) -> float:
    """Classification tasks the gateway has published to Kafka (since it started)."""
    return value(scrape(stack.metrics_urls["gateway"]), "nlp_tasks_submitted_total", kind=KIND)


def succeeded(stack: LocalStack) -> float:
    """Submitted classification tasks the worker has finished."""
    samples = scrape(stack.metrics_urls[f"{KIND}-worker"])
    return value(samples, "nlp_tasks_total", kind=KIND, lane="standard", status="SUCCEEDED")


@pytest.fixture
def quiet(redis_client: redis.Redis, settings: ServiceSettings) -> None:
    """No classification task of an earlier test is still on its way (the run counts
    below are deltas of the worker's counters)."""
    key = settings.names.inflight_key(KIND)
    deadline = time.monotonic() + 60
    while redis_client.zcard(key):
        assert time.monotonic() < deadline, "earlier tasks still in flight"
        time.sleep(0.2)


def test_the_same_key_twice_gives_one_task_that_runs_once(
    stack: LocalStack,
    tasks: tasks_pb2_grpc.TasksStub,
    redis_client: redis.Redis,
    settings: ServiceSettings,
    quiet: None,
) -> None:
    request = keyed("The keeper saved a penalty in the last minute.", uuid.uuid4().hex)
    before, runs = published(stack), succeeded(stack)
    first = tasks.Submit(request, timeout=30)
    again = tasks.Submit(request, timeout=30)
    assert again == first  # task id, kind and deadline
    # Kept as long as results are (NLP_IDEMPOTENCY_TTL_S unset).
    ttl = redis_client.ttl(settings.names.idempotency_key("", request.idempotency_key))
    assert settings.result_ttl_s - 60 < int(ttl) <= settings.result_ttl_s
    result = wait_terminal(tasks, first.task_id)
    assert result.status == common_pb2.TASK_STATUS_SUCCEEDED
    # After it ran too: still that task, nothing new.
    assert tasks.Submit(request, timeout=30).task_id == first.task_id
    assert published(stack) - before == 1
    time.sleep(1)
    assert succeeded(stack) - runs == 1


def test_concurrent_repeats_of_a_key_race_to_one_task(
    stack: LocalStack, tasks: tasks_pb2_grpc.TasksStub, quiet: None
) -> None:
    request = keyed("Parliament passed the budget after a long night.", uuid.uuid4().hex)
    before = published(stack)
    start = threading.Barrier(16)

    def submit(_: int) -> str:
        start.wait(timeout=10)
        return tasks.Submit(request, timeout=30).task_id

    with ThreadPoolExecutor(16) as pool:
        ids = set(pool.map(submit, range(16)))
    assert len(ids) == 1
    assert published(stack) - before == 1
    assert wait_terminal(tasks, ids.pop()).status == common_pb2.TASK_STATUS_SUCCEEDED


def test_a_key_reused_for_another_request_is_already_exists(
    tasks: tasks_pb2_grpc.TasksStub,
) -> None:
    key = uuid.uuid4().hex
    first = tasks.Submit(keyed("The striker scored twice.", key), timeout=30)
    with pytest.raises(grpc.RpcError) as info:
        tasks.Submit(keyed("The chip maker shipped a new processor.", key), timeout=30)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.task_id in (info.value.details() or "")
    other_lane = keyed("The striker scored twice.", key)
    other_lane.lane = common_pb2.LANE_BATCH
    with pytest.raises(grpc.RpcError) as info:
        tasks.Submit(other_lane, timeout=30)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_tenants_have_their_own_keys(tasks: tasks_pb2_grpc.TasksStub) -> None:
    key = uuid.uuid4().hex
    text = "The striker scored twice."
    # Development mode: the request names its tenant (with keys, the key's tenant does).
    a = tasks.Submit(keyed(text, key, tenant="tenant-a"), timeout=30)
    b = tasks.Submit(keyed(text, key, tenant="tenant-b"), timeout=30)
    assert a.task_id != b.task_id
    assert tasks.Submit(keyed(text, key, tenant="tenant-a"), timeout=30).task_id == a.task_id


@pytest.mark.parametrize("key", ["k" * 257, "line\nbreak"], ids=["too-long", "control-character"])
def test_a_malformed_key_is_invalid_argument(tasks: tasks_pb2_grpc.TasksStub, key: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        tasks.Submit(keyed("The striker scored twice.", key), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "idempotency_key" in (info.value.details() or "")


def _claim(
    redis_client: redis.Redis,
    settings: ServiceSettings,
    request: tasks_pb2.SubmitRequest,
    age_s: float,
) -> str:
    """A claim of the request's key as a gateway leaves it between the claim and Kafka's
    acknowledgement, made ``age_s`` ago; its task id."""
    task_id = new_task_id()
    asked = tasks_pb2.SubmitRequest()
    asked.CopyFrom(request)
    asked.ClearField("idempotency_key")
    redis_client.hset(
        settings.names.idempotency_key(request.tenant, request.idempotency_key),
        mapping={
            "task": task_id,
            "fp": fingerprint("submit", asked),
            "kind": int(common_pb2.KIND_CLASSIFICATION),
            "deadline": repr(time.time() + 300),
            "at": repr(time.time() - age_s),
            "published": "0",
        },
    )
    return task_id


def test_a_claim_left_by_a_dead_gateway_is_taken_over_under_its_task_id(
    tasks: tasks_pb2_grpc.TasksStub, redis_client: redis.Redis, settings: ServiceSettings
) -> None:
    request = keyed("The goalkeeper was sent off.", uuid.uuid4().hex)
    task_id = _claim(redis_client, settings, request, age_s=600)
    assert tasks.Submit(request, timeout=30).task_id == task_id
    assert wait_terminal(tasks, task_id).status == common_pb2.TASK_STATUS_SUCCEEDED
    assert tasks.Submit(request, timeout=30).task_id == task_id


def test_a_repeat_waits_for_a_claim_in_progress_and_retries_when_it_is_released(
    tasks: tasks_pb2_grpc.TasksStub, redis_client: redis.Redis, settings: ServiceSettings
) -> None:
    request = keyed("The minister resigned on Friday.", uuid.uuid4().hex)
    held = _claim(redis_client, settings, request, age_s=0)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(tasks.Submit, request, timeout=30)
        time.sleep(0.5)
        assert not waiting.done()  # it waits for the claim's outcome
        # The claim's publish failed: its gateway released it; the repeat makes the task.
        redis_client.delete(settings.names.idempotency_key("", request.idempotency_key))
        task_id = waiting.result(timeout=30).task_id
    assert task_id != held
    assert wait_terminal(tasks, task_id).status == common_pb2.TASK_STATUS_SUCCEEDED


@pytest.fixture
def gateway_killer(stack: LocalStack) -> Iterator[Callable[[], None]]:
    """SIGKILL the gateway and start it again; it is running after the test either way."""
    gateway = stack.services["gateway"]

    def kill_and_restart() -> None:
        gateway.signal(signal.SIGKILL)
        stack.restart("gateway")

    try:
        yield kill_and_restart
    finally:
        if gateway.proc is None or gateway.proc.poll() is not None:
            stack.restart("gateway")


def test_clients_retrying_across_a_gateway_sigkill_end_with_one_task_per_key(
    stack: LocalStack,
    tasks: tasks_pb2_grpc.TasksStub,
    gateway_killer: Callable[[], None],
    quiet: None,
) -> None:
    keys = [uuid.uuid4().hex for _ in range(60)]
    runs = succeeded(stack)
    done = threading.Semaphore(0)
    retried: list[str] = []

    def submit_until_answered(key: str) -> str:
        request = keyed(f"Match report {key}: the home side won.", key)
        deadline = time.monotonic() + 120
        while True:
            try:
                task_id = tasks.Submit(request, timeout=5).task_id
                done.release()
                return task_id
            except grpc.RpcError as exc:
                # What a client cannot tell apart from "maybe it was made": retry.
                assert exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ), exc
                assert time.monotonic() < deadline, "no answer in time"
                retried.append(key)
                time.sleep(0.1)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(submit_until_answered, key) for key in keys]
        for _ in range(10):  # the kill lands with submissions before, during and after it
            assert done.acquire(timeout=60)
        gateway_killer()
        ids = [future.result(timeout=180) for future in futures]
    assert retried  # the kill was seen: calls failed and were repeated
    assert len(set(ids)) == len(keys)
    for task_id in ids:
        assert wait_terminal(tasks, task_id, timeout=120).status == (
            common_pb2.TASK_STATUS_SUCCEEDED
        )
    # Asked again, every key still names its task.
    again = [
        tasks.Submit(keyed(f"Match report {k}: the home side won.", k), timeout=30) for k in keys
    ]
    assert [r.task_id for r in again] == ids
    time.sleep(1)
    assert succeeded(stack) - runs == len(keys)


# --- synchronous RPCs: the idempotency-key metadata entry ------------------------------


def _key_metadata(key: str) -> tuple[tuple[str, str], ...]:
    return ((METADATA_IDEMPOTENCY_KEY, key),)


def test_a_keyed_sync_call_repeated_answers_from_the_first_calls_task(
    stack: LocalStack, classifier: classification_pb2_grpc.ClassificationStub
) -> None:
    key = uuid.uuid4().hex
    request = classify_request("The striker scored twice in the final.")
    before = published(stack)
    first = classifier.Classify(request, metadata=_key_metadata(key), timeout=30)
    again = classifier.Classify(request, metadata=_key_metadata(key), timeout=30)
    assert again == first and first.task_id
    assert published(stack) - before == 1
    with pytest.raises(grpc.RpcError) as info:
        classifier.Classify(
            classify_request("Parliament passed the budget."),
            metadata=_key_metadata(key),
            timeout=30,
        )
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as info:
        classifier.Classify(request, metadata=_key_metadata("k" * 257), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _chunks(stream: Iterator[generation_pb2.GenerateChunk]) -> tuple[str, str]:
    """The task id and the whole text of a stream."""
    chunks = list(stream)
    return chunks[0].task_id, "".join(c.delta for c in chunks)


def test_a_keyed_stream_outlives_its_caller_and_a_repeat_streams_it_whole(
    channel: grpc.Channel, tasks: tasks_pb2_grpc.TasksStub
) -> None:
    generation = generation_pb2_grpc.GenerationStub(channel)
    request = greedy_request("1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", max_tokens=48)
    key = uuid.uuid4().hex
    stream = generation.GenerateStream(request, metadata=_key_metadata(key), timeout=120)
    task_id = next(stream).task_id
    stream.cancel()  # the caller goes away after its first chunk
    repeated_id, text = _chunks(
        generation.GenerateStream(request, metadata=_key_metadata(key), timeout=120)
    )
    assert repeated_id == task_id
    result = wait_terminal(tasks, task_id)
    assert result.status == common_pb2.TASK_STATUS_SUCCEEDED  # not cancelled
    assert text == result.generation.text and text
    # Without a key, going away cancels the task (the control).
    plain = generation.GenerateStream(greedy_request("1, 2, 3, 4, 5, 6, 7,", 256), timeout=120)
    plain_id = next(plain).task_id
    plain.cancel()
    assert wait_terminal(tasks, plain_id).status == common_pb2.TASK_STATUS_CANCELLED


# --- direct producers: TaskEnvelope.idempotency_key ------------------------------------


def test_records_of_one_key_from_a_direct_producer_run_once(
    settings: ServiceSettings,
    producer: KafkaProducer,
    tasks: tasks_pb2_grpc.TasksStub,
    tail: Callable[[str], TopicTail],
) -> None:
    topic = settings.names.task_topic(KIND, "batch")
    dead = tail(settings.names.dead_letter_topic)
    key = uuid.uuid4().hex
    # A producer that retried: the same request twice, each time a new envelope.
    first, retry = (classification_envelope("The team won the derby.") for _ in range(2))
    other = classification_envelope("The council raised the fare.")
    first_again = tasks_pb2.TaskEnvelope.FromString(first.SerializeToString())  # redelivered
    for envelope in (first, retry, first_again, other):
        envelope.idempotency_key = key
    malformed = classification_envelope("The team won the derby.")
    malformed.idempotency_key = "bad\nkey"
    for envelope in (first, retry, first_again, other, malformed):
        producer.send(topic, value=envelope.SerializeToString(), partition=0)
    producer.flush(timeout=30)

    assert wait_terminal(tasks, first.task_id).status == common_pb2.TASK_STATUS_SUCCEEDED
    duplicate = wait_terminal(tasks, retry.task_id)
    assert duplicate.status == common_pb2.TASK_STATUS_CANCELLED
    assert duplicate.error.code == Code.ALREADY_EXISTS
    assert first.task_id in duplicate.error.message
    # The same key with another request, and a malformed key: dead letters with reasons.
    refused = wait_terminal(tasks, other.task_id)
    assert refused.status == common_pb2.TASK_STATUS_FAILED and refused.dead_lettered
    reasons = [header(r.headers, names.HEADER_DLQ_REASON) or "" for r in dead.read(2, timeout=60)]
    assert any(f"different request (task {first.task_id})" in r for r in reasons), reasons
    assert any("idempotency_key has control characters" in r for r in reasons), reasons
