"""Task state and results in Redis, and the pub/sub notification of finished tasks.

Keys (see :class:`shared.contracts.names.Names`):
- ``nlp:state:<id>`` — hash with the current non-terminal status (PENDING/QUEUED/RUNNING)
  and, once handed to Celery, the envelope itself.
- ``nlp:inflight:<kind>`` — ids handed to Celery and not finished, scored by their last
  sign of life (hand-off, start). The intake re-sends those silent for too long: the
  Celery Redis transport can lose a message that a killed worker had popped but not
  yet recorded as unacked, and this closes that gap.
- ``nlp:result:<id>`` — the serialized terminal :class:`TaskResult`. Written with NX:
  the first terminal outcome wins, so a cancel, a deadline or a re-run after a crash
  never replaces a result that clients may already have seen.
- ``nlp:done`` — channel; each message is the id of a task that just finished.
- ``nlp:batch:<id>`` — hash of a batch's counts (submitted, rejected, one per terminal
  status, dead_lettered), created_at and sealed; ``nlp:batch:<id>:running`` — set of
  its running task ids; ``nlp:batch:<id>:results`` — stream of its finished task ids in
  completion order (the entry ids are the results cursor). Counted and appended by the
  same script that stores the result, so each task counts once however often it runs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from nlp.v1 import common_pb2, tasks_pb2
from shared.contracts.envelope import TERMINAL_STATUSES
from shared.contracts.errors import Code
from shared.contracts.names import KIND_NAMES, Names, kind_name
from shared.contracts.settings import ServiceSettings

log = logging.getLogger(__name__)

# Results up to this size ride along with their notification (``<id>\0<result>``), so a
# waiting gateway need not read them back; larger ones are announced by id alone.
NOTIFY_INLINE_MAX = 4096

# For each task (8 keys, 6 arguments): set the result only if none exists, then drop
# the state and in-flight entries (the kind's and its tenant's), count it in its batch
# (if any: terminal status and dead-lettered counts, out of the running set) and append
# it to the batch's results stream, and notify, atomically. Returns 1/0 per task.
_FINISH_LUA = f"""
local INLINE_MAX = {NOTIFY_INLINE_MAX}
local stored = {{}}
for i = 0, #ARGV / 6 - 1 do
  local k, a = i * 8, i * 6
  if redis.call('SET', KEYS[k + 1], ARGV[a + 1], 'NX', 'EX', ARGV[a + 2]) then
    if ARGV[a + 6] == '1' then
      redis.call('HINCRBY', KEYS[k + 5], ARGV[a + 4], 1)
      if ARGV[a + 5] == '1' then redis.call('HINCRBY', KEYS[k + 5], 'dead_lettered', 1) end
      redis.call('EXPIRE', KEYS[k + 5], ARGV[a + 2])
      redis.call('SREM', KEYS[k + 7], ARGV[a + 3])
      redis.call('XADD', KEYS[k + 6], '*', 'id', ARGV[a + 3])
      redis.call('EXPIRE', KEYS[k + 6], ARGV[a + 2])
    end
    redis.call('DEL', KEYS[k + 2])
    redis.call('ZREM', KEYS[k + 4], ARGV[a + 3])
    redis.call('ZREM', KEYS[k + 8], ARGV[a + 3])
    if #ARGV[a + 1] <= INLINE_MAX then
      redis.call('PUBLISH', KEYS[k + 3], ARGV[a + 3] .. '\\0' .. ARGV[a + 1])
    else
      redis.call('PUBLISH', KEYS[k + 3], ARGV[a + 3])
    end
    stored[i + 1] = 1
  else
    stored[i + 1] = 0
  end
end
return stored
"""


@dataclass(frozen=True)
class DoneNotice:
    """A done-channel message, as :data:`_FINISH_LUA` publishes it: ``<id>`` alone, or
    ``<id>\\0<serialized result>`` for results up to :data:`NOTIFY_INLINE_MAX` bytes."""

    task_id: str
    payload: bytes | None = None

    def result(self) -> tasks_pb2.TaskResult | None:
        """The result that came along; None when none did or it is unreadable (the
        reader then reads the store)."""
        if self.payload is None:
            return None
        try:
            return tasks_pb2.TaskResult.FromString(self.payload)
        except Exception:
            return None


def parse_done_notice(data: bytes | str) -> DoneNotice:
    """The notice in a done-channel message's data (the result is parsed only on demand:
    the worker's cancel watch needs the id alone)."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    task_id, sep, payload = raw.partition(b"\0")
    return DoneNotice(task_id.decode(), payload if sep else None)


# For each task (4 keys; ARGV[1..4] shared, then kind, id and in-a-batch per task): mark
# RUNNING only if no terminal result exists (a cancel or a re-run may have won), and
# add it to its batch's running set (a set, so re-runs after a crash count once).
# 1/0 per task.
_START_LUA = """
local started = {}
for i = 0, #KEYS / 4 - 1 do
  local k, a = i * 4, 4 + i * 3
  if redis.call('EXISTS', KEYS[k + 1]) == 1 then
    started[i + 1] = 0
  else
    if ARGV[a + 3] == '1' then
      redis.call('SADD', KEYS[k + 4], ARGV[a + 2])
      redis.call('EXPIRE', KEYS[k + 4], ARGV[4])
    end
    redis.call('HSET', KEYS[k + 2], 'status', ARGV[1], 'kind', ARGV[a + 1],
               'attempt', ARGV[2], 'updated_at', ARGV[3])
    redis.call('EXPIRE', KEYS[k + 2], ARGV[4])
    redis.call('ZADD', KEYS[k + 3], ARGV[3], ARGV[a + 2])
    started[i + 1] = 1
  end
end
return started
"""

# Record PENDING (KEYS[1]: the batch, then state and result per task; ARGV[1..5] ttl,
# in-a-batch, rejected, status, now; then kind, tenant, reply, batch id per task) for the
# tasks with neither a state nor a result yet, and count those as submitted to the batch
# (and the rejected items), atomically: a task taken over from a gateway that died after
# recording it counts once. 1/0 per task.
_PENDING_LUA = """
local recorded, n = {}, 0
for i = 0, (#KEYS - 1) / 2 - 1 do
  local state, a = KEYS[2 + i * 2], 5 + i * 4
  if redis.call('EXISTS', state) == 0 and redis.call('EXISTS', KEYS[3 + i * 2]) == 0 then
    redis.call('HSET', state, 'status', ARGV[4], 'kind', ARGV[a + 1], 'tenant', ARGV[a + 2],
               'attempt', '0', 'updated_at', ARGV[5], 'reply', ARGV[a + 3],
               'batch_id', ARGV[a + 4])
    redis.call('EXPIRE', state, ARGV[1])
    n = n + 1
    recorded[i + 1] = 1
  else
    recorded[i + 1] = 0
  end
end
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[1], 'submitted', n)
  redis.call('HINCRBY', KEYS[1], 'rejected', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return recorded
"""

# Batch counter fields per terminal status (also the BatchStatus field names).
_STATUS_FIELDS: dict[int, str] = {
    common_pb2.TASK_STATUS_SUCCEEDED: "succeeded",
    common_pb2.TASK_STATUS_FAILED: "failed",
    common_pb2.TASK_STATUS_CANCELLED: "cancelled",
    common_pb2.TASK_STATUS_DEADLINE_EXCEEDED: "deadline_exceeded",
}


def _finish_args(
    names: Names, results: Sequence[tasks_pb2.TaskResult], ttl_s: int
) -> tuple[list[str], list[bytes | int | str]]:
    keys: list[str] = []
    args: list[bytes | int | str] = []
    for result in results:
        assert result.status in TERMINAL_STATUSES, result.status
        keys += [
            names.result_key(result.task_id),
            names.state_key(result.task_id),
            names.done_channel,
            names.inflight_key(KIND_NAMES.get(result.kind, "unknown")),
            names.batch_key(result.batch_id, result.tenant),
            names.batch_results_key(result.batch_id, result.tenant),
            names.batch_running_key(result.batch_id, result.tenant),
            names.tenant_inflight_key(result.tenant),
        ]
        args += [
            result.SerializeToString(),
            ttl_s,
            result.task_id,
            _STATUS_FIELDS[result.status],
            int(result.dead_lettered),
            int(bool(result.batch_id)),
        ]
    return keys, args


def _state_fields(status: int, envelope: tasks_pb2.TaskEnvelope, attempt: int) -> dict[Any, Any]:
    return {
        "status": str(status),
        "kind": str(envelope.kind),
        "tenant": envelope.tenant,
        "attempt": str(attempt),
        "updated_at": f"{time.time():.6f}",
    }


def _from_state(
    task_id: str, status: Any, kind: Any, attempt: Any, tenant: Any
) -> tasks_pb2.TaskResult:
    """A result message carrying only the non-terminal state (raw Redis hash values)."""
    return tasks_pb2.TaskResult(
        task_id=task_id,
        kind=int(kind or 0),  # type: ignore[arg-type]
        status=int(status),  # type: ignore[arg-type]
        attempt=int(attempt or 0),
        tenant=_bytes(tenant or b"").decode(),
    )


def _bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _parse(data: bytes | str | None) -> tasks_pb2.TaskResult | None:
    if data is None:
        return None
    return tasks_pb2.TaskResult.FromString(data.encode() if isinstance(data, str) else data)


# A lagging replica is reported at most this often (with how many results it lagged on).
_WARN_EVERY_S = 10.0


class ResultStore:
    """Synchronous store used by the intake and the Celery workers. With
    ``wait_replicas``, stored results (and :meth:`durable_mark`) wait until that many
    replicas have them, up to ``wait_timeout_ms``: what a failover cannot lose."""

    def __init__(
        self,
        client: redis.Redis,
        names: Names,
        ttl_s: int,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
    ) -> None:
        self.client = client
        self.names = names
        self.ttl_s = ttl_s
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._finish = client.register_script(_FINISH_LUA)
        self._start = client.register_script(_START_LUA)
        self._warn_at = 0.0  # monotonic time of the next "not confirmed" warning
        self._unconfirmed = 0  # results not confirmed since the last one

    def mark_queued(
        self,
        envelopes: Sequence[tasks_pb2.TaskEnvelope],
        traces: Sequence[Mapping[str, str]] = (),
    ) -> None:
        """QUEUED state, the envelope and its trace context (for redelivery) and the
        in-flight entry, for many tasks in one round trip."""
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        for i, envelope in enumerate(envelopes):
            key = self.names.state_key(envelope.task_id)
            fields = _state_fields(common_pb2.TASK_STATUS_QUEUED, envelope, 0)
            fields["envelope"] = envelope.SerializeToString()
            if i < len(traces) and traces[i]:
                fields["trace"] = json.dumps(dict(traces[i]))
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self.ttl_s)
            pipe.zadd(self.names.inflight_key(kind_name(envelope.kind)), {envelope.task_id: now})
        pipe.execute()

    def start(self, tasks: Sequence[tasks_pb2.TaskEnvelope], attempt: int) -> list[bool]:
        """Mark tasks RUNNING unless they already have a result, in one round trip;
        False means skip that task."""
        if not tasks:
            return []
        keys: list[str] = []
        args: list[int | float | str] = [
            common_pb2.TASK_STATUS_RUNNING,
            attempt,
            time.time(),
            self.ttl_s,
        ]
        for envelope in tasks:
            keys += [
                self.names.result_key(envelope.task_id),
                self.names.state_key(envelope.task_id),
                self.names.inflight_key(kind_name(envelope.kind)),
                self.names.batch_running_key(envelope.batch_id, envelope.tenant),
            ]
            args += [envelope.kind, envelope.task_id, int(bool(envelope.batch_id))]
        return [bool(n) for n in self._start(keys, args)]

    def finished(self, task_ids: Sequence[str]) -> set[str]:
        """Which of ``task_ids`` already have a terminal result (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.exists(self.names.result_key(task_id))
        return {task_id for task_id, n in zip(task_ids, pipe.execute(), strict=True) if n}

    def finish(self, result: tasks_pb2.TaskResult) -> bool:
        """Store a terminal result; False if the task already had one (which is kept)."""
        return self.finish_many([result])[0]

    def finish_many(self, results: Sequence[tasks_pb2.TaskResult]) -> list[bool]:
        """:meth:`finish` for many results in one round trip (and, with
        ``wait_replicas``, once the replicas confirmed them)."""
        if not results:
            return []
        keys, args = _finish_args(self.names, results, self.ttl_s)
        if not self.wait_replicas:
            return [bool(n) for n in self._finish(keys, args)]
        # One connection: WAIT counts from that connection's last write.
        with self.client.pipeline(transaction=False) as pipe:
            self._finish(keys, args, client=pipe)
            pipe.wait(self.wait_replicas, self.wait_timeout_ms)
            stored, acked = pipe.execute()
        if int(acked) < self.wait_replicas:
            self._unconfirmed += len(results)
            # Every batch of results waits while a replica lags: one line per interval.
            if time.monotonic() >= self._warn_at:
                log.warning(
                    "results not confirmed by the Redis replicas in time",
                    extra={
                        "replicas": int(acked),
                        "wanted": self.wait_replicas,
                        "results": self._unconfirmed,
                    },
                )
                self._unconfirmed, self._warn_at = 0, time.monotonic() + _WARN_EVERY_S
        return [bool(n) for n in stored]

    def durable_mark(self) -> tuple[str, bool]:
        """The primary's replication id, and whether every write so far (by anyone) is on
        ``wait_replicas`` replicas within ``wait_timeout_ms``. Without replicas to wait
        for, ``("", True)`` at once (AOF is the durability then)."""
        if not self.wait_replicas:
            return "", True
        with self.client.pipeline(transaction=False) as pipe:
            # A write first: WAIT counts from this connection's last one, and the
            # replication stream carries everyone's writes in order.
            pipe.set(self.names.durable_mark_key, f"{time.time():.6f}")
            pipe.wait(self.wait_replicas, self.wait_timeout_ms)
            pipe.info("replication")
            _, acked, info = pipe.execute()
        return str(info.get("master_replid", "")), int(acked) >= self.wait_replicas

    def heartbeat(self, kind: str, task_ids: Iterable[str]) -> None:
        """Mark running tasks alive so the intake's sweep leaves them alone."""
        now = time.time()
        beats = {task_id: now for task_id in task_ids}
        if beats:
            self.client.zadd(self.names.inflight_key(kind), beats, xx=True)

    def silent_tasks(
        self, kind: str, silent_for_s: float, queue_empty: bool, limit: int = 100
    ) -> list[tuple[bytes, dict[str, str]]]:
        """Envelopes (with their trace contexts) of in-flight tasks with no sign of life for
        ``silent_for_s`` seconds.

        RUNNING tasks are kept alive by their worker's heartbeat, so silence means the
        worker died. A QUEUED task is silent while it waits in the Celery queue, so it
        counts as lost only when that queue is empty. Each returned task is marked
        alive again (returned at most once per period); entries of finished or
        expired tasks are dropped.
        """
        key = self.names.inflight_key(kind)
        now = time.time()
        ids = self.client.zrangebyscore(key, "-inf", now - silent_for_s, start=0, num=limit)
        envelopes: list[tuple[bytes, dict[str, str]]] = []
        for raw_id in ids:
            task_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            pipe = self.client.pipeline(transaction=False)
            pipe.exists(self.names.result_key(task_id))
            pipe.hmget(self.names.state_key(task_id), ["status", "envelope", "trace"])
            done, (status, envelope, carrier) = pipe.execute()
            if done or envelope is None:
                self.client.zrem(key, task_id)
            elif queue_empty or int(status) != common_pb2.TASK_STATUS_QUEUED:
                self.client.zadd(key, {task_id: now}, xx=True)
                envelopes.append((envelope, json.loads(carrier) if carrier else {}))
        return envelopes


def result_store(client: redis.Redis, settings: ServiceSettings) -> ResultStore:
    """The intake's and the workers' store, as their settings configure it."""
    return ResultStore(
        client,
        settings.names,
        settings.result_ttl_s,
        settings.redis_wait_replicas,
        settings.redis_wait_timeout_ms,
    )


class AsyncResultStore:
    """The gateway's asyncio view of the same keys. With ``wait_replicas``,
    :meth:`confirm` waits until that many replicas have every write so far."""

    def __init__(
        self,
        client: aioredis.Redis,
        names: Names,
        ttl_s: int,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
    ) -> None:
        self.client = client
        self.names = names
        self.ttl_s = ttl_s
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._finish = client.register_script(_FINISH_LUA)
        self._pending = client.register_script(_PENDING_LUA)

    async def record_pending(
        self,
        envelopes: Sequence[tasks_pb2.TaskEnvelope],
        batch: tuple[str, int] | None = None,
        tenant: str = "",
    ) -> list[bool]:
        """PENDING state for many tasks in one round trip, with what a result decided
        before the intake sees the task (a cancel) needs: reply options and batch id.
        Not the envelope: a backlog lives in Kafka, not in Redis. ``batch``: (batch id,
        items rejected) — counts the envelopes as submitted to that batch in the same trip.

        A task that already has a state or a result (one taken over from a gateway that
        died after recording it) is left as it is and not counted again. True per task
        recorded by this call.
        """
        if not envelopes:
            if batch is not None:
                await self.count_batch(batch[0], 0, batch[1], tenant)
            return []
        batch_key = self.names.batch_key(batch[0], tenant) if batch is not None else ""
        keys = [batch_key or self.names.state_key(envelopes[0].task_id)]
        args: list[Any] = [
            self.ttl_s,
            int(batch is not None),
            batch[1] if batch is not None else 0,
            common_pb2.TASK_STATUS_PENDING,
            f"{time.time():.6f}",
        ]
        for envelope in envelopes:
            keys += [
                self.names.state_key(envelope.task_id),
                self.names.result_key(envelope.task_id),
            ]
            args += [
                envelope.kind,
                envelope.tenant,
                envelope.reply.SerializeToString(),
                envelope.batch_id,
            ]
        return [bool(n) for n in await self._pending(keys, args)]

    async def clear_states(
        self, task_ids: Sequence[str], batch_id: str = "", tenant: str = ""
    ) -> None:
        """Forget PENDING tasks that never reached Kafka; in a batch, move them from
        submitted to rejected in the same transaction (a crash between would count
        them twice)."""
        if not task_ids:
            return
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(*(self.names.state_key(t) for t in task_ids))
            if batch_id:
                key = self.names.batch_key(batch_id, tenant)
                pipe.hincrby(key, "submitted", -len(task_ids))
                pipe.hincrby(key, "rejected", len(task_ids))
                pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def envelope(self, task_id: str) -> tasks_pb2.TaskEnvelope | None:
        """The envelope kept with a task's non-terminal state (the intake keeps it once
        the task is queued); while PENDING, one with only id, kind, reply and batch id."""
        data, kind, reply, batch_id, tenant = await self.client.hmget(
            self.names.state_key(task_id), ["envelope", "kind", "reply", "batch_id", "tenant"]
        )
        if data is not None:
            return tasks_pb2.TaskEnvelope.FromString(_bytes(data))
        if kind is None:
            return None
        envelope = tasks_pb2.TaskEnvelope(
            task_id=task_id,
            kind=int(kind),  # type: ignore[arg-type]
            batch_id=_bytes(batch_id or b"").decode(),
            tenant=_bytes(tenant or b"").decode(),
        )
        envelope.reply.ParseFromString(_bytes(reply or b""))
        return envelope

    async def confirm(self) -> bool:
        """Whether ``wait_replicas`` replicas have every write made so far (by anyone),
        within ``wait_timeout_ms``; True at once without replicas to wait for."""
        if not self.wait_replicas:
            return True
        async with self.client.pipeline(transaction=False) as pipe:
            # A write first: WAIT counts from this connection's last one, and the
            # replication stream carries everyone's writes in order.
            pipe.set(self.names.durable_mark_key, f"{time.time():.6f}")
            pipe.wait(self.wait_replicas, self.wait_timeout_ms)
            _, acked = await pipe.execute()
        return int(acked) >= self.wait_replicas

    # --- batches -------------------------------------------------------------------

    async def open_batch(self, batch_id: str, tenant: str = "") -> None:
        """Create the batch (or reopen it: a stream is adding items, so it is not sealed)."""
        key = self.names.batch_key(batch_id, tenant)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "created_at", f"{time.time():.6f}")
            pipe.hset(key, "sealed", 0)
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def count_batch(
        self, batch_id: str, submitted: int, rejected: int, tenant: str = ""
    ) -> None:
        key = self.names.batch_key(batch_id, tenant)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hincrby(key, "submitted", submitted)
            pipe.hincrby(key, "rejected", rejected)
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def seal_batch(self, batch_id: str, tenant: str = "") -> None:
        await self.client.hset(self.names.batch_key(batch_id, tenant), "sealed", 1)

    async def batch_status(self, batch_id: str, tenant: str = "") -> tasks_pb2.BatchStatus | None:
        """Counts by state, or None for an unknown (or expired) batch."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.names.batch_key(batch_id, tenant))
            pipe.scard(self.names.batch_running_key(batch_id, tenant))
            raw, running = await pipe.execute()
        if not raw:
            return None
        fields = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }

        def count(name: str) -> int:
            return int(fields.get(name, 0))

        status = tasks_pb2.BatchStatus(
            batch_id=batch_id,
            submitted=count("submitted"),
            rejected=count("rejected"),
            running=running,
            dead_lettered=count("dead_lettered"),
            sealed=fields.get("sealed") == "1",
        )
        for name in _STATUS_FIELDS.values():
            setattr(status, name, count(name))
        terminal = sum(count(name) for name in _STATUS_FIELDS.values())
        status.pending = max(0, status.submitted - status.running - terminal)
        status.complete = status.sealed and terminal >= status.submitted
        if "created_at" in fields:
            status.created_at.FromNanoseconds(int(float(fields["created_at"]) * 1e9))
        return status

    async def batch_results(
        self, batch_id: str, cursor: str, count: int, block_ms: int | None, tenant: str = ""
    ) -> list[tuple[str, tasks_pb2.TaskResult]]:
        """Up to ``count`` results after ``cursor`` in completion order, as (cursor,
        result); waits up to ``block_ms`` for the first one (None: no wait)."""
        reply: Any = await self.client.xread(
            {self.names.batch_results_key(batch_id, tenant): cursor}, count=count, block=block_ms
        )
        if not reply:
            return []
        entries = reply[0][1]
        ids = [fields[b"id"].decode() for _, fields in entries]
        values = await self.client.mget([self.names.result_key(t) for t in ids])
        out: list[tuple[str, tasks_pb2.TaskResult]] = []
        for (entry_id, _), task_id, data in zip(entries, ids, values, strict=True):
            result = _parse(data)
            if result is None:  # stored with the same TTL as the stream; gone only at its end
                result = tasks_pb2.TaskResult(
                    task_id=task_id,
                    batch_id=batch_id,
                    error=common_pb2.Error(
                        code=int(Code.NOT_FOUND), message="the result has expired"
                    ),
                )
            out.append((entry_id.decode() if isinstance(entry_id, bytes) else entry_id, result))
        return out

    async def finished(self, task_ids: Sequence[str]) -> set[str]:
        """Which of ``task_ids`` already have a terminal result (one round trip)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.exists(self.names.result_key(task_id))
            found = await pipe.execute()
        return {task_id for task_id, n in zip(task_ids, found, strict=True) if n}

    async def finish(self, result: tasks_pb2.TaskResult) -> bool:
        keys, args = _finish_args(self.names, [result], self.ttl_s)
        return bool((await self._finish(keys, args))[0])

    async def result(self, task_id: str) -> tasks_pb2.TaskResult | None:
        """The terminal result, if there is one."""
        return _parse(await self.client.get(self.names.result_key(task_id)))

    async def get(self, task_id: str) -> tasks_pb2.TaskResult | None:
        """The terminal result, else the current state, else None (unknown task)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.names.result_key(task_id))
        pipe.hmget(self.names.state_key(task_id), ["status", "kind", "attempt", "tenant"])
        data, (status, kind, attempt, tenant) = await pipe.execute()
        if data is not None:
            return _parse(data)
        if status is None:
            return None
        return _from_state(task_id, status, kind, attempt, tenant)
