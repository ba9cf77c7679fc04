"""Token stream entries and the gateway's relay logic (a scripted stand-in for Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from nlp.v1 import common_pb2, generation_pb2, tasks_pb2
from services.gateway.relay import RelayEnded, relay_tokens
from shared.contracts.names import Names
from shared.transport.streams import Delta, End, Entry, TokenStreamWriter, decode, encode

TASK = "a" * 32
STOP = generation_pb2.FINISH_REASON_STOP


def test_entries_round_trip_through_their_fields() -> None:
    for entry in (
        Delta(1, 0, "Hello"),
        Delta(2, 7, " wörld ✓"),
        End(1, 3, generation_pb2.FINISH_REASON_LENGTH, 12, 64),
    ):
        fields = {k.encode(): str(v).encode() for k, v in encode(entry).items()}
        assert decode(fields) == entry


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {b"a": b"1"},
        {b"a": b"x", b"i": b"0", b"t": b""},
        {b"a": b"1", b"i": b"0", b"f": b"NOPE"},
    ],
)
def test_malformed_entries_are_refused(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(ValueError):
        decode(fields)


class ScriptedReader:
    """Reads the scripted batches of entries, then nothing."""

    def __init__(self, batches: Sequence[Sequence[Entry]]) -> None:
        self.batches = list(batches)

    async def read(self, block_ms: int | None) -> list[Entry]:
        if not self.batches:
            if block_ms:
                await asyncio.sleep(block_ms / 1000)
            return []
        return list(self.batches.pop(0))


def _result(status: int, text: str = "", reason: int = STOP) -> tasks_pb2.TaskResult:
    result = tasks_pb2.TaskResult(task_id=TASK, status=status)  # type: ignore[arg-type]
    if text:
        result.generation.text = text
        result.generation.finish_reason = reason  # type: ignore[assignment]
        result.generation.completion_tokens = len(text.split())
    return result


def _relay(
    batches: Sequence[Sequence[Entry]], result: tasks_pb2.TaskResult | None, result_after: float = 0
) -> tuple[list[generation_pb2.GenerateChunk], RelayEnded | None]:
    async def outcome() -> tasks_pb2.TaskResult | None:
        await asyncio.sleep(result_after)
        return result

    async def run() -> tuple[list[generation_pb2.GenerateChunk], RelayEnded | None]:
        chunks = []
        try:
            async for chunk in relay_tokens(ScriptedReader(batches), TASK, outcome(), poll_ms=20):
                chunks.append(chunk)
        except RelayEnded as ended:
            return chunks, ended
        return chunks, None

    return asyncio.run(run())


def test_deltas_then_the_end_entry() -> None:
    chunks, ended = _relay(
        [[Delta(1, 0, "Hel"), Delta(1, 1, "lo")], [End(1, 2, STOP, 4, 2)]],
        _result(common_pb2.TASK_STATUS_SUCCEEDED, "Hello"),
    )
    assert ended is None
    assert [(c.index, c.delta) for c in chunks] == [(0, "Hel"), (1, "lo"), (2, "")]
    assert (chunks[-1].finish_reason, chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (
        STOP,
        4,
        2,
    )
    assert {c.task_id for c in chunks} == {TASK}


def test_a_task_that_ends_otherwise_ends_the_relay_with_its_result() -> None:
    cancelled = _result(common_pb2.TASK_STATUS_CANCELLED)
    chunks, ended = _relay([[Delta(1, 0, "Once")]], cancelled, result_after=0.05)
    assert [c.delta for c in chunks] == ["Once"]
    assert ended is not None and ended.result == cancelled


def test_no_result_within_the_deadline() -> None:
    chunks, ended = _relay([], None, result_after=0.05)
    assert chunks == []
    assert ended is not None and ended.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_retry_after_text_went_out_is_not_mixed_in() -> None:
    # Attempt 1 died after "The cat"; attempt 2 wrote the whole text again. The relay
    # keeps to attempt 1 and completes from the stored result, which continues it.
    chunks, ended = _relay(
        [
            [Delta(1, 0, "The"), Delta(1, 1, " cat")],
            [Delta(2, 0, "The"), Delta(2, 1, " cat"), Delta(2, 2, " sat"), End(2, 3, STOP, 3, 3)],
        ],
        _result(common_pb2.TASK_STATUS_SUCCEEDED, "The cat sat"),
        result_after=0.05,
    )
    assert ended is None
    assert "".join(c.delta for c in chunks) == "The cat sat"
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].finish_reason == STOP


def test_a_retry_that_changed_the_text_aborts() -> None:
    chunks, ended = _relay(
        [[Delta(1, 0, "The dog")], [Delta(2, 0, "A bird"), End(2, 1, STOP, 3, 2)]],
        _result(common_pb2.TASK_STATUS_SUCCEEDED, "A bird"),
        result_after=0.05,
    )
    assert [c.delta for c in chunks] == ["The dog"]
    assert ended is not None and ended.code == grpc.StatusCode.ABORTED


def test_a_later_attempt_is_followed_when_no_text_went_out_yet() -> None:
    chunks, ended = _relay(
        [[], [Delta(2, 0, "Hi"), End(2, 1, STOP, 3, 1)]],
        _result(common_pb2.TASK_STATUS_SUCCEEDED, "Hi"),
    )
    assert ended is None
    assert [c.delta for c in chunks] == ["Hi", ""]


def test_a_gap_in_the_stream_is_filled_from_the_result() -> None:
    # A Redis failover lost entry 1 (" cat"): what follows it is not relayed, the
    # stored result completes the text after "The".
    chunks, ended = _relay(
        [[Delta(1, 0, "The"), Delta(1, 2, " sat")], [End(1, 3, STOP, 3, 3)]],
        _result(common_pb2.TASK_STATUS_SUCCEEDED, "The cat sat"),
        result_after=0.05,
    )
    assert ended is None
    assert [c.delta for c in chunks] == ["The", " cat sat", ""]
    assert [c.index for c in chunks] == [0, 1, 2]
    assert chunks[-1].finish_reason == STOP


def test_a_stream_that_lost_its_first_entries_comes_from_the_result() -> None:
    chunks, ended = _relay(
        [[Delta(1, 2, " sat"), End(1, 3, STOP, 3, 3)]],
        _result(common_pb2.TASK_STATUS_SUCCEEDED, "The cat sat"),
        result_after=0.05,
    )
    assert ended is None
    assert [c.delta for c in chunks] == ["The cat sat", ""]


def test_a_stream_that_lost_its_end_is_finished_from_the_result() -> None:
    chunks, ended = _relay(
        [[Delta(1, 0, "The"), Delta(1, 1, " cat")]],
        _result(common_pb2.TASK_STATUS_SUCCEEDED, "The cat sat"),
        result_after=0.05,
    )
    assert ended is None
    assert "".join(c.delta for c in chunks) == "The cat sat"


class RecordingPipeline:
    def __init__(self, log: list[list[tuple[str, str, Any]]]) -> None:
        self.log = log
        self.commands: list[tuple[str, str, Any]] = []

    def xadd(self, key: str, fields: Any, **_: Any) -> None:
        self.commands.append(("xadd", key, fields))

    def expire(self, key: str, ttl: int) -> None:
        self.commands.append(("expire", key, ttl))

    async def execute(self) -> None:
        await asyncio.sleep(0.01)  # a round trip, during which more appends arrive
        self.log.append(self.commands)


class RecordingRedis:
    def __init__(self) -> None:
        self.round_trips: list[list[tuple[str, str, Any]]] = []

    def pipeline(self, transaction: bool) -> RecordingPipeline:
        return RecordingPipeline(self.round_trips)


def test_appends_of_one_step_share_a_round_trip_and_keep_their_order() -> None:
    client = RecordingRedis()
    writer = TokenStreamWriter(client, Names(), max_entries=100, ttl_s=60)  # type: ignore[arg-type]

    async def request(task: str, steps: int) -> None:
        for i in range(steps):
            await writer.append(task, [Delta(1, i, f"{task}{i}")])

    async def run() -> None:
        await asyncio.gather(*(request(t, 3) for t in ("a", "b", "c", "d")))

    asyncio.run(run())
    # 12 entries, one write per step of the four requests (not one per entry).
    assert len(client.round_trips) <= 4
    xadds = [
        (key, fields["t"])
        for trip in client.round_trips
        for cmd, key, fields in trip
        if cmd == "xadd"
    ]
    assert len(xadds) == 12
    for task in "abcd":
        key = Names().token_stream_key(task)
        assert [t for k, t in xadds if k == key] == [f"{task}0", f"{task}1", f"{task}2"]
    expires = [key for trip in client.round_trips for cmd, key, _ in trip if cmd == "expire"]
    assert len(expires) == len(
        {(i, k) for i, trip in enumerate(client.round_trips) for c, k, _ in trip if c == "expire"}
    )
