"""The HTTP front door's mapping of OpenAI requests and answers (pure logic; the SDK
drives the real thing in tests/integration/test_http_gateway.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest

from nlp.v1 import generation_pb2
from services.http_gateway.call import CallAborted, HttpCall, aborted_error
from services.http_gateway.completions import (
    BadRequestError,
    ChunkWriter,
    chat_request,
    completion,
    completion_request,
)

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}


def test_a_chat_request_maps_to_the_platforms_request() -> None:
    asked = chat_request(
        {
            **CHAT,
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
                },
            ],
            "max_completion_tokens": 9,
            "max_tokens": 99,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": "END",
            "seed": 3,
            "n": 1,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    r = asked.request
    assert [(m.role, m.content) for m in r.messages.messages] == [
        ("system", "Be brief."),
        ("user", "Hi there"),
    ]
    s = r.sampling
    assert (s.max_tokens, s.temperature, list(s.stop), s.seed) == (9, 0.5, ["END"], 3)
    assert abs(s.top_p - 0.9) < 1e-6
    assert asked.stream and asked.include_usage and asked.chat and r.model == "m"
    # Unset sampling stays unset: the engine's defaults apply.
    plain = chat_request(CHAT).request.sampling
    assert not plain.HasField("temperature") and plain.max_tokens == 0


def test_text_completions_default_to_16_tokens_like_openai() -> None:
    asked = completion_request({"model": "m", "prompt": ["Once"]})
    assert asked.request.prompt == "Once" and asked.request.sampling.max_tokens == 16
    assert (
        completion_request(
            {"model": "m", "prompt": "x", "max_tokens": 5}
        ).request.sampling.max_tokens
        == 5
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": CHAT["messages"]}, "model"),
        ({**CHAT, "n": 3}, "n"),
        ({**CHAT, "logprobs": True}, "logprobs"),
        ({**CHAT, "tools": []}, "tools"),
        (
            {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
        ),
        ({**CHAT, "messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0]"),
        ({**CHAT, "stop": [1]}, "stop"),
        ({**CHAT, "temperature": "hot"}, "temperature"),
        ({**CHAT, "max_tokens": True}, "max_tokens"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
        ({**CHAT, "response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_parameter(
    body: dict[str, Any], param: str
) -> None:
    with pytest.raises(BadRequestError) as info:
        chat_request(body)
    assert info.value.param == param


def test_completion_refusals() -> None:
    for body in (
        {"model": "m"},
        {"model": "m", "prompt": ["a", "b"]},
        {"model": "m", "prompt": "a", "echo": True},
    ):
        with pytest.raises(BadRequestError):
            completion_request(body)


def test_answers_and_chunks_are_openais_shape() -> None:
    asked = chat_request({**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    response = generation_pb2.GenerateResponse(
        text="Hello",
        finish_reason=generation_pb2.FINISH_REASON_LENGTH,
        prompt_tokens=3,
        completion_tokens=2,
        task_id="t1",
    )
    whole = completion(asked, response)
    assert whole["id"] == "chatcmpl-t1" and whole["object"] == "chat.completion"
    assert whole["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    assert whole["choices"][0]["finish_reason"] == "length"
    assert whole["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    writer = ChunkWriter(asked, "t1")
    events = (
        writer.first()
        + writer.delta("He")
        + writer.last(
            generation_pb2.GenerateChunk(
                finish_reason=generation_pb2.FINISH_REASON_STOP,
                prompt_tokens=3,
                completion_tokens=2,
            )
        )
    )
    lines = [line.removeprefix("data: ") for line in events.split("\n\n") if line]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": "He"}
    assert chunks[2]["choices"][0]["finish_reason"] == "stop" and chunks[2]["usage"] is None
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["total_tokens"] == 5
    text = completion_request({"model": "m", "prompt": "x", "stream": True})
    plain = ChunkWriter(text, "t2")
    assert plain.first() == "" and json.loads(plain.delta("a")[6:])["choices"][0]["text"] == "a"


def test_grpc_statuses_become_http_ones() -> None:
    cases = {
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.INTERNAL: 500,
    }
    for code, status in cases.items():
        got, body = aborted_error(CallAborted(code, "why"))
        assert got == status and body["error"]["message"] == "why"


def test_a_call_aborts_with_the_retry_hint_and_runs_its_callbacks_once() -> None:
    call = HttpCall({"Authorization": "Bearer k", "Idempotency-Key": "x"})
    assert ("authorization", "Bearer k") in call.invocation_metadata()
    with pytest.raises(CallAborted) as info:
        asyncio.run(
            call.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", (("retry-after-ms", "1500"),)
            )
        )
    assert info.value.retry_after_ms == 1500
    ran: list[object] = []
    call.add_done_callback(ran.append)
    call.end()
    call.end()
    call.add_done_callback(ran.append)  # after the end: at once
    assert ran == [call, call]


def test_response_format_becomes_the_structured_output() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    asked = chat_request(
        {
            **CHAT,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "p", "schema": schema, "strict": True},
            },
        }
    )
    assert json.loads(asked.request.structured_output.json_schema) == schema
    assert chat_request(
        {**CHAT, "response_format": {"type": "json_object"}}
    ).request.structured_output.json_object
    assert not chat_request({**CHAT, "response_format": {"type": "text"}}).request.HasField(
        "structured_output"
    )
    for bad in (
        "json",
        {"type": "xml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"schema": schema}},
        {"type": "json_schema", "json_schema": {"name": "p", "schema": "{}"}},
    ):
        with pytest.raises(BadRequestError) as info:
            chat_request({**CHAT, "response_format": bad})
        assert str(info.value.param).startswith("response_format")
