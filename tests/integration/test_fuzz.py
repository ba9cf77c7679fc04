"""Property-based fuzzing of every gateway RPC on the real stack.

Thousands of malformed and hostile requests (huge strings, odd unicode, negative and
enormous numbers, unknown enum values, deeply repeated fields, random ids and cursors,
hostile metadata, raw bytes that are no protobuf at all) go to every RPC. Each answer must
be a proper status; valid traffic interleaved with the fuzz keeps succeeding, and the
gateway is alive and SERVING at the end.

Where the rule book (shared.contracts.envelope) says a request is invalid, the answer must be
INVALID_ARGUMENT (RESOURCE_EXHAUSTED over the 4 MiB message cap): a timeout there means
the gateway hung on bad input.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given
from hypothesis import settings as fuzz_settings
from hypothesis import strategies as st

from deploy.local.stack import LocalStack
from nlp.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    generation_pb2,
    models_pb2,
    models_pb2_grpc,
    ner_pb2,
    summarization_pb2,
    tasks_pb2,
    tasks_pb2_grpc,
)
from shared.contracts.envelope import AnyRequest, valid_batch_id, valid_task_id, validate_request
from shared.contracts.errors import InvalidRequestError
from shared.contracts.names import KIND_NAMES, kind_name
from shared.contracts.settings import Limits, ServiceSettings
from tests.factories import submit_classification
from tests.integration.support import wait_terminal

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
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
TIMEOUT = 10.0  # per call: a hang fails the test instead of blocking it
PROBE_EVERY = 25
STREAM_TAKE = 3  # messages read from a response stream before cancelling it
LIMITS = Limits()

_FUZZ = fuzz_settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
        HealthCheck.large_base_example,
    ],
)


def fuzzed(max_examples: int) -> fuzz_settings:
    return fuzz_settings(_FUZZ, max_examples=max_examples)


# --- strategies: scalars ----------------------------------------------------------------

ODD = [
    "\x00",
    "\u200f",  # right-to-left mark
    "\u202e",  # right-to-left override
    "\u200b",  # zero width space
    "\ufeff",  # byte order mark
    "\u0301",  # combining acute accent
    "e\u0301\u0301\u0301",
    "\U0001f600",  # emoji
    "\U0001f469\u200d\U0001f4bb",  # ZWJ sequence
    "\uffff",
    "\U0010ffff",
    "\u3000",
    "\r\n",
    "\t",
    "../",
    "%s%n",
    "'; DROP TABLE x;--",
    "<script>",
    "*",
    "{}",
]
PIECES = st.one_of(st.characters(codec="utf-8"), st.sampled_from(ODD))
tiny_text = st.lists(PIECES, min_size=1, max_size=20).map("".join)
any_text = st.lists(PIECES, max_size=20).map("".join)
units = st.lists(PIECES, min_size=1, max_size=3).map("".join)


def _repeat(unit: str, nbytes: int) -> str:
    """``unit`` repeated to about ``nbytes`` UTF-8 bytes."""
    return unit * max(1, nbytes // len(unit.encode()))


def _exact(prefix: str, nbytes: int) -> str:
    """``prefix`` padded with ASCII to exactly ``nbytes`` UTF-8 bytes (or longer)."""
    return prefix + "a" * max(0, nbytes - len(prefix.encode()))


def sized_text(edge: bool = False) -> st.SearchStrategy[str]:
    """Mostly short odd text; some blank, medium, just over the text limit, over 4 MiB.

    ``edge``: also texts of a few bytes around the limit (some valid: only where the
    worker can afford half a megabyte).
    """
    limit = LIMITS.max_text_bytes
    classes = {
        "tiny": tiny_text,
        "blank": st.sampled_from(["", " ", "\n\t ", "\u3000", "\x00", "\u200b"]),
        "medium": st.builds(_repeat, units, st.integers(100, 6000)),
        "over": st.builds(_repeat, units, st.integers(limit + 8, 600_000)),
        "huge": st.builds(_repeat, units, st.integers(MAX_MESSAGE_BYTES + 1, 4_400_000)),
        "edge": st.builds(_exact, any_text, st.integers(limit - 4, limit + 4)),
    }
    names = ["tiny"] * 14 + ["blank"] * 2 + ["medium"] * 3 + ["over", "huge"]
    if edge:
        names.append("edge")
    return st.sampled_from(names).flatmap(lambda n: classes[n])


def ints(bits: int, small: tuple[int, int] = (-10, 20)) -> st.SearchStrategy[int]:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return st.one_of(
        st.integers(*small),
        st.sampled_from([lo, hi, lo + 1, hi - 1, -1, 0, 1]),
        st.integers(lo, hi),
    )


floats = st.one_of(
    st.floats(-3, 3),
    st.sampled_from(
        [math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, 2.0, 1e-45, 3.4e38, 1e300, -1e300]
    ),
    st.floats(allow_nan=True, allow_infinity=True),
)
model_names = st.one_of(
    st.sampled_from(["", "", "", "", "", "minilm-l6-v2-int8", "default", "a" * 128, "a" * 129]),
    tiny_text,
    st.builds(_repeat, units, st.integers(129, 70_000)),
)
ids = st.one_of(
    st.sampled_from(["", " ", ".", "..", "../../etc/passwd", "a" * 128, "a" * 129, "*", "a:*"]),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", fullmatch=True),
    any_text,
    st.builds(_repeat, units, st.integers(100, 200_000)),
)


def counted(small: int, edge: tuple[int, int], many: tuple[int, int]) -> st.SearchStrategy[int]:
    """How many elements a repeated field gets: mostly a few, some around the limit,
    rarely thousands."""
    return st.sampled_from(["small"] * 8 + ["zero", "edge", "many"]).flatmap(
        lambda c: {
            "small": st.integers(1, small),
            "zero": st.just(0),
            "edge": st.integers(*edge),
            "many": st.integers(*many),
        }[c]
    )


# --- strategies: requests ----------------------------------------------------------------

label_names = st.one_of(
    st.sampled_from(["sports", "politics", "technology", "", " ", "a" * 200, "a" * 201, "\x00"]),
    tiny_text,
)
descriptions = st.one_of(
    st.just(""), tiny_text, st.sampled_from(["d" * 1000, "d" * 1001, "\U0001f600" * 1001])
)


@st.composite
def classify_requests(draw: st.DrawFn) -> classification_pb2.ClassifyRequest:
    request = classification_pb2.ClassifyRequest(
        text=draw(sized_text(edge=True)),
        multi_label=draw(st.booleans()),
        model=draw(model_names),
    )
    n = draw(counted(5, (LIMITS.max_labels - 4, LIMITS.max_labels + 4), (1000, 3000)))
    if n <= 8:
        for _ in range(n):
            request.labels.add(name=draw(label_names), description=draw(descriptions))
    else:  # unique names: only the count (or one odd description) makes it invalid
        base = draw(label_names)
        description = draw(descriptions)
        for i in range(n):
            request.labels.add(name=f"{base}{i}", description=description)
    return request


@st.composite
def ner_requests(draw: st.DrawFn) -> ner_pb2.NerRequest:
    request = ner_pb2.NerRequest(text=draw(sized_text()), model=draw(model_names))
    n = draw(counted(4, (LIMITS.max_ner_labels - 4, LIMITS.max_ner_labels + 4), (1000, 5000)))
    if n <= 8:
        request.labels.extend(
            draw(
                st.lists(
                    st.one_of(st.sampled_from(["PERSON", "ORG", "GPE", "", " "]), tiny_text),
                    min_size=n,
                    max_size=n,
                )
            )
        )
    else:
        request.labels.extend([draw(st.sampled_from(["PERSON", "X", ""]))] * n)
    return request


@st.composite
def summarize_requests(draw: st.DrawFn) -> summarization_pb2.SummarizeRequest:
    request = summarization_pb2.SummarizeRequest(text=draw(sized_text()), model=draw(model_names))
    # Open enum: unknown values are kept (and sent) as plain ints.
    request.mode = draw(st.one_of(st.sampled_from([0, 1, 1, 1, 2]), ints(32)))  # type: ignore[assignment]
    length = draw(st.sampled_from(["none", "max_sentences", "ratio"]))
    if length == "max_sentences":
        request.max_sentences = draw(ints(32))
    elif length == "ratio":
        request.ratio = draw(floats)
    return request


roles = st.one_of(
    st.sampled_from(["system", "user", "assistant", "", "root", "USER", "user\x00", "tool"]),
    tiny_text,
)


@st.composite
def generate_requests(draw: st.DrawFn) -> generation_pb2.GenerateRequest:
    request = generation_pb2.GenerateRequest(model=draw(model_names))
    which = draw(st.sampled_from(["none", "prompt", "prompt", "messages", "messages"]))
    if which == "prompt":
        request.prompt = draw(sized_text())
    elif which == "messages":
        chat = request.messages
        n = draw(
            counted(4, (LIMITS.max_chat_messages - 4, LIMITS.max_chat_messages + 4), (1000, 3000))
        )
        if n <= 8:
            for _ in range(n):
                chat.messages.add(role=draw(roles), content=draw(sized_text()))
        else:
            one = generation_pb2.ChatMessage(role=draw(roles), content=draw(any_text))
            chat.messages.extend([one] * n)
        if n == 0:
            chat.SetInParent()  # messages chosen, but empty
    sampling = request.sampling
    sampling.max_tokens = draw(ints(32, (-5, 5000)))
    if draw(st.booleans()):
        sampling.temperature = draw(floats)
    if draw(st.booleans()):
        sampling.top_p = draw(floats)
    if draw(st.booleans()):
        sampling.top_k = draw(ints(32))
    if draw(st.booleans()):
        sampling.seed = draw(ints(64))
    n = draw(
        counted(3, (LIMITS.max_stop_sequences - 2, LIMITS.max_stop_sequences + 2), (1000, 5000))
    )
    if n <= 8:
        sampling.stop.extend(draw(st.lists(any_text, min_size=n, max_size=n)))
    else:
        sampling.stop.extend([draw(any_text)] * n)
    return request


capability_requests: dict[str, st.SearchStrategy[Any]] = {
    "classification": classify_requests(),
    "ner": ner_requests(),
    "summarization": summarize_requests(),
    "generation": generate_requests(),
}
# Mostly out of [0, 9] (and negative deadlines): most fuzzed tasks are refused, so the
# workers are not flooded; the valid ones run.
priorities = st.one_of(ints(32), ints(32), ints(32), st.integers(0, 9))
deadlines_ms = st.one_of(ints(64, (-5, 5)), ints(64, (-5, 5)), st.integers(0, 60_000))


@st.composite
def submit_requests(draw: st.DrawFn) -> tasks_pb2.SubmitRequest:
    request = tasks_pb2.SubmitRequest(
        priority=draw(priorities),
        deadline_ms=draw(deadlines_ms),
        tenant=draw(
            st.one_of(st.just(""), tiny_text, st.builds(_repeat, units, st.integers(1, 200_000)))
        ),
    )
    kind = draw(st.sampled_from(["none", "classification", "ner", "summarization", "generation"]))
    if kind != "none":
        getattr(request, kind).CopyFrom(draw(capability_requests[kind]))
    if draw(st.booleans()):
        request.reply.publish_result = draw(st.booleans())
        request.reply.correlation_id = draw(st.one_of(any_text, st.just("c" * 10_000)))
    return request


@st.composite
def batch_streams(draw: st.DrawFn) -> list[tasks_pb2.SubmitBatchRequest]:
    first_id = draw(
        st.one_of(
            st.just(""),
            st.builds(lambda: f"fuzz-{uuid.uuid4().hex[:12]}"),
            st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
            ids,
        )
    )
    messages = []
    for i in range(draw(st.integers(0, 3))):
        message = tasks_pb2.SubmitBatchRequest(publish_results=draw(st.booleans()))
        message.batch_id = first_id if i == 0 else draw(st.sampled_from(["", first_id, "other"]))
        n = draw(counted(3, (10, 40), (500, 2500)))
        if n <= 3:
            for _ in range(n):
                message.items.add(
                    item_id=draw(st.one_of(any_text, st.just("i" * 257))),
                    task=draw(submit_requests()),
                )
        else:  # many items without a task: each is refused in its ack
            prefix = draw(any_text)
            for j in range(n):
                message.items.add(item_id=f"{prefix}{j}")
        messages.append(message)
    return messages


cursors = st.one_of(
    st.sampled_from(["", "0-0", "0", "-", "+", "$", ">", "0-0-0", "99999999999999999999-0"]),
    st.from_regex(r"[0-9]{1,20}-[0-9]{1,20}", fullmatch=True),
    st.from_regex(r"[0-9]{19,20}-[0-9]{1,20}", fullmatch=True),  # around 2**64
    ids,
)

# --- strategies: metadata ----------------------------------------------------------------

md_keys = st.one_of(
    st.sampled_from(
        ["authorization", "x-api-key", "x-fuzz", "user-agent", "grpc-timeout", "te", "host"]
    ),
    st.from_regex(r"[a-z0-9_.-]{1,30}", fullmatch=True),
    st.sampled_from(["", "X-Upper", "bad key", ":path", "grpc-status", "content-type"]),
)
ascii_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=64)
md_values = st.one_of(
    ascii_values,
    st.builds(lambda c, n: c * n, st.sampled_from("aZ9 -"), st.integers(1000, 20_000)),
    tiny_text,  # non-ASCII or control characters: grpc refuses them before sending
    st.sampled_from(["Bearer ", "Bearer \x00", "Basic Zm9vOmJhcg==", "Bearer " + "x" * 9000]),
)
Metadata = tuple[tuple[str, str | bytes], ...]


@st.composite
def hostile_metadata(draw: st.DrawFn) -> Metadata:
    pairs: list[tuple[str, str | bytes]] = []
    for _ in range(draw(st.integers(1, 4))):
        shape = draw(st.sampled_from(["text", "bin", "auth", "authbin", "many"]))
        if shape == "text":
            pairs.append((draw(md_keys), draw(md_values)))
        elif shape == "bin":  # how invalid UTF-8 travels
            pairs.append(("x-fuzz-bin", draw(st.binary(max_size=3000))))
        elif shape == "auth":
            pairs.append(("authorization", draw(md_values)))
        elif shape == "authbin":
            pairs.append(("authorization-bin", draw(st.binary(max_size=200))))
        else:
            value = draw(ascii_values)
            pairs.extend((f"x-many-{i}", value) for i in range(draw(st.integers(10, 400))))
    return tuple(pairs)


metadata = st.sampled_from([0, 0, 0, 1]).flatmap(
    lambda hostile: hostile_metadata() if hostile else st.just(())
)

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
            or not 0 <= request.priority <= 9
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


def _serialize(message: Message) -> bytes:
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
    HEALTH: (health_pb2.HealthCheckRequest, "unary"),
}
CAPABILITY_RPCS = {
    "classification": CLASSIFY,
    "ner": RECOGNIZE,
    "summarization": SUMMARIZE,
    "generation": GENERATE,
}


@pytest.fixture(scope="module")
def fuzz(
    stack: LocalStack,
    channel: grpc.Channel,
    settings: ServiceSettings,
    tasks: tasks_pb2_grpc.TasksStub,
) -> Iterator[Fuzzer]:
    models = models_pb2_grpc.ModelsStub(channel).List(models_pb2.ListModelsRequest(), timeout=30)
    served: dict[str, set[str]] = {}
    for model in models.models:
        served.setdefault(kind_name(model.kind), set()).add(model.name)
    gateway = stack.services["gateway"].proc
    assert gateway is not None and gateway.poll() is None, "the gateway is not running"
    fuzzer = Fuzzer(stack, channel, settings.limits, served, gateway_pid=gateway.pid)
    # Real ids for Get/Wait/Cancel/GetBatch/StreamBatchResults to reach past validation:
    # a finished task, a generation task (streams tokens) and a batch.
    done = tasks.Submit(submit_classification("The striker scored twice."), timeout=30)
    wait_terminal(tasks, done.task_id)
    generated = tasks.Submit(
        tasks_pb2.SubmitRequest(generation=generation_pb2.GenerateRequest(prompt="Hi")),
        timeout=30,
    )
    batch_id = f"fuzz-known-{uuid.uuid4().hex[:8]}"
    item = tasks_pb2.BatchItem(item_id="known", task=submit_classification("Rain again today."))
    acks = list(
        tasks.SubmitBatch(
            iter([tasks_pb2.SubmitBatchRequest(batch_id=batch_id, items=[item])]), timeout=30
        )
    )
    assert acks and acks[0].acks[0].task_id, acks
    fuzzer.known_tasks += [done.task_id, generated.task_id]
    fuzzer.known_batches.append(batch_id)
    yield fuzzer
    print("\n" + fuzzer.summary())


@pytest.fixture(autouse=True)
def _tally(request: pytest.FixtureRequest) -> Iterator[None]:
    """Record each fuzz test that passed: test_gateway_survived holds the fuzz to its
    full size only when all of it ran."""
    name = request.node.originalname
    if "fuzz" not in request.fixturenames or name == SURVIVED:
        yield
        return
    fuzzer: Fuzzer = request.getfixturevalue("fuzz")
    failed = request.session.testsfailed
    yield
    # Teardown comes after the call's report is counted: a failure shows here.
    if request.session.testsfailed == failed:
        fuzzer.ran[name] += 1


def _known(values: Sequence[str], draw: Callable[[st.SearchStrategy[str]], str]) -> str:
    """A known id, or one a little off it."""
    value = draw(st.sampled_from(values))
    return draw(
        st.sampled_from(
            [value, value, value + "x", value.upper(), value + "/../x", value[:-1], " " + value]
        )
    )


# --- the properties ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "examples"),
    [("classification", 400), ("ner", 300), ("summarization", 300), ("generation", 300)],
)
def test_capability_rpcs(fuzz: Fuzzer, kind: str, examples: int) -> None:
    @fuzzed(examples)
    @given(request=capability_requests[kind], md=metadata)
    def run(request: AnyRequest, md: Metadata) -> None:
        fuzz.call(
            CAPABILITY_RPCS[kind], request, md, fuzz.expect_capability(kind, request), _serialize
        )

    run()


@fuzzed(150)
@given(request=generate_requests(), md=metadata)
def test_generate_stream(
    fuzz: Fuzzer, request: generation_pb2.GenerateRequest, md: Metadata
) -> None:
    fuzz.call(GENERATE_STREAM, request, md, Expect(timeout=3.0), _serialize, "server_stream")


@fuzzed(400)
@given(request=submit_requests(), md=metadata)
def test_submit(fuzz: Fuzzer, request: tasks_pb2.SubmitRequest, md: Metadata) -> None:
    fuzz.call(SUBMIT, request, md, fuzz.expect_submit(request), _serialize)


@fuzzed(300)
@given(data=st.data(), md=metadata)
def test_get_wait_cancel(fuzz: Fuzzer, data: st.DataObject, md: Metadata) -> None:
    draw = data.draw
    task_id = _known(fuzz.known_tasks, draw) if draw(st.integers(0, 9)) == 0 else draw(ids)
    rpc = draw(st.sampled_from([GET, WAIT, CANCEL]))
    bad_id = not valid_task_id(task_id)
    if rpc == WAIT:
        timeout_ms = draw(ints(64, (-5, 2000)))
        request: Message = tasks_pb2.WaitTaskRequest(task_id=task_id, timeout_ms=timeout_ms)
        expect = Expect(REJECTED) if bad_id or timeout_ms < 0 else Expect(timeout=2.0)
    else:
        request_type = tasks_pb2.GetTaskRequest if rpc == GET else tasks_pb2.CancelTaskRequest
        request = request_type(task_id=task_id)
        expect = Expect(REJECTED) if bad_id else Expect()
    fuzz.call(rpc, request, md, expect, _serialize)


@fuzzed(100)
@given(data=st.data(), md=metadata)
def test_stream_task(fuzz: Fuzzer, data: st.DataObject, md: Metadata) -> None:
    draw = data.draw
    task_id = _known(fuzz.known_tasks, draw) if draw(st.integers(0, 3)) == 0 else draw(ids)
    expect = Expect(REJECTED) if not valid_task_id(task_id) else Expect(timeout=3.0)
    request = generation_pb2.StreamTaskRequest(task_id=task_id)
    fuzz.call(STREAM_TASK, request, md, expect, _serialize, "server_stream")


@fuzzed(200)
@given(messages=batch_streams(), md=metadata)
def test_submit_batch(
    fuzz: Fuzzer, messages: list[tasks_pb2.SubmitBatchRequest], md: Metadata
) -> None:
    first = messages[0].batch_id if messages else ""
    expect = Expect(REJECTED) if first and not valid_batch_id(first) else Expect()
    fuzz.call(SUBMIT_BATCH, messages, md, expect, _serialize, "bidi")


@fuzzed(250)
@given(data=st.data(), md=metadata)
def test_batch_reads(fuzz: Fuzzer, data: st.DataObject, md: Metadata) -> None:
    draw = data.draw
    known = draw(st.booleans())
    batch_id = _known(fuzz.known_batches, draw) if known else draw(ids)
    expect = Expect(REJECTED) if not valid_batch_id(batch_id) else Expect(timeout=3.0)
    if draw(st.booleans()):
        fuzz.call(GET_BATCH, tasks_pb2.GetBatchRequest(batch_id=batch_id), md, expect, _serialize)
        return
    request = tasks_pb2.StreamBatchResultsRequest(
        batch_id=batch_id, cursor=draw(cursors), no_follow=draw(st.booleans())
    )
    fuzz.call(STREAM_BATCH, request, md, expect, _serialize, "server_stream")


@fuzzed(100)
@given(kind=st.one_of(st.integers(0, 5), ints(32)), md=metadata)
def test_list_models(fuzz: Fuzzer, kind: int, md: Metadata) -> None:
    request = models_pb2.ListModelsRequest()
    request.kind = kind  # type: ignore[assignment]
    known = kind == 0 or kind in KIND_NAMES
    expect = Expect(frozenset({OK})) if known else Expect(frozenset({Code.INVALID_ARGUMENT}))
    if md:
        expect = Expect(ALLOWED)
    fuzz.call(LIST_MODELS, request, md, expect, _serialize)


@fuzzed(100)
@given(service=st.one_of(st.sampled_from(["", "nlp.v1.Tasks"]), ids), md=metadata)
def test_health_check(fuzz: Fuzzer, service: str, md: Metadata) -> None:
    request = health_pb2.HealthCheckRequest(service=service)
    fuzz.call(
        HEALTH,
        request,
        md,
        Expect(frozenset({OK, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED})),
        _serialize,
    )


@st.composite
def raw_payloads(draw: st.DrawFn) -> bytes:
    """Bytes that are mostly no valid protobuf: random, truncated, flipped, oversized."""
    shape = draw(st.sampled_from(["random"] * 6 + ["varint", "mutated", "big", "huge"]))
    if shape == "random":
        return draw(st.binary(max_size=300))
    if shape == "varint":  # a length-delimited field claiming far more bytes than follow
        return draw(st.sampled_from([b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x80", b"\xff" * 11]))
    if shape == "mutated":
        data = bytearray(draw(st.binary(min_size=1, max_size=200)))
        data[draw(st.integers(0, len(data) - 1))] ^= 0xFF
        return bytes(data[: draw(st.integers(0, len(data)))])
    if shape == "big":
        return draw(st.binary(min_size=1, max_size=64)) * 10_000
    return b"\x0a" + b"\xff" * (MAX_MESSAGE_BYTES + 16)


def _decodes(request_type: type[Message], payload: bytes) -> Message | None:
    message = request_type()
    try:
        message.ParseFromString(payload)
    except DecodeError:
        return None
    return message


@fuzzed(500)
@given(rpc=st.sampled_from(sorted(RPCS)), payload=raw_payloads(), md=metadata)
def test_raw_bytes(fuzz: Fuzzer, rpc: str, payload: bytes, md: Metadata) -> None:
    _raw_call(fuzz, rpc, payload, md)


def _raw_call(fuzz: Fuzzer, rpc: str, payload: bytes, md: Metadata) -> None:
    request_type, style = RPCS[rpc]
    # Bytes that do not parse are INVALID_ARGUMENT (or RESOURCE_EXHAUSTED over the size cap);
    # others are a proper status, with a short deadline so that a payload that happens to be
    # a valid synchronous request (waiting for a worker) costs little.
    parses = _decodes(request_type, payload) is not None
    refused = frozenset({Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED})
    expect = Expect(timeout=2.0) if parses else Expect(refused, 2.0)
    fuzz.call(rpc, payload, md, expect, None, style)


SURVIVED = "test_gateway_survived"
FULL_FUZZ_CALLS = 3000  # answered calls of the whole module's fuzz, at least
OWN_FUZZ_CALLS = 50  # ... of test_gateway_survived's own (some are refused client-side)


def _fuzz_tests() -> Counter[str]:
    """Every fuzz test of this module (all tests but this one), selected in this run or
    not, with its number of parametrizations."""
    tests: Counter[str] = Counter()
    for name, test in globals().items():
        if name.startswith("test_") and name != SURVIVED and callable(test):
            marks = [m for m in getattr(test, "pytestmark", []) if m.name == "parametrize"]
            tests[name] = math.prod(len(m.args[1]) for m in marks)
    return tests


def _own_fuzz(fuzz: Fuzzer) -> None:
    """A short fuzz to survive when the module's did not all run (this test alone, or a
    subset): raw bytes to every RPC, hostile Classify requests, and one call for each
    answer the check below looks for."""

    @fuzzed(60)
    @given(rpc=st.sampled_from(sorted(RPCS)), payload=raw_payloads(), md=metadata)
    def raw(rpc: str, payload: bytes, md: Metadata) -> None:
        _raw_call(fuzz, rpc, payload, md)

    @fuzzed(40)
    @given(request=classify_requests(), md=metadata)
    def classify(request: classification_pb2.ClassifyRequest, md: Metadata) -> None:
        fuzz.call(
            CLASSIFY, request, md, fuzz.expect_capability("classification", request), _serialize
        )

    raw()
    classify()
    known = tasks_pb2.GetTaskRequest(task_id=fuzz.known_tasks[0])
    fuzz.call(GET, known, (), Expect(frozenset({OK})), _serialize)
    unknown = tasks_pb2.GetTaskRequest(task_id=f"no-such-task-{uuid.uuid4().hex}")
    fuzz.call(GET, unknown, (), Expect(frozenset({Code.NOT_FOUND})), _serialize)
    empty = classification_pb2.ClassifyRequest(text="")
    fuzz.call(CLASSIFY, empty, (), Expect(frozenset({Code.INVALID_ARGUMENT})), _serialize)
    oversized = b"\x0a" + b"\xff" * (MAX_MESSAGE_BYTES + 16)  # call() expects RESOURCE_EXHAUSTED
    fuzz.call(CLASSIFY, oversized, (), Expect(), None)


def test_gateway_survived(fuzz: Fuzzer, channel: grpc.Channel, stack: LocalStack) -> None:
    full = fuzz.ran == _fuzz_tests()
    if not full:
        _own_fuzz(fuzz)
    fuzz.probe()
    health = health_pb2_grpc.HealthStub(channel)
    response = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    proc = stack.services["gateway"].proc
    assert proc is not None and proc.poll() is None, "the gateway process died"
    assert proc.pid == fuzz.gateway_pid, "the gateway was restarted during the fuzz"
    assert fuzz.calls >= (FULL_FUZZ_CALLS if full else OWN_FUZZ_CALLS), fuzz.summary()
    # The fuzz reached the validation and lookup paths, not only grpc's own checks.
    for code in ("OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"):
        assert fuzz.codes[code] > 0, fuzz.summary()
