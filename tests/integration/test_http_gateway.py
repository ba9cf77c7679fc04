"""The OpenAI-compatible HTTP front door on the real stack, driven by the official
``openai`` SDK: models, chat and text completions (streamed and not), usage, errors in
OpenAI's shape, API keys, and a client that disconnects cancelling its generation."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import redis
from openai.types.chat import ChatCompletionMessageParam

from deploy.local.kafka import free_port
from deploy.local.stack import LocalStack
from nlp.v1 import common_pb2, tasks_pb2, tasks_pb2_grpc
from services.gateway.auth import digest
from tests.integration.support import status_name, wait_terminal

ENDLESS = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Name three primary colors."}
]


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> Iterator[openai.OpenAI]:
    assert stack.http_url is not None
    # The local stack runs without keys: any key is accepted.
    with openai.OpenAI(base_url=stack.http_url, api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def _task_id(response_id: str) -> str:
    return response_id.split("-", 1)[1]


def test_models_are_the_served_generation_models(
    client: openai.OpenAI, model: str, stack: LocalStack
) -> None:
    listed = client.models.list()
    assert [m.id for m in listed.data] == [model]
    assert listed.data[0].object == "model"
    assert client.models.retrieve(model).id == model
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"


def test_a_chat_completion_is_a_task_of_the_pipeline(
    client: openai.OpenAI, model: str, tasks: tasks_pb2_grpc.TasksStub
) -> None:
    response = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        max_tokens=24,
        temperature=0,
    )
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.model == model
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage is not None and usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The id names the task: the same result through gRPC.
    result = wait_terminal(tasks, _task_id(response.id))
    assert status_name(result.status) == "TASK_STATUS_SUCCEEDED"
    assert result.generation.text == choice.message.content
    assert result.generation.completion_tokens == usage.completion_tokens


def test_a_streamed_chat_joins_to_the_same_greedy_text_with_its_usage(
    client: openai.OpenAI, model: str
) -> None:
    whole = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        max_tokens=32,
        temperature=0,
    )
    stream = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        max_tokens=32,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and not any(finishes[:-1])
    # The usage chunk comes last, with no choices, and says what the whole call did.
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")


def test_text_completions_streamed_and_not(client: openai.OpenAI, model: str) -> None:
    whole = client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=12, temperature=0
    )
    assert whole.object == "text_completion" and whole.choices[0].text
    assert whole.usage is not None and whole.usage.completion_tokens <= 12
    parts = [
        c.choices[0].text
        for c in client.completions.create(
            model=model, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True
        )
        if c.choices
    ]
    assert "".join(parts) == whole.choices[0].text
    # OpenAI's default of 16 tokens when max_tokens is left out.
    short = client.completions.create(model=model, prompt=ENDLESS, temperature=0)
    assert short.usage is not None and short.usage.completion_tokens == 16
    assert short.choices[0].finish_reason == "length"


def test_stop_and_seed_reach_the_engine(client: openai.OpenAI, model: str) -> None:
    counted = client.completions.create(
        model=model, prompt=ENDLESS, max_tokens=40, temperature=0, stop=[" 14"]
    )
    assert counted.choices[0].finish_reason == "stop"
    assert " 14" not in counted.choices[0].text and "13" in counted.choices[0].text
    sampled = [
        client.completions.create(
            model=model, prompt="A story:", max_tokens=16, temperature=1.0, seed=7
        )
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]


@pytest.mark.parametrize(
    ("arguments", "status", "code", "param"),
    [
        ({"model": "no-such-model"}, 404, "model_not_found", "model"),
        ({"n": 2}, 400, "unsupported_value", "n"),
        ({"messages": []}, 400, None, "messages"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            400,
            "unsupported_parameter",
            "tools",
        ),
        ({"presence_penalty": 0.5}, 400, "unsupported_value", "presence_penalty"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, None, "messages[0].role"),
        ({"stream_options": {"include_usage": True}}, 400, None, "stream_options"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            400,
            None,
            "response_format.json_schema",
        ),
    ],
)
def test_bad_requests_are_openai_errors(
    client: openai.OpenAI,
    model: str,
    arguments: dict[str, object],
    status: int,
    code: str | None,
    param: str | None,
) -> None:
    call = {"model": model, "messages": QUESTION, "max_tokens": 4, **arguments}
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(**call)  # type: ignore[call-overload]
    error = info.value
    assert error.status_code == status, error.body
    assert isinstance(error.body, dict) and error.body["type"] == "invalid_request_error"
    assert error.code == code
    if param is not None:
        assert error.body["param"] == param or str(error.body["param"]).startswith(param)


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
DESCRIBE: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Describe a person as JSON."}
]


def test_a_json_schema_response_parses_and_validates_against_it(
    client: openai.OpenAI, model: str
) -> None:
    schema_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }
    response = client.chat.completions.create(
        model=model,
        messages=DESCRIBE,
        max_tokens=100,
        temperature=0,
        response_format=schema_format,
    )
    assert response.choices[0].finish_reason == "stop"
    person = json.loads(response.choices[0].message.content or "")
    jsonschema.validate(person, PERSON)
    streamed = client.chat.completions.create(
        model=model,
        messages=DESCRIBE,
        max_tokens=100,
        temperature=0,
        response_format=schema_format,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == response.choices[0].message.content
    # Any JSON object.
    anything = client.chat.completions.create(
        model=model,
        messages=DESCRIBE,
        max_tokens=100,
        temperature=0,
        response_format={"type": "json_object"},
    )
    # A tiny model writes a long object: cut short by max_tokens, it is still one so far.
    text = anything.choices[0].message.content or ""
    assert text.lstrip().startswith("{")
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_an_invalid_schema_is_a_bad_request(client: openai.OpenAI, model: str) -> None:
    bad: Any = {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "nonsense"}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=model, messages=DESCRIBE, max_tokens=8, response_format=bad
        )
    assert "is not a valid JSON Schema" in info.value.message


def test_the_platforms_own_limits_answer_as_openai_errors(
    client: openai.OpenAI, model: str, stack: LocalStack
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=model,
            messages=QUESTION,
            temperature=5,
        )
    assert "temperature must be in [0, 2]" in info.value.message
    url = f"{stack.http_url}/chat/completions"
    for body in (b"{not json", b"[1, 2]"):
        answer = httpx.post(url, content=body, timeout=30)
        assert answer.status_code == 400
        assert answer.json()["error"]["type"] == "invalid_request_error"


def test_a_client_that_goes_away_cancels_its_generation(
    stack: LocalStack, model: str, tasks: tasks_pb2_grpc.TasksStub
) -> None:
    url = f"{stack.http_url}/completions"
    body = {"model": model, "prompt": ENDLESS, "max_tokens": 1500, "temperature": 0}
    # A stream read for a few events, then dropped.
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=120) as answer:
        lines = answer.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        task_id = _task_id(json.loads(first.removeprefix("data: "))["id"])
        for _ in range(3):
            next(lines)
    result = wait_terminal(tasks, task_id, timeout=30)
    assert result.status == common_pb2.TASK_STATUS_CANCELLED, result
    assert result.error.message == "the caller went away"
    # A call without stream whose client gives up (its timeout) is cancelled too: its
    # id is not known to the client, so look for a new cancelled generation.
    before = _cancelled_generations(stack) | {task_id}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=body, timeout=3)
    deadline = time.monotonic() + 30
    while not _cancelled_generations(stack) - before:
        assert time.monotonic() < deadline, "the abandoned call's generation was not cancelled"
        time.sleep(0.2)


def _cancelled_generations(stack: LocalStack) -> set[str]:
    """Ids of the generation tasks with a CANCELLED result (tests run one at a time, so a
    new one is the test's own)."""
    assert stack.redis is not None
    client = redis.Redis.from_url(stack.redis.url)
    try:
        found = set()
        for key in client.scan_iter(stack.settings().names.result_key("*"), count=1000):
            raw = client.get(key)
            if isinstance(raw, bytes):
                result = tasks_pb2.TaskResult.FromString(raw)
                if (
                    result.kind == common_pb2.KIND_GENERATION
                    and result.status == common_pb2.TASK_STATUS_CANCELLED
                ):
                    found.add(result.task_id)
        return found
    finally:
        client.close()


@pytest.fixture(scope="module")
def keyed_door(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second HTTP front door on the same stack, with API keys on."""
    keys = tmp_path_factory.mktemp("http-keys") / "keys.json"
    keys.write_text(
        json.dumps(
            {
                "tenants": {"team-a": {}, "slow": {"rate_per_s": 0.2, "burst": 2}},
                "keys": [
                    {"id": "a", "tenant": "team-a", "sha256": digest("key-of-team-a")},
                    {"id": "s", "tenant": "slow", "sha256": digest("key-of-slow")},
                ],
            }
        )
    )
    port = free_port()
    stack._add("http-gateway-keyed", "services.http_gateway", "http-gateway")
    door = stack.services["http-gateway-keyed"]
    door.env.update(
        {
            "NLP_HTTP_PORT": str(port),
            "NLP_AUTH_MODE": "keys",
            "NLP_AUTH_KEYS_FILE": str(Path(keys)),
        }
    )
    door.start()
    try:
        door.wait_ready(120)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        door.stop()
        del stack.services["http-gateway-keyed"]


def test_api_keys_tenants_and_quotas_are_the_grpc_gateways(
    keyed_door: str, model: str, tasks: tasks_pb2_grpc.TasksStub
) -> None:
    with openai.OpenAI(base_url=keyed_door, api_key="wrong-key", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            bad.models.list()
        assert info.value.code == "invalid_api_key"
    for headers in ({}, {"authorization": "Basic eDp5"}):
        answer = httpx.get(f"{keyed_door}/models", headers=headers, timeout=30)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "invalid_api_key"
    with openai.OpenAI(base_url=keyed_door, api_key="key-of-team-a", max_retries=0) as good:
        response = good.chat.completions.create(
            model=model,
            messages=QUESTION,
            max_tokens=4,
            temperature=0,
        )
    assert wait_terminal(tasks, _task_id(response.id)).tenant == "team-a"
    slow = openai.OpenAI(base_url=keyed_door, api_key="key-of-slow", max_retries=0)
    with slow, pytest.raises(openai.RateLimitError) as limited:
        for _ in range(4):
            slow.models.list()
    assert limited.value.response.headers.get("retry-after")
