"""``nlp generate`` and ``nlp task stream``: requests from arguments, the token printer."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest

from nlp.v1 import generation_pb2, generation_pb2_grpc, tasks_pb2, tasks_pb2_grpc
from shared.client import cli, commands
from shared.client.cli import DEMOS, build_parser
from shared.client.commands import KINDS, follow_generation, generate_request

END = generation_pb2.GenerateChunk(
    task_id="t1",
    index=2,
    finish_reason=generation_pb2.FINISH_REASON_LENGTH,
    prompt_tokens=12,
    completion_tokens=64,
)
SUMMARY = "[finish: length, prompt 12 tokens, completion 64 tokens, task t1]"


def _chunks(*deltas: str) -> list[generation_pb2.GenerateChunk]:
    return [
        generation_pb2.GenerateChunk(task_id="t1", delta=delta, index=i)
        for i, delta in enumerate(deltas)
    ]


def _request(*argv: str) -> generation_pb2.GenerateRequest:
    return generate_request(build_parser().parse_args(["generate", *argv]))


# --- arguments -> GenerateRequest -------------------------------------------------------


def test_the_text_is_the_users_turn_and_sampling_is_left_to_the_server() -> None:
    request = _request("Write a haiku.")
    assert request.WhichOneof("input") == "messages"
    assert [(m.role, m.content) for m in request.messages.messages] == [("user", "Write a haiku.")]
    assert request.model == ""
    sampling = request.sampling
    assert sampling.max_tokens == 0
    assert list(sampling.stop) == []
    for name in ("temperature", "top_p", "top_k", "seed"):
        assert not sampling.HasField(name), name


def test_given_options_are_set_even_when_zero() -> None:
    request = _request(
        "--max-tokens",
        "64",
        "--temperature",
        "0",
        "--top-p",
        "0.9",
        "--top-k",
        "40",
        "--stop",
        "\n\n",
        "--stop",
        "END",
        "--seed",
        str(2**40),
        "--model",
        "tiny",
        "--raw",
        "hi",
    )
    sampling = request.sampling
    assert sampling.max_tokens == 64
    # Temperature 0 (greedy) differs from "unset" (the server's default).
    assert sampling.HasField("temperature") and sampling.temperature == 0.0
    assert sampling.top_p == pytest.approx(0.9)
    assert sampling.top_k == 40
    assert list(sampling.stop) == ["\n\n", "END"]
    assert sampling.seed == 2**40
    assert request.model == "tiny"
    assert request.prompt == "hi"


def test_system_sends_chat_messages() -> None:
    request = _request("--system", "Be brief.", "What is Kafka?")
    assert request.WhichOneof("input") == "messages"
    assert [(m.role, m.content) for m in request.messages.messages] == [
        ("system", "Be brief."),
        ("user", "What is Kafka?"),
    ]


def test_raw_sends_a_plain_prompt_to_continue() -> None:
    request = _request("--raw", "Once upon a time")
    assert request.WhichOneof("input") == "prompt"
    assert request.prompt == "Once upon a time"
    with pytest.raises(commands.UsageError):
        _request("--raw", "--system", "Be brief.", "Once upon a time")


def test_the_prompt_comes_from_a_file_or_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("from a file\n", encoding="utf-8")
    assert _request("--raw", str(prompt)).prompt == "from a file\n"
    assert _request("--file", str(prompt)).messages.messages[0].content == "from a file\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin"))
    assert _request("--raw").prompt == "from stdin"


def test_task_submit_generation_takes_the_same_options() -> None:
    args = build_parser().parse_args(
        ["task", "submit", "generation", "--lane", "batch", "--max-tokens", "8", "hi"]
    )
    request = KINDS[args.kind].request(args)
    assert args.kind == "generation" and args.lane == "batch"
    assert isinstance(request, generation_pb2.GenerateRequest)
    assert request.sampling.max_tokens == 8
    assert request.messages.messages[0].content == "hi"


def test_batch_run_has_no_generation_kind(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["batch", "run", "--kind", "generation", "--input", "i", "--output", "o"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "invalid choice" in capsys.readouterr().err


def test_the_demo_is_greedy_and_short() -> None:
    request = generate_request(build_parser().parse_args(["--json", *DEMOS["generation"]]))
    assert request.sampling.max_tokens == 32
    assert request.sampling.HasField("temperature") and request.sampling.temperature == 0.0


# --- printing a token stream ------------------------------------------------------------


def test_deltas_are_written_as_they_come_then_a_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    final = commands.print_generation([*_chunks("Hello", ", ", "world"), END])
    out, err = capsys.readouterr()
    assert out == "Hello, world\n"
    assert err == SUMMARY + "\n"
    assert final == END


def test_json_prints_one_object_per_chunk(capsys: pytest.CaptureFixture[str]) -> None:
    commands.print_generation([*_chunks("Hi", "!"), END], as_json=True)
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    # Every field is printed, empty ones too: the last chunk's delta is "", index 0 is 0.
    assert [line["delta"] for line in lines] == ["Hi", "!", ""]
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert lines[-1]["finish_reason"] == "FINISH_REASON_LENGTH"
    assert lines[-1]["completion_tokens"] == 64
    assert err == ""


def test_a_stream_without_its_last_chunk_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert follow_generation(_chunks("cut"), False, "interrupted") == 1
    out, err = capsys.readouterr()
    assert out == "cut\n"
    assert "ended before its last chunk" in err


def test_an_error_mid_stream_ends_the_partial_line(capsys: pytest.CaptureFixture[str]) -> None:
    def failing() -> Iterator[generation_pb2.GenerateChunk]:
        yield from _chunks("par")
        raise grpc.RpcError()

    with pytest.raises(grpc.RpcError):
        commands.print_generation(failing())
    assert capsys.readouterr() == ("par\n", "")


class _InterruptedCall(grpc.Call):
    """A streaming call that sees Ctrl-C after its chunks."""

    def __init__(self, chunks: list[generation_pb2.GenerateChunk]) -> None:
        self.chunks = chunks
        self.cancelled = False

    def __iter__(self) -> Iterator[generation_pb2.GenerateChunk]:
        yield from self.chunks
        raise KeyboardInterrupt

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def is_active(self) -> bool:
        return not self.cancelled

    def time_remaining(self) -> float:
        return 0.0

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return ""

    def initial_metadata(self) -> Any:
        return ()

    def trailing_metadata(self) -> Any:
        return ()


def test_ctrl_c_cancels_the_call_and_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    call = _InterruptedCall(_chunks("Once"))
    assert follow_generation(call, False, "interrupted; generation cancelled") == 130
    assert call.cancelled
    assert capsys.readouterr() == ("Once\n", "interrupted; generation cancelled\n")


# --- the commands, with a stand-in for the gateway (no network) -------------------------


class _FakeGeneration:
    """GenerationStub's place: records requests, answers from canned chunks."""

    requests: ClassVar[list[Any]] = []  # a fresh list per test (the fixture)

    def __init__(self, channel: grpc.Channel) -> None:
        pass

    def GenerateStream(  # noqa: N802
        self, request: generation_pb2.GenerateRequest, timeout: float
    ) -> list[generation_pb2.GenerateChunk]:
        self.requests.append(request)
        return [*_chunks("The sea", " is wide."), END]

    def StreamTask(  # noqa: N802
        self, request: generation_pb2.StreamTaskRequest, timeout: float
    ) -> list[generation_pb2.GenerateChunk]:
        self.requests.append(request)
        return [*_chunks("Late"), END]


class _NotFound(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.NOT_FOUND

    def details(self) -> str:
        return "no task t9"


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> type[_FakeGeneration]:
    monkeypatch.setattr(_FakeGeneration, "requests", [])
    monkeypatch.setattr(generation_pb2_grpc, "GenerationStub", _FakeGeneration)
    return _FakeGeneration


def test_generate_streams_the_text(
    gateway: type[_FakeGeneration], capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["--target", "127.0.0.1:1", "generate", "--temperature", "0", "Sea?"])
    assert code == 0
    assert capsys.readouterr() == ("The sea is wide.\n", SUMMARY + "\n")
    (request,) = gateway.requests
    assert request.messages.messages[0].content == "Sea?"
    assert request.sampling.HasField("temperature")


def test_task_stream_follows_a_task(
    gateway: type[_FakeGeneration], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--target", "127.0.0.1:1", "task", "stream", "--json", "t1"]) == 0
    out, _ = capsys.readouterr()
    assert [json.loads(line)["delta"] for line in out.splitlines()] == ["Late", ""]
    assert gateway.requests == [generation_pb2.StreamTaskRequest(task_id="t1")]


def test_stream_errors_exit_like_the_other_commands(
    gateway: type[_FakeGeneration],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def not_found(self: _FakeGeneration, request: Any, timeout: float) -> Any:
        raise _NotFound()

    monkeypatch.setattr(_FakeGeneration, "StreamTask", not_found)
    assert cli.main(["--target", "127.0.0.1:1", "task", "stream", "t9"]) == 1
    assert capsys.readouterr() == ("", "error: NOT_FOUND: no task t9\n")


def test_task_submit_generation_sends_the_request(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sent: list[tasks_pb2.SubmitRequest] = []

    class Tasks:
        def __init__(self, channel: grpc.Channel) -> None:
            pass

        def Submit(  # noqa: N802
            self, request: tasks_pb2.SubmitRequest, timeout: float
        ) -> tasks_pb2.SubmitResponse:
            sent.append(request)
            return tasks_pb2.SubmitResponse(task_id="t7")

    monkeypatch.setattr(tasks_pb2_grpc, "TasksStub", Tasks)
    argv = ["task", "submit", "generation", "--seed", "7", "--system", "Be brief.", "Hi"]
    assert cli.main(["--target", "127.0.0.1:1", *argv]) == 0
    assert capsys.readouterr().out == "t7\n"
    (request,) = sent
    assert request.WhichOneof("request") == "generation"
    assert request.generation.sampling.seed == 7
    assert len(request.generation.messages.messages) == 2


def test_structured_output_flags(tmp_path: Path) -> None:
    schema = tmp_path / "person.json"
    schema.write_text('{"type": "object"}')
    assert _request("--json-schema", str(schema), "hi").structured_output.json_schema == (
        '{"type": "object"}'
    )
    assert _request("--json-object", "hi").structured_output.json_object
    assert _request("--regex", "[0-9]+", "hi").structured_output.regex == "[0-9]+"
    assert list(_request("--choice", "yes, no", "hi").structured_output.choice.choices) == [
        "yes",
        "no",
    ]
    assert not _request("hi").HasField("structured_output")
    with pytest.raises(SystemExit):  # one form at a time
        build_parser().parse_args(["generate", "--json-object", "--regex", "x", "hi"])
