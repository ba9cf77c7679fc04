"""The fuzzer ``test_fuzz`` drives: it sends each request, checks that the answer is a
proper status (the rule book's rejects get INVALID_ARGUMENT), interleaves valid traffic
and probes, and counts what it saw."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from deploy.local.stack import LocalStack
from nlp.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    deadletters_pb2,
    generation_pb2,
    models_pb2,
    ner_pb2,
    summarization_pb2,
    tasks_pb2,
)
from shared.contracts.envelope import AnyRequest, validate_request
from shared.contracts.errors import InvalidRequestError
from shared.contracts.settings import Limits
from tests.integration.fuzz_strategies import (
    MAX_MESSAGE_BYTES,
    Metadata,
)

Code = grpc.StatusCode
OK = Code.OK
# Any of these is a proper answer to a hostile request.
ALLOWED = frozenset(
    {
        OK,
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.DEADLINE_EXCEEDED,
        Code.RESOURCE_EXHAUSTED,
        Code.UNIMPLEMENTED,
        Code.UNAUTHENTICATED,
        Code.PERMISSION_DENIED,
        Code.FAILED_PRECONDITION,
        Code.OUT_OF_RANGE,
        Code.CANCELLED,
    }
)
# What the rule book's rejects must get (over the gRPC message cap grpc itself refuses).
REJECTED = frozenset({Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED})
TIMEOUT = 10.0  # per call: a hang fails the test instead of blocking it
PROBE_EVERY = 25
STREAM_TAKE = 3  # messages read from a response stream before cancelling it


# --- the fuzzer --------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    codes: frozenset[grpc.StatusCode] = ALLOWED
    timeout: float = TIMEOUT


@dataclass
class Fuzzer:
    """Sends requests, checks and counts the answers, interleaves valid traffic."""

    stack: LocalStack
    channel: grpc.Channel
    limits: Limits
    served: dict[str, set[str]]
    known_tasks: list[str] = field(default_factory=list)
    known_batches: list[str] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    by_rpc: Counter[tuple[str, str]] = field(default_factory=Counter)
    skipped: int = 0
    calls: int = 0
    probes: int = 0
    # The gateway's pid before any fuzz: a restart (crash and respawn) would change it.
    gateway_pid: int = 0
    # Fuzz tests of this module that passed in this session (test function → items).
    ran: Counter[str] = field(default_factory=Counter)

    # -- oracles: what the rule book says about a request --

    def capability(self, kind: str, request: AnyRequest) -> bool:
        try:
            validate_request(kind, request, self.limits)
        except InvalidRequestError:
            return False
        served = self.served.get(kind)
        return not (request.model and served and request.model not in served)

    def expect_capability(self, kind: str, request: AnyRequest) -> Expect:
        if not self.capability(kind, request):
            return Expect(REJECTED)
        # A valid generation may ask for thousands of tokens: it runs until its deadline
        # (then the gateway cancels it and the engine drops it).
        return Expect(timeout=0.5 if kind == "generation" else TIMEOUT)

    def expect_submit(self, request: tasks_pb2.SubmitRequest) -> Expect:
        kind = request.WhichOneof("request")
        if (
            kind is None
            or request.deadline_ms < 0
            or not 0 <= request.lane <= 3
            or not self.capability(kind, getattr(request, kind))
        ):
            return Expect(REJECTED)
        return Expect()

    # -- calls --

    def call(
        self,
        rpc: str,
        request: Any,
        md: Metadata,
        expect: Expect,
        serializer: Callable[[Any], bytes] | None = None,
        style: str = "unary",
    ) -> None:
        """One call; fails unless the answer is a proper status."""
        size = len(request) if isinstance(request, bytes) else 0
        if isinstance(request, Message):
            size = request.ByteSize()
        elif isinstance(request, list):
            size = sum(m.ByteSize() for m in request)
        if size > MAX_MESSAGE_BYTES and style != "bidi":
            expect = Expect(frozenset({Code.RESOURCE_EXHAUSTED}), expect.timeout)
        code, details = self._send(rpc, request, md, expect.timeout, serializer, style)
        if code is None:
            self.skipped += 1
            return
        self.calls += 1
        ok = code in expect.codes
        name = code.name
        self.codes[name] += 1
        self.by_rpc[(rpc, name)] += 1
        assert ok, (
            f"{rpc} answered {code.name} {details[:300]!r}, expected one of "
            f"{sorted(c.name for c in expect.codes)}; metadata {_short(md)}; "
            f"request {_short(request)}"
        )
        if self.calls % PROBE_EVERY == 0:
            self.probe()

    def _send(
        self,
        rpc: str,
        request: Any,
        md: Metadata,
        timeout: float,
        serializer: Callable[[Any], bytes] | None,
        style: str,
    ) -> tuple[grpc.StatusCode | None, str]:
        """The answer's code and details; None: grpc refused the call before sending."""
        kwargs: dict[str, Any] = {"request_serializer": serializer}
        try:
            if style == "unary":
                self.channel.unary_unary(rpc, **kwargs)(request, timeout=timeout, metadata=md)
            elif style == "server_stream":
                stream = self.channel.unary_stream(rpc, **kwargs)(
                    request, timeout=timeout, metadata=md
                )
                _take(stream)
            else:
                messages = [request] if isinstance(request, bytes) else list(request)
                stream = self.channel.stream_stream(rpc, **kwargs)(
                    iter(messages), timeout=timeout, metadata=md
                )
                _take(stream)
        except (ValueError, TypeError):
            return None, ""  # refused by grpc python before sending
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            details = str(exc.details() or "")
            if code == Code.INTERNAL and details == "Invalid metadata":
                return None, details  # grpc core refused the metadata client-side
            return code, details
        return OK, ""

    def probe(self) -> None:
        """A valid Classify between the fuzz: it must succeed."""
        stub = classification_pb2_grpc.ClassificationStub(self.channel)
        request = classification_pb2.ClassifyRequest(
            text="The striker scored twice.",
            labels=[classification_pb2.Label(name=n) for n in ("sports", "politics")],
        )
        response = stub.Classify(request, timeout=30)
        assert response.top_label in {"sports", "politics"}, response
        assert len(response.scores) == 2
        self.probes += 1

    def summary(self) -> str:
        lines = [
            f"fuzz: {self.calls} calls answered, {self.skipped} refused client-side, "
            f"{self.probes} valid probes succeeded",
            "  codes: " + ", ".join(f"{c}={n}" for c, n in self.codes.most_common()),
        ]
        per_rpc: dict[str, list[str]] = {}
        for (rpc, code), n in sorted(self.by_rpc.items()):
            per_rpc.setdefault(rpc, []).append(f"{code}={n}")
        lines += [f"  {rpc}: {' '.join(codes)}" for rpc, codes in per_rpc.items()]
        return "\n".join(lines)


def _take(stream: Any) -> None:
    """Read a few messages of a response stream, then cancel it."""
    try:
        for i, _ in enumerate(stream):
            if i + 1 >= STREAM_TAKE:
                break
    finally:
        stream.cancel()


def _short(value: Any, limit: int = 600) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _method(service: str, name: str) -> str:
    return f"/{service}/{name}"


CLASSIFY = _method("nlp.v1.Classification", "Classify")
RECOGNIZE = _method("nlp.v1.Ner", "Recognize")
SUMMARIZE = _method("nlp.v1.Summarization", "Summarize")
GENERATE = _method("nlp.v1.Generation", "Generate")
GENERATE_STREAM = _method("nlp.v1.Generation", "GenerateStream")
STREAM_TASK = _method("nlp.v1.Generation", "StreamTask")
SUBMIT = _method("nlp.v1.Tasks", "Submit")
GET = _method("nlp.v1.Tasks", "Get")
WAIT = _method("nlp.v1.Tasks", "Wait")
CANCEL = _method("nlp.v1.Tasks", "Cancel")
SUBMIT_BATCH = _method("nlp.v1.Tasks", "SubmitBatch")
GET_BATCH = _method("nlp.v1.Tasks", "GetBatch")
STREAM_BATCH = _method("nlp.v1.Tasks", "StreamBatchResults")
LIST_MODELS = _method("nlp.v1.Models", "List")
LIST_DEAD_LETTERS = _method("nlp.v1.DeadLetters", "List")
GET_DEAD_LETTER = _method("nlp.v1.DeadLetters", "Get")
REPLAY_DEAD_LETTERS = _method("nlp.v1.DeadLetters", "Replay")
HEALTH = _method("grpc.health.v1.Health", "Check")

# Every RPC with its request type and call style (for raw bytes).
RPCS: dict[str, tuple[type[Message], str]] = {
    CLASSIFY: (classification_pb2.ClassifyRequest, "unary"),
    RECOGNIZE: (ner_pb2.NerRequest, "unary"),
    SUMMARIZE: (summarization_pb2.SummarizeRequest, "unary"),
    GENERATE: (generation_pb2.GenerateRequest, "unary"),
    GENERATE_STREAM: (generation_pb2.GenerateRequest, "server_stream"),
    STREAM_TASK: (generation_pb2.StreamTaskRequest, "server_stream"),
    SUBMIT: (tasks_pb2.SubmitRequest, "unary"),
    GET: (tasks_pb2.GetTaskRequest, "unary"),
    WAIT: (tasks_pb2.WaitTaskRequest, "unary"),
    CANCEL: (tasks_pb2.CancelTaskRequest, "unary"),
    SUBMIT_BATCH: (tasks_pb2.SubmitBatchRequest, "bidi"),
    GET_BATCH: (tasks_pb2.GetBatchRequest, "unary"),
    STREAM_BATCH: (tasks_pb2.StreamBatchResultsRequest, "server_stream"),
    LIST_MODELS: (models_pb2.ListModelsRequest, "unary"),
    # Not Replay: random bytes could name a real filter and resend the session's records.
    LIST_DEAD_LETTERS: (deadletters_pb2.ListDeadLettersRequest, "unary"),
    GET_DEAD_LETTER: (deadletters_pb2.GetDeadLetterRequest, "unary"),
    HEALTH: (health_pb2.HealthCheckRequest, "unary"),
}
CAPABILITY_RPCS = {
    "classification": CLASSIFY,
    "ner": RECOGNIZE,
    "summarization": SUMMARIZE,
    "generation": GENERATE,
}
