"""The gateway's wait for task results: one pub/sub subscription to the done channel
shared by every waiting request (the notices are written by the finish script of
:mod:`shared.transport.results` and read with :func:`parse_done_notice`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

import redis
import redis.asyncio as aioredis

from nlp.v1 import tasks_pb2
from shared.contracts.envelope import TERMINAL_STATUSES
from shared.observability.telemetry import housekeeping
from shared.transport.outages import REDIS, Outages
from shared.transport.results import AsyncResultStore, parse_done_notice

log = logging.getLogger(__name__)

# What a waiting request gets when woken: the result, when its notification carried it.
Waiting = asyncio.Future[tasks_pb2.TaskResult | None]


class ResultWaiter:
    """Waits for task results over one shared pub/sub subscription.

    The gateway subscribes once to the done channel; each waiting request
    registers a future for its task id, then reads the store. A notification
    (or a reconnect, which may have lost some) wakes waiters: with the result when
    it came along (small results do), else to read the store again, so no result
    can be missed between subscribe and read.
    """

    def __init__(
        self, client: aioredis.Redis, store: AsyncResultStore, outages: Outages | None = None
    ) -> None:
        self.client = client
        self.store = store
        self.outages = outages
        self._waiters: defaultdict[str, set[Waiting]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self, timeout: float = 5.0) -> None:
        """Start listening; waits up to ``timeout`` for the subscription. Without Redis it
        goes on trying: waiting requests are woken to re-read once it is subscribed."""
        self._task = asyncio.create_task(self._listen(), name="result-waiter")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._subscribed.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def register(self, task_id: str) -> Waiting:
        """A future set when ``task_id`` may have finished; pass it to :meth:`wait`.

        Registering before the task is published makes the first store read of
        :meth:`wait` unnecessary: no notification can be missed before then.
        """
        future: Waiting = asyncio.get_running_loop().create_future()
        self._waiters[task_id].add(future)
        return future

    def unregister(self, task_id: str, future: Waiting) -> None:
        futures = self._waiters.get(task_id)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del self._waiters[task_id]

    async def wait(
        self,
        task_id: str,
        timeout: float,
        registered: Waiting | None = None,
    ) -> tasks_pb2.TaskResult | None:
        """Terminal result of ``task_id`` within ``timeout`` seconds, else the latest state.

        ``registered``: from :meth:`register`, called before the task was published.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        future = registered
        try:
            while True:
                if future is None:
                    future = self.register(task_id)
                    current = await self.store.get(task_id)
                    if current is not None and current.status in TERMINAL_STATUSES:
                        return current
                    if loop.time() >= deadline:
                        return current
                # asyncio.timeout, not wait_for: no extra task per wait on this hot path.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await future
                woken = future.done() and not future.cancelled()
                carried = future.result() if woken else None
                self.unregister(task_id, future)
                future = None
                if carried is not None:
                    return carried
                if woken:
                    # A notification without the result (a large one): one GET reads it.
                    result = await self.store.result(task_id)
                    if result is not None:
                        return result
        finally:
            if future is not None:
                self.unregister(task_id, future)

    def _wake(self, task_id: str | None, result: tasks_pb2.TaskResult | None = None) -> None:
        targets = (
            list(self._waiters.get(task_id, ()))
            if task_id is not None
            else [f for futures in self._waiters.values() for f in futures]
        )
        for future in targets:
            if not future.done():
                future.set_result(result)

    def _notified(self, data: bytes | str) -> None:
        """A done-channel message (see :func:`parse_done_notice`)."""
        notice = parse_done_notice(data)
        # Every task's notice reaches every gateway: decode the result only for ours.
        if notice.task_id not in self._waiters:
            return
        # No result along (a large one), or an unreadable one: the waiter reads the store.
        self._wake(notice.task_id, notice.result())

    async def _listen(self) -> None:
        channel = self.store.names.done_channel
        # The subscription serves every request: its commands belong to no trace.
        with housekeeping():
            await self._listen_forever(channel)

    async def _listen_forever(self, channel: str) -> None:
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(channel)
                self._subscribed.set()
                if self.outages is not None:
                    self.outages.back(REDIS)
                # Anything published while we were not subscribed is found by re-reading.
                self._wake(None)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is not None and message.get("type") == "message":
                        self._notified(message["data"])
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:
                if self.outages is None or not self.outages.down(REDIS):
                    log.warning("result subscription lost, reconnecting: %s", exc)
                if self.outages is not None:
                    self.outages.failed(exc)
                # Every waiter reads the store again: with Redis gone, its request fails
                # now (UNAVAILABLE) rather than at its deadline; after a blip, it waits on.
                self._wake(None)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
