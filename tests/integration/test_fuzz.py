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
    deadletters_pb2,
    generation_pb2,
    models_pb2,
    models_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from shared.contracts.envelope import AnyRequest, valid_batch_id, valid_task_id
from shared.contracts.names import KIND_NAMES, kind_name
from shared.contracts.settings import ServiceSettings
from tests.factories import submit_classification
from tests.integration.fuzz_strategies import (
    MAX_MESSAGE_BYTES,
    Metadata,
    batch_streams,
    capability_requests,
    classify_requests,
    cursors,
    generate_requests,
    ids,
    ints,
    metadata,
    submit_requests,
)
from tests.integration.fuzzer import (
    ALLOWED,
    CANCEL,
    CAPABILITY_RPCS,
    CLASSIFY,
    GENERATE_STREAM,
    GET,
    GET_BATCH,
    GET_DEAD_LETTER,
    HEALTH,
    LIST_DEAD_LETTERS,
    LIST_MODELS,
    OK,
    REJECTED,
    REPLAY_DEAD_LETTERS,
    RPCS,
    STREAM_BATCH,
    STREAM_TASK,
    SUBMIT,
    SUBMIT_BATCH,
    WAIT,
    Expect,
    Fuzzer,
    serialize,
)
from tests.integration.support import wait_terminal

Code = grpc.StatusCode

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
            CAPABILITY_RPCS[kind], request, md, fuzz.expect_capability(kind, request), serialize
        )

    run()


@fuzzed(150)
@given(request=generate_requests(), md=metadata)
def test_generate_stream(
    fuzz: Fuzzer, request: generation_pb2.GenerateRequest, md: Metadata
) -> None:
    fuzz.call(GENERATE_STREAM, request, md, Expect(timeout=3.0), serialize, "server_stream")


@fuzzed(400)
@given(request=submit_requests(), md=metadata)
def test_submit(fuzz: Fuzzer, request: tasks_pb2.SubmitRequest, md: Metadata) -> None:
    fuzz.call(SUBMIT, request, md, fuzz.expect_submit(request), serialize)


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
    fuzz.call(rpc, request, md, expect, serialize)


@fuzzed(100)
@given(data=st.data(), md=metadata)
def test_stream_task(fuzz: Fuzzer, data: st.DataObject, md: Metadata) -> None:
    draw = data.draw
    task_id = _known(fuzz.known_tasks, draw) if draw(st.integers(0, 3)) == 0 else draw(ids)
    expect = Expect(REJECTED) if not valid_task_id(task_id) else Expect(timeout=3.0)
    request = generation_pb2.StreamTaskRequest(task_id=task_id)
    fuzz.call(STREAM_TASK, request, md, expect, serialize, "server_stream")


@fuzzed(200)
@given(messages=batch_streams(), md=metadata)
def test_submit_batch(
    fuzz: Fuzzer, messages: list[tasks_pb2.SubmitBatchRequest], md: Metadata
) -> None:
    first = messages[0].batch_id if messages else ""
    expect = Expect(REJECTED) if first and not valid_batch_id(first) else Expect()
    fuzz.call(SUBMIT_BATCH, messages, md, expect, serialize, "bidi")


@fuzzed(250)
@given(data=st.data(), md=metadata)
def test_batch_reads(fuzz: Fuzzer, data: st.DataObject, md: Metadata) -> None:
    draw = data.draw
    known = draw(st.booleans())
    batch_id = _known(fuzz.known_batches, draw) if known else draw(ids)
    expect = Expect(REJECTED) if not valid_batch_id(batch_id) else Expect(timeout=3.0)
    if draw(st.booleans()):
        fuzz.call(GET_BATCH, tasks_pb2.GetBatchRequest(batch_id=batch_id), md, expect, serialize)
        return
    request = tasks_pb2.StreamBatchResultsRequest(
        batch_id=batch_id, cursor=draw(cursors), no_follow=draw(st.booleans())
    )
    fuzz.call(STREAM_BATCH, request, md, expect, serialize, "server_stream")


@fuzzed(100)
@given(kind=st.one_of(st.integers(0, 5), ints(32)), md=metadata)
def test_list_models(fuzz: Fuzzer, kind: int, md: Metadata) -> None:
    request = models_pb2.ListModelsRequest()
    request.kind = kind  # type: ignore[assignment]
    known = kind == 0 or kind in KIND_NAMES
    expect = Expect(frozenset({OK})) if known else Expect(frozenset({Code.INVALID_ARGUMENT}))
    if md:
        expect = Expect(ALLOWED)
    fuzz.call(LIST_MODELS, request, md, expect, serialize)


# Dead letter ids: well-formed ones (mostly of no record) and anything else.
letter_ids = st.one_of(
    st.builds(lambda p, o: f"{p}:{o}", st.integers(0, 5), st.integers(0, 10**12)), ids
)


@st.composite
def dead_letter_filters(draw: st.DrawFn) -> tuple[deadletters_pb2.DeadLetterFilter, bool]:
    """A filter, and whether the gateway must accept it."""
    message = deadletters_pb2.DeadLetterFilter(
        stage=draw(st.sampled_from(["", "intake", "worker", "Intake", "gateway"])),
        reason=draw(st.one_of(st.just(""), ids)),
    )
    message.kind = draw(st.one_of(st.integers(0, 5), ints(32)))  # type: ignore[assignment]
    if draw(st.booleans()):
        message.since.seconds = draw(ints(64, (0, 2_000_000_000)))
        message.since.nanos = draw(ints(32, (0, 999_999_999)))
    since = message.since
    valid = (
        (message.kind == 0 or message.kind in KIND_NAMES)
        and message.stage in ("", "intake", "worker")
        and since.seconds >= 0
        and 0 <= since.nanos < 1_000_000_000
    )
    return message, valid


@fuzzed(60)
@given(data=st.data(), md=metadata)
def test_dead_letters(fuzz: Fuzzer, data: st.DataObject, md: Metadata) -> None:
    """List, Get and Replay: every answer OK, INVALID_ARGUMENT or NOT_FOUND. Replays are
    dry runs only: the session's real dead letters stay where they are."""
    draw = data.draw
    filter_, valid = draw(dead_letter_filters())
    rpc = draw(st.sampled_from([LIST_DEAD_LETTERS, GET_DEAD_LETTER, REPLAY_DEAD_LETTERS]))
    rejected = Expect(frozenset({Code.INVALID_ARGUMENT}))
    request: Message
    if rpc == LIST_DEAD_LETTERS:
        newest = draw(st.one_of(st.integers(0, 1000), ints(32)))
        request = deadletters_pb2.ListDeadLettersRequest(filter=filter_, newest=newest)
        expect = Expect(frozenset({OK})) if valid and 0 <= newest <= 1000 else rejected
    elif rpc == GET_DEAD_LETTER:
        letter_id = draw(letter_ids)
        request = deadletters_pb2.GetDeadLetterRequest(id=letter_id)
        well_formed = (
            letter_id.partition(":")[0].isdigit() and letter_id.partition(":")[2].isdigit()
        )
        expect = Expect(frozenset({OK, Code.NOT_FOUND})) if well_formed else rejected
    else:
        chosen = draw(st.lists(letter_ids, max_size=3))
        request = deadletters_pb2.ReplayDeadLettersRequest(ids=chosen, dry_run=True)
        if draw(st.booleans()):
            request.filter.CopyFrom(filter_)
        expect = Expect(frozenset({OK, Code.INVALID_ARGUMENT}))
    if md:
        expect = Expect(ALLOWED)
    fuzz.call(rpc, request, md, expect, serialize)


@fuzzed(100)
@given(service=st.one_of(st.sampled_from(["", "nlp.v1.Tasks"]), ids), md=metadata)
def test_health_check(fuzz: Fuzzer, service: str, md: Metadata) -> None:
    request = health_pb2.HealthCheckRequest(service=service)
    fuzz.call(
        HEALTH,
        request,
        md,
        Expect(frozenset({OK, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED})),
        serialize,
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
            CLASSIFY, request, md, fuzz.expect_capability("classification", request), serialize
        )

    raw()
    classify()
    known = tasks_pb2.GetTaskRequest(task_id=fuzz.known_tasks[0])
    fuzz.call(GET, known, (), Expect(frozenset({OK})), serialize)
    unknown = tasks_pb2.GetTaskRequest(task_id=f"no-such-task-{uuid.uuid4().hex}")
    fuzz.call(GET, unknown, (), Expect(frozenset({Code.NOT_FOUND})), serialize)
    empty = classification_pb2.ClassifyRequest(text="")
    fuzz.call(CLASSIFY, empty, (), Expect(frozenset({Code.INVALID_ARGUMENT})), serialize)
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
