"""OpenAI batch files: the input checks, the output and error lines, the API objects."""

from __future__ import annotations

import io
import json

import pytest

from nlp.v1 import common_pb2, generation_pb2, tasks_pb2
from services.http_gateway import batchfile as bf
from services.http_gateway.completions import BadRequestError


def _line(custom_id: str, url: str = bf.CHAT, **extra: object) -> bytes:
    item = {
        "custom_id": custom_id,
        "method": "POST",
        "url": url,
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        **extra,
    }
    return json.dumps(item).encode() + b"\n"


def _check(data: bytes, max_lines: int = 10) -> tuple[int, list[bf.Problem]]:
    return bf.check_input(io.BytesIO(data), bf.CHAT, max_lines)


def test_a_valid_file_counts_its_requests_and_skips_blank_lines() -> None:
    count, problems = _check(_line("a") + b"\n  \n" + _line("b"))
    assert (count, problems) == (2, [])


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json\n", "invalid_json_line"),
        (b"[1, 2]\n", "invalid_request"),
        (_line("", bf.CHAT), "missing_required_parameter"),
        (_line("x" * 257), "invalid_custom_id"),
        (_line("a", bf.COMPLETIONS), "mismatched_url"),
        (_line("a", method="GET"), "invalid_method"),
        (_line("a", body=[1]), "invalid_request"),
        (_line("a", extra_field=1), "invalid_request"),
    ],
)
def test_a_bad_line_is_named_with_its_number(raw: bytes, code: str) -> None:
    count, problems = _check(_line("ok") + raw)
    assert count == 2
    assert [(p.code, p.line) for p in problems] == [(code, 2)]


def test_repeated_custom_ids_too_many_lines_and_an_empty_file_are_refused() -> None:
    _, problems = _check(_line("a") + _line("b") + _line("a"))
    assert [(p.code, p.line) for p in problems] == [("duplicate_custom_id", 3)]
    _, problems = _check(b"".join(_line(f"r{i}") for i in range(4)), max_lines=3)
    assert [p.code for p in problems] == ["too_many_requests"]
    assert [p.code for p in _check(b"\n\n")[1]] == ["empty_file"]


def test_at_most_a_hundred_problems_are_listed() -> None:
    _, problems = _check(b"{\n" * 500, max_lines=1000)
    assert len(problems) == bf.MAX_REPORTED


def test_a_line_body_is_checked_as_its_endpoints_request() -> None:
    asked = bf.asked(bf.COMPLETIONS, {"model": "m", "prompt": "Once", "max_tokens": 3})
    assert asked.request.prompt == "Once" and asked.request.sampling.max_tokens == 3
    with pytest.raises(BadRequestError, match="stream"):
        bf.asked(
            bf.CHAT, {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
        )
    with pytest.raises(BadRequestError):
        bf.asked(bf.CHAT, {"model": "m", "prompt": "a chat body needs messages"})


def _result(status: int, **fields: object) -> tasks_pb2.TaskResult:
    result = tasks_pb2.TaskResult(task_id="t1", correlation_id="req-1", **fields)  # type: ignore[arg-type]
    result.status = status  # type: ignore[assignment]
    result.model.name = "smol"
    return result


def test_a_succeeded_task_is_an_output_line_with_its_completion() -> None:
    result = _result(
        common_pb2.TASK_STATUS_SUCCEEDED,
        generation=generation_pb2.GenerateResponse(
            text="Hello",
            finish_reason=generation_pb2.FINISH_REASON_LENGTH,
            prompt_tokens=4,
            completion_tokens=2,
        ),
    )
    outcome, raw = bf.result_line(bf.CHAT, result, None)
    line = json.loads(raw)
    assert outcome == bf.DONE and raw.endswith(b"\n") and line["error"] is None
    assert (line["id"], line["custom_id"]) == ("batch_req_t1", "req-1")
    assert line["response"]["status_code"] == 200
    body = line["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == "smol"
    assert body["id"] == "chatcmpl-t1"
    assert body["choices"][0]["message"]["content"] == "Hello"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    _, raw = bf.result_line(bf.COMPLETIONS, result, None)
    assert json.loads(raw)["response"]["body"]["choices"][0]["text"] == "Hello"


def test_failed_refused_cancelled_and_late_tasks_are_error_lines() -> None:
    failed = _result(
        common_pb2.TASK_STATUS_FAILED,
        error=common_pb2.Error(code=3, message="prompt too long"),
    )
    outcome, raw = bf.result_line(bf.CHAT, failed, None)
    line = json.loads(raw)
    assert outcome == bf.ERRED and line["response"]["status_code"] == 400
    assert line["response"]["body"]["error"]["message"] == "prompt too long"
    internal = _result(common_pb2.TASK_STATUS_FAILED, error=common_pb2.Error(code=13, message="x"))
    assert json.loads(bf.result_line(bf.CHAT, internal, None)[1])["response"]["status_code"] == 500
    cancelled = _result(common_pb2.TASK_STATUS_CANCELLED, error=common_pb2.Error(code=1))
    outcome, raw = bf.result_line(bf.CHAT, cancelled, bf.CANCELLED_CODE)
    line = json.loads(raw)
    assert (
        outcome == bf.UNANSWERED
        and line["response"] is None
        and line["error"]["code"] == "batch_cancelled"
    )
    # Cancelled by someone else (Tasks.Cancel), not by the batch's stop: its HTTP answer.
    line = json.loads(bf.result_line(bf.CHAT, cancelled, None)[1])
    assert line["response"]["status_code"] == 499
    late = _result(common_pb2.TASK_STATUS_DEADLINE_EXCEEDED, error=common_pb2.Error(code=4))
    assert json.loads(bf.result_line(bf.CHAT, late, None)[1])["error"]["code"] == "batch_expired"
    refused = json.loads(bf.refused_line("c", "r", BadRequestError("bad", "temperature")))
    assert refused["response"]["status_code"] == 400
    assert refused["response"]["body"]["error"]["param"] == "temperature"


def test_batch_and_file_objects_have_openais_fields() -> None:
    batch = bf.batch_object(
        "batch_1",
        {
            "status": "in_progress",
            "endpoint": bf.CHAT,
            "input_file_id": "file-1",
            "created_at": "1700000000.5",
            "expires_at": "1700086400.5",
            "total": "3",
            "completed": "1",
            "metadata": '{"job": "nightly"}',
        },
    )
    assert batch["object"] == "batch" and batch["completion_window"] == "24h"
    assert batch["created_at"] == 1700000000 and batch["completed_at"] is None
    assert batch["request_counts"] == {"total": 3, "completed": 1, "failed": 0}
    assert batch["metadata"] == {"job": "nightly"} and batch["output_file_id"] is None
    made = bf.file_object(
        {"id": "file-1", "bytes": "10", "created_at": "5.5", "filename": "a", "purpose": "batch"}
    )
    assert made["bytes"] == 10 and made["object"] == "file" and made["created_at"] == 5
    listing = bf.page([made], has_more=True)
    assert listing["first_id"] == listing["last_id"] == "file-1" and listing["has_more"]


@pytest.mark.parametrize(
    ("metadata", "ok"),
    [
        (None, True),
        ({"a": "b"}, True),
        ([1], False),
        ({f"k{i}": "v" for i in range(17)}, False),
        ({"k" * 65: "v"}, False),
        ({"k": 1}, False),
        ({"k": "v" * 513}, False),
    ],
)
def test_metadata_keeps_openais_limits(metadata: object, ok: bool) -> None:
    assert (bf.metadata_problem(metadata) is None) is ok
