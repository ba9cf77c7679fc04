from __future__ import annotations

import time

import pytest
from google.protobuf.message import DecodeError

from nlp.v1 import common_pb2, generation_pb2, ner_pb2, summarization_pb2
from shared.contracts.envelope import (
    decode_b64,
    decode_envelope,
    encode_b64,
    envelope_lane,
    expired,
    make_envelope,
    validate_envelope,
    validate_request,
)
from shared.contracts.errors import InvalidRequestError
from shared.contracts.settings import Limits
from tests.factories import classify_request

LIMITS = Limits()
# A valid classification: text and labels, unless a test replaces one.
TEXT, LABELS = "hello", ("a", "b")


def problems(kind: str, request: object) -> str:
    with pytest.raises(InvalidRequestError) as info:
        validate_request(kind, request, LIMITS)  # type: ignore[arg-type]
    return str(info.value)


def test_valid_requests_pass() -> None:
    validate_request("classification", classify_request(TEXT, LABELS), LIMITS)
    validate_request("ner", ner_pb2.NerRequest(text="Paris", labels=["GPE"]), LIMITS)
    validate_request(
        "summarization", summarization_pb2.SummarizeRequest(text="A. B.", ratio=0.5), LIMITS
    )
    validate_request("generation", generation_pb2.GenerateRequest(prompt="Hi"), LIMITS)


def test_every_problem_is_reported_at_once() -> None:
    message = problems("classification", classify_request("", ("a", "a", "")))
    assert "text must not be empty" in message
    assert "duplicated" in message
    assert "labels[2].name must not be empty" in message


@pytest.mark.parametrize(
    ("kind", "request_", "expected"),
    [
        ("classification", classify_request(TEXT, tuple(f"l{i}" for i in range(65))), "65 labels"),
        ("classification", classify_request("x" * (LIMITS.max_text_bytes + 1), LABELS), "bytes"),
        (
            "classification",
            classify_request("é" * (LIMITS.max_text_bytes // 2 + 1), LABELS),
            "bytes",
        ),
        ("ner", ner_pb2.NerRequest(text=" \n"), "empty"),
        ("ner", ner_pb2.NerRequest(text="x", labels=[""]), "entity labels"),
        ("summarization", summarization_pb2.SummarizeRequest(text="x", ratio=1.5), "ratio"),
        (
            "summarization",
            summarization_pb2.SummarizeRequest(text="x", max_sentences=0),
            "max_sentences",
        ),
        ("generation", generation_pb2.GenerateRequest(), "prompt or messages"),
        (
            "generation",
            generation_pb2.GenerateRequest(
                prompt="x", sampling=generation_pb2.SamplingParams(max_tokens=10**6)
            ),
            "max_tokens",
        ),
        (
            "generation",
            generation_pb2.GenerateRequest(
                messages=generation_pb2.ChatMessages(
                    messages=[generation_pb2.ChatMessage(role="robot", content="x")]
                )
            ),
            "role",
        ),
        ("ner", classify_request(TEXT, LABELS), "does not match"),
    ],
)
def test_invalid_requests(kind: str, request_: object, expected: str) -> None:
    assert expected in problems(kind, request_)


def test_envelope_round_trip_and_validation() -> None:
    envelope = make_envelope(
        "classification",
        classify_request(TEXT, LABELS),
        deadline_s=30,
        lane=common_pb2.LANE_BATCH,
        tenant="acme",
    )
    assert envelope.kind == common_pb2.KIND_CLASSIFICATION
    assert decode_b64(encode_b64(envelope)) == envelope
    assert decode_envelope(envelope.SerializeToString()) == envelope
    validate_envelope(envelope, "classification", LIMITS)
    with pytest.raises(InvalidRequestError, match="on the 'ner' topic"):
        validate_envelope(envelope, "ner", LIMITS)
    validate_envelope(envelope, "classification", LIMITS, expected_lane="batch")


def test_an_envelope_is_of_its_topics_lane_or_of_none() -> None:
    """A producer cannot jump the queue by labelling bulk tasks interactive."""
    envelope = make_envelope(
        "classification",
        classify_request(TEXT, LABELS),
        deadline_s=30,
        lane=common_pb2.LANE_INTERACTIVE,
    )
    with pytest.raises(InvalidRequestError, match="lane 'interactive' on the 'batch' topic"):
        validate_envelope(envelope, "classification", LIMITS, expected_lane="batch")
    envelope.lane = common_pb2.LANE_UNSPECIFIED
    validate_envelope(envelope, "classification", LIMITS, expected_lane="batch")
    assert envelope_lane(envelope) == "standard"  # stored before lanes existed
    envelope.lane = 9  # type: ignore[assignment]
    with pytest.raises(InvalidRequestError, match="lane 9 is not a known lane"):
        validate_envelope(envelope, "classification", LIMITS)


def test_malformed_envelopes() -> None:
    with pytest.raises(DecodeError):
        decode_envelope(b"")
    with pytest.raises(DecodeError):
        decode_envelope(b"\xff\xff\xff\xff")
    blank = decode_envelope(b"\x08\x02")  # only kind=2: parses, but is not a task
    with pytest.raises(InvalidRequestError) as info:
        validate_envelope(blank, "classification", LIMITS)
    assert "task_id" in str(info.value)
    assert "no request" in str(info.value)
    assert "deadline" in str(info.value)


def test_expiry() -> None:
    now = time.time()
    envelope = make_envelope(
        "classification", classify_request(TEXT, LABELS), deadline_s=10, now=now
    )
    assert not expired(envelope, now + 9.9)
    assert expired(envelope, now + 10.1)


def _formed(**form: object) -> generation_pb2.GenerateRequest:
    request = generation_pb2.GenerateRequest(prompt="A person as JSON:")
    request.structured_output.CopyFrom(generation_pb2.StructuredOutput(**form))  # type: ignore[arg-type]
    return request


def test_structured_outputs_are_checked_before_they_are_queued() -> None:
    limits = Limits(max_choices=3)
    for ok in (
        _formed(json_schema='{"type": "object", "properties": {"age": {"type": "integer"}}}'),
        _formed(json_object=True),
        _formed(regex=r"[0-9]{3}-[0-9]{4}"),
        _formed(choice=generation_pb2.Choices(choices=["yes", "no"])),
    ):
        validate_request("generation", ok, limits)
    bad = {
        "is not JSON": _formed(json_schema="{type: object}"),
        "must be a JSON object": _formed(json_schema="[1, 2]"),
        "is not a valid JSON Schema": _formed(json_schema='{"type": "nonsense"}'),
        "json_object must be true": _formed(json_object=False),
        "does not compile": _formed(regex="([0-9]"),
        "needs 1 to 3 choices": _formed(choice=generation_pb2.Choices(choices=list("abcd"))),
        "distinct, non-empty": _formed(choice=generation_pb2.Choices(choices=["a", "a"])),
        "names no form": _formed(),
    }
    for expected, request in bad.items():
        with pytest.raises(InvalidRequestError, match=expected):
            validate_request("generation", request, limits)
    with pytest.raises(InvalidRequestError, match="bytes; the limit is 64"):
        validate_request("generation", _formed(regex="a" * 65), Limits(max_text_bytes=64))
