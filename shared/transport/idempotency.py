"""Idempotency keys: one task per (tenant, key), however often and however concurrently
a request is repeated.

A key's Redis hash (``Names.idempotency_key``) holds the task id the first request made,
that request's fingerprint (a digest of everything it asked for), its kind and deadline,
when it was claimed and whether its task is in Kafka yet. The first request claims the
key atomically, records and publishes its task, then marks the claim published; a repeat
gets the same task id once it is published (a repeat arriving meanwhile waits for that,
a bounded time). A claim whose publish failed is released, so the retry that follows
makes the task. A claim left unpublished past its lease (the gateway that made it died
between the claim and Kafka's acknowledgement) is taken over by the next repeat, which
publishes the task under the same id: one task id either way, and the worker keeps the
first terminal result of it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from enum import Enum

from google.protobuf.message import Message
from redis import asyncio as aioredis

from shared.contracts.names import Names

MAX_KEY_CHARS = 256

_CLAIM_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'task', ARGV[1], 'fp', ARGV[2], 'kind', ARGV[3],
             'deadline', ARGV[4], 'at', ARGV[5], 'published', '0')
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  return {1}
end
return {0, unpack(redis.call('HMGET', KEYS[1], 'task', 'fp', 'kind', 'deadline', 'at',
                             'published'))}
"""

# Take over an unpublished claim whose lease ran out: renew its lease for this caller.
_TAKE_OVER_LUA = """
local at = redis.call('HGET', KEYS[1], 'at')
if at and redis.call('HGET', KEYS[1], 'published') == '0'
   and tonumber(at) < tonumber(ARGV[1]) - tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'at', ARGV[1])
  return 1
end
return 0
"""

_PUBLISHED_LUA = """
if redis.call('HGET', KEYS[1], 'task') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'published', '1')
  return 1
end
return 0
"""

_RELEASE_LUA = """
if redis.call('HGET', KEYS[1], 'task') == ARGV[1]
   and redis.call('HGET', KEYS[1], 'published') == '0' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def key_problems(key: str) -> list[str]:
    """What is wrong with a client's idempotency key (empty: nothing)."""
    problems = []
    if len(key) > MAX_KEY_CHARS:
        problems.append(f"idempotency_key is over {MAX_KEY_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        problems.append("idempotency_key has control characters")
    return problems


def fingerprint(kind: str, request: Message) -> str:
    """A digest of what a request asks for (deterministic protobuf bytes)."""
    digest = hashlib.sha256(kind.encode())
    digest.update(b"\0")
    digest.update(request.SerializeToString(deterministic=True))
    return digest.hexdigest()


class Outcome(Enum):
    WON = "won"  # this request claimed the key: make the task, then mark it published
    EXISTING = "existing"  # the key's task is in Kafka: answer with it
    PENDING = "pending"  # another request is publishing it: wait, then ask again
    TAKEN_OVER = "taken over"  # its maker died before Kafka: publish it under its id
    CONFLICT = "conflict"  # the key was used for a different request


@dataclass(frozen=True)
class Claim:
    """The answer to :meth:`IdempotencyKeys.claim`."""

    outcome: Outcome
    task_id: str
    kind: int = 0
    deadline_s: float = 0.0


class IdempotencyKeys:
    """Claims of idempotency keys in Redis (asyncio)."""

    def __init__(self, client: aioredis.Redis, names: Names, ttl_s: int, lease_s: float) -> None:
        self.client = client
        self.names = names
        self.ttl_s = ttl_s
        # How long a claim may stay unpublished before a repeat takes it over; above the
        # publish timeout, so that a live gateway's publish is never raced.
        self.lease_s = lease_s
        self._claim = client.register_script(_CLAIM_LUA)
        self._take_over = client.register_script(_TAKE_OVER_LUA)
        self._published = client.register_script(_PUBLISHED_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    def _key(self, tenant: str, key: str) -> str:
        return self.names.idempotency_key(tenant, key)

    async def claim(
        self, tenant: str, key: str, fp: str, task_id: str, kind: int, deadline_s: float
    ) -> Claim:
        """Claim ``key`` for ``task_id``, or say what holds it."""
        now = time.time()
        redis_key = self._key(tenant, key)
        reply = await self._claim(
            [redis_key], [task_id, fp, kind, repr(deadline_s), repr(now), self.ttl_s]
        )
        if int(reply[0]) == 1:
            return Claim(Outcome.WON, task_id, kind, deadline_s)
        held_task, held_fp, held_kind, held_deadline, _, published = (_text(v) for v in reply[1:])
        if not held_task:  # expired between the two calls: rare; claim again
            return await self.claim(tenant, key, fp, task_id, kind, deadline_s)
        held = Claim(Outcome.EXISTING, held_task, int(held_kind or 0), float(held_deadline or 0))
        if held_fp != fp:
            return Claim(Outcome.CONFLICT, held_task)
        if published == "1":
            return held
        if int(await self._take_over([redis_key], [repr(now), repr(self.lease_s)])):
            return Claim(Outcome.TAKEN_OVER, held.task_id, held.kind, held.deadline_s)
        return Claim(Outcome.PENDING, held.task_id, held.kind, held.deadline_s)

    async def published(self, tenant: str, key: str, task_id: str) -> None:
        """The claim's task is in Kafka: repeats may now be answered with it."""
        await self._published([self._key(tenant, key)], [task_id])

    async def release(self, tenant: str, key: str, task_id: str) -> None:
        """The claim's task never reached Kafka: free the key for the next attempt."""
        await self._release([self._key(tenant, key)], [task_id])


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
