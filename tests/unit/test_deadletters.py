"""Dead letters: the header codec, how records are described and grouped, and the CLI's
parsing and tables (pure logic; the real topic is in tests/integration)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from redis import asyncio as aioredis

from nlp.v1 import common_pb2, deadletters_pb2
from services.gateway.deadletters import DeadLettersService
from services.gateway.settings import Settings
from shared.client.commands import UsageError
from shared.client.deadletters import list_text, parse_since, replay_text, show_text
from shared.contracts import names
from shared.contracts.names import Names
from shared.transport.deadletters import (
    VALUE_SHOWN,
    DeadLetterRecord,
    Filter,
    dead_letter_headers,
    describe,
    matches,
    parse_record_id,
    reason_pattern,
)
from tests.factories import classification_envelope


def _record(value: bytes, headers: list[tuple[str, bytes]], at: float = 1000.0) -> DeadLetterRecord:
    return DeadLetterRecord(2, 17, at, None, value, tuple(headers))


def test_headers_say_why_and_where_from_and_keep_the_replay_count() -> None:
    original = [(names.HEADER_TASK_ID, b"t1"), ("nlp-dlq-reason", b"an older reason")]
    headers = dict(
        dead_letter_headers("invalid: x", "intake", "nlp.tasks.ner.batch", 3, 9, original)
    )
    assert headers[names.HEADER_DLQ_REASON] == b"invalid: x"  # the older reason is gone
    assert headers[names.HEADER_DLQ_SOURCE_PARTITION] == b"3"
    assert names.HEADER_REPLAY_COUNT not in headers
    replayed = dead_letter_headers("boom", "worker", "ner.batch", -1, -1, replays=2)
    assert dict(replayed)[names.HEADER_REPLAY_COUNT] == b"2"
    # A replayed record's own count header is kept, not doubled.
    again = dead_letter_headers("boom", "intake", "t", 0, 1, [(names.HEADER_REPLAY_COUNT, b"2")], 2)
    assert [k for k, _ in again].count(names.HEADER_REPLAY_COUNT) == 1


def test_a_record_is_described_from_its_headers_and_envelope() -> None:
    envelope = classification_envelope("The striker scored.")
    envelope.tenant = "team-a"
    headers = dead_letter_headers("model not served: x", "worker", "classification.batch", -1, -1)
    letter = describe(_record(envelope.SerializeToString(), headers), Names(), full=True)
    assert letter.id == "2:17"
    assert (letter.kind, letter.stage, letter.task_id, letter.tenant) == (
        common_pb2.KIND_CLASSIFICATION,
        "worker",
        envelope.task_id,
        "team-a",
    )
    assert letter.envelope == envelope and not letter.undecodable and not letter.value
    # Garbage: the kind from its source topic, why it does not decode, the bytes.
    garbage = _record(
        b"\x00\xff" * VALUE_SHOWN,
        dead_letter_headers("undecodable", "intake", "nlp.tasks.ner.standard", 0, 5),
    )
    letter = describe(garbage, Names(), full=True)
    assert letter.kind == common_pb2.KIND_NER and letter.source_offset == 5
    assert letter.undecodable.startswith("DecodeError") and len(letter.value) == VALUE_SHOWN
    assert letter.value_bytes == 2 * VALUE_SHOWN
    # A listing leaves the heavy parts out.
    assert not describe(garbage, Names()).value


def test_reasons_group_without_their_particulars() -> None:
    a = "invalid: unknown classification model 'x1'; available: minilm-l6-v2"
    b = "invalid: unknown classification model 'other'; available: minilm-l6-v2"
    assert (
        reason_pattern(a)
        == reason_pattern(b)
        == ("invalid: unknown classification model …; available: minilm-l6-v2")
    )
    assert reason_pattern("failed after 3 attempts: RuntimeError: boom") == (
        "failed after … attempts: RuntimeError: boom"
    )
    assert reason_pattern("a duplicate of task 0123456789abcdef0123456789abcdef") == (
        "a duplicate of task …"
    )


def test_filters_match_time_kind_stage_and_reason_text() -> None:
    record = _record(
        b"", dead_letter_headers("Invalid: lane", "intake", "nlp.tasks.ner.batch", 0, 1)
    )
    letter = describe(record, Names())
    assert matches(letter, record, Filter())
    assert matches(letter, record, Filter(since_s=1000.0, kind=common_pb2.KIND_NER, reason="LANE"))
    assert not matches(letter, record, Filter(since_s=1000.5))
    assert not matches(letter, record, Filter(stage="worker"))
    assert not matches(letter, record, Filter(kind=common_pb2.KIND_GENERATION))
    assert Filter().empty and not Filter(reason="x").empty


def test_record_ids_and_since() -> None:
    assert parse_record_id("3:1200") == (3, 1200)
    for bad in ("3", "a:1", "3:-1", ":", "3:1:2"):
        with pytest.raises(ValueError):
            parse_record_id(bad)
    now = 1_000_000.0
    assert parse_since("90s", now) == now - 90
    assert parse_since("2h", now) == now - 7200
    assert parse_since("1.5d", now) == now - 1.5 * 86400
    assert parse_since("2026-12-03T10:00:00") == parse_since("2026-12-03T10:00:00+00:00")
    with pytest.raises(UsageError):
        parse_since("yesterday")


def test_the_tables_show_counts_records_and_outcomes() -> None:
    listing = deadletters_pb2.ListDeadLettersResponse(matched=3, truncated=True)
    listing.counts.add(
        kind=common_pb2.KIND_NER, stage="intake", reason="undecodable: …", count=3, last_id="0:9"
    )
    listing.newest.add(id="0:9", kind=common_pb2.KIND_NER, stage="intake", reason="undecodable: x")
    text = list_text(listing)
    assert "3 dead letters (scan truncated)" in text and "undecodable: …" in text and "0:9" in text
    letter = deadletters_pb2.DeadLetter(
        id="0:9", reason="undecodable: x", undecodable="DecodeError", value=b"\x00ab", value_bytes=3
    )
    assert "does not decode: DecodeError" in show_text(letter) and "b'\\x00ab'" in show_text(letter)
    response = deadletters_pb2.ReplayDeadLettersResponse(replayed=1, refused=1)
    response.outcomes.add(id="0:1", task_id="t", replayed=True, topic="nlp.tasks.ner.batch")
    response.outcomes.add(id="0:2", refused="still invalid: it does not decode (DecodeError)")
    assert "would replay 1, refused 1" in replay_text(response, dry_run=True)
    assert "refused: still invalid" in replay_text(response, dry_run=False)


def test_the_service_reads_and_bounds_as_its_settings_say() -> None:
    settings = Settings(dlq_max_scan=7, dlq_max_replays=5, auth_mode="dev")
    gateway = SimpleNamespace(settings=settings, client=aioredis.Redis())
    service = DeadLettersService(gateway)  # type: ignore[arg-type]
    assert service.reader.max_scan == 7
    assert service.ledger.bound == 5
