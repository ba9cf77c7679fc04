"""Dead letters for operators on the real stack: ``nlp dlq list`` by reason after garbage
and invalid envelopes, ``show``, a task whose model was not served replayed once a worker
serves it, still-invalid records refused, and the replay bound."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from kafka import KafkaProducer

from deploy.local.stack import ROOT, LocalStack
from nlp.v1 import common_pb2, deadletters_pb2, deadletters_pb2_grpc, tasks_pb2_grpc
from services.classification.settings import DEFAULT_MODEL
from shared.contracts.settings import ServiceSettings
from shared.transport.deadletters import DeadLetterReader
from tests.factories import classification_envelope
from tests.integration.support import wait_terminal

KIND = "classification"
EXTRA_MODEL = "minilm-extra"


def _nlp(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    """``nlp --target <the stack's gateway> ARGS`` as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "shared.client.cli", "--target", stack.gateway_target, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _json(stack: LocalStack, *args: str) -> Any:
    done = _nlp(stack, "--json", *args)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def dead_letters(channel: grpc.Channel) -> deadletters_pb2_grpc.DeadLettersStub:
    return deadletters_pb2_grpc.DeadLettersStub(channel)


@pytest.fixture
def since() -> str:
    """This test's start, as ``--since`` takes it (its records only: tests run in turn)."""
    return datetime.fromtimestamp(time.time() - 1, UTC).isoformat()


def _send(producer: KafkaProducer, topic: str, *values: bytes) -> None:
    for value in values:
        producer.send(topic, value=value)
    producer.flush(timeout=30)


def _listed(stack: LocalStack, since: str, want: int, *extra: str) -> Any:
    """``nlp dlq list --since`` once it shows ``want`` records (the intake writes them
    as it reads the topic)."""
    deadline = time.monotonic() + 60
    while True:
        listing = _json(stack, "dlq", "list", "--since", since, *extra)
        if int(listing.get("matched", 0)) >= want or time.monotonic() > deadline:
            return listing
        time.sleep(0.5)


def test_dlq_list_counts_garbage_and_invalid_envelopes_by_reason(
    stack: LocalStack, settings: ServiceSettings, producer: KafkaProducer, since: str
) -> None:
    no_deadline = classification_envelope("The council met on Monday.")
    no_deadline.ClearField("deadline")
    wrong_lane = classification_envelope("The striker scored twice.")
    wrong_lane.lane = common_pb2.LANE_INTERACTIVE  # on the batch topic
    _send(
        producer,
        settings.names.task_topic(KIND, "batch"),
        b"\x00\xffnot a protobuf",
        b'{"json": "is not an envelope"}',
        b"\x08\x96\x01\x12",
        no_deadline.SerializeToString(),
        wrong_lane.SerializeToString(),
    )
    listing = _listed(stack, since, 5)
    assert int(listing["matched"]) == 5, listing
    counts = {(c["stage"], c["reason"]): int(c["count"]) for c in listing["counts"]}
    undecodable = [n for (_, reason), n in counts.items() if reason.startswith("undecodable")]
    assert sum(undecodable) == 3, counts
    assert counts[("intake", "invalid: created_at and deadline are required")] == 1, counts
    assert counts[("intake", "invalid: lane … on the … topic")] == 1, counts
    assert {c["kind"] for c in listing["counts"]} == {"KIND_CLASSIFICATION"}
    newest = {letter["task_id"]: letter for letter in listing["newest"]}
    assert {no_deadline.task_id, wrong_lane.task_id} <= set(newest)
    # The text table says the same.
    table = _nlp(stack, "dlq", "list", "--since", since).stdout
    assert "5 dead letters" in table and "invalid: created_at and deadline are required" in table

    # show: the reason, the headers, the envelope decoded (or the raw value when not).
    shown = _json(stack, "dlq", "show", newest[no_deadline.task_id]["id"])
    assert shown["reason"] == "invalid: created_at and deadline are required"
    assert shown["envelope"]["task_id"] == no_deadline.task_id
    assert {h["name"] for h in shown["headers"]} >= {"nlp-dlq-reason", "nlp-dlq-source-topic"}
    garbage = next(r for r in listing["newest"] if not r["task_id"])
    text = _nlp(stack, "dlq", "show", garbage["id"]).stdout
    assert "does not decode" in text and "value" in text
    # Filters narrow it down.
    assert int(_json(stack, "dlq", "list", "--since", since, "--reason", "lane")["matched"]) == 1
    assert int(_json(stack, "dlq", "list", "--since", since, "--stage", "worker")["matched"]) == 0
    assert int(_json(stack, "dlq", "list", "--since", since, "--kind", "ner")["matched"]) == 0


def test_a_replay_of_a_still_invalid_record_is_refused(
    stack: LocalStack,
    settings: ServiceSettings,
    producer: KafkaProducer,
    dead_letters: deadletters_pb2_grpc.DeadLettersStub,
    since: str,
) -> None:
    no_deadline = classification_envelope("The council met on Monday.")
    no_deadline.ClearField("deadline")
    _send(
        producer,
        settings.names.task_topic(KIND, "batch"),
        b"\x00\xffnot a protobuf",
        no_deadline.SerializeToString(),
    )
    ids = [letter["id"] for letter in _listed(stack, since, 2)["newest"]]
    assert len(ids) == 2
    for dry_run in (True, False):
        response = dead_letters.Replay(
            deadletters_pb2.ReplayDeadLettersRequest(ids=ids, dry_run=dry_run), timeout=60
        )
        assert (response.replayed, response.refused) == (0, 2)
        reasons = sorted(o.refused for o in response.outcomes)
        assert reasons[0] == "still invalid: created_at and deadline are required", reasons
        assert reasons[1] == "still invalid: it does not decode (DecodeError)", reasons
    done = _nlp(stack, "dlq", "replay", *ids)
    assert done.returncode == 1 and "refused 2" in done.stdout, done
    # Nothing went back: no new dead letter from a resent record.
    time.sleep(2)
    assert int(_json(stack, "dlq", "list", "--since", since)["matched"]) == 2
    # Bad requests.
    for request in (
        deadletters_pb2.ReplayDeadLettersRequest(),
        deadletters_pb2.ReplayDeadLettersRequest(ids=["not-an-id"]),
    ):
        with pytest.raises(grpc.RpcError) as info:
            dead_letters.Replay(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        dead_letters.Get(deadletters_pb2.GetDeadLetterRequest(id="0:999999999"), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture
def serve_extra_model(stack: LocalStack) -> Iterator[Callable[[], None]]:
    """Restart the classification worker serving one more model; the original worker is
    back after the test."""
    worker = stack.services[f"{KIND}-worker"]

    def serve() -> None:
        models = {name: {"engine": "minilm-zero-shot"} for name in (DEFAULT_MODEL, EXTRA_MODEL)}
        worker.env["NLP_MODELS"] = json.dumps(models)
        stack.restart(f"{KIND}-worker")

    try:
        yield serve
    finally:
        if worker.env.pop("NLP_MODELS", None) is not None:
            stack.restart(f"{KIND}-worker")


def test_a_task_whose_model_was_not_served_succeeds_when_replayed_once_it_is(
    stack: LocalStack,
    settings: ServiceSettings,
    producer: KafkaProducer,
    tasks: tasks_pb2_grpc.TasksStub,
    dead_letters: deadletters_pb2_grpc.DeadLettersStub,
    serve_extra_model: Callable[[], None],
    since: str,
) -> None:
    envelope = classification_envelope("The striker scored twice in the final.", deadline_s=5)
    envelope.classification.model = envelope.model = EXTRA_MODEL
    envelope.batch_id = f"dlq-{uuid.uuid4().hex[:12]}"
    _send(producer, settings.names.task_topic(KIND, "batch"), envelope.SerializeToString())
    failed = wait_terminal(tasks, envelope.task_id)
    assert failed.status == common_pb2.TASK_STATUS_FAILED and failed.dead_lettered
    assert failed.error.message.startswith("model not served:"), failed.error.message
    listing = _listed(stack, since, 1, "--stage", "worker")
    (letter,) = listing["newest"]
    assert letter["task_id"] == envelope.task_id
    assert letter["reason"].startswith(f"model not served: unknown {KIND} model '{EXTRA_MODEL}'")
    # Still not served: refused, and nothing changes.
    done = _nlp(stack, "dlq", "replay", letter["id"])
    assert done.returncode == 1 and "still invalid: unknown" in done.stdout, done

    serve_extra_model()
    time.sleep(6)  # past the gateway's model catalog cache, and the envelope's deadline
    dry = _json(stack, "dlq", "replay", "--dry-run", letter["id"])
    assert dry["outcomes"][0]["replayed"] is True, dry
    assert wait_terminal(tasks, envelope.task_id).status == common_pb2.TASK_STATUS_FAILED
    done = _nlp(stack, "dlq", "replay", "--stage", "worker", "--since", since)
    assert done.returncode == 0 and "replayed 1, refused 0" in done.stdout, done
    # A fresh deadline: the original's 5 s from now, though those have long passed.
    result = wait_terminal(tasks, envelope.task_id)
    assert result.status == common_pb2.TASK_STATUS_SUCCEEDED, result
    assert result.replays == 1 and result.model.name == EXTRA_MODEL
    assert result.classification.top_label == "sports"
    # Its batch counts the success instead of the failure.
    status = _json(stack, "batch", "status", envelope.batch_id)
    assert (int(status.get("failed", 0)), int(status["succeeded"])) == (0, 1), status
    assert int(status.get("dead_lettered", 0)) == 0, status
    # A succeeded task is not replayed again.
    again = _json(stack, "dlq", "replay", letter["id"])
    assert "ended SUCCEEDED" in again["outcomes"][0]["refused"], again


def test_a_task_that_keeps_failing_is_replayed_at_most_the_bound(
    stack: LocalStack,
    settings: ServiceSettings,
    producer: KafkaProducer,
    tasks: tasks_pb2_grpc.TasksStub,
    dead_letters: deadletters_pb2_grpc.DeadLettersStub,
    since: str,
) -> None:
    """A task refused each time it comes back (its idempotency key belongs to another
    request) goes round the loop replay → dead letter at most NLP_DLQ_MAX_REPLAYS (3)
    times."""
    key = uuid.uuid4().hex
    first = classification_envelope("The team won the derby.")
    other = classification_envelope("The council raised the fare.")
    first.idempotency_key = other.idempotency_key = key
    topic = settings.names.task_topic(KIND, "batch")
    _send(producer, topic, first.SerializeToString())
    assert wait_terminal(tasks, first.task_id).status == common_pb2.TASK_STATUS_SUCCEEDED
    _send(producer, topic, other.SerializeToString())
    assert wait_terminal(tasks, other.task_id).dead_lettered

    def newest_of_task(count: int) -> deadletters_pb2.DeadLetter:
        request = deadletters_pb2.ListDeadLettersRequest(newest=50)
        request.filter.reason = "different request"
        deadline = time.monotonic() + 60
        while True:
            found = [
                d
                for d in dead_letters.List(request, timeout=60).newest
                if d.task_id == other.task_id
            ]
            if len(found) >= count:
                return found[0]
            assert time.monotonic() < deadline, found
            time.sleep(0.5)

    first_letter = newest_of_task(1)
    for replay in (1, 2, 3):
        letter = newest_of_task(replay)
        assert letter.replays == replay - 1
        response = dead_letters.Replay(
            deadletters_pb2.ReplayDeadLettersRequest(ids=[letter.id]), timeout=60
        )
        assert response.replayed == 1, response
        deadline = time.monotonic() + 60
        while (result := wait_terminal(tasks, other.task_id)).replays != replay:
            assert time.monotonic() < deadline, result
            time.sleep(0.2)
        assert result.dead_lettered and "different request" in result.error.message
    last = newest_of_task(4)
    assert last.replays == 3
    for letter in (last, first_letter):  # an old record of the task counts the same
        response = dead_letters.Replay(
            deadletters_pb2.ReplayDeadLettersRequest(ids=[letter.id]), timeout=60
        )
        assert response.replayed == 0
        assert "replayed 3 times: the bound (NLP_DLQ_MAX_REPLAYS=3)" in (
            response.outcomes[0].refused
        ), response


def test_a_scan_reads_at_most_its_limit_the_newest_of_each_partition(
    settings: ServiceSettings, producer: KafkaProducer
) -> None:
    """What NLP_DLQ_MAX_SCAN bounds: with one record per partition allowed, a partition
    holding two more (one key) shows only the newer."""
    key = uuid.uuid4().hex.encode()
    topic = settings.names.dead_letter_topic
    for marker in (b"older", b"newer"):
        producer.send(topic, key=key, value=marker)
    producer.flush(timeout=30)
    partitions = len(producer.partitions_for(topic))
    records, truncated = DeadLetterReader(settings, max_scan=partitions).scan()
    assert truncated
    assert len({r.partition for r in records}) == len(records) <= partitions
    mine = [r for r in records if r.key == key]
    assert [r.value for r in mine] == [b"newer"]
    everything, truncated = DeadLetterReader(settings, max_scan=100_000).scan()
    assert not truncated
    assert [r.value for r in everything if r.key == key] == [b"older", b"newer"]
