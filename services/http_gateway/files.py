"""Files of OpenAI's Files API: the bytes in a directory, the metadata in Redis.

The directory (``NLP_FILES_DIR``) is a volume the operator keeps (a persistent volume
in Kubernetes, shared by every front door replica); Redis (with AOF, as the stack runs
it) holds each file's metadata and each tenant's listing. A file is written under a
temporary name, flushed to disk and renamed before its metadata exists, so a file that
is listed is whole. Each tenant has its own subdirectory and key space: another tenant's
file id is simply not there.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from services.http_gateway.batchfile import file_object, is_id, new_id
from shared.contracts.names import Names

_FILE_ID_PREFIX = "file-"


class FileTooLargeError(Exception):
    """An upload over the size limit."""


class FileStorageError(Exception):
    """The files directory failed (full, gone, read-only): not the caller's fault, and
    not Redis's."""


def new_file_id() -> str:
    return new_id(_FILE_ID_PREFIX)


def valid_file_id(file_id: str) -> bool:
    return is_id(file_id, _FILE_ID_PREFIX)


def text_fields(fields: dict[Any, Any]) -> dict[str, str]:
    """A Redis hash reply as text."""
    return {text(k): text(v) for k, v in fields.items()}


class FileStore:
    """Create, read, list and delete a tenant's files."""

    def __init__(self, client: aioredis.Redis, names: Names, root: Path) -> None:
        self.client = client
        self.names = names
        self.root = root

    def directory(self, tenant: str) -> Path:
        # Tenant names are [a-z0-9-]; development mode's tenant is "".
        return self.root / (tenant or "_dev")

    def path(self, tenant: str, file_id: str) -> Path:
        return self.directory(tenant) / file_id

    async def create(
        self, tenant: str, filename: str, purpose: str, chunks: AsyncIterator[bytes], limit: int
    ) -> dict[str, Any]:
        """Store an upload read from ``chunks`` (FileTooLargeError over ``limit`` bytes)."""
        file_id = new_file_id()
        directory = self.directory(tenant)
        partial = directory / f".{file_id}.upload"
        size = 0
        try:
            await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
            with partial.open("wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise FileTooLargeError(f"a file is at most {limit} bytes")
                    await asyncio.to_thread(out.write, chunk)
                await asyncio.to_thread(_sync, out)
            size = await asyncio.to_thread(_settle, partial, self.path(tenant, file_id))
        except OSError as exc:
            raise FileStorageError(str(exc)) from exc
        finally:
            partial.unlink(missing_ok=True)
        return await self.record(tenant, file_id, size, filename, purpose)

    async def adopt(
        self, tenant: str, file_id: str, written: Path, filename: str, purpose: str
    ) -> dict[str, Any]:
        """Make the whole file ``written`` (flushed to disk) the file ``file_id``.
        Repeating it for a file already adopted is harmless."""
        size = await asyncio.to_thread(_settle, written, self.path(tenant, file_id))
        return await self.record(tenant, file_id, size, filename, purpose)

    async def record(
        self, tenant: str, file_id: str, size: int, filename: str, purpose: str
    ) -> dict[str, Any]:
        """List the file (its bytes are in place); its creation time is the first record's."""
        fields: dict[Any, Any] = {
            "id": file_id,
            "bytes": str(size),
            "filename": filename,
            "purpose": purpose,
        }
        key = self.names.file_key(tenant, file_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "created_at", f"{time.time():.6f}")
            pipe.hset(key, mapping=fields)
            pipe.hget(key, "created_at")
            *_, created = await pipe.execute()
        created = text(created)
        await self.client.zadd(self.names.files_key(tenant), {file_id: float(created)})
        return file_object({**fields, "created_at": created})

    async def readable(self, tenant: str, file_id: str) -> Path:
        """The path of a listed file's bytes; FileStorageError when they are gone."""
        path = self.path(tenant, file_id)
        if not await asyncio.to_thread(path.is_file):
            raise FileStorageError(f"{file_id}'s bytes are missing")
        return path

    async def get(self, tenant: str, file_id: str) -> dict[str, str] | None:
        """The file's stored fields, or None."""
        if not valid_file_id(file_id):
            return None
        fields = text_fields(await self.client.hgetall(self.names.file_key(tenant, file_id)))
        return fields or None

    async def page(
        self, tenant: str, purpose: str | None, limit: int, after: str | None, newest_first: bool
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of the tenant's files (and whether more follow)."""
        key = self.names.files_key(tenant)
        found: list[dict[str, Any]] = []
        start = 0
        if after:
            rank: Any = await (self.client.zrevrank if newest_first else self.client.zrank)(
                key, after
            )
            if rank is None:
                return [], False
            start = int(rank) + 1
        step = max(limit + 1, 100)
        while len(found) <= limit:
            window = start + step - 1
            ids: Any = await (self.client.zrevrange if newest_first else self.client.zrange)(
                key, start, window
            )
            if not ids:
                break
            start += len(ids)
            async with self.client.pipeline(transaction=False) as pipe:
                for file_id in ids:
                    pipe.hgetall(self.names.file_key(tenant, text(file_id)))
                rows = await pipe.execute()
            for row in rows:
                fields = text_fields(row)
                if fields and (purpose is None or fields["purpose"] == purpose):
                    found.append(file_object(fields))
        return found[:limit], len(found) > limit

    async def delete(self, tenant: str, file_id: str) -> bool:
        if await self.get(tenant, file_id) is None:
            return False
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.names.file_key(tenant, file_id))
            pipe.zrem(self.names.files_key(tenant), file_id)
            await pipe.execute()
        try:
            await asyncio.to_thread(self.path(tenant, file_id).unlink, missing_ok=True)
        except OSError as exc:
            raise FileStorageError(str(exc)) from exc
        return True


def text(value: bytes | str) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else value


def _settle(written: Path, final: Path) -> int:
    if written.exists():
        os.replace(written, final)
    return final.stat().st_size


def _sync(out: Any) -> None:
    out.flush()
    os.fsync(out.fileno())
