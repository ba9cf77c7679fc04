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

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis
from redis import asyncio as aioredis

from shared.contracts.names import Names

_CLAIM_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'task', ARGV[1], 'fp', ARGV[2], 'kind', ARGV[3],
             'deadline', ARGV[4], 'at', ARGV[5], 'published', ARGV[7])
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


class Outcome(Enum):
    WON = "won"  # this request claimed the key: make the task, then mark it published
    EXISTING = "existing"  # the key's task is in Kafka: answer with it
    PENDING = "pending"  # another request is publishing it: wait, then ask again
    TAKEN_OVER = "taken over"  # its maker died before Kafka: publish it under its id
    CONFLICT = "conflict"  # the key was used for a different request


@dataclass(frozen=True)
class Ask:
    """A claim to make: ``key`` of ``tenant`` for ``task_id``, by a request ``fp``."""

    tenant: str
    key: str
    fp: str
    task_id: str
    kind: int = 0
    deadline_s: float = 0.0


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

    async def claim_many(self, asks: Sequence[Ask]) -> list[Claim]:
        """Claim each ask's key for its task, or say what holds it, in two round trips."""
        now = time.time()
        async with self.client.pipeline(transaction=False) as pipe:
            for ask in asks:
                await self._claim(
                    keys=[self._key(ask.tenant, ask.key)],
                    args=_claim_args(ask, now, self.ttl_s, published=False),
                    client=pipe,
                )
            replies = await pipe.execute()
        claims = [_parsed(ask, reply) for ask, reply in zip(asks, replies, strict=True)]
        # The same request, not yet published: taken over once its lease ran out.
        unsettled = [i for i, c in enumerate(claims) if c and c.outcome is Outcome.PENDING]
        if unsettled:
            async with self.client.pipeline(transaction=False) as pipe:
                for i in unsettled:
                    await self._take_over(
                        keys=[self._key(asks[i].tenant, asks[i].key)],
                        args=[repr(now), repr(self.lease_s)],
                        client=pipe,
                    )
                taken = await pipe.execute()
            for i, took in zip(unsettled, taken, strict=True):
                held = claims[i]
                if int(took) and held is not None:
                    claims[i] = Claim(Outcome.TAKEN_OVER, held.task_id, held.kind, held.deadline_s)
        # Expired between the two calls (rare): claim afresh.
        again = [i for i, c in enumerate(claims) if c is None]
        if again:
            fresh = await self.claim_many([asks[i] for i in again])
            for i, claim in zip(again, fresh, strict=True):
                claims[i] = claim
        return [claim for claim in claims if claim is not None]

    async def claim_settled(self, asks: Sequence[Ask], poll_s: float) -> list[Claim]:
        """:meth:`claim_many`, asking again every ``poll_s`` for claims another request
        is still publishing, until they settle or their lease runs out (then they are
        taken over); a claim still PENDING after that is returned as it is."""
        claims = await self.claim_many(asks)
        until = time.monotonic() + self.lease_s + 1
        while time.monotonic() < until:
            unsettled = [i for i, c in enumerate(claims) if c.outcome is Outcome.PENDING]
            if not unsettled:
                break
            await asyncio.sleep(poll_s)
            again = await self.claim_many([asks[i] for i in unsettled])
            for i, claim in zip(unsettled, again, strict=True):
                claims[i] = claim
        return claims

    async def settle_many(self, published: Sequence[Ask], released: Sequence[Ask]) -> None:
        """Mark claims published and release others, in one round trip."""
        if not published and not released:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for ask in published:
                await self._published(
                    keys=[self._key(ask.tenant, ask.key)], args=[ask.task_id], client=pipe
                )
            for ask in released:
                await self._release(
                    keys=[self._key(ask.tenant, ask.key)], args=[ask.task_id], client=pipe
                )
            await pipe.execute()

    async def published(self, tenant: str, key: str, task_id: str) -> None:
        """The claim's task is in Kafka: repeats may now be answered with it."""
        await self.settle_many([Ask(tenant, key, "", task_id)], [])

    async def release(self, tenant: str, key: str, task_id: str) -> None:
        """The claim's task never reached Kafka: free the key for the next attempt."""
        await self.settle_many([], [Ask(tenant, key, "", task_id)])


class RecordKeys:
    """The intake's claims (synchronous): a direct producer's record is in Kafka
    already, so its claim is published from the start and nothing is taken over."""

    def __init__(self, client: redis.Redis, names: Names, ttl_s: int) -> None:
        self.client = client
        self.names = names
        self.ttl_s = ttl_s
        self._claim = client.register_script(_CLAIM_LUA)

    def claim_many(self, asks: Sequence[Ask]) -> list[Claim]:
        """WON (run it), EXISTING (the key's task: run it only if it is this one) or
        CONFLICT (the key was another request's), per ask, in one round trip."""
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        for ask in asks:
            self._claim(
                keys=[self.names.idempotency_key(ask.tenant, ask.key)],
                args=_claim_args(ask, now, self.ttl_s, published=True),
                client=pipe,
            )
        claims = []
        for ask, reply in zip(asks, pipe.execute(), strict=True):
            claim = _parsed(ask, reply)
            if claim is None:  # expired meanwhile: a task of its own, as if won
                claim = Claim(Outcome.WON, ask.task_id, ask.kind, ask.deadline_s)
            elif claim.outcome is Outcome.PENDING:  # a gateway's, publishing: the key's task
                claim = Claim(Outcome.EXISTING, claim.task_id, claim.kind, claim.deadline_s)
            claims.append(claim)
        return claims


def _claim_args(ask: Ask, now: float, ttl_s: int, published: bool) -> list[str | int | float]:
    """ARGV of _CLAIM_LUA."""
    return [
        ask.task_id,
        ask.fp,
        ask.kind,
        repr(ask.deadline_s),
        repr(now),
        ttl_s,
        "1" if published else "0",
    ]


def _parsed(ask: Ask, reply: Sequence[Any]) -> Claim | None:
    """What _CLAIM_LUA answered: WON, CONFLICT, EXISTING (published) or PENDING; None
    when the key expired between its two commands."""
    if int(reply[0]) == 1:
        return Claim(Outcome.WON, ask.task_id, ask.kind, ask.deadline_s)
    task, fp, kind, deadline, _, published = (_text(v) for v in reply[1:])
    if not task:
        return None
    if fp != ask.fp:
        return Claim(Outcome.CONFLICT, task)
    outcome = Outcome.EXISTING if published == "1" else Outcome.PENDING
    return Claim(outcome, task, int(kind or 0), float(deadline or 0))


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
