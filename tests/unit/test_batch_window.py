"""The gateway's batch flow-control window and the results-topic record (pure logic)."""

from __future__ import annotations

import asyncio

from nlp.v1 import common_pb2, tasks_pb2
from services.gateway.batches import _Window
from shared.contracts import names
from shared.contracts.envelope import valid_batch_id
from shared.transport.kafka import header, result_record


def test_window_holds_the_reader_until_acks_free_room() -> None:
    async def scenario() -> list[str]:
        window = _Window(10)
        events: list[str] = []
        await window.acquire(6)
        await window.acquire(4)  # exactly full

        async def reader() -> None:
            await window.acquire(3)
            events.append("read")

        task = asyncio.create_task(reader())
        await asyncio.sleep(0.01)
        events.append("still waiting" if not task.done() else "read too early")
        window.release(2)  # 8 used: 3 more would be 11
        await asyncio.sleep(0.01)
        events.append("still waiting" if not task.done() else "read too early")
        window.release(6)
        await asyncio.wait_for(task, 1)
        events.append(f"used {window.used}")
        return events

    assert asyncio.run(scenario()) == ["still waiting", "still waiting", "read", "used 5"]


def test_a_message_larger_than_the_window_is_let_in_alone() -> None:
    async def scenario() -> int:
        window = _Window(10)
        await window.acquire(25)
        return window.used

    assert asyncio.run(scenario()) == 25


def test_results_are_keyed_by_batch_then_task() -> None:
    result = tasks_pb2.TaskResult(
        task_id="t1", kind=common_pb2.KIND_NER, status=common_pb2.TASK_STATUS_SUCCEEDED
    )
    key, value, headers = result_record(result)
    assert key == b"t1"
    assert tasks_pb2.TaskResult.FromString(value) == result
    assert header(headers, names.HEADER_KIND) == "ner"
    assert header(headers, names.HEADER_BATCH_ID) is None
    result.batch_id = "b-7"
    key, _, headers = result_record(result)
    assert key == b"b-7"
    assert header(headers, names.HEADER_BATCH_ID) == "b-7"
    assert header(headers, names.HEADER_TASK_ID) == "t1"


def test_batch_ids() -> None:
    assert valid_batch_id("nightly-2026.11.23_a")
    assert valid_batch_id("a" * 64)
    for bad in ("", "a" * 65, "-leading", "has space", "colon:no", "ü"):
        assert not valid_batch_id(bad), bad


def test_cursors_are_redis_stream_ids() -> None:
    from services.gateway.batches import valid_cursor

    assert valid_cursor("0-0") and valid_cursor("1732890000000-3")
    assert valid_cursor("18446744073709551615-18446744073709551615")
    # Redis refuses ids past 64 bits: that is bad input, not an unavailable store.
    assert not valid_cursor("18446744073709551616-0")
    assert not valid_cursor("99999999999999999999-0")
    assert not valid_cursor("1-") and not valid_cursor("-1") and not valid_cursor("a-1")


def test_long_error_messages_are_cut_to_fit_the_status_header() -> None:
    from services.gateway.core import _fit

    assert _fit("short") == "short"
    cut = _fit("x" * 5000)
    assert cut.endswith("(message truncated)") and len(cut) < 1900
    # Non-ASCII text is percent-encoded (3 bytes per byte): it is cut sooner.
    cut = _fit("é" * 2000)
    assert cut.endswith("(message truncated)") and len(cut.split(" ...")[0]) * 6 <= 1800
