"""Who is calling: API keys (and optionally TLS client certificates) mapped to tenants, each
with its limits; rate and concurrency quotas kept in Redis so that they hold across
gateway replicas.

The keys file (``NLP_AUTH_KEYS_FILE``, JSON, reloaded when it changes) holds only
SHA-256 digests of the keys::

    {"tenants": {"team-a": {"rate_per_s": 20, "max_in_flight": 200}, "team-b": {}},
     "keys": [{"id": "team-a-ci", "tenant": "team-a", "sha256": "<hex digest>"},
              {"id": "team-a-2024", "tenant": "team-a", "sha256": "…", "revoked": true},
              {"id": "ops", "tenant": "team-a", "sha256": "…", "admin": true}]}

    python -m services.gateway.auth new      # a fresh key and the digest to put in the file
    python -m services.gateway.auth hash     # the digest of a key read from stdin

Every RPC but health checks needs ``authorization: Bearer <key>`` (or, with
``NLP_TLS_CLIENT_AUTH=require``, a client certificate whose common name is a tenant; a
key, when one is sent as well, decides). A
missing, unknown, revoked or expired key is UNAUTHENTICATED with the same message; keys
never reach logs or traces. An ``admin`` key may also call the DeadLetters service.
``NLP_AUTH_MODE=dev`` turns all of it off (local stacks).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NoReturn

import grpc
import redis
import redis.asyncio as aioredis
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nlp.v1 import tasks_pb2
from services.gateway.interceptors import AroundInterceptor, Ctx
from shared.contracts.envelope import seconds
from shared.contracts.names import TENANT_RE, Names
from shared.contracts.settings import Limits
from shared.transport.outages import REDIS, UNAVAILABLE_DETAILS

log = logging.getLogger(__name__)


# Deliberately the same for every failure: nothing that helps guessing.
UNAUTHENTICATED_DETAILS = "missing or invalid credentials"
_EXEMPT_PREFIX = "/grpc.health.v1.Health/"


class TenantLimits(BaseModel):
    """One tenant's limits (``tenants.<name>`` in the keys file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_s: float = Field(50.0, gt=0, description="RPCs per second, sustained")
    burst: int = Field(100, gt=0, description="RPCs allowed at once above the rate")
    max_in_flight: int = Field(1000, gt=0, description="unfinished tasks at any time")
    max_text_bytes: int | None = Field(None, gt=0, description="below the global limit")
    max_new_tokens: int | None = Field(None, gt=0, description="below the global limit")
    max_batch_items: int = Field(100_000, gt=0, description="items in one batch stream")
    # A bulk-only tenant cannot crowd out interactive callers: its synchronous calls run
    # in this lane, and asking for a higher one is PERMISSION_DENIED (docs/lanes.md).
    highest_lane: Literal["interactive", "standard", "batch"] = Field(
        "interactive", description="the highest lane this tenant's tasks may run in"
    )


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="a name for the key, shown in logs instead of the key")
    tenant: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    revoked: bool = False
    expires_at: datetime | None = None
    # Operators' keys: the DeadLetters service (every tenant's dead letters) needs one.
    admin: bool = False


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: dict[str, TenantLimits]
    keys: list[KeyEntry] = Field(default_factory=list)

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, tenants: dict[str, TenantLimits]) -> dict[str, TenantLimits]:
        bad = [name for name in tenants if not TENANT_RE.match(name)]
        if bad:
            raise ValueError(f"tenant names must match {TENANT_RE.pattern}: {bad}")
        return tenants

    @model_validator(mode="after")
    def _known_tenants(self) -> KeysFile:
        unknown = sorted({k.tenant for k in self.keys} - set(self.tenants))
        if unknown:
            raise ValueError(f"keys name unknown tenants: {unknown}")
        return self


@dataclass(frozen=True)
class Tenant:
    """The caller. ``isolated`` is False only in development mode (no tenants at all)."""

    name: str
    limits: TenantLimits
    isolated: bool = True
    key_id: str = ""
    admin: bool = False

    def sees(self, owner: str) -> bool:
        """Whether a task or batch of tenant ``owner`` exists for this caller."""
        return not self.isolated or owner == self.name

    def request_limits(self, limits: Limits) -> Limits:
        """The global input limits, tightened by this tenant's."""
        update: dict[str, int] = {}
        if self.limits.max_text_bytes is not None:
            update["max_text_bytes"] = min(limits.max_text_bytes, self.limits.max_text_bytes)
        if self.limits.max_new_tokens is not None:
            update["max_new_tokens"] = min(limits.max_new_tokens, self.limits.max_new_tokens)
        return limits.model_copy(update=update) if update else limits


# Development mode trusts every caller with everything, the admin RPCs included.
DEV_TENANT = Tenant("", TenantLimits(), isolated=False, admin=True)

_caller: contextvars.ContextVar[Tenant] = contextvars.ContextVar("nlp_tenant")


def caller() -> Tenant:
    """The caller of the RPC being served, set by :meth:`Authenticator.interceptor` (or, in
    development mode, :func:`development_interceptor`). Unset is an error, never a
    default: a handler reached without either must not run with every tenant's rights."""
    return _caller.get()


def development_interceptor() -> AroundInterceptor:
    """Development mode: every caller is the one tenant-less tenant (sees everything)."""

    @contextlib.asynccontextmanager
    async def trusted(method: str, context: Ctx) -> AsyncIterator[None]:
        _caller.set(DEV_TENANT)
        yield

    return AroundInterceptor(trusted)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The keys file, reloaded when its modification time changes (checked at most every
    ``reload_s`` seconds). A file that fails to parse keeps the previous keys."""

    def __init__(self, path: Path, reload_s: float = 5.0) -> None:
        self.path = path
        self.reload_s = reload_s
        self._checked = 0.0
        self._mtime = -1.0
        self._by_digest: dict[str, KeyEntry] = {}
        self._tenants: dict[str, TenantLimits] = {}
        self._load()  # at start a bad file is fatal, not a silent lock-out

    def _load(self) -> None:
        mtime = self.path.stat().st_mtime
        parsed = KeysFile.model_validate_json(self.path.read_bytes())
        self._by_digest = {k.sha256: k for k in parsed.keys}
        self._tenants = dict(parsed.tenants)
        self._mtime = mtime
        log.info(
            "API keys loaded",
            extra={"tenants": len(self._tenants), "keys": len(self._by_digest)},
        )

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.reload_s:
            return
        self._checked = now
        try:
            if self.path.stat().st_mtime != self._mtime:
                self._load()
        except (OSError, ValueError) as exc:
            log.error(
                "keys file not reloaded; keeping the previous keys", extra={"error": str(exc)}
            )

    def tenant(self, name: str) -> Tenant | None:
        self._maybe_reload()
        limits = self._tenants.get(name)
        return None if limits is None else Tenant(name, limits)

    def authenticate(self, key: str) -> Tenant | None:
        self._maybe_reload()
        entry = self._by_digest.get(digest(key))
        if entry is None or entry.revoked:
            return None
        if entry.expires_at is not None and entry.expires_at.timestamp() <= time.time():
            return None
        limits = self._tenants.get(entry.tenant)
        if limits is None:
            return None
        return Tenant(entry.tenant, limits, key_id=entry.id, admin=entry.admin)


class QuotaExceededError(Exception):
    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


# Token bucket on Redis's clock (one clock for every gateway replica). KEYS[1] bucket;
# ARGV rate/s, burst, cost. Returns 0, or the milliseconds until ``cost`` tokens exist.
_RATE_LUA = """
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]) or burst, tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local wait = 0
if tokens < cost then
  wait = math.ceil((cost - tokens) * 1000 / rate)
else
  tokens = tokens - cost
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
"""

# In-flight tasks of a tenant: a sorted set of ids scored by deadline (seconds). Entries
# past their deadline are dropped first (a task that never reported back stops counting
# then). KEYS[1]; ARGV limit, then (id, deadline) pairs. Returns -1 when admitted, else
# the seconds until the earliest deadline among those in flight.
_ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit, n = tonumber(ARGV[1]), (#ARGV - 1) / 2
if redis.call('ZCARD', KEYS[1]) + n > limit then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, math.ceil((tonumber(first[2] or now + 1) - now)))
end
for i = 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
end
-- Kept until the latest deadline of any task in it (not just of these).
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(last[2])) + 60)
return -1
"""


class Quotas:
    """Rate and concurrency quotas per tenant, in Redis (shared by all gateway replicas).
    The stored result's script removes a finished task from its tenant's in-flight set."""

    def __init__(self, client: aioredis.Redis, names: Names) -> None:
        self.client = client
        self.names = names
        self._rate = client.register_script(_RATE_LUA)
        self._admit = client.register_script(_ADMIT_LUA)

    async def take(self, tenant: Tenant, cost: int = 1) -> None:
        """Spend ``cost`` requests of the tenant's rate; QuotaExceededError when it has none."""
        wait = int(
            await self._rate(
                [self.names.tenant_rate_key(tenant.name)],
                [tenant.limits.rate_per_s, tenant.limits.burst, cost],
            )
        )
        if wait > 0:
            raise QuotaExceededError(
                f"rate limit of {tenant.limits.rate_per_s:g} requests/s exceeded", wait
            )

    async def admit(self, tenant: Tenant, envelopes: Sequence[tasks_pb2.TaskEnvelope]) -> None:
        """Count the tasks as in flight, or QuotaExceededError when that would pass the
        tenant's ``max_in_flight``."""
        if not tenant.isolated or not envelopes:
            return
        args: list[Any] = [tenant.limits.max_in_flight]
        for envelope in envelopes:
            args += [envelope.task_id, f"{seconds(envelope.deadline):.6f}"]
        wait_s = int(await self._admit([self.names.tenant_inflight_key(tenant.name)], args))
        if wait_s >= 0:
            raise QuotaExceededError(
                f"{tenant.limits.max_in_flight} tasks in flight is this tenant's limit",
                min(wait_s, 60) * 1000,
            )

    async def release(self, tenant: Tenant, task_ids: Sequence[str]) -> None:
        """Tasks that will never run (not enqueued) stop counting."""
        if tenant.isolated and task_ids:
            await self.client.zrem(self.names.tenant_inflight_key(tenant.name), *task_ids)


def retry_details(
    code: grpc.StatusCode, message: str, retry_after_ms: int
) -> tuple[tuple[str, str | bytes], ...]:
    """Trailing metadata of an error that says when to retry: ``google.rpc.RetryInfo`` in
    the rich status details, and ``retry-after-ms`` for plain clients."""
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(retry_after_ms)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    rich = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=[info])
    return (*rpc_status.to_status(rich).trailing_metadata, ("retry-after-ms", str(retry_after_ms)))


async def abort_quota(context: Ctx, exc: QuotaExceededError) -> NoReturn:
    message = f"{exc}; retry after {exc.retry_after_ms} ms"
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    await context.abort(code, message, retry_details(code, message, exc.retry_after_ms))
    raise AssertionError("unreachable")


class Authenticator:
    """Authenticates every RPC but health checks and spends one unit of the caller's rate;
    handlers read the caller with :func:`caller`. Installed by :meth:`interceptor`."""

    def __init__(self, keys: KeyStore, quotas: Quotas, client_certs: bool) -> None:
        self.keys = keys
        self.quotas = quotas
        self.client_certs = client_certs

    def _identify(self, metadata: Sequence[tuple[str, Any]], context: Ctx) -> Tenant | None:
        for name, value in metadata:
            if name == "authorization":
                text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                scheme, _, token = text.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    return None
                return self.keys.authenticate(token.strip())
        if self.client_certs:
            names = list(context.auth_context().get("x509_common_name") or [])
            if len(names) == 1:
                return self.keys.tenant(names[0].decode("utf-8", "replace"))
        return None

    async def admit_call(self, metadata: Sequence[tuple[str, Any]], context: Ctx) -> Tenant:
        """The caller of a call with this metadata, its rate spent; aborts the call
        UNAUTHENTICATED, RESOURCE_EXHAUSTED or UNAVAILABLE instead."""
        tenant = self._identify(metadata, context)
        if tenant is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)
            raise AssertionError("unreachable")
        try:
            await self.quotas.take(tenant)
        except QuotaExceededError as exc:
            await abort_quota(context, exc)
        except (redis.RedisError, OSError):
            # Quotas live in Redis: the dependency guard logs the outage (once).
            await context.abort(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_DETAILS[REDIS])
        return tenant

    @contextlib.asynccontextmanager
    async def admitted(self, method: str, context: Ctx) -> AsyncIterator[None]:
        # Set in the RPC's own task: the handler's caller() sees it.
        _caller.set(await self.admit_call(tuple(context.invocation_metadata() or ()), context))
        yield

    def interceptor(self) -> AroundInterceptor:
        """The server interceptor: every RPC but health checks."""
        return AroundInterceptor(self.admitted, skip=lambda m: m.startswith(_EXEMPT_PREFIX))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["new"]:
        key = f"nlp_{secrets.token_urlsafe(32)}"
        print(json.dumps({"key": key, "sha256": digest(key)}, indent=2))
        return 0
    if args == ["hash"]:
        key = sys.stdin.readline().strip()
        if not key:
            print("error: no key on stdin", file=sys.stderr)
            return 2
        print(digest(key))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
