"""How the gateway's waiter reads done-channel notifications (no Redis needed for this)."""

from __future__ import annotations

import asyncio
from typing import Any

from nlp.v1 import common_pb2, tasks_pb2
from shared.transport.waiter import ResultWaiter


def test_a_notification_may_carry_the_result_or_only_the_id() -> None:
    async def scenario() -> None:
        none: Any = None
        waiter = ResultWaiter(none, none)
        carried, bare, other = (waiter.register(t) for t in ("a" * 32, "b" * 32, "c" * 32))
        result = tasks_pb2.TaskResult(task_id="a" * 32, status=common_pb2.TASK_STATUS_SUCCEEDED)
        waiter._notified(b"a" * 32 + b"\0" + result.SerializeToString())
        waiter._notified(("b" * 32).encode())
        assert carried.result() == result  # no store read needed
        assert bare.done() and bare.result() is None  # woken to read the store
        assert not other.done()
        waiter._notified(b"c" * 32 + b"\0" + b"\xff\xff not a result")
        assert other.done() and other.result() is None  # unreadable: read the store

    asyncio.run(scenario())
