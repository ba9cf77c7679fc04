"""The Celery bundle codec: what the intake and a worker's retry write is what the worker
reads, and a message that is not a bundle is refused."""

from __future__ import annotations

from typing import Any

import pytest

from nlp.v1 import tasks_pb2
from shared.contracts.names import (
    CELERY_HEADER_TRACE,
    CELERY_KWARG_ENVELOPES,
    CELERY_KWARG_HANDED_AT,
)
from shared.transport.bundle import (
    Bundle,
    MalformedBundleError,
    decode_bundle,
    decode_delivered,
    encode_bundle,
)
from tests.factories import classification_envelope


def _envelopes(count: int) -> list[tasks_pb2.TaskEnvelope]:
    return [classification_envelope(f"text {i}", ("a",)) for i in range(count)]


def test_a_bundle_round_trips_through_the_celery_message() -> None:
    envelopes = _envelopes(3)
    traces = [{"traceparent": f"00-{i + 1:032x}-{i + 2:016x}-01"} for i in range(3)]
    kwargs, headers = encode_bundle(Bundle.of(envelopes, 1234.5, traces))
    assert set(kwargs) == {CELERY_KWARG_ENVELOPES, CELERY_KWARG_HANDED_AT}
    assert set(headers) == {CELERY_HEADER_TRACE}
    decoded = decode_bundle(kwargs, headers[CELERY_HEADER_TRACE])
    assert [Bundle.envelope(e) for e in decoded.envelopes] == envelopes
    assert decoded.handed_at == 1234.5
    assert [decoded.trace(i) for i in range(3)] == traces


def test_a_message_without_trace_contexts_gives_empty_ones() -> None:
    kwargs, _ = encode_bundle(Bundle.of(_envelopes(2), 1.0))
    decoded = decode_bundle(kwargs, None)
    assert decoded.traces == () and decoded.trace(1) == {}


def test_a_corrupted_envelope_is_kept_for_its_dead_letter() -> None:
    (good,) = _envelopes(1)
    kwargs, _ = encode_bundle(Bundle.of([good], 1.0))
    kwargs[CELERY_KWARG_ENVELOPES].append("not base64!")
    decoded = decode_bundle(kwargs)
    assert Bundle.envelope(decoded.envelopes[0]) == good
    with pytest.raises(ValueError):  # binascii.Error
        Bundle.envelope(decoded.envelopes[1])
    assert Bundle.raw(decoded.envelopes[1]) == b"not base64!"


@pytest.mark.parametrize(
    ("kwargs", "traces"),
    [
        ({CELERY_KWARG_HANDED_AT: 1.0}, None),
        ({CELERY_KWARG_ENVELOPES: "abc", CELERY_KWARG_HANDED_AT: 1.0}, None),
        ({CELERY_KWARG_ENVELOPES: [b"abc"], CELERY_KWARG_HANDED_AT: 1.0}, None),
        ({CELERY_KWARG_ENVELOPES: []}, None),
        ({CELERY_KWARG_ENVELOPES: [], CELERY_KWARG_HANDED_AT: "soon"}, None),
        ({CELERY_KWARG_ENVELOPES: [], CELERY_KWARG_HANDED_AT: 1.0}, "traceparent"),
        ({CELERY_KWARG_ENVELOPES: [], CELERY_KWARG_HANDED_AT: 1.0}, [["traceparent"]]),
    ],
)
def test_a_malformed_bundle_is_refused(kwargs: dict[str, Any], traces: Any) -> None:
    with pytest.raises(MalformedBundleError):
        decode_bundle(kwargs, traces)


def test_the_trace_contexts_of_a_delivered_message_come_from_its_request() -> None:
    class Request:  # Celery sets a message's own headers as attributes of its request
        nlp_trace = [{"traceparent": "t0"}]

    assert CELERY_HEADER_TRACE == "nlp_trace"  # the attribute the stand-in has
    kwargs, _ = encode_bundle(Bundle.of(_envelopes(1), 2.0))
    assert decode_delivered(kwargs, Request()).trace(0) == {"traceparent": "t0"}
    assert decode_delivered(kwargs, object()).traces == ()
