"""What the gateway knows of Kafka and Redis, and how RPCs are answered without them.

While a dependency is unreachable, every RPC that needs it is answered UNAVAILABLE at
once (a retrying client may retry), with a message that names the dependency and
nothing internal; health says NOT_SERVING; the outage is logged once. The gateway
notices an outage from the failures themselves (a lost subscription, a refused
command, librdkafka's "all brokers down"), probes the dependency twice a second while
it lasts, and serves again as soon as it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import grpc
import redis
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from nlp.v1 import generation_pb2, models_pb2, tasks_pb2
from services.gateway.interceptors import AroundInterceptor, Ctx
from shared.observability.telemetry import housekeeping
from shared.transport.kafka import AsyncProducer
from shared.transport.outages import (
    KAFKA,
    REDIS,
    UNAVAILABLE_DETAILS,
    KafkaUnavailableError,
    Outages,
    dependency_of,
)

log = logging.getLogger(__name__)

# How often an unreachable dependency is probed: the longest a recovered one goes unused.
OUTAGE_PROBE_S = 0.5
_PING_TIMEOUT_S = 1.0


def _method(service: str, name: str) -> str:
    return f"/{service}/{name}"


_TASKS = tasks_pb2.DESCRIPTOR.services_by_name["Tasks"].full_name
_GENERATION = generation_pb2.DESCRIPTOR.services_by_name["Generation"].full_name
_MODELS = models_pb2.DESCRIPTOR.services_by_name["Models"].full_name

# RPCs that read or wait but publish nothing need only Redis (Cancel publishes a result
# only when the task asked for it; a Kafka failure then is mapped like any other).
# Every other RPC publishes tasks and waits for results: it needs both.
REDIS_ONLY = frozenset(
    {
        _method(_TASKS, "Get"),
        _method(_TASKS, "Wait"),
        _method(_TASKS, "Cancel"),
        _method(_TASKS, "GetBatch"),
        _method(_TASKS, "StreamBatchResults"),
        _method(_GENERATION, "StreamTask"),
        _method(_MODELS, "List"),
    }
)
_EXEMPT = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def needs(method: str) -> tuple[str, ...]:
    """The dependencies an RPC cannot be served without."""
    if method.startswith(_EXEMPT):
        return ()
    return (REDIS,) if method in REDIS_ONLY else (REDIS, KAFKA)


class Dependencies:
    """Reachability of Redis (tracked here) and Kafka (as the producers see it); a
    change wakes the health loop."""

    def __init__(self, producers: Sequence[AsyncProducer], outages: Outages) -> None:
        self.producers = list(producers)
        self.outages = outages
        self.changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

        def changed(_dependency: str, _up: bool) -> None:
            # Producers report from their delivery thread.
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self.changed.set)

        outages.on_change = changed
        for producer in self.producers:
            if producer.outages is None:
                producer.outages = outages

    def up(self, dependency: str) -> bool:
        if dependency == KAFKA:
            return all(p.available for p in self.producers)
        return not self.outages.down(dependency)

    def missing(self, wanted: Sequence[str]) -> str | None:
        """The first of ``wanted`` known to be unreachable, if any."""
        for dependency in wanted:
            if not self.up(dependency):
                return dependency
        return None

    @contextlib.asynccontextmanager
    async def guard(self, method: str, context: Ctx) -> AsyncIterator[None]:
        """Refuse an RPC whose dependencies are down; answer a failure of one UNAVAILABLE."""
        missing = self.missing(needs(method))
        if missing is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_DETAILS[missing])
        try:
            yield
        except (redis.RedisError, OSError, KafkaUnavailableError) as exc:
            dependency = dependency_of(exc)
            if dependency == REDIS:
                self.outages.lost(REDIS, exc)  # the producers track Kafka themselves
            elif dependency is None:
                # Redis answered, with an error: no outage, but nothing for callers either.
                dependency = REDIS
                log.error("dependency failed", extra={"method": method, "error": repr(exc)})
            await context.abort(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_DETAILS[dependency])

    def interceptor(self) -> AroundInterceptor:
        return AroundInterceptor(self.guard, skip=lambda m: not needs(m))

    async def _check_redis(self, client: aioredis.Redis) -> bool:
        try:
            async with asyncio.timeout(_PING_TIMEOUT_S):
                await client.ping()
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self.outages.lost(REDIS, exc)
            return False
        self.outages.back(REDIS)
        return True

    async def _check_kafka(self) -> bool:
        ok = True
        for producer in self.producers:
            if not producer.available:
                ok = await asyncio.to_thread(producer.probe, _PING_TIMEOUT_S) and ok
        return ok

    async def health_loop(
        self,
        health: HealthServicer,
        client: aioredis.Redis,
        services: Sequence[str],
        interval_s: float,
    ) -> None:
        """Report NOT_SERVING while Redis or Kafka is unreachable; probe whichever is
        down every :data:`OUTAGE_PROBE_S`, the rest every ``interval_s``."""
        self._loop = asyncio.get_running_loop()
        status = None
        while True:
            self.changed.clear()
            with housekeeping():
                redis_ok = await self._check_redis(client)
                kafka_ok = await self._check_kafka()
            ok = redis_ok and kafka_ok
            new = (
                health_pb2.HealthCheckResponse.SERVING
                if ok
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            if new != status:
                status = new
                for name in ["", *services]:
                    await health.set(name, new)
                log.info("health changed", extra={"serving": ok})
            # A change reported by a request or a producer is acted on at once.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s if ok else OUTAGE_PROBE_S):
                    await self.changed.wait()
