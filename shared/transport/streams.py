"""Token streams: a generation task's output as it is produced, in a Redis Stream.

The worker appends one entry per piece the engine streams (``a`` attempt, ``i`` index,
``t`` text delta) and, when the generation ends normally, one end entry (``f`` finish reason,
``p``/``c`` prompt and completion tokens). Readers start from the first entry, so a
late subscriber still gets the whole stream. The stream is bounded (a cap above the
longest allowed generation, so nothing is trimmed in practice) and expires with the
task's result.

A retried attempt (the first worker died) writes its own entries with the next attempt
number; readers that already relayed text of an earlier attempt must not mix them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis

from nlp.v1 import generation_pb2
from shared.contracts.names import Names
from shared.observability.telemetry import housekeeping

log = logging.getLogger(__name__)

# Finish reasons in end entries (the enum's names without the prefix).
_REASONS = {
    name.removeprefix("FINISH_REASON_"): value
    for name, value in generation_pb2.FinishReason.items()
    if value
}


@dataclass(frozen=True)
class Delta:
    """Text produced by one engine step."""

    attempt: int
    index: int
    text: str


@dataclass(frozen=True)
class End:
    """The generation ended normally: why, and its token counts."""

    attempt: int
    index: int
    finish_reason: int  # generation_pb2.FinishReason
    prompt_tokens: int
    completion_tokens: int


Entry = Delta | End


def encode(entry: Entry) -> dict[str, str | int]:
    """The fields of a stream entry."""
    if isinstance(entry, Delta):
        return {"a": entry.attempt, "i": entry.index, "t": entry.text}
    return {
        "a": entry.attempt,
        "i": entry.index,
        "f": generation_pb2.FinishReason.Name(entry.finish_reason).removeprefix("FINISH_REASON_"),
        "p": entry.prompt_tokens,
        "c": entry.completion_tokens,
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def decode(fields: Mapping[Any, Any]) -> Entry:
    """The entry of a stream entry's fields; ValueError when they are not one."""
    f = {_text(k): v for k, v in fields.items()}

    def text(key: str) -> str:
        return _text(f[key])

    try:
        attempt, index = int(text("a")), int(text("i"))
        if "f" in f:
            reason = text("f")
            if reason not in _REASONS:
                raise ValueError(f"unknown finish reason {reason!r}")
            return End(attempt, index, _REASONS[reason], int(text("p")), int(text("c")))
        return Delta(attempt, index, text("t"))
    except KeyError as exc:
        raise ValueError(f"token stream entry without {exc}") from None


class TokenStreamWriter:
    """Appends entries to task streams (asyncio; one writer per event loop).

    Appends made while a write is in flight go out together in the next one: the
    entries of every request in one engine step take one Redis round trip, not one each.
    A single write at a time keeps each stream's entries in order.
    """

    def __init__(self, client: aioredis.Redis, names: Names, max_entries: int, ttl_s: int) -> None:
        self.client = client
        self.names = names
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._pending: list[tuple[str, Entry]] = []
        self._written: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def append(self, task_id: str, entries: Sequence[Entry]) -> None:
        """Queue ``entries`` and return once they are in Redis."""
        if not entries:
            return
        loop = asyncio.get_running_loop()
        self._pending.extend((task_id, entry) for entry in entries)
        if self._written is None:
            self._written = loop.create_future()
        written = self._written
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_all())
        await asyncio.shield(written)

    async def _write_all(self) -> None:
        # Let the other requests of this engine step add theirs first.
        await asyncio.sleep(0)
        while self._pending:
            batch, self._pending = self._pending, []
            written, self._written = self._written, None
            assert written is not None
            try:
                await self._write(batch)
            except Exception as exc:
                written.set_exception(exc)
            else:
                written.set_result(None)

    async def _write(self, batch: Sequence[tuple[str, Entry]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        keys = []
        for task_id, entry in batch:
            key = self.names.token_stream_key(task_id)
            pipe.xadd(key, encode(entry), maxlen=self.max_entries, approximate=True)  # type: ignore[arg-type]
            keys.append(key)
        for key in dict.fromkeys(keys):
            pipe.expire(key, self.ttl_s)
        await pipe.execute()


class StreamReader(Protocol):
    async def read(self, block_ms: int | None) -> list[Entry]:
        """Entries after the last one read; waits up to ``block_ms`` for one (None: no wait)."""
        ...


class TokenStreamFollower:
    """One relay's view of a task's stream, from its first entry, fed by a
    :class:`TokenStreamHub` (a :class:`StreamReader`)."""

    def __init__(self, hub: TokenStreamHub, task_id: str) -> None:
        self.hub = hub
        self.key = hub.names.token_stream_key(task_id)
        self.last_id = "0-0"
        self.position = (0, 0)  # last_id parsed
        self._pending: list[Entry] = []
        self._error: ValueError | None = None
        self._arrived = asyncio.Event()

    def deliver(self, items: Sequence[tuple[Any, Mapping[Any, Any]]]) -> None:
        """Take the entries of ``items`` (id, fields) newer than the last one taken."""
        for raw_id, fields in items:
            entry_id = _text(raw_id)
            order = _stream_order(entry_id)
            if order <= self.position:
                continue
            self.last_id, self.position = entry_id, order
            try:
                self._pending.append(decode(fields))
            except ValueError as exc:
                self._error = self._error or exc
        if self._pending or self._error:
            self._arrived.set()

    async def read(self, block_ms: int | None) -> list[Entry]:
        """Entries after the last one read; waits up to ``block_ms`` for one (None: asks
        Redis itself, without waiting, for what the hub has not brought yet)."""
        if not self._pending and self._error is None:
            if block_ms is None:
                reply: Any = await self.hub.client.xread(
                    {self.key: self.last_id}, count=self.hub.count
                )
                for _key, items in reply or ():
                    self.deliver(items)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(block_ms / 1000):
                        await self._arrived.wait()
        self._arrived.clear()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        entries, self._pending = self._pending, []
        return entries


class TokenStreamHub:
    """Follows every token stream the process relays with one blocking XREAD.

    A blocking XREAD per relayed stream would hold a Redis connection per stream (a
    gateway relaying 5,000 generations would hold 5,000) and cost a command per stream
    and engine step. The hub's one reader, on a connection of its own, reads all the
    streams followed at once and hands each follower its entries. It also reads a wake
    stream of its own: following a stream that its blocked read does not include adds an
    entry there, which ends the read at once (or, if the read had not reached Redis yet,
    makes it return at once), so that a new stream's first token is not held up.
    """

    def __init__(
        self, client: aioredis.Redis, names: Names, block_ms: int = 5000, count: int = 256
    ) -> None:
        self.client = client
        self.names = names
        self.block_ms = block_ms
        self.count = count
        self.wake_key = names.token_hub_wake_key(uuid.uuid4().hex)
        self._followers: dict[str, set[TokenStreamFollower]] = {}
        # The read in flight: each stream key and the id it reads after.
        self._reading: dict[str, str] | None = None
        self._wake_sent = False
        self._wake_seen = "0-0"
        self._changed = asyncio.Event()
        self._reader: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._reader = aioredis.Redis(
            connection_pool=self.client.connection_pool, single_connection_client=True
        )
        self._task = asyncio.create_task(self._run(), name="token-stream-hub")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._reader is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                await self._reader.aclose()
        with contextlib.suppress(redis.RedisError, OSError), housekeeping():
            await self.client.delete(self.wake_key)

    @property
    def followed(self) -> int:
        """Streams followed now."""
        return len(self._followers)

    @contextlib.asynccontextmanager
    async def follow(self, task_id: str) -> AsyncIterator[TokenStreamFollower]:
        """A reader of ``task_id``'s stream for as long as the block lasts."""
        follower = TokenStreamFollower(self, task_id)
        self._followers.setdefault(follower.key, set()).add(follower)
        try:
            await self._include(follower.key)
            yield follower
        finally:
            followers = self._followers.get(follower.key)
            if followers is not None:
                followers.discard(follower)
                if not followers:
                    del self._followers[follower.key]

    async def _include(self, key: str) -> None:
        self._changed.set()
        reading = self._reading
        # A new follower starts at the stream's first entry: a read in flight that asks
        # for this stream after a later entry (for another follower) would skip the
        # entries before it, so it is ended too.
        if reading is None or reading.get(key) == "0-0" or self._wake_sent:
            return  # the next read includes it from its start
        self._wake_sent = True
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(self.wake_key, {"w": "1"}, maxlen=1)
        pipe.expire(self.wake_key, 3600)
        await pipe.execute()

    async def _run(self) -> None:
        # The reader serves every stream: its commands belong to no one task's trace.
        with housekeeping():
            while True:
                try:
                    await self._read_once()
                except asyncio.CancelledError:
                    raise
                except (redis.RedisError, OSError) as exc:
                    if self._stopping:
                        # redis-py may turn the cancellation of a blocked read into an
                        # error of its own.
                        return
                    log.warning("token stream hub: read failed, retrying: %s", exc)
                    await asyncio.sleep(0.5)
                except Exception:
                    # Every relay of the process depends on this loop: it must not end.
                    log.exception("token stream hub: unexpected error, retrying")
                    await asyncio.sleep(0.5)

    async def _read_once(self) -> None:
        if not self._followers:
            self._changed.clear()
            await self._changed.wait()
            return
        assert self._reader is not None
        streams = {
            key: min(followers, key=lambda f: f.position).last_id
            for key, followers in self._followers.items()
        }
        streams[self.wake_key] = self._wake_seen
        self._reading = dict(streams)
        self._wake_sent = False
        try:
            reply: Any = await self._reader.xread(
                streams,  # type: ignore[arg-type]
                count=self.count,
                block=self.block_ms,
            )
        finally:
            self._reading = None
        for raw_key, items in reply or ():
            key = _text(raw_key)
            if key == self.wake_key:
                self._wake_seen = _text(items[-1][0])
                continue
            for follower in list(self._followers.get(key, ())):
                follower.deliver(items)
