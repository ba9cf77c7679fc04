"""A task's replays from the dead letters, in Redis: the bound, and reopening a failure.

The first terminal result of a task wins, with one exception: an operator's replay of a
task that FAILED and was dead-lettered reopens it. Atomically, its FAILED result is
removed (its batch counts it failed no more), it is PENDING again, and its replay count
(``Names.replays_key``) goes up; its next terminal result then stands as any first one
does. A task that succeeded, was cancelled, or is queued or running is never reopened,
and no task is replayed more than the bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum

from redis import asyncio as aioredis

from nlp.v1 import common_pb2, tasks_pb2
from shared.contracts.names import Names

# KEYS: result, state, replay count, batch. ARGV: [1] the result expected (the FAILED
# one read before; '' for none), [2] the bound, [3] the replays the record says, [4] ttl,
# [5] in a batch, [6] PENDING, [7] kind, [8] tenant, [9] now, [10] reply, [11] batch id.
_REOPEN_LUA = """
local n = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), tonumber(ARGV[3]))
if n >= tonumber(ARGV[2]) then return {-1, n} end
local current = redis.call('GET', KEYS[1])
if current then
  if current ~= ARGV[1] then return {-2, n} end
  redis.call('DEL', KEYS[1])
  if ARGV[5] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then
    redis.call('HINCRBY', KEYS[4], 'failed', -1)
    redis.call('HINCRBY', KEYS[4], 'dead_lettered', -1)
  end
elseif ARGV[1] ~= '' or redis.call('EXISTS', KEYS[2]) == 1 then
  return {-3, n}
end
redis.call('HSET', KEYS[2], 'status', ARGV[6], 'kind', ARGV[7], 'tenant', ARGV[8],
           'attempt', '0', 'updated_at', ARGV[9], 'reply', ARGV[10], 'batch_id', ARGV[11])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('SET', KEYS[3], n + 1, 'EX', ARGV[4])
return {1, n + 1}
"""

# Undo a reopen whose record did not reach Kafka. KEYS as above; ARGV: [1] the result
# to restore ('' for none), [2] the count the reopen set, [3] in a batch, [4] ttl,
# [5] PENDING.
_UNDO_LUA = """
if redis.call('HGET', KEYS[2], 'status') == ARGV[5] then redis.call('DEL', KEYS[2]) end
if ARGV[1] ~= '' and redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[4]) then
  if ARGV[3] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then
    redis.call('HINCRBY', KEYS[4], 'failed', 1)
    redis.call('HINCRBY', KEYS[4], 'dead_lettered', 1)
  end
end
if redis.call('GET', KEYS[3]) == ARGV[2] then redis.call('DECR', KEYS[3]) end
return 1
"""


class Verdict(Enum):
    REOPENED = "reopened"  # PENDING under its id, its replay count raised
    BOUND = "bound"  # replayed as often as the bound allows
    CHANGED = "changed"  # its result changed since it was read
    LIVE = "live"  # queued or running (a replay already on its way?)
    ENDED = "ended"  # it succeeded, was cancelled or ran out of time: never reopened


@dataclass(frozen=True)
class Reopening:
    """What :meth:`ReplayLedger.reopen` decided; ``replays`` is the task's count."""

    verdict: Verdict
    replays: int
    status: int = 0  # the terminal status, for ENDED
    previous: bytes = b""  # the FAILED result removed, restored by :meth:`undo`


class ReplayLedger:
    """Replays of dead-lettered tasks (asyncio)."""

    def __init__(self, client: aioredis.Redis, names: Names, ttl_s: int, bound: int) -> None:
        self.client = client
        self.names = names
        self.ttl_s = ttl_s
        self.bound = bound
        self._reopen = client.register_script(_REOPEN_LUA)
        self._undo = client.register_script(_UNDO_LUA)

    def _keys(self, envelope: tasks_pb2.TaskEnvelope) -> list[str]:
        return [
            self.names.result_key(envelope.task_id),
            self.names.state_key(envelope.task_id),
            self.names.replays_key(envelope.task_id),
            self.names.batch_key(envelope.batch_id, envelope.tenant),
        ]

    async def _look(self, envelope: tasks_pb2.TaskEnvelope) -> tuple[bytes | None, bool, int]:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(self.names.result_key(envelope.task_id))
            pipe.exists(self.names.state_key(envelope.task_id))
            pipe.get(self.names.replays_key(envelope.task_id))
            result, state, count = await pipe.execute()
        return result, bool(state), int(count or 0)

    async def check(self, envelope: tasks_pb2.TaskEnvelope, seen: int) -> Reopening:
        """What :meth:`reopen` would decide now, changing nothing (a dry run)."""
        result, live, count = await self._look(envelope)
        replays = max(count, seen)
        if replays >= self.bound:
            return Reopening(Verdict.BOUND, replays)
        ended = _ended(result)
        if ended is not None:
            return Reopening(Verdict.ENDED, replays, ended)
        if result is None and live:
            return Reopening(Verdict.LIVE, replays)
        return Reopening(Verdict.REOPENED, replays + 1, previous=result or b"")

    async def reopen(self, envelope: tasks_pb2.TaskEnvelope, seen: int) -> Reopening:
        """Make the task PENDING again for its replay: it has no result (expired, or it
        never had one) or a FAILED, dead-lettered one, nor a state, and ``seen`` (the
        record's count) and its own count are below the bound."""
        raw = await self.client.get(self.names.result_key(envelope.task_id))
        result = raw.encode() if isinstance(raw, str) else raw
        ended = _ended(result)
        if ended is not None:
            return Reopening(Verdict.ENDED, 0, ended)
        code, replays = await self._reopen(
            self._keys(envelope),
            [
                result or b"",
                self.bound,
                seen,
                self.ttl_s,
                int(bool(envelope.batch_id)),
                common_pb2.TASK_STATUS_PENDING,
                envelope.kind,
                envelope.tenant,
                f"{time.time():.6f}",
                envelope.reply.SerializeToString(),
                envelope.batch_id,
            ],
        )
        verdict = {1: Verdict.REOPENED, -1: Verdict.BOUND, -2: Verdict.CHANGED}.get(
            int(code), Verdict.LIVE
        )
        return Reopening(verdict, int(replays), previous=result or b"")

    async def undo(self, envelope: tasks_pb2.TaskEnvelope, reopening: Reopening) -> None:
        """Put back what :meth:`reopen` changed, for a replay that was not sent."""
        await self._undo(
            self._keys(envelope),
            [
                reopening.previous,
                reopening.replays,
                int(bool(envelope.batch_id)),
                self.ttl_s,
                common_pb2.TASK_STATUS_PENDING,
            ],
        )


def _ended(result: bytes | None) -> int | None:
    """The status of a stored result that a replay may not replace (None: it may)."""
    if result is None:
        return None
    parsed = tasks_pb2.TaskResult.FromString(result)
    if parsed.status == common_pb2.TASK_STATUS_FAILED and parsed.dead_lettered:
        return None
    return int(parsed.status)
