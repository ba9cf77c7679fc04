"""OpenAI batches over the platform's batch pipeline: their state in Redis and the driver
that runs them.

A batch is a Redis hash (its object's fields and its driver's checkpoint). Each front
door runs a :class:`BatchRunner`; a batch not yet ended is driven by the one door that
holds its lease (renewed while it works, so a door that dies is replaced within
``NLP_BATCH_LEASE_S``). The driver:

1. validates the input file (:func:`services.http_gateway.batchfile.check_input`);
2. submits its lines in order, a chunk at a time, as the items of a gateway batch of the
   same id (:meth:`Gateway.submit_batch_items`: the batch lane, one task per line, the
   ``custom_id`` as item id, so a chunk submitted again after a crash makes no task
   twice);
3. follows that batch's results stream and appends each line to a partial output or
   error file;
4. renames the partial files into the batch's output and error files.

Every step ends in one checkpoint (input offset, results cursor, partial files' sizes,
counts), written only by the lease holder; what was written after the last checkpoint
is cut off by the next driver, which copies the checkpointed part into partial files of
its own (an old driver that has not noticed yet writes only to its own). A cancel (or
the 24-hour window running out) stops submitting, cancels the lines' unfinished tasks,
and reports every line that got no answer in the error file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import IO, Any

import redis
import redis.asyncio as aioredis

from nlp.v1 import common_pb2, tasks_pb2
from services.gateway.auth import Tenant
from services.gateway.core import Gateway
from services.http_gateway import batchfile as bf
from services.http_gateway.completions import BadRequestError
from services.http_gateway.files import FileStore, new_file_id, text, text_fields
from shared.contracts.envelope import new_task_id
from shared.contracts.names import Names
from shared.transport.outages import KafkaUnavailableError

log = logging.getLogger(__name__)

_BATCH_ID_PREFIX = "batch_"

# KEYS[1] batch, KEYS[2] lease; ARGV[1] token, ARGV[2] new status ('' none), ARGV[3]
# the statuses it may leave (',a,b,'), ARGV[4] n: then n field/value pairs always set,
# then pairs set only with the new status. Returns the status, or false when ``token``
# no longer holds the lease (another door drives the batch).
_CHECKPOINT_LUA = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
local status = redis.call('HGET', KEYS[1], 'status')
local n = tonumber(ARGV[4])
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 5, 4 + n * 2)) end
if ARGV[2] ~= '' and string.find(ARGV[3], ',' .. status .. ',', 1, true) then
  status = ARGV[2]
  redis.call('HSET', KEYS[1], 'status', status)
  if #ARGV > 4 + n * 2 then redis.call('HSET', KEYS[1], unpack(ARGV, 5 + n * 2)) end
end
return status
"""

# KEYS[1] batch; ARGV[1] now. A batch validating or in progress starts cancelling.
_CANCEL_LUA = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status == 'validating' or status == 'in_progress' then
  redis.call('HSET', KEYS[1], 'status', 'cancelling', 'cancelling_at', ARGV[1])
end
return 1
"""

_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def new_batch_id() -> str:
    return bf.new_id(_BATCH_ID_PREFIX)


def valid_batch_ref(batch_id: str) -> bool:
    return bf.is_id(batch_id, _BATCH_ID_PREFIX)


class LeaseLostError(Exception):
    """Another front door drives this batch now."""


class BatchStore:
    """The batches' records, listings, leases and task sets in Redis."""

    def __init__(self, client: aioredis.Redis, names: Names) -> None:
        self.client = client
        self.names = names
        self._checkpoint = client.register_script(_CHECKPOINT_LUA)
        self._cancel = client.register_script(_CANCEL_LUA)
        self._renew = client.register_script(_RENEW_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    def _key(self, tenant: str, batch_id: str) -> str:
        return self.names.openai_batch_key(tenant, batch_id)

    async def create(self, tenant: str, fields: Mapping[str, str]) -> str:
        batch_id = new_batch_id()
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(tenant, batch_id), mapping=dict[Any, Any](fields))
            pipe.zadd(
                self.names.openai_batches_key(tenant), {batch_id: float(fields["created_at"])}
            )
            pipe.sadd(self.names.openai_active_batches_key, f"{tenant}/{batch_id}")
            await pipe.execute()
        return batch_id

    async def get(self, tenant: str, batch_id: str) -> dict[str, str] | None:
        if not valid_batch_ref(batch_id):
            return None
        return text_fields(await self.client.hgetall(self._key(tenant, batch_id))) or None

    async def page(
        self, tenant: str, limit: int, after: str | None
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of the tenant's batches, newest first (and whether more follow)."""
        key = self.names.openai_batches_key(tenant)
        start = 0
        if after:
            rank: Any = await self.client.zrevrank(key, after)
            if rank is None:
                return [], False
            start = int(rank) + 1
        found: Any = await self.client.zrevrange(key, start, start + limit)
        ids = [text(i) for i in found]
        async with self.client.pipeline(transaction=False) as pipe:
            for batch_id in ids[:limit]:
                pipe.hgetall(self._key(tenant, batch_id))
            rows = await pipe.execute()
        objects = [
            bf.batch_object(batch_id, text_fields(row))
            for batch_id, row in zip(ids, rows, strict=False)
            if row
        ]
        return objects, len(ids) > limit

    async def cancel(self, tenant: str, batch_id: str) -> dict[str, str] | None:
        """Start cancelling the batch (if it is validating or in progress); its fields."""
        if not valid_batch_ref(batch_id):
            return None
        found = await self._cancel(keys=[self._key(tenant, batch_id)], args=[f"{time.time():.6f}"])
        return None if found is None else await self.get(tenant, batch_id)

    async def active(self) -> list[tuple[str, str]]:
        refs = await self.client.smembers(self.names.openai_active_batches_key)
        out = []
        for ref in refs:
            tenant, _, batch_id = text(ref).rpartition("/")
            out.append((tenant, batch_id))
        return out

    async def take_lease(self, tenant: str, batch_id: str, token: str, lease_ms: int) -> bool:
        key = self.names.openai_batch_lease_key(tenant, batch_id)
        return bool(await self.client.set(key, token, nx=True, px=lease_ms))

    async def renew(self, tenant: str, batch_id: str, token: str, lease_ms: int) -> bool:
        key = self.names.openai_batch_lease_key(tenant, batch_id)
        return bool(await self._renew(keys=[key], args=[token, lease_ms]))

    async def release(self, tenant: str, batch_id: str, token: str) -> None:
        key = self.names.openai_batch_lease_key(tenant, batch_id)
        await self._release(keys=[key], args=[token])

    async def checkpoint(
        self,
        tenant: str,
        batch_id: str,
        token: str,
        fields: Mapping[str, Any],
        to: str = "",
        leaving: tuple[str, ...] = (),
        with_status: Mapping[str, Any] | None = None,
    ) -> str:
        """Set ``fields``; with ``to``, move a batch whose status is one of ``leaving``
        there and set ``with_status`` too. The status after it; LeaseLostError when
        ``token`` no longer holds the batch."""
        args: list[Any] = [token, to, "," + ",".join(leaving) + ",", len(fields)]
        for name, value in fields.items():
            args += [name, value]
        for name, value in (with_status or {}).items():
            args += [name, value]
        status = await self._checkpoint(
            keys=[self._key(tenant, batch_id), self.names.openai_batch_lease_key(tenant, batch_id)],
            args=args,
        )
        if status is None:
            raise LeaseLostError(batch_id)
        return text(status)

    async def add_tasks(self, tenant: str, batch_id: str, task_ids: list[str]) -> None:
        if task_ids:
            await self.client.sadd(self.names.openai_batch_tasks_key(tenant, batch_id), *task_ids)

    async def tasks(self, tenant: str, batch_id: str) -> AsyncIterator[list[str]]:
        """The batch's task ids, a few hundred at a time."""
        key = self.names.openai_batch_tasks_key(tenant, batch_id)
        cursor = 0
        while True:
            cursor, ids = await self.client.sscan(key, cursor, count=500)
            if ids:
                yield [text(i) for i in ids]
            if cursor == 0:
                return

    async def end(self, tenant: str, batch_id: str, token: str) -> None:
        """The batch ended: no door drives it any more."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.srem(self.names.openai_active_batches_key, f"{tenant}/{batch_id}")
            pipe.delete(self.names.openai_batch_tasks_key(tenant, batch_id))
            await pipe.execute()
        await self.release(tenant, batch_id, token)


class BatchRunner:
    """Drives the batches this front door holds the lease of (see the module's docstring).
    ``tenants`` gives a batch's owner by name, or None for a tenant it does not know:
    with ``known_tenants_only`` (a door without API keys, which knows only development
    mode's tenant) such batches are left to the doors that know them; otherwise the
    tenant was removed from the keys file, and its batch fails."""

    def __init__(
        self,
        gateway: Gateway,
        files: FileStore,
        batches: BatchStore,
        tenants: Callable[[str], Tenant | None],
        *,
        lease_s: float,
        chunk: int,
        max_lines: int,
        known_tenants_only: bool = False,
        poll_s: float = 1.0,
    ) -> None:
        self.gateway = gateway
        self.files = files
        self.batches = batches
        self.tenants = tenants
        self.lease_s = lease_s
        self.chunk = chunk
        self.max_lines = max_lines
        self.known_tenants_only = known_tenants_only
        self.poll_s = poll_s
        self._driving: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._wake: asyncio.Event | None = None

    def wake(self) -> None:
        """Look for batches to drive now (one was just created)."""
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Take the lease of every batch no door drives, and drive it; until cancelled."""
        self._wake = asyncio.Event()
        try:
            while True:
                try:
                    await self._take_over()
                except (redis.RedisError, OSError) as exc:
                    self.gateway.deps.outages.failed(exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_s):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            for task in self._driving.values():
                task.cancel()
            await asyncio.gather(*self._driving.values(), return_exceptions=True)

    async def _take_over(self) -> None:
        lease_ms = int(self.lease_s * 1000)
        for ref in await self.batches.active():
            if ref in self._driving or (self.known_tenants_only and self.tenants(ref[0]) is None):
                continue
            token = secrets.token_hex(8)
            if await self.batches.take_lease(*ref, token, lease_ms):
                task = asyncio.create_task(self._drive(ref, token))
                self._driving[ref] = task
                task.add_done_callback(functools.partial(self._driven, ref))

    def _driven(self, ref: tuple[str, str], _: asyncio.Task[None]) -> None:
        self._driving.pop(ref, None)

    async def _drive(self, ref: tuple[str, str], token: str) -> None:
        """Drive one batch while renewing its lease; a lost lease stops the work."""
        tenant, batch_id = ref
        drive = _Drive(self, tenant, batch_id, token)
        work = asyncio.create_task(drive.run())
        lease_ms = int(self.lease_s * 1000)
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=self.lease_s / 3)
                if work.done():
                    break
                try:
                    held = await self.batches.renew(tenant, batch_id, token, lease_ms)
                except (redis.RedisError, OSError):
                    continue  # the work cannot checkpoint either; it finds out when it can
                if not held:
                    raise LeaseLostError(batch_id)
            await work
        except LeaseLostError:
            log.info("batch lease lost: another front door drives it", extra={"batch_id": batch_id})
        except (redis.RedisError, OSError, KafkaUnavailableError) as exc:
            # An outage: the lease is given up and the batch taken again when it is over.
            self.gateway.deps.outages.failed(exc)
            log.info("batch paused", extra={"batch_id": batch_id, "error": repr(exc)})
        except Exception:
            log.exception("batch failed unexpectedly", extra={"batch_id": batch_id})
            with contextlib.suppress(Exception):
                await drive.fail([bf.Problem("internal_error", "The batch could not be run.")])
                await self.batches.end(tenant, batch_id, token)
        finally:
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
            with contextlib.suppress(redis.RedisError, OSError):
                await self.batches.release(tenant, batch_id, token)


class _Drive:
    """One batch, driven by one lease holder."""

    def __init__(self, runner: BatchRunner, tenant: str, batch_id: str, token: str) -> None:
        self.runner = runner
        self.gateway = runner.gateway
        self.store = runner.batches
        self.tenant = tenant
        self.batch_id = batch_id
        self.token = token
        self.fields: dict[str, str] = {}
        self.status = ""

    async def checkpoint(self, fields: Mapping[str, Any], **transition: Any) -> str:
        self.status = await self.store.checkpoint(
            self.tenant, self.batch_id, self.token, fields, **transition
        )
        self.fields.update({k: str(v) for k, v in fields.items()})
        return self.status

    async def run(self) -> None:
        fields = await self.store.get(self.tenant, self.batch_id)
        if fields is None:  # removed by hand: nothing to drive
            await self.store.end(self.tenant, self.batch_id, self.token)
            return
        self.fields = fields
        self.status = fields["status"]
        if self.status == bf.VALIDATING or (self.status == bf.CANCELLING and "total" not in fields):
            await self.validate()
        if self.status not in bf.ENDED:
            await self.work()
        await self.store.end(self.tenant, self.batch_id, self.token)

    async def fail(self, problems: list[bf.Problem]) -> None:
        errors = {"object": "list", "data": [p.as_json() for p in problems]}
        await self.checkpoint(
            {},
            to=bf.FAILED,
            leaving=(bf.VALIDATING, bf.IN_PROGRESS, bf.CANCELLING, bf.FINALIZING),
            with_status={"errors": json.dumps(errors), "failed_at": _now()},
        )

    def owner(self) -> Tenant | None:
        return self.runner.tenants(self.tenant)

    async def input_path(self) -> Path | None:
        found = await self.runner.files.get(self.tenant, self.fields["input_file_id"])
        if found is None:
            return None
        return self.runner.files.path(self.tenant, found["id"])

    async def validate(self) -> None:
        path = await self.input_path()
        if path is None or not path.exists():
            await self.fail([bf.Problem("file_not_found", "The input file was deleted.")])
            return
        owner = self.owner()
        if owner is None:
            await self.fail([bf.Problem("invalid_tenant", "The batch's tenant no longer exists.")])
            return
        limit = self.runner.max_lines
        if owner.isolated:
            limit = min(limit, owner.limits.max_batch_items)

        def check() -> tuple[int, list[bf.Problem]]:
            with path.open("rb") as stream:
                return bf.check_input(stream, self.fields["endpoint"], limit)

        total, problems = await asyncio.to_thread(check)
        if problems:
            await self.fail(problems)
            return
        await self.checkpoint(
            {"total": total},
            to=bf.IN_PROGRESS,
            leaving=(bf.VALIDATING,),
            with_status={"in_progress_at": _now()},
        )

    # --- in progress ---------------------------------------------------------------

    def part(self, which: str, token: str) -> Path:
        directory = self.runner.files.directory(self.tenant)
        return directory / f".{self.batch_id}.{token}.{which}.part"

    async def own_parts(self) -> None:
        """Partial files of this driver's own, holding what was checkpointed."""
        await asyncio.to_thread(
            self.runner.files.directory(self.tenant).mkdir, parents=True, exist_ok=True
        )
        previous = self.fields.get("parts_token", "")
        moved: dict[str, Any] = {"parts_token": self.token}
        for which in ("output", "errors"):
            size = int(self.fields.get(f"{which}_bytes", 0))
            old = self.part(which, previous) if previous else None
            await asyncio.to_thread(_copy_prefix, old, self.part(which, self.token), size)
        await self.checkpoint(moved)
        for which in ("output", "errors"):
            if previous:
                self.part(which, previous).unlink(missing_ok=True)

    async def work(self) -> None:
        if "output_id" in self.fields:  # finalizing began: the parts are whole
            await self.finalize()
            return
        await self.own_parts()
        path = await self.input_path()
        owner = self.owner()
        if path is None or not path.exists():
            await self.fail([bf.Problem("file_not_found", "The input file was deleted.")])
            return
        if owner is None:
            await self.fail([bf.Problem("invalid_tenant", "The batch's tenant no longer exists.")])
            return
        sink = _Sink(self, self.part("output", self.token), self.part("errors", self.token))
        try:
            with path.open("rb") as source:
                size = source.seek(0, 2)
                source.seek(int(self.fields.get("in_offset", 0)))
                await _Progress(self, owner, source, size, sink).run()
        finally:
            sink.close()
        await self.finalize()

    async def finalize(self) -> None:
        """The partial files become the batch's output and error files; the batch ends."""
        stop = self.fields.get("stopped", "")
        ids = {
            "output_id": self.fields.get("output_id") or new_file_id(),
            "errors_id": self.fields.get("errors_id") or new_file_id(),
        }
        if stop:
            await self.checkpoint(ids)
        else:
            await self.checkpoint(
                ids,
                to=bf.FINALIZING,
                leaving=(bf.IN_PROGRESS,),
                with_status={"finalizing_at": _now()},
            )
        token = self.fields["parts_token"]
        made: dict[str, str] = {}
        for which, purpose_name in (("output", "output"), ("errors", "error")):
            file_id = ids[f"{which}_id"]
            written = self.part(which, token)
            final = self.runner.files.path(self.tenant, file_id)
            if int(self.fields.get(f"{which}_bytes", 0)) == 0:
                written.unlink(missing_ok=True)
                continue
            if written.exists() or final.exists():
                await self.runner.files.adopt(
                    self.tenant,
                    file_id,
                    written,
                    f"{self.batch_id}_{purpose_name}.jsonl",
                    "batch_output",
                )
                made[f"{purpose_name}_file_id"] = file_id
        if stop == bf.CANCELLED_CODE or self.status == bf.CANCELLING:
            end = {"to": bf.CANCELLED, "with_status": {**made, "cancelled_at": _now()}}
        elif stop == bf.EXPIRED_CODE:
            end = {"to": bf.EXPIRED, "with_status": {**made, "expired_at": _now()}}
        else:
            end = {"to": bf.COMPLETED, "with_status": {**made, "completed_at": _now()}}
        await self.checkpoint({}, leaving=(bf.IN_PROGRESS, bf.FINALIZING, bf.CANCELLING), **end)


class _Sink:
    """The two partial files; appended to, flushed to disk before each checkpoint."""

    def __init__(self, drive: _Drive, output: Path, errors: Path) -> None:
        self.drive = drive
        self.files: dict[str, IO[bytes]] = {
            "output": output.open("ab"),
            "errors": errors.open("ab"),
        }
        self.sizes = {which: int(drive.fields.get(f"{which}_bytes", 0)) for which in self.files}
        self.counts = {name: int(drive.fields.get(name, 0)) for name in (bf.DONE, bf.ERRED)}

    def add(self, outcome: str, line: bytes) -> None:
        """Append the line of a request that ended so (``batchfile.DONE``, …)."""
        which = "output" if outcome == bf.DONE else "errors"
        self.files[which].write(line)
        self.sizes[which] += len(line)
        if outcome in self.counts:
            self.counts[outcome] += 1

    async def synced(self) -> dict[str, Any]:
        """Flush to disk; the fields that checkpoint what was written."""
        await asyncio.to_thread(_sync_all, list(self.files.values()))
        return {
            "output_bytes": self.sizes["output"],
            "errors_bytes": self.sizes["errors"],
            **self.counts,
        }

    def close(self) -> None:
        for out in self.files.values():
            out.close()


class _Progress:
    """The in-progress loop: submit a chunk, take the finished results, checkpoint."""

    def __init__(
        self, drive: _Drive, owner: Tenant, source: IO[bytes], size: int, sink: _Sink
    ) -> None:
        self.drive = drive
        self.owner = owner
        self.source = source
        self.size = size
        self.sink = sink
        self.gateway = drive.gateway
        self.endpoint = drive.fields["endpoint"]
        self.expires_at = float(drive.fields["expires_at"])
        self.cursor = drive.fields.get("cursor", "0-0")
        self.sealed = drive.fields.get("sealed") == "1"
        self.stopped = drive.fields.get("stopped", "")
        self.retry_at = 0.0

    @property
    def offset(self) -> int:
        return self.source.tell()

    async def run(self) -> None:
        drive = self.drive
        if self.offset == 0 and not self.sealed:
            await self.gateway.store.open_batch(drive.batch_id, drive.tenant)
        while True:
            if not self.stopped:
                if drive.status == bf.CANCELLING:
                    await self.stop(bf.CANCELLED_CODE)
                elif time.time() >= self.expires_at:
                    await self.stop(bf.EXPIRED_CODE)
            more = self.offset < self.size
            if more and not self.stopped and time.monotonic() >= self.retry_at:
                await self.submit()
                continue
            if not more and not self.sealed:
                await self.gateway.store.seal_batch(drive.batch_id, drive.tenant)
                self.sealed = True
                await drive.checkpoint({"sealed": 1})
            # Wait for results up to a second (or until a chunk may be retried).
            wait_s = min(1.0, self.retry_at - time.monotonic()) if more else 1.0
            if await self.take(block_ms=max(1, int(wait_s * 1000))):
                continue
            if self.sealed:
                status = await self.gateway.store.batch_status(drive.batch_id, drive.tenant)
                if status is None or status.complete:
                    while await self.take(block_ms=None):
                        pass
                    return
            await drive.checkpoint({})  # the status now (a cancel?), and the lease holds

    async def submit(self) -> None:
        """Submit the next chunk of lines (again, after a retryable refusal)."""
        drive = self.drive
        start = self.offset
        items: list[tasks_pb2.BatchItem] = []
        refused: list[bytes] = []
        deadline_ms = max(1, int((self.expires_at - time.time()) * 1000))
        chunk = self.drive.runner.chunk
        if self.owner.isolated:  # a chunk must fit in the tenant's in-flight quota
            chunk = min(chunk, self.owner.limits.max_in_flight)
        for _ in range(chunk):
            raw = self.source.readline()
            if not raw:
                break
            if not raw.strip():
                continue
            line = bf.parse_line(raw, 0, self.endpoint)
            assert isinstance(line, bf.Line)  # validated
            try:
                asked = bf.asked(self.endpoint, line.body)
            except BadRequestError as exc:
                refused.append(bf.refused_line(line.custom_id, new_task_id(), exc))
                continue
            task = tasks_pb2.SubmitRequest(generation=asked.request, deadline_ms=deadline_ms)
            items.append(tasks_pb2.BatchItem(item_id=line.custom_id, task=task))
        end = self.offset
        response = tasks_pb2.SubmitBatchResponse()
        if items:
            response = await self.gateway.submit_batch_items(
                self.owner, drive.batch_id, items, 0, publish_results=False, keyed=True
            )
        task_ids = [ack.task_id for ack in response.acks if ack.task_id]
        await drive.store.add_tasks(drive.tenant, drive.batch_id, task_ids)
        if any(ack.error.retryable for ack in response.acks):
            # Quota or an outage: the same chunk again later (its tasks made so far are
            # found by their custom ids, not made twice).
            self.source.seek(start)
            self.retry_at = time.monotonic() + 1.0
            return
        for ack in response.acks:
            if not ack.task_id:
                self.sink.add(bf.ERRED, bf.error_line(ack.item_id, new_task_id(), ack.error))
        for line_bytes in refused:
            self.sink.add(bf.ERRED, line_bytes)
        await drive.checkpoint({**(await self.sink.synced()), "in_offset": end})

    async def take(self, block_ms: int | None) -> int:
        """Write the lines of the results that finished since the cursor."""
        drive = self.drive
        results = await self.gateway.store.batch_results(
            drive.batch_id, self.cursor, 256, block_ms, drive.tenant
        )
        if not results:
            return 0
        for cursor, result in results:
            self.cursor = cursor
            self.sink.add(*bf.result_line(self.endpoint, result, self.stopped or None))
        await drive.checkpoint({**(await self.sink.synced()), "cursor": self.cursor})
        return len(results)

    async def stop(self, code: str) -> None:
        """Cancelled or expired: submit no more, cancel the lines' unfinished tasks, and
        report the lines never submitted as unanswered."""
        drive = self.drive
        message = (
            "cancelled with its batch"
            if code == bf.CANCELLED_CODE
            else "its batch's completion window expired"
        )
        async for task_ids in drive.store.tasks(drive.tenant, drive.batch_id):
            finished = await self.gateway.store.finished(task_ids)
            for task_id in task_ids:
                if task_id not in finished:
                    await self.gateway.cancel(
                        tasks_pb2.TaskResult(task_id=task_id, kind=common_pb2.KIND_GENERATION),
                        message,
                    )
        for raw in iter(self.source.readline, b""):
            line = bf.parse_line(raw, 0, self.endpoint) if raw.strip() else None
            if isinstance(line, bf.Line):
                self.sink.add(
                    bf.UNANSWERED, bf.unanswered_line(line.custom_id, new_task_id(), code)
                )
        self.stopped = code
        await drive.checkpoint(
            {**(await self.sink.synced()), "in_offset": self.offset, "stopped": code}
        )


def _copy_prefix(old: Path | None, new: Path, size: int) -> None:
    """``new`` holds the first ``size`` bytes of ``old`` (nothing without one)."""
    with new.open("wb") as out:
        if old is not None and size:
            with old.open("rb") as source:
                remaining = size
                while remaining:
                    chunk = source.read(min(remaining, 1 << 20))
                    if not chunk:
                        raise OSError(f"{old.name} is shorter than its checkpoint")
                    out.write(chunk)
                    remaining -= len(chunk)
        _sync_all([out])


def _sync_all(files: list[IO[bytes]]) -> None:
    for out in files:
        out.flush()
        os.fsync(out.fileno())


def _now() -> str:
    return f"{time.time():.6f}"
