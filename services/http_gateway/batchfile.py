"""OpenAI's batch file formats, as pure functions: the input lines a batch is made of, the
output and error lines it produces, and the batch and file objects the API returns.

An input line is ``{"custom_id", "method": "POST", "url": <the batch's endpoint>,
"body"}``. Checking a file (:func:`check_input`) finds what OpenAI's ``validating`` stage
finds: a line that is not such an object, a repeated ``custom_id``, more lines than the
limit. The body itself is checked when its line is submitted, like any request: a bad
one is that line's error, not the batch's.

Every line of a finished batch ends in exactly one of its two files: the output file (a
response) or the error file (an HTTP error response, or ``batch_cancelled`` /
``batch_expired`` for a line that never ran to an answer).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import grpc

from nlp.v1 import common_pb2, generation_pb2, tasks_pb2
from services.http_gateway.call import CallAborted, aborted_error, error_body
from services.http_gateway.completions import (
    Asked,
    BadRequestError,
    chat_request,
    completion,
    completion_request,
)
from shared.contracts.errors import Code

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ENDPOINTS = (CHAT, COMPLETIONS)
# OpenAI's only completion window.
WINDOW = "24h"
WINDOW_S = 24 * 3600
# The batch item id limit of the gateway (custom ids become item ids).
MAX_CUSTOM_ID_CHARS = 256
# How many problems a failed validation lists (the first ones, in line order).
MAX_REPORTED = 100
# metadata: OpenAI's limits.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512

# Batch statuses.
VALIDATING = "validating"
FAILED = "failed"
IN_PROGRESS = "in_progress"
FINALIZING = "finalizing"
COMPLETED = "completed"
EXPIRED = "expired"
CANCELLING = "cancelling"
CANCELLED = "cancelled"
ENDED = frozenset({FAILED, COMPLETED, EXPIRED, CANCELLED})
# How a line ended: answered (the output file), answered with an error, or not run
# before the batch was cancelled or expired (both in the error file; request_counts
# count the first two, as OpenAI's do).
DONE = "completed"
ERRED = "failed"
UNANSWERED = "unanswered"
# What each stop sweep leaves in the error file for lines that got no answer.
CANCELLED_CODE = "batch_cancelled"
EXPIRED_CODE = "batch_expired"


# Ids of files and batches: OpenAI's prefix and 24 hex digits.
_ID_HEX = 24


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(_ID_HEX // 2)}"


def is_id(value: str, prefix: str) -> bool:
    """Whether ``value`` is an id made by :func:`new_id` with ``prefix``."""
    rest = value.removeprefix(prefix)
    return rest != value and len(rest) == _ID_HEX and all(c in "0123456789abcdef" for c in rest)


@dataclass(frozen=True)
class Problem:
    """One reason a batch's input file is refused (an entry of the batch's ``errors``)."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True)
class Line:
    """One input line: its number (from 1), custom id and request body."""

    number: int
    custom_id: str
    body: Any


def parse_line(raw: bytes, number: int, endpoint: str) -> Line | Problem:
    """One non-blank input line, or what is wrong with it."""
    try:
        item = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return Problem("invalid_json_line", "This line is not parseable as valid JSON.", number)
    if not isinstance(item, dict):
        return Problem("invalid_request", "Each line must be a JSON object.", number)
    unknown = sorted(set(item) - {"custom_id", "method", "url", "body"})
    if unknown:
        return Problem("invalid_request", f"Unknown field '{unknown[0]}'.", number, unknown[0])
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return Problem("missing_required_parameter", "'custom_id' is required.", number)
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        return Problem(
            "invalid_custom_id",
            f"'custom_id' is over {MAX_CUSTOM_ID_CHARS} characters.",
            number,
            "custom_id",
        )
    if item.get("method") != "POST":
        return Problem("invalid_method", "'method' must be POST.", number, "method")
    if item.get("url") != endpoint:
        return Problem(
            "mismatched_url",
            f"'url' must be the batch's endpoint {endpoint}.",
            number,
            "url",
        )
    body = item.get("body")
    if not isinstance(body, dict):
        return Problem("invalid_request", "'body' must be a JSON object.", number, "body")
    return Line(number, custom_id, body)


def lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of ``stream``, numbered from 1."""
    for number, raw in enumerate(iter(stream.readline, b""), 1):
        if raw.strip():
            yield number, raw


def check_input(stream: IO[bytes], endpoint: str, max_lines: int) -> tuple[int, list[Problem]]:
    """How many requests the file holds, and the problems that refuse it (none: valid)."""
    problems: list[Problem] = []
    seen: set[str] = set()
    count = 0
    for number, raw in lines(stream):
        count += 1
        if count > max_lines:
            problems.append(
                Problem("too_many_requests", f"A batch holds at most {max_lines} requests.")
            )
            break
        parsed = parse_line(raw, number, endpoint)
        if isinstance(parsed, Problem):
            problems.append(parsed)
        elif parsed.custom_id in seen:
            problems.append(
                Problem(
                    "duplicate_custom_id",
                    f"The custom_id '{parsed.custom_id[:64]}' is used more than once.",
                    number,
                    "custom_id",
                )
            )
        else:
            seen.add(parsed.custom_id)
        if len(problems) >= MAX_REPORTED:
            break
    if count == 0 and not problems:
        problems.append(Problem("empty_file", "The input file holds no requests."))
    return count, problems


def asked(endpoint: str, body: Mapping[str, Any]) -> Asked:
    """A line's body checked as a request to ``endpoint``; BadRequestError otherwise."""
    request = chat_request(body) if endpoint == CHAT else completion_request(body)
    if request.stream:
        raise BadRequestError("'stream' is not supported in a batch", "stream")
    return request


# --- output and error lines ------------------------------------------------------------


def _record(custom_id: str, request_id: str, response: Any, error: Any) -> bytes:
    record = {
        "id": f"batch_req_{request_id}",
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"


def refused_line(custom_id: str, request_id: str, exc: BadRequestError) -> bytes:
    """The error line of a line whose body was refused (as a 400 would be)."""
    body = error_body(400, exc.message, "invalid_request_error", exc.code, exc.param)
    response = {"status_code": 400, "request_id": request_id, "body": body}
    return _record(custom_id, request_id, response, None)


def error_line(custom_id: str, request_id: str, error: common_pb2.Error) -> bytes:
    """The error line of a request the platform refused or failed, as its HTTP answer."""
    try:
        code = grpc.StatusCode[Code(error.code).name]
    except (ValueError, KeyError):
        code = grpc.StatusCode.INTERNAL
    status, body = aborted_error(CallAborted(code, error.message))
    response = {"status_code": status, "request_id": request_id, "body": body}
    return _record(custom_id, request_id, response, None)


def unanswered_line(custom_id: str, request_id: str, code: str) -> bytes:
    """The error line of a line that got no answer: the batch was cancelled or expired."""
    message = (
        "This request was not executed: the batch was cancelled."
        if code == CANCELLED_CODE
        else "This request could not be executed before the completion window expired."
    )
    return _record(custom_id, request_id, None, {"code": code, "message": message})


def result_line(
    endpoint: str, result: tasks_pb2.TaskResult, stop_code: str | None
) -> tuple[str, bytes]:
    """A finished task's line: (how it ended, line). ``stop_code`` names the sweep that
    stopped the batch, if one did: the tasks it cancelled are reported unanswered."""
    custom_id = result.correlation_id
    if result.status == common_pb2.TASK_STATUS_SUCCEEDED:
        shape = Asked(
            result.model.name, generation_pb2.GenerateRequest(), False, False, endpoint == CHAT
        )
        output = generation_pb2.GenerateResponse()
        output.CopyFrom(result.generation)
        output.task_id = result.task_id
        response = {
            "status_code": 200,
            "request_id": result.task_id,
            "body": completion(shape, output),
        }
        return DONE, _record(custom_id, result.task_id, response, None)
    if result.status == common_pb2.TASK_STATUS_DEADLINE_EXCEEDED:
        # A line's deadline is its batch's expiry.
        return UNANSWERED, unanswered_line(custom_id, result.task_id, EXPIRED_CODE)
    if stop_code is not None and result.status == common_pb2.TASK_STATUS_CANCELLED:
        return UNANSWERED, unanswered_line(custom_id, result.task_id, stop_code)
    return ERRED, error_line(custom_id, result.task_id, result.error)


# --- API objects ---------------------------------------------------------------------


def metadata_problem(metadata: Any) -> str | None:
    """What is wrong with a batch's ``metadata`` (OpenAI's limits), or None."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return "'metadata' must be an object of strings"
    if len(metadata) > MAX_METADATA_PAIRS:
        return f"'metadata' holds at most {MAX_METADATA_PAIRS} pairs"
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            return f"metadata keys are at most {MAX_METADATA_KEY} characters"
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            return f"metadata values are strings of at most {MAX_METADATA_VALUE} characters"
    return None


_TIMES = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def batch_object(batch_id: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """The API's batch object from its stored fields."""

    def number(name: str) -> int | None:
        value = fields.get(name)
        return int(float(value)) if value else None

    errors = fields.get("errors")
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": fields.get("endpoint"),
        "errors": json.loads(errors) if errors else None,
        "input_file_id": fields.get("input_file_id"),
        "completion_window": fields.get("completion_window", WINDOW),
        "status": fields.get("status"),
        "output_file_id": fields.get("output_file_id") or None,
        "error_file_id": fields.get("error_file_id") or None,
        **{name: number(name) for name in _TIMES},
        "request_counts": {
            "total": int(fields.get("total", 0)),
            "completed": int(fields.get("completed", 0)),
            "failed": int(fields.get("failed", 0)),
        },
        "metadata": json.loads(fields["metadata"]) if fields.get("metadata") else None,
    }


def file_object(fields: Mapping[str, str]) -> dict[str, Any]:
    """The API's file object from its stored fields."""
    return {
        "id": fields["id"],
        "object": "file",
        "bytes": int(fields["bytes"]),
        "created_at": int(float(fields["created_at"])),
        "filename": fields["filename"],
        "purpose": fields["purpose"],
        "status": "processed",
        "status_details": None,
    }


def page(objects: Iterable[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A list answer with OpenAI's cursor fields."""
    data = list(objects)
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
