"""The done-channel notice, as the finish script publishes it and both of its readers
(the gateway's waiter, the worker's cancel watch) parse it."""

from __future__ import annotations

from nlp.v1 import common_pb2, tasks_pb2
from shared.transport.results import NOTIFY_INLINE_MAX, DoneNotice, parse_done_notice


def test_a_notice_with_its_result() -> None:
    result = tasks_pb2.TaskResult(task_id="a" * 32, status=common_pb2.TASK_STATUS_SUCCEEDED)
    notice = parse_done_notice(b"a" * 32 + b"\0" + result.SerializeToString())
    assert notice.task_id == "a" * 32
    assert notice.result() == result


def test_a_notice_of_the_id_alone() -> None:
    for data in (b"b" * 32, "b" * 32):  # bytes from Redis; str from a decoding client
        assert parse_done_notice(data) == DoneNotice("b" * 32)
        assert parse_done_notice(data).result() is None


def test_an_unreadable_result_reads_as_none() -> None:
    notice = parse_done_notice(b"c" * 32 + b"\0" + b"\xff\xff not a result")
    assert notice.task_id == "c" * 32
    assert notice.result() is None


def test_an_empty_result_is_still_a_result() -> None:
    # The script sends "<id>\0" for a result that serializes to nothing (all defaults).
    notice = parse_done_notice(b"d" * 32 + b"\0")
    assert notice.result() == tasks_pb2.TaskResult()
    assert NOTIFY_INLINE_MAX > 0
