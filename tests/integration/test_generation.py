"""Generation on the real vLLM CPU engine (the embedded SmolLM2) through the whole stack.

The engine starts once, with the session stack. Greedy sampling (temperature 0) is
used wherever a result is compared.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import jsonschema
import pytest
import redis

from nlp.v1 import (
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from services.generation.settings import DEFAULT_MODEL
from shared.contracts.settings import ServiceSettings
from tests.factories import greedy_request, submit_classification
from tests.integration.support import status_name, wait_terminal

G = generation_pb2


@pytest.fixture(scope="module")
def generation(channel: grpc.Channel) -> generation_pb2_grpc.GenerationStub:
    return generation_pb2_grpc.GenerationStub(channel)


# A prompt the model continues for as long as it may (it does not stop to end a story).
ENDLESS = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def _stream_length(client: redis.Redis, settings: ServiceSettings, task_id: str) -> int:
    return int(client.xlen(settings.names.token_stream_key(task_id)))


def _stops_growing(
    client: redis.Redis, settings: ServiceSettings, task_id: str, max_tokens: int
) -> int:
    """The task's token stream stops growing well short of ``max_tokens``: the engine
    really dropped the request. Returns its final length."""
    deadline = time.monotonic() + 15
    previous = -1
    while time.monotonic() < deadline:
        length = _stream_length(client, settings, task_id)
        if length == previous:
            assert length < max_tokens // 2, (length, max_tokens)
            return length
        previous = length
        time.sleep(1.0)
    raise AssertionError(f"the token stream of {task_id} kept growing")


def test_greedy_generation_is_deterministic(
    generation: generation_pb2_grpc.GenerationStub,
) -> None:
    request = greedy_request("The three primary colors are")
    first = generation.Generate(request, timeout=120)
    second = generation.Generate(request, timeout=120)
    assert first.text and first.text == second.text
    assert first.completion_tokens == second.completion_tokens > 0
    assert first.prompt_tokens == second.prompt_tokens > 0
    assert first.finish_reason in (G.FINISH_REASON_STOP, G.FINISH_REASON_LENGTH)
    assert first.model.name == DEFAULT_MODEL and first.model.version
    assert first.task_id != second.task_id


def test_streamed_text_matches_the_result(
    generation: generation_pb2_grpc.GenerationStub, tasks: tasks_pb2_grpc.TasksStub
) -> None:
    chunks = list(generation.GenerateStream(greedy_request("Once upon a time", 32), timeout=120))
    *deltas, last = chunks
    assert deltas and all(c.delta for c in deltas)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert last.delta == "" and last.finish_reason == G.FINISH_REASON_LENGTH
    assert last.completion_tokens == 32
    result = tasks.Get(tasks_pb2.GetTaskRequest(task_id=last.task_id), timeout=10)
    assert status_name(result.status) == "TASK_STATUS_SUCCEEDED"
    assert result.generation.text == "".join(c.delta for c in deltas)
    assert result.generation.prompt_tokens == last.prompt_tokens
    unary = generation.Generate(greedy_request("Once upon a time", 32), timeout=120)
    assert unary.text == result.generation.text


def test_chat_messages_use_the_chat_template(
    generation: generation_pb2_grpc.GenerationStub,
) -> None:
    content = "Name one planet."
    chat = G.GenerateRequest(
        messages=G.ChatMessages(messages=[G.ChatMessage(role="user", content=content)]),
        sampling=G.SamplingParams(max_tokens=16, temperature=0.0),
    )
    answer = generation.Generate(chat, timeout=120)
    plain = generation.Generate(greedy_request(content, 16), timeout=120)
    assert answer.text
    # The template wraps the message in role markers (and a default system prompt).
    assert answer.prompt_tokens > plain.prompt_tokens + 4


def test_sixteen_concurrent_streams_each_get_their_own_tokens(
    generation: generation_pb2_grpc.GenerationStub, tasks: tasks_pb2_grpc.TasksStub
) -> None:
    # Prompts of 16 different lengths: each final chunk must report its own prompt's size.
    prompts = [f"Count the apples: {' '.join(['apple'] * (i + 1))}. Total:" for i in range(16)]
    lengths = {
        generation.Generate(greedy_request(p, 1), timeout=120).prompt_tokens: p for p in prompts
    }
    assert len(lengths) == 16
    barrier = threading.Barrier(16)

    def stream(prompt: str) -> list[generation_pb2.GenerateChunk]:
        barrier.wait(timeout=60)
        return list(generation.GenerateStream(greedy_request(prompt, 24), timeout=180))

    with ThreadPoolExecutor(16) as pool:
        streams = list(pool.map(stream, prompts))
    shared_batches = 0
    for prompt, chunks in zip(prompts, streams, strict=True):
        last = chunks[-1]
        assert lengths[last.prompt_tokens] == prompt
        assert {c.task_id for c in chunks} == {last.task_id}
        assert [c.index for c in chunks] == list(range(len(chunks)))
        result = tasks.Get(tasks_pb2.GetTaskRequest(task_id=last.task_id), timeout=10)
        assert result.generation.text == "".join(c.delta for c in chunks[:-1])
        assert result.generation.completion_tokens == last.completion_tokens
        shared_batches += result.batch_size > 1
    # They ran together in the engine's continuous batch, not one after another.
    assert shared_batches >= 8


def test_cancelling_a_stream_aborts_the_generation_and_frees_the_engine(
    generation: generation_pb2_grpc.GenerationStub,
    tasks: tasks_pb2_grpc.TasksStub,
    redis_client: redis.Redis,
    settings: ServiceSettings,
) -> None:
    call = generation.GenerateStream(greedy_request(ENDLESS, 1500), timeout=300)
    task_id = ""
    for received, chunk in enumerate(call, 1):
        task_id = chunk.task_id
        if received == 5:
            call.cancel()
            break
    result = wait_terminal(tasks, task_id, timeout=30)
    assert status_name(result.status) == "TASK_STATUS_CANCELLED"
    _stops_growing(redis_client, settings, task_id, 1500)
    after = generation.Generate(greedy_request("The sky is", 8), timeout=60)
    assert after.completion_tokens == 8


def test_tasks_cancel_aborts_a_running_generation(
    tasks: tasks_pb2_grpc.TasksStub, redis_client: redis.Redis, settings: ServiceSettings
) -> None:
    submitted = tasks.Submit(
        tasks_pb2.SubmitRequest(generation=greedy_request(ENDLESS, 1500)),
        timeout=30,
    )
    deadline = time.monotonic() + 60
    while _stream_length(redis_client, settings, submitted.task_id) < 3:
        assert time.monotonic() < deadline, "no tokens"
        time.sleep(0.1)
    reply = tasks.Cancel(tasks_pb2.CancelTaskRequest(task_id=submitted.task_id), timeout=10)
    assert reply.cancelled
    _stops_growing(redis_client, settings, submitted.task_id, 1500)
    final = tasks.Get(tasks_pb2.GetTaskRequest(task_id=submitted.task_id), timeout=10)
    assert status_name(final.status) == "TASK_STATUS_CANCELLED"


def test_a_passed_deadline_stops_the_generation(
    generation: generation_pb2_grpc.GenerationStub,
    tasks: tasks_pb2_grpc.TasksStub,
    redis_client: redis.Redis,
    settings: ServiceSettings,
) -> None:
    call = generation.GenerateStream(greedy_request(ENDLESS, 1500), timeout=3)
    task_id = ""
    with pytest.raises(grpc.RpcError) as info:
        for chunk in call:
            task_id = chunk.task_id
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert task_id, "no token before the deadline"
    result = wait_terminal(tasks, task_id, timeout=30)
    assert status_name(result.status) == "TASK_STATUS_DEADLINE_EXCEEDED"
    _stops_growing(redis_client, settings, task_id, 1500)


def test_a_submitted_generation_streams_to_a_late_subscriber(
    generation: generation_pb2_grpc.GenerationStub, tasks: tasks_pb2_grpc.TasksStub
) -> None:
    submitted = tasks.Submit(
        tasks_pb2.SubmitRequest(generation=greedy_request("Hello, my name is"))
    )
    result = wait_terminal(tasks, submitted.task_id)
    assert status_name(result.status) == "TASK_STATUS_SUCCEEDED"
    chunks = list(generation.StreamTask(G.StreamTaskRequest(task_id=submitted.task_id), timeout=30))
    assert "".join(c.delta for c in chunks) == result.generation.text
    assert chunks[-1].finish_reason == result.generation.finish_reason
    assert chunks[-1].completion_tokens == result.generation.completion_tokens


def test_stream_task_refuses_unknown_and_other_kinds(
    generation: generation_pb2_grpc.GenerationStub, tasks: tasks_pb2_grpc.TasksStub
) -> None:
    unknown = G.StreamTaskRequest(task_id="0" * 32)
    assert _code(lambda: list(generation.StreamTask(unknown, timeout=10))) == (
        grpc.StatusCode.NOT_FOUND
    )
    malformed = G.StreamTaskRequest(task_id="../x")
    assert _code(lambda: list(generation.StreamTask(malformed, timeout=10))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    other = tasks.Submit(submit_classification("A quiet day."), timeout=30)
    request = G.StreamTaskRequest(task_id=other.task_id)
    assert _code(lambda: list(generation.StreamTask(request, timeout=10))) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (
            G.GenerateRequest(prompt="Hi", sampling=G.SamplingParams(max_tokens=100_000)),
            "max_tokens",
        ),
        (
            G.GenerateRequest(
                prompt="Hi", sampling=G.SamplingParams(max_tokens=8, temperature=-0.5)
            ),
            "temperature",
        ),
        (G.GenerateRequest(prompt="", sampling=G.SamplingParams(max_tokens=8)), "prompt"),
        (G.GenerateRequest(sampling=G.SamplingParams(max_tokens=8)), "prompt or messages"),
        (
            G.GenerateRequest(
                messages=G.ChatMessages(messages=[G.ChatMessage(role="robot", content="x")])
            ),
            "role",
        ),
    ],
)
def test_invalid_requests_are_invalid_argument(
    generation: generation_pb2_grpc.GenerationStub,
    tasks: tasks_pb2_grpc.TasksStub,
    request_: generation_pb2.GenerateRequest,
    words: str,
) -> None:
    for call in (
        lambda: generation.Generate(request_, timeout=10),
        lambda: list(generation.GenerateStream(request_, timeout=10)),
        lambda: tasks.Submit(tasks_pb2.SubmitRequest(generation=request_), timeout=10),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in (info.value.details() or "")


def test_the_worker_refuses_what_only_the_model_knows(
    generation: generation_pb2_grpc.GenerationStub,
) -> None:
    # Within the gateway's limits, beyond the model: a prompt longer than its context,
    # and max_tokens above this model's own cap.
    long_prompt = greedy_request("word " * 3000, 8)
    with pytest.raises(grpc.RpcError) as info:
        generation.Generate(long_prompt, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reads at most" in (info.value.details() or "")
    over_cap = greedy_request("Hi", 3000)
    with pytest.raises(grpc.RpcError) as info:
        list(generation.GenerateStream(over_cap, timeout=60))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cap" in (info.value.details() or "")


def test_unknown_model_lists_the_served_ones(
    generation: generation_pb2_grpc.GenerationStub,
) -> None:
    request = greedy_request("Hi")
    request.model = "gpt-nothing"
    with pytest.raises(grpc.RpcError) as info:
        generation.Generate(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert DEFAULT_MODEL in (info.value.details() or "")


def test_generation_metrics(stack: object, generation: generation_pb2_grpc.GenerationStub) -> None:
    import urllib.request

    generation.Generate(greedy_request("Good morning", 8), timeout=60)
    url = stack.metrics_urls["generation-worker"]  # type: ignore[attr-defined]
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'nlp_time_to_first_token_seconds_count{kind="generation"' in text
    assert any(
        line.startswith("nlp_tokens_total{")
        and 'kind="generation"' in line
        and 'direction="output"' in line
        for line in text.splitlines()
    )


def test_results_carry_the_task(tasks: tasks_pb2_grpc.TasksStub) -> None:
    submitted = tasks.Submit(tasks_pb2.SubmitRequest(generation=greedy_request("Rain is", 4)))
    result = wait_terminal(tasks, submitted.task_id)
    assert result.kind == common_pb2.KIND_GENERATION
    assert result.model.name == DEFAULT_MODEL
    assert result.generation.completion_tokens == 4
    assert result.timings.ran_ms > 0 and result.timings.inference_ms > 0


def test_cli_streams_and_prints_json(stack: object, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from shared.client.cli import main as cli_main

    target = stack.gateway_target  # type: ignore[attr-defined]
    argv = ["--target", target, "generate", "--raw", "--max-tokens", "12", "--temperature", "0"]
    assert cli_main([*argv, "The capital of France is"]) == 0
    streamed = capsys.readouterr()
    assert "[finish: length, prompt" in streamed.err and "completion 12 tokens" in streamed.err
    assert cli_main([*argv, "--json", "The capital of France is"]) == 0
    response = json.loads(capsys.readouterr().out)
    assert response["completion_tokens"] == 12
    assert streamed.out == response["text"] + "\n"
    assert cli_main([*argv[:-2], "--temperature", "-1", "Hi"]) != 0
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    # Without --raw the text is the user's turn of a chat: the instruct model answers it.
    assert (
        cli_main(
            [
                "--target",
                target,
                "generate",
                "--max-tokens",
                "24",
                "--temperature",
                "0",
                "--json",
                "Name a color.",
            ]
        )
        == 0
    )
    answer = json.loads(capsys.readouterr().out)
    assert answer["text"].strip() and answer["completion_tokens"] > 1


def test_structured_outputs_hold_the_text_to_its_form(
    generation: generation_pb2_grpc.GenerationStub,
) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    request = greedy_request("Describe a city as JSON:", 80)
    request.structured_output.json_schema = json.dumps(schema)
    text = generation.Generate(request, timeout=120).text
    jsonschema.validate(json.loads(text), schema)
    request = greedy_request("Is the sky green? Answer:", 8)
    request.structured_output.choice.choices.extend(["yes", "no"])
    assert generation.Generate(request, timeout=120).text in ("yes", "no")
    request = greedy_request("A phone number:", 16)
    request.structured_output.regex = r"[0-9]{3}-[0-9]{4}"
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", generation.Generate(request, timeout=120).text)
    # Streamed, the same text.
    request = greedy_request("Describe a city as JSON:", 80)
    request.structured_output.json_schema = json.dumps(schema)
    chunks = list(generation.GenerateStream(request, timeout=120))
    assert "".join(c.delta for c in chunks) == text
    # A schema that is none is refused before it is queued.
    request.structured_output.json_schema = '{"type": "nonsense"}'
    assert _code(lambda: generation.Generate(request, timeout=30)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
