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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from nlp.v1 import generation_pb2
from shared.names import Names

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


def decode(fields: Mapping[Any, Any]) -> Entry:
    """The entry of a stream entry's fields; ValueError when they are not one."""
    f = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}

    def text(key: str) -> str:
        value = f[key]
        return value.decode("utf-8") if isinstance(value, bytes) else value

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


class TokenStreamReader:
    """Follows one task's stream from its first entry."""

    def __init__(self, client: aioredis.Redis, names: Names, task_id: str) -> None:
        self.client = client
        self.key = names.token_stream_key(task_id)
        self.last_id = "0-0"

    async def read(self, block_ms: int | None, count: int = 256) -> list[Entry]:
        """Entries after the last one read; waits up to ``block_ms`` for one (None: no wait)."""
        reply: Any = await self.client.xread({self.key: self.last_id}, count=count, block=block_ms)
        entries: list[Entry] = []
        for _key, items in reply or ():
            for entry_id, fields in items:
                self.last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                entries.append(decode(fields))
        return entries
