"""OpenAI's Files and Batch APIs on the real stack, driven by the official ``openai`` SDK:
a batch of 200 lines uploaded, run and downloaded; refused files and lines; a running
batch cancelled; a batch finishing across a ``kill -9`` of the front door; the limits
and the tenants of files and batches."""

from __future__ import annotations

import io
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from openai.types import Batch

from deploy.local.kafka import free_port
from deploy.local.stack import LocalStack
from nlp.v1 import tasks_pb2, tasks_pb2_grpc
from services.gateway.auth import digest
from shared.contracts.names import Names
from shared.transport.kafka import ensure_topics
from tests.integration.support import status_name, wait_terminal

ENDED = ("completed", "failed", "cancelled", "expired")
SMALL_NAMESPACE = "small-door"


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> Iterator[openai.OpenAI]:
    assert stack.http_url is not None
    with openai.OpenAI(base_url=stack.http_url, api_key="unused", max_retries=5) as c:
        yield c


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def _chat_line(custom_id: str, model: str, text: str, max_tokens: int = 4) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
    }


def _completion_line(custom_id: str, model: str, max_tokens: int) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/completions",
        "body": {"model": model, "prompt": f"Story {custom_id}:", "max_tokens": max_tokens},
    }


def _upload(client: openai.OpenAI, lines: list[dict[str, Any]] | bytes) -> str:
    data = lines if isinstance(lines, bytes) else "\n".join(map(json.dumps, lines)).encode()
    return client.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch").id


def _wait(client: openai.OpenAI, batch_id: str, until: Any = None, timeout: float = 300) -> Batch:
    """Poll the batch until it ended (or ``until(batch)`` holds)."""
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if (until(batch) if until else batch.status in ENDED) or batch.status in ENDED:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch.request_counts}"
        time.sleep(0.3)


def _records(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def _grpc_batch(tasks: tasks_pb2_grpc.TasksStub, batch_id: str) -> tasks_pb2.BatchStatus:
    """The same batch seen through gRPC (its lines are the items of a gateway batch)."""
    status: tasks_pb2.BatchStatus = tasks.GetBatch(
        tasks_pb2.GetBatchRequest(batch_id=batch_id), timeout=10
    )
    return status


def test_a_batch_of_200_lines_is_uploaded_run_and_downloaded(
    client: openai.OpenAI, model: str, tasks: tasks_pb2_grpc.TasksStub
) -> None:
    lines = [_chat_line(f"doc-{i}", model, f"Say the number {i}.") for i in range(200)]
    file_id = _upload(client, lines)
    uploaded = client.files.retrieve(file_id)
    assert (uploaded.purpose, uploaded.filename) == ("batch", "input.jsonl")
    assert uploaded.bytes == len("\n".join(map(json.dumps, lines)).encode())
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert batch.status == "validating" and batch.metadata == {"job": "nightly"}
    assert batch.expires_at is not None and batch.expires_at - batch.created_at == 24 * 3600
    batch = _wait(client, batch.id)
    assert batch.status == "completed", batch.errors
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (200, 200)
    assert batch.request_counts.failed == 0 and batch.error_file_id is None
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    records = _records(client, batch.output_file_id)
    assert sorted(r["custom_id"] for r in records) == sorted(line["custom_id"] for line in lines)
    for record in records:
        assert record["error"] is None and record["response"]["status_code"] == 200
        body = record["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == model
        assert body["choices"][0]["message"]["content"]
        assert 0 < body["usage"]["completion_tokens"] <= 4
    # Each line was one task of the pipeline, on the batch lane, found by its request id.
    status = _grpc_batch(tasks, batch.id)
    assert (status.submitted, status.succeeded, status.complete) == (200, 200, True)
    first = records[0]
    result = wait_terminal(tasks, first["response"]["request_id"])
    assert status_name(result.status) == "TASK_STATUS_SUCCEEDED"
    assert result.correlation_id == first["custom_id"]
    assert result.generation.text == first["response"]["body"]["choices"][0]["message"]["content"]
    output = client.files.retrieve(batch.output_file_id or "")
    assert output.purpose == "batch_output"
    assert batch.id in [b.id for b in client.batches.list(limit=100).data]


def test_a_file_the_batch_cannot_use_fails_it_with_the_lines_at_fault(
    client: openai.OpenAI, model: str
) -> None:
    good = json.dumps(_chat_line("a", model, "hi")).encode()
    wrong_url = json.dumps({**_chat_line("b", model, "hi"), "url": "/v1/completions"}).encode()
    data = b"\n".join([good, b"{not json", good, wrong_url])
    batch = client.batches.create(
        input_file_id=_upload(client, data),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    batch = _wait(client, batch.id)
    assert batch.status == "failed" and batch.failed_at and batch.errors is not None
    found = [(e.code, e.line) for e in batch.errors.data or []]
    assert found == [("invalid_json_line", 2), ("duplicate_custom_id", 3), ("mismatched_url", 4)]
    assert batch.output_file_id is None


def test_lines_the_platform_refuses_are_error_lines_beside_the_answers(
    client: openai.OpenAI, model: str
) -> None:
    lines = [
        _completion_line("ok", model, 3),
        {
            **_completion_line("hot", model, 3),
            "body": {"model": model, "prompt": "x", "temperature": "hot"},
        },
        _completion_line("unknown-model", "no-such-model", 3),
        {**_completion_line("n2", model, 3), "body": {"model": model, "prompt": "x", "n": 2}},
    ]
    batch = client.batches.create(
        input_file_id=_upload(client, lines), endpoint="/v1/completions", completion_window="24h"
    )
    batch = _wait(client, batch.id)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 3)
    (answer,) = _records(client, batch.output_file_id)
    assert answer["custom_id"] == "ok"
    assert answer["response"]["body"]["object"] == "text_completion"
    errors = {r["custom_id"]: r["response"] for r in _records(client, batch.error_file_id)}
    assert set(errors) == {"hot", "unknown-model", "n2"}
    assert all(e["status_code"] == 400 for e in errors.values())
    assert errors["hot"]["body"]["error"]["param"] == "temperature"
    assert "no-such-model" in errors["unknown-model"]["body"]["error"]["message"]


def test_a_running_batch_is_cancelled_and_every_line_is_accounted_for(
    client: openai.OpenAI, model: str, tasks: tasks_pb2_grpc.TasksStub
) -> None:
    lines = [_completion_line(f"c{i}", model, 48) for i in range(120)]
    batch = client.batches.create(
        input_file_id=_upload(client, lines), endpoint="/v1/completions", completion_window="24h"
    )
    running = _wait(
        client, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 3
    )
    assert running.status == "in_progress"
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    batch = _wait(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    done = _records(client, batch.output_file_id)
    unanswered = _records(client, batch.error_file_id)
    ids = [r["custom_id"] for r in done + unanswered]
    assert sorted(ids) == sorted(line["custom_id"] for line in lines)  # each exactly once
    assert unanswered and all(r["error"]["code"] == "batch_cancelled" for r in unanswered)
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (len(done), 0)
    # Nothing of it is left running or queued.
    status = _grpc_batch(tasks, batch.id)
    assert status.complete and status.running == 0 and status.pending == 0
    assert status.cancelled >= 1
    # A cancel of an ended batch changes nothing.
    assert client.batches.cancel(batch.id).status == "cancelled"


def test_a_batch_finishes_across_a_kill_9_of_the_front_door(
    client: openai.OpenAI, model: str, stack: LocalStack, tasks: tasks_pb2_grpc.TasksStub
) -> None:
    lines = [_completion_line(f"k{i}", model, 16) for i in range(200)]
    batch = client.batches.create(
        input_file_id=_upload(client, lines), endpoint="/v1/completions", completion_window="24h"
    )
    _wait(
        client,
        batch.id,
        lambda b: b.request_counts is not None and b.request_counts.completed >= 10,
    )
    door = stack.services["http-gateway"]
    door.signal(signal.SIGKILL)
    assert door.proc is not None
    door.proc.wait(30)
    at_kill = _grpc_batch(tasks, batch.id)
    stack.restart("http-gateway")
    batch = _wait(client, batch.id)
    assert batch.status == "completed"
    assert not at_kill.complete, "the batch ended before the kill: the test proves nothing"
    records = _records(client, batch.output_file_id)
    assert sorted(r["custom_id"] for r in records) == sorted(line["custom_id"] for line in lines)
    assert batch.request_counts is not None and batch.request_counts.completed == 200
    # No line became a second task when the new door took the batch over.
    status = _grpc_batch(tasks, batch.id)
    assert (status.submitted, status.succeeded) == (200, 200)


# --- limits and tenants: a door of its own namespace (no workers needed) --------------


@pytest.fixture(scope="module")
def small_door_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("small-door-files")


@pytest.fixture(scope="module")
def small_door(
    stack: LocalStack, tmp_path_factory: pytest.TempPathFactory, small_door_files: Path
) -> Iterator[str]:
    """A front door with API keys, small limits and a namespace of its own (so that the
    session's door never drives its batches)."""
    keys = tmp_path_factory.mktemp("batch-keys") / "keys.json"
    keys.write_text(
        json.dumps(
            {
                "tenants": {
                    "team-a": {},
                    "team-b": {},
                    "tiny": {"max_batch_items": 2},
                    "narrow": {"max_in_flight": 2},
                },
                "keys": [
                    {"id": "a", "tenant": "team-a", "sha256": digest("key-a")},
                    {"id": "b", "tenant": "team-b", "sha256": digest("key-b")},
                    {"id": "t", "tenant": "tiny", "sha256": digest("key-tiny")},
                    {"id": "n", "tenant": "narrow", "sha256": digest("key-narrow")},
                ],
            }
        )
    )
    # Its tasks' topics exist (no worker reads them: its tasks never run).
    ensure_topics(stack.settings().model_copy(update={"namespace": SMALL_NAMESPACE}))
    port = free_port()
    stack._add("http-gateway-small", "services.http_gateway", "http-gateway")
    door = stack.services["http-gateway-small"]
    door.env.update(
        {
            "NLP_HTTP_PORT": str(port),
            "NLP_NAMESPACE": SMALL_NAMESPACE,
            "NLP_AUTH_MODE": "keys",
            "NLP_AUTH_KEYS_FILE": str(Path(keys)),
            "NLP_MAX_FILE_BYTES": "2000",
            "NLP_MAX_BATCH_LINES": "3",
            "NLP_FILES_DIR": str(small_door_files),
        }
    )
    door.start()
    try:
        door.wait_ready(120)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        door.stop()
        del stack.services["http-gateway-small"]


def _as(door: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=door, api_key=key, max_retries=0)


def test_the_files_api_uploads_lists_reads_and_deletes(small_door: str) -> None:
    with _as(small_door, "key-a") as a:
        first = a.files.create(file=("one.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
        second = a.files.create(file=("two.jsonl", io.BytesIO(b"{}\n{}\n")), purpose="batch")
        assert [f.id for f in a.files.list().data][:2] == [second.id, first.id]
        assert [f.id for f in a.files.list(order="asc").data][:2] == [first.id, second.id]
        page = a.files.list(limit=1)
        assert page.data[0].id == second.id and page.has_more
        assert a.files.retrieve(first.id).bytes == 3
        assert a.files.content(second.id).content == b"{}\n{}\n"
        assert a.files.delete(first.id).deleted
        with pytest.raises(openai.NotFoundError):
            a.files.retrieve(first.id)
        with pytest.raises(openai.NotFoundError):
            a.files.delete(first.id)
        with pytest.raises(openai.BadRequestError) as refused:
            a.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")
        assert refused.value.param == "purpose"
        # NLP_MAX_FILE_BYTES (2000 here): 413 in OpenAI's error shape.
        with pytest.raises(openai.APIStatusError) as large:
            a.files.create(file=("big.jsonl", io.BytesIO(b"x" * 5000)), purpose="batch")
        assert large.value.status_code == 413
        assert large.value.body["code"] == "file_too_large"  # type: ignore[index]


def test_a_failing_files_directory_is_unavailable_not_a_crash(
    small_door: str, small_door_files: Path
) -> None:
    with _as(small_door, "key-a") as a, _as(small_door, "key-b") as b:
        kept = a.files.create(file=("k.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
        (small_door_files / "team-a" / kept.id).unlink()  # its bytes are gone
        blocked = small_door_files / "team-b"
        blocked.write_text("a file where the tenant's directory belongs")
        try:
            for call in (
                lambda: a.files.content(kept.id),
                lambda: b.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="batch"),
            ):
                with pytest.raises(openai.APIStatusError) as info:
                    call()
                assert info.value.status_code == 503
                assert info.value.body["code"] == "service_unavailable"  # type: ignore[index]
        finally:
            blocked.unlink()
        made = b.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
        assert b.files.content(made.id).content == b"{}\n"


def test_files_and_batches_are_their_tenants_own(small_door: str) -> None:
    with _as(small_door, "key-a") as a, _as(small_door, "key-b") as b:
        file_id = a.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch").id
        batch = a.batches.create(
            input_file_id=file_id, endpoint="/v1/completions", completion_window="24h"
        )
        for read in (
            lambda: b.files.retrieve(file_id),
            lambda: b.files.content(file_id),
            lambda: b.files.delete(file_id),
            lambda: b.batches.retrieve(batch.id),
            lambda: b.batches.cancel(batch.id),
            lambda: b.batches.create(
                input_file_id=file_id, endpoint="/v1/completions", completion_window="24h"
            ),
        ):
            with pytest.raises(openai.NotFoundError):
                read()
        assert file_id not in [f.id for f in b.files.list().data]
        assert batch.id not in [x.id for x in b.batches.list().data]
        assert batch.id in [x.id for x in a.batches.list().data]
    answer = httpx.get(f"{small_door}/files", timeout=10)
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"


def test_a_batch_over_the_line_limits_fails(small_door: str) -> None:
    four = b"".join(
        json.dumps(_completion_line(f"r{i}", "m", 2)).encode() + b"\n" for i in range(4)
    )
    three = b"".join(
        json.dumps(_completion_line(f"r{i}", "m", 2)).encode() + b"\n" for i in range(3)
    )
    # NLP_MAX_BATCH_LINES (3 here), and a tenant's own max_batch_items (2 for "tiny").
    for key, data in (("key-a", four), ("key-tiny", three)):
        with _as(small_door, key) as c:
            file_id = c.files.create(file=("f.jsonl", io.BytesIO(data)), purpose="batch").id
            batch = c.batches.create(
                input_file_id=file_id, endpoint="/v1/completions", completion_window="24h"
            )
            batch = _wait(c, batch.id, timeout=60)
            assert batch.status == "failed"
            assert [e.code for e in (batch.errors.data if batch.errors else None) or []] == [
                "too_many_requests"
            ]


def test_bad_batch_requests_are_openai_errors(small_door: str) -> None:
    with _as(small_door, "key-a") as a:
        file_id = a.files.create(file=("f.jsonl", io.BytesIO(b"{}\n")), purpose="batch").id
        cases: list[tuple[dict[str, Any], type[openai.APIStatusError], str | None]] = [
            ({"endpoint": "/v1/embeddings"}, openai.BadRequestError, "endpoint"),
            ({"completion_window": "1h"}, openai.BadRequestError, "completion_window"),
            (
                {"input_file_id": "file-000000000000000000000000"},
                openai.NotFoundError,
                "input_file_id",
            ),
            ({"metadata": {"k": "v" * 600}}, openai.BadRequestError, "metadata"),
        ]
        for change, error, param in cases:
            request: dict[str, Any] = {
                "input_file_id": file_id,
                "endpoint": "/v1/completions",
                "completion_window": "24h",
                **change,
            }
            with pytest.raises(error) as info:
                a.batches.create(**request)
            assert info.value.param == param, change
        with pytest.raises(openai.NotFoundError):
            a.batches.retrieve("batch_000000000000000000000000")
        with pytest.raises(openai.BadRequestError):
            a.batches.list(limit=101)


def test_a_batch_whose_window_runs_out_expires_with_its_lines_unanswered(
    small_door: str, stack: LocalStack
) -> None:
    """Tenant "narrow" may have 2 tasks in flight: the first chunk is cut to 2 lines and
    the third waits for the quota. The window is then moved to end in a second (by hand,
    while no door drives the batch): the lines in flight are cancelled, the one never
    submitted is reported too, and the batch expires."""
    assert stack.redis is not None
    names = Names(SMALL_NAMESPACE)
    lines = [_completion_line(f"e{i}", "m", 2) for i in range(3)]
    with _as(small_door, "key-narrow") as c, redis.Redis.from_url(stack.redis.url) as r:
        batch = c.batches.create(
            input_file_id=_upload(c, lines), endpoint="/v1/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 60
        while int(r.hget(names.batch_key(batch.id, "narrow"), "submitted") or 0) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        door = stack.services["http-gateway-small"]
        door.signal(signal.SIGKILL)
        assert door.proc is not None
        door.proc.wait(30)
        r.hset(names.openai_batch_key("narrow", batch.id), "expires_at", f"{time.time() + 1:.6f}")
        stack.restart("http-gateway-small")
        batch = _wait(c, batch.id, timeout=120)
        assert batch.status == "expired" and batch.expired_at
        assert batch.request_counts is not None
        counts = batch.request_counts
        assert (counts.total, counts.completed, counts.failed) == (3, 0, 0)
        assert batch.output_file_id is None
        records = _records(c, batch.error_file_id)
        assert sorted(x["custom_id"] for x in records) == ["e0", "e1", "e2"]
        assert all(x["error"]["code"] == "batch_expired" for x in records)
        # Two lines were tasks (the quota held the third back); both were stopped.
        assert int(r.hget(names.batch_key(batch.id, "narrow"), "submitted") or 0) == 2
        assert int(r.hget(names.batch_key(batch.id, "narrow"), "cancelled") or 0) == 2
