"""Dependency outages: telling "Kafka or Redis is unreachable" from other failures,
building clients that fail fast while it lasts, and logging each outage once.

Every long-running process rides an outage out instead of exiting: what needs the
missing dependency is refused (the gateway) or paused (intake, worker), and resumes
by itself once the dependency answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import confluent_kafka
import kafka.errors
import kombu.exceptions
import redis
import redis.asyncio as aioredis
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.backoff
import redis.retry
import redis.sentinel

from shared.contracts.settings import ServiceSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

KAFKA = "Kafka"
REDIS = "Redis"

# What a caller is told: the dependency by its role, never an address or an exception.
UNAVAILABLE_DETAILS = {
    KAFKA: "the task queue (Kafka) is unavailable; retry later",
    REDIS: "the result store (Redis) is unavailable; retry later",
}

# A command to an unreachable Redis fails within about a second instead of redis-py's
# defaults (5 s connect timeout, 10 retries backing off to 1 s each): callers are
# answered promptly, and loops that retry on their own do not stall.
REDIS_CONNECT_TIMEOUT_S = 1.0
_REDIS_RETRIES = 2
_REDIS_BACKOFF = (0.25, 0.02)  # cap, base (s)

# librdkafka waits up to 10 s between reconnection attempts by default: a broker that
# came back would go unused that long.
KAFKA_RECONNECT_BACKOFF_MAX_MS = 1000

# Error codes of librdkafka that mean "no broker to talk to (now)".
_KAFKA_OUTAGE_CODES = {
    confluent_kafka.KafkaError._ALL_BROKERS_DOWN,
    confluent_kafka.KafkaError._TRANSPORT,
    confluent_kafka.KafkaError._MSG_TIMED_OUT,
    confluent_kafka.KafkaError._TIMED_OUT,
    confluent_kafka.KafkaError._PURGE_QUEUE,
    confluent_kafka.KafkaError._PURGE_INFLIGHT,
    confluent_kafka.KafkaError._WAIT_COORD,
    confluent_kafka.KafkaError.COORDINATOR_NOT_AVAILABLE,
    confluent_kafka.KafkaError.NOT_COORDINATOR,
    confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
    confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,
    confluent_kafka.KafkaError.REQUEST_TIMED_OUT,
    confluent_kafka.KafkaError.NOT_ENOUGH_REPLICAS,
    confluent_kafka.KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
}


class KafkaUnavailableError(Exception):
    """No broker acknowledged a message: Kafka is unreachable (or was, when it was sent)."""


class PublishUnconfirmedError(KafkaUnavailableError):
    """No acknowledgement in time for a message that was sent: it may be in Kafka."""


class ReplicasUnconfirmedError(Exception):
    """The Redis replicas did not confirm a write in time: a failover could lose it."""


# Delivery errors after which the message may have been written all the same.
_KAFKA_UNCONFIRMED_CODES = {
    confluent_kafka.KafkaError._MSG_TIMED_OUT,
    confluent_kafka.KafkaError._TIMED_OUT,
    confluent_kafka.KafkaError.REQUEST_TIMED_OUT,
}


def kafka_delivery_unconfirmed(error: confluent_kafka.KafkaError) -> bool:
    """Whether a failed delivery may still have reached the broker (it timed out)."""
    return error.code() in _KAFKA_UNCONFIRMED_CODES


def redis_options(settings: ServiceSettings) -> dict[str, Any]:
    """redis-py options of every synchronous client: TLS, and failing fast."""
    cap, base = _REDIS_BACKOFF
    return {
        **settings.redis_ssl(),
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_S,
        "retry": redis.retry.Retry(redis.backoff.ExponentialBackoff(cap, base), _REDIS_RETRIES),
    }


def _sentinel_target(settings: ServiceSettings) -> dict[str, Any]:
    """The database and credentials of ``redis_url`` (with Sentinels its host is unused)."""
    parsed = redis.connection.parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
    return {k: parsed[k] for k in ("db", "username", "password") if parsed.get(k) is not None}


def _sentinel_options(settings: ServiceSettings) -> dict[str, Any]:
    # The Sentinels themselves are asked with the same short timeouts.
    return {"socket_connect_timeout": REDIS_CONNECT_TIMEOUT_S, "socket_timeout": 2.0}


def redis_client(settings: ServiceSettings) -> redis.Redis:
    """A synchronous Redis client that fails fast: for ``settings.redis_url``, or with
    ``redis_sentinels`` for the primary they name now (a failover is followed: the next
    connection asks the Sentinels again)."""
    options = redis_options(settings)
    if settings.redis_sentinels:
        sentinels = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            settings.sentinel_addresses(), sentinel_kwargs=_sentinel_options(settings)
        )
        primary: redis.Redis = sentinels.master_for(  # type: ignore[no-untyped-call]
            settings.redis_master_name, **options, **_sentinel_target(settings)
        )
        return primary
    return redis.Redis.from_url(settings.redis_url, **options)


def async_redis_client(settings: ServiceSettings) -> aioredis.Redis:
    """The asyncio client of the same: fails fast while Redis is unreachable."""
    cap, base = _REDIS_BACKOFF
    options: dict[str, Any] = {
        **settings.redis_ssl(),
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_S,
        "retry": redis.asyncio.retry.Retry(
            redis.backoff.ExponentialBackoff(cap, base), _REDIS_RETRIES
        ),
    }
    if settings.redis_sentinels:
        sentinels = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            settings.sentinel_addresses(), sentinel_kwargs=_sentinel_options(settings)
        )
        client: aioredis.Redis = sentinels.master_for(
            settings.redis_master_name, **options, **_sentinel_target(settings)
        )
        return client
    return aioredis.Redis.from_url(settings.redis_url, **options)


def kafka_error_is_outage(error: confluent_kafka.KafkaError) -> bool:
    """A librdkafka error that says the cluster (or its leaders) cannot be reached."""
    return error.code() in _KAFKA_OUTAGE_CODES


def dependency_of(exc: BaseException) -> str | None:
    """:data:`KAFKA` or :data:`REDIS` when ``exc`` means that dependency is unreachable;
    None for any other failure (a bug, a refused request)."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)):
        return REDIS  # ReadOnlyError: a replica answers until a failover ends
    if isinstance(exc, kombu.exceptions.OperationalError):
        return REDIS  # the Celery broker (Redis) refused a publish
    if isinstance(exc, KafkaUnavailableError):
        return KAFKA
    if isinstance(
        exc,
        (
            kafka.errors.KafkaConnectionError,
            kafka.errors.BrokerNotAvailableError,
            kafka.errors.CoordinatorNotAvailableError,
            kafka.errors.KafkaTimeoutError,
            kafka.errors.NodeNotReadyError,
            kafka.errors.RequestTimedOutError,
            kafka.errors.NotLeaderForPartitionError,
            kafka.errors.LeaderNotAvailableError,
        ),
    ):
        return KAFKA
    if isinstance(exc, confluent_kafka.KafkaException) and exc.args:
        error = exc.args[0]
        if isinstance(error, confluent_kafka.KafkaError) and kafka_error_is_outage(error):
            return KAFKA
    return None


class Outages:
    """Which dependencies this process last found unreachable.

    :meth:`lost` and :meth:`back` may be called on every failure and success (from any
    thread); only a change of state is logged, so an outage is one warning and one
    "back" line, not a line per request. ``on_change(dependency, up)`` runs on each
    change (in the caller's thread).
    """

    def __init__(
        self,
        service: str,
        on_change: Callable[[str, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.on_change = on_change
        self.clock = clock
        self._since: dict[str, float] = {}
        self._lock = threading.Lock()

    def down(self, dependency: str) -> bool:
        """Whether ``dependency`` is unreachable as far as this process knows."""
        return dependency in self._since

    @property
    def any_down(self) -> bool:
        return bool(self._since)

    def lost(self, dependency: str, error: object = None) -> bool:
        """``dependency`` failed to answer; True when that starts an outage."""
        with self._lock:
            if dependency in self._since:
                return False
            self._since[dependency] = self.clock()
        log.warning(
            "%s unreachable; %s rides it out and resumes by itself",
            dependency,
            self.service,
            extra={"dependency": dependency, "error": str(error or "")[:300]},
        )
        if self.on_change is not None:
            self.on_change(dependency, False)
        return True

    def back(self, dependency: str) -> bool:
        """``dependency`` answered; True when that ends an outage."""
        with self._lock:
            since = self._since.pop(dependency, None)
        if since is None:
            return False
        log.warning(
            "%s reachable again after %.1f s",
            dependency,
            self.clock() - since,
            extra={"dependency": dependency, "outage_s": round(self.clock() - since, 3)},
        )
        if self.on_change is not None:
            self.on_change(dependency, True)
        return True

    def failed(self, exc: BaseException) -> bool:
        """Record ``exc`` if it is an outage (see :func:`dependency_of`); whether it was."""
        dependency = dependency_of(exc)
        if dependency is None:
            return False
        self.lost(dependency, exc)
        return True


def until_reachable(
    build: Callable[[], T],
    outages: Outages,
    stop: threading.Event | None = None,
    max_backoff_s: float = 5.0,
) -> T | None:
    """``build()`` once its dependency answers: an outage (see :func:`dependency_of`) at
    startup is waited out, with backoff, rather than ending the process. None when
    ``stop`` was set first; any other error is raised."""
    stop = stop or threading.Event()
    backoff = 0.25
    waited: set[str] = set()
    while not stop.is_set():
        try:
            built = build()
        except Exception as exc:
            dependency = dependency_of(exc)
            if dependency is None:
                raise
            outages.lost(dependency, exc)
            waited.add(dependency)
            stop.wait(backoff)
            backoff = min(backoff * 2, max_backoff_s)
            continue
        for dependency in waited:
            outages.back(dependency)
        return built
    return None
