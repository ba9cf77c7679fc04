"""The Celery application of a worker kind, as the intake and the worker both see it."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.state import maybe_shutdown
from kombu.transport import redis as kombu_redis

from shared.contracts.settings import WorkerSettings


class _QoS(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        # After losing Redis, Celery collects the connection (its client is gone) and
        # then closes it; restoring the unacknowledged messages would build a new pool
        # from that client and raise AttributeError, which ends the worker process
        # (celery 5.7, kombu 5.7). Redis is away anyway: the messages stay unacked in
        # Redis, where the visibility timeout restores them, and the intake re-sends
        # tasks that went silent long before that.
        transport = self.channel.connection
        if transport is None or transport.client is None:
            return
        super().restore_unacked(client)


class _Channel(kombu_redis.Channel):
    QoS = _QoS


log = logging.getLogger(__name__)

# Celery waits 2 s, then 4, 6, ... up to 30 s between attempts to reach a lost broker:
# after a minute's outage, a Redis that is back goes unused for up to half a minute.
RECONNECT_FIRST_S = 0.5
RECONNECT_STEP_S = 0.5
RECONNECT_MAX_S = 2.0


class Consumer(CeleryConsumer):
    """Celery's worker consumer, reconnecting to Redis within seconds of its return."""

    def ensure_connected(self, conn: Any) -> Any:
        def failed(exc: Exception, interval: float) -> None:
            log.debug("broker unreachable, next try in %.1f s: %r", interval, exc)

        conn = conn.ensure_connection(
            failed,
            self.app.conf.broker_connection_max_retries,
            interval_start=RECONNECT_FIRST_S,
            interval_step=RECONNECT_STEP_S,
            interval_max=RECONNECT_MAX_S,
            callback=maybe_shutdown,
        )
        self.first_connection_attempt = False
        self.broker_connection_retry_attempt = 0
        return conn


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport, minus a crash on reconnecting after a Redis outage."""

    Channel = _Channel


def make_celery(kind: str, settings: WorkerSettings) -> Celery:
    """Celery app whose broker is Redis and whose queue is the kind's (namespaced) queue.

    Results go to the platform's own store (``shared.transport.results``), so Celery's result
    backend is off. ``acks_late`` with ``reject_on_worker_lost`` and a visibility
    timeout above the longest task is what makes a SIGKILLed worker lose nothing.
    """
    queue = settings.names.celery_queue(kind)
    app = Celery(f"nlp-{kind}", broker=settings.redis_url, set_as_current=False)
    transport: Any = RedisTransport  # a class is taken as it is (a name must be an alias)
    app.conf.update(
        broker_transport=transport,
        task_default_queue=queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_pool="threads",
        worker_concurrency=settings.concurrency,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        # Reconnect for as long as Redis is away (Celery gives up after 100 tries by
        # default, and the worker process then exits).
        broker_connection_max_retries=None,
        worker_consumer=f"{__name__}:Consumer",
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # kombu sweeps for abandoned (unacked) messages every interval * throttle
            # seconds (100 s by default); keep that well under the visibility timeout.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
        },
        enable_utc=True,
    )
    ssl_options = settings.redis_ssl()
    if ssl_options:
        app.conf.broker_use_ssl = ssl_options
    return app
