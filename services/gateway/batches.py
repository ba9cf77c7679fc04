"""The Tasks RPCs about batches: SubmitBatch, GetBatch and StreamBatchResults.

A batch is submitted over one client stream, each message's items acknowledged in order
while a :class:`_Window` holds a fast client back; its results are read back from a Redis
stream from a cursor. Mixed into :class:`services.gateway.tasks.TasksService`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

import grpc
import redis

from nlp.v1 import tasks_pb2
from services.gateway.auth import QuotaExceededError, Tenant, caller
from services.gateway.core import Gateway, _abort
from services.gateway.interceptors import Ctx
from services.gateway.settings import Settings
from shared.contracts.envelope import new_task_id, valid_batch_id
from shared.contracts.errors import InvalidRequestError
from shared.transport.outages import REDIS, UNAVAILABLE_DETAILS

_CURSOR_RE = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
_U64_MAX = 2**64 - 1


def valid_cursor(cursor: str) -> bool:
    """A Redis stream entry id (``ms-seq``, each part an unsigned 64-bit number)."""
    return bool(_CURSOR_RE.match(cursor)) and all(
        int(part) <= _U64_MAX for part in cursor.split("-")
    )


# How long one read of a batch's results stream waits for more before re-checking the batch.
_FOLLOW_BLOCK_MS = 1000


class _Window:
    """Counts items read from a batch stream but not yet acknowledged. Reading waits
    while the window is full, so gRPC flow control holds a fast client back."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._released = asyncio.Event()

    async def acquire(self, n: int) -> None:
        # A message larger than the whole window is let in alone.
        while self.used and self.used + n > self.size:
            self._released.clear()
            await self._released.wait()
        self.used += n

    def release(self, n: int) -> None:
        self.used -= n
        self._released.set()


class BatchRpcs:
    """The batch RPCs of the Tasks service, for a servicer that has ``gateway`` and
    ``settings`` (listed before the generated servicer base, whose methods it replaces)."""

    gateway: Gateway
    settings: Settings

    async def _batch_items(
        self,
        owner: Tenant,
        requests: AsyncIterator[tasks_pb2.SubmitBatchRequest],
        opened: asyncio.Future[str],
        chunks: asyncio.Queue[asyncio.Task[tasks_pb2.SubmitBatchResponse] | None],
        window: _Window,
    ) -> None:
        """Read the client's stream, start each message's submission in order."""
        batch_id = ""
        index = 0
        chosen = False  # the client named the batch: its item ids make re-runs idempotent
        async for request in requests:
            if not batch_id:
                chosen = bool(request.batch_id)
                batch_id = request.batch_id or new_task_id()
                if not valid_batch_id(batch_id):
                    raise InvalidRequestError(
                        ["batch_id must be 1-64 of [A-Za-z0-9._-], starting with a letter or digit"]
                    )
                await self.gateway.store.open_batch(batch_id, owner.name)
                opened.set_result(batch_id)
            elif request.batch_id and request.batch_id != batch_id:
                raise InvalidRequestError([f"one batch per stream: this stream is {batch_id}"])
            if index + len(request.items) > owner.limits.max_batch_items and owner.isolated:
                raise QuotaExceededError(
                    f"a batch stream takes at most {owner.limits.max_batch_items} items "
                    "(a new stream may continue with the same batch id)",
                    0,
                )
            await window.acquire(len(request.items))
            chunks.put_nowait(
                asyncio.create_task(
                    self.gateway.submit_batch_items(
                        owner, batch_id, request.items, index, request.publish_results, chosen
                    )
                )
            )
            index += len(request.items)
        if not opened.done():
            opened.set_result("")  # the stream ended without a message

    async def SubmitBatch(  # noqa: N802
        self, request_iterator: AsyncIterator[tasks_pb2.SubmitBatchRequest], context: Ctx
    ) -> AsyncIterator[tasks_pb2.SubmitBatchResponse]:
        """Submit a batch over the client's stream; one response (acks) per message."""
        owner = caller()
        window = _Window(self.settings.batch_window)
        chunks: asyncio.Queue[asyncio.Task[tasks_pb2.SubmitBatchResponse] | None] = asyncio.Queue()
        opened: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        reader = asyncio.create_task(
            self._batch_items(owner, request_iterator, opened, chunks, window)
        )
        reader.add_done_callback(lambda _: chunks.put_nowait(None))
        chunk: asyncio.Task[tasks_pb2.SubmitBatchResponse] | None = None
        try:
            try:
                while (chunk := await chunks.get()) is not None:
                    # Shielded: a client that goes away must not cut a submission short
                    # between its items' idempotency claims and Kafka (a re-run waits on
                    # those claims).
                    response = await asyncio.shield(chunk)
                    window.release(len(response.acks))
                    yield response
                await reader
                batch_id = await opened
                if batch_id:
                    await self.gateway.store.seal_batch(batch_id, owner.name)
                    if not await self.gateway.store.confirm():
                        # A seal a failover loses leaves the batch open for good.
                        await _abort(
                            context,
                            grpc.StatusCode.UNAVAILABLE,
                            "the batch could not be sealed durably; send its id again "
                            "(with no items) to seal it",
                        )
            except InvalidRequestError as exc:
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except QuotaExceededError as exc:
                await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            except (redis.RedisError, OSError) as exc:
                # Acks sent so far stand; the client resumes with the same batch id.
                self.gateway.deps.outages.failed(exc)
                await _abort(context, grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_DETAILS[REDIS])
        finally:
            reader.cancel()
            if chunk is not None and not chunk.done():
                with contextlib.suppress(Exception):
                    await chunk
            while not chunks.empty():
                pending = chunks.get_nowait()
                if pending is not None:
                    # Let started submissions finish: their tasks may already be in Kafka.
                    with contextlib.suppress(Exception):
                        await pending

    async def _existing_batch(
        self, owner: Tenant, batch_id: str, context: Ctx
    ) -> tasks_pb2.BatchStatus:
        if not valid_batch_id(batch_id):
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "batch_id is missing or malformed"
            )
        # Batch ids live in their tenant's space: another tenant's is simply not there.
        status = await self.gateway.store.batch_status(batch_id, owner.name)
        if status is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no batch {batch_id}")
        return status

    async def GetBatch(  # noqa: N802
        self, request: tasks_pb2.GetBatchRequest, context: Ctx
    ) -> tasks_pb2.BatchStatus:
        """The batch's counts (another tenant's batch is NOT_FOUND)."""
        return await self._existing_batch(caller(), request.batch_id, context)

    async def StreamBatchResults(  # noqa: N802
        self, request: tasks_pb2.StreamBatchResultsRequest, context: Ctx
    ) -> AsyncIterator[tasks_pb2.BatchResult]:
        """The batch's results from ``cursor``, following it until complete unless
        ``no_follow``."""
        owner = caller()
        await self._existing_batch(owner, request.batch_id, context)
        cursor = request.cursor or "0-0"
        if not valid_cursor(cursor):
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed cursor {cursor[:64]!r}"
            )
        store = self.gateway.store
        tenant = owner.name
        block_ms = None if request.no_follow else _FOLLOW_BLOCK_MS
        ending = False
        while True:
            try:
                results = await store.batch_results(
                    request.batch_id, cursor, self.settings.batch_read_count, block_ms, tenant
                )
            except (redis.RedisError, OSError) as exc:
                # The client resumes from the last cursor it received.
                self.gateway.deps.outages.failed(exc)
                await _abort(context, grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_DETAILS[REDIS])
            for cursor, result in results:
                yield tasks_pb2.BatchResult(cursor=cursor, result=result)
            if results:
                continue
            if ending or request.no_follow:
                return
            status = await store.batch_status(request.batch_id, tenant)
            # Complete (or expired): one more read picks up what finished since the last.
            ending = status is None or status.complete
            block_ms = None if ending else block_ms
