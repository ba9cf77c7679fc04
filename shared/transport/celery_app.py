"""The Celery application of a worker kind, as the intake and the worker both see it.

Each kind has one Celery queue per lane (``Names.celery_queues``), and the worker
consumes all three. Its Redis channel orders and caps the BRPOP by lane
(:class:`LaneFetch`): the highest lane first except in a lower lane's weighted share
of the fetches, and no lower lane ever holding the slots reserved for higher ones, so
a worker full of bulk bundles still fetches (and starts) the next interactive message
at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from time import monotonic
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.state import maybe_shutdown
from kombu import Exchange, Queue
from kombu.transport import redis as kombu_redis

from shared.contracts.names import ALL_LANES, lane_rank
from shared.contracts.settings import WorkerSettings
from shared.transport.lanes import WeightedLanes

log = logging.getLogger(__name__)

# The transport option (broker_transport_options) that carries a worker's lane
# config to its channels: kombu copies only the option names it knows onto a channel,
# the channel reads this one from its connection's transport options.
LANES_OPTION = "nlp_lanes"

# BRPOP timeout while a lane is left out of it for its cap, the fallback that picks
# up a freed slot when the CLIENT UNBLOCK wake (below) missed the BRPOP. Redis checks
# blocked clients' timeouts on its `hz` cron (10/s by default): 5, 20 and 50 ms
# timeouts all returned after ~100 ms on Debian's 7.0 here, so shorter buys nothing.
CAPPED_BRPOP_TIMEOUT_S = 0.1


@dataclass(frozen=True)
class FetchPlan:
    """One BRPOP: the queues to ask, in order, and the lanes left out for their cap."""

    queues: list[str]
    capped: list[str]


class LaneFetch:
    """Which lane queues a worker's BRPOP asks for, in which order (pure logic).

    Key order: :meth:`WeightedLanes.order` over the lanes that are not capped (BRPOP
    returns from the first non-empty key), then any queue of no lane. A lane L is
    capped while the unacknowledged messages of L and the lanes below it reach
    ``slots[L]`` (``WorkerSettings.lane_slots``), raised by whatever Celery added to
    the prefetch count above ``concurrency`` (it does so for each ETA message held),
    and so is every lane below a capped one: standard and batch messages together
    never take an interactive slot, however few batch slots are in use.
    Not thread-safe: one per channel, used by its consuming thread.
    """

    def __init__(
        self,
        queues: Mapping[str, str],
        slots: Mapping[str, int],
        weights: Mapping[str, int],
        concurrency: int,
        capped_timeout_s: float = CAPPED_BRPOP_TIMEOUT_S,
    ) -> None:
        self.queues = {lane: queues[lane] for lane in ALL_LANES}
        self.slots = {lane: int(slots[lane]) for lane in ALL_LANES}
        self.concurrency = concurrency
        self.capped_timeout_s = capped_timeout_s
        self.lane_of_queue = {queue: lane for lane, queue in self.queues.items()}
        self._policy = WeightedLanes(weights)

    @classmethod
    def options(cls, kind: str, settings: WorkerSettings) -> dict[str, Any]:
        """The transport option value (plain data) that :meth:`from_options` reads."""
        return {
            "queues": settings.names.celery_queues(kind),
            "slots": {lane: settings.lane_slots(lane) for lane in ALL_LANES},
            "weights": settings.lane_weights.model_dump(),
            "concurrency": settings.concurrency,
            "capped_timeout_s": CAPPED_BRPOP_TIMEOUT_S,
        }

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> LaneFetch:
        return cls(
            options["queues"],
            options["slots"],
            options["weights"],
            int(options["concurrency"]),
            float(options.get("capped_timeout_s", CAPPED_BRPOP_TIMEOUT_S)),
        )

    def lane_of(self, delivery_info: Mapping[str, Any] | None) -> str | None:
        """The lane of a delivered message; None for a queue of no lane.

        kombu's virtual transport records only the publish's exchange and routing key
        in ``delivery_info`` (not the queue). Celery publishes to a declared direct
        queue through the default exchange (``''``) with the queue's name as routing
        key, and a retry re-publishes to that routing key; a publish through the
        queue's own exchange (``make_celery`` names it as the queue) is mapped too.
        """
        if not delivery_info:
            return None
        for key in ("routing_key", "exchange"):
            lane = self.lane_of_queue.get(delivery_info.get(key) or "")
            if lane is not None:
                return lane
        return None

    def caps(self, prefetch_count: int) -> dict[str, int]:
        """Each lane's cap on the unacked messages of it and the lanes below it."""
        extra = max(0, prefetch_count - self.concurrency)
        return {lane: self.slots[lane] + extra for lane in ALL_LANES}

    def plan(
        self, active: Sequence[str], unacked: Mapping[str, int], prefetch_count: int
    ) -> FetchPlan:
        """The next BRPOP's queues among the ``active`` ones, given the unacked messages
        by lane; charges the chosen lane's turn."""
        caps = self.caps(prefetch_count)
        open_lanes: list[str] = []
        capped: list[str] = []
        # The unacked messages of each lane and every lane below it.
        held = dict.fromkeys(ALL_LANES, 0)
        below = 0
        for lane in reversed(ALL_LANES):
            below += unacked.get(lane, 0)
            held[lane] = below
        full = False
        for lane in ALL_LANES:  # highest first: a capped lane caps every lower one
            full = full or held[lane] >= caps[lane]
            if self.queues[lane] in active:
                (capped if full else open_lanes).append(lane)
        queues = [self.queues[lane] for lane in self._policy.order(open_lanes)]
        queues += [queue for queue in active if queue not in self.lane_of_queue]
        return FetchPlan(queues, capped)


class _QoS(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        # After losing Redis, Celery collects the connection (its client is gone) and
        # then closes it; restoring the unacknowledged messages would build a new pool
        # from that client and raise AttributeError, which ends the worker process
        # (celery 5.7, kombu 5.7). Redis is away anyway: the messages stay unacked in
        # Redis, where the visibility timeout restores them, and the intake re-sends
        # tasks that went silent long before that.
        if self._collected():
            return
        super().restore_unacked(client)

    def _collected(self) -> bool:
        """Whether Celery has collected this channel's connection (Redis was lost)."""
        transport = self.channel.connection
        return transport is None or transport.client is None

    # Pool threads ack (and reject): a slot they free may be a capped lane's.
    def ack(self, delivery_tag: str) -> None:
        if self._collected():
            # A task that finished after Redis was lost (or failed over): acking on the
            # dead connection raises AttributeError and ends the worker. Its message
            # stays unacked, the visibility timeout restores it, and the worker that
            # gets it again skips it (the task has its result).
            return
        delivered: Any = self._delivered
        message = delivered.get(delivery_tag)
        super().ack(delivery_tag)
        _slot_freed(self.channel, message)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self._collected():
            return  # as ack
        delivered: Any = self._delivered
        message = delivered.get(delivery_tag)
        super().reject(delivery_tag, requeue)
        _slot_freed(self.channel, message)


def _slot_freed(channel: object, message: Any) -> None:
    if isinstance(channel, _Channel):
        channel.slot_freed(message)


class _Channel(kombu_redis.Channel):
    """kombu's Redis channel with the lane-aware BRPOP of :class:`LaneFetch`.

    While a lane is capped, an ack that frees one of its slots ends the pending
    BRPOP at once (CLIENT UNBLOCK, Redis >= 5), so the next fetch asks for that lane
    again; a short BRPOP timeout is the fallback. Without the lane option (the
    intake's producers, other apps), it behaves as kombu's.
    """

    QoS = _QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._wake_lock = threading.Lock()
        # Set while a BRPOP that leaves lanes out is pending: the highest such lane's
        # rank (an ack of that lane or a lower one may free a slot for it).
        self._wake_rank: int | None = None
        self._wake_ok = True
        self._brpop_client_id: int | None = None
        self._brpop_id_sock: object = None
        super().__init__(*args, **kwargs)
        connection: Any = self.connection
        options = connection.client.transport_options.get(LANES_OPTION)
        self.lanes = LaneFetch.from_options(options) if options else None

    def unacked_by_lane(self) -> dict[str, int]:
        """Messages delivered and not yet acknowledged, by lane (consuming thread)."""
        assert self.lanes is not None
        counts = dict.fromkeys(ALL_LANES, 0)
        qos: Any = self.qos
        dirty = qos._dirty
        # Only this thread adds to _delivered; acks from other threads go to _dirty.
        for tag, message in qos._delivered.items():
            if tag not in dirty:
                lane = self.lanes.lane_of(message.delivery_info)
                if lane is not None:
                    counts[lane] += 1
        return counts

    def _brpop_start(self, timeout: float | None = None) -> None:
        kombu: Any = self  # kombu-stubs lack the Redis channel's internals
        if self.lanes is None:
            base: Any = kombu_redis.Channel
            base._brpop_start(self, timeout)
            return
        if timeout is None:
            timeout = self.brpop_timeout
        plan = self.lanes.plan(
            kombu.active_queues, self.unacked_by_lane(), kombu.qos.prefetch_count
        )
        if not plan.queues:
            return  # every lane capped: the prefetch is full too; kombu polls again
        client_id = None
        if plan.capped:
            timeout = min(timeout or self.lanes.capped_timeout_s, self.lanes.capped_timeout_s)
            client_id = self._client_id()
        # As kombu's: priority steps (one, [0], with make_celery) within each queue.
        keys = [kombu._q_for_pri(q, pri) for pri in self.priority_steps for q in plan.queues]
        command_args: list[Any] = ["BRPOP", *keys, timeout or 0]
        if self.global_keyprefix:
            command_args = kombu.client._prefix_args(command_args)
        kombu._in_poll = kombu.client.connection
        kombu._brpop_sent_at = monotonic()
        kombu.client.connection.send_command(*command_args)
        # Armed once sent: an ack between the plan and here is left to the timeout.
        with self._wake_lock:
            self._wake_rank = lane_rank(plan.capped[0]) if client_id is not None else None

    def _client_id(self) -> int | None:
        """The Redis client id of the BRPOP connection (asked once per socket)."""
        kombu: Any = self
        connection = kombu.client.connection
        sock = getattr(connection, "_sock", None)
        if not self._wake_ok or sock is None:
            return None
        if sock is not self._brpop_id_sock:
            try:
                connection.send_command("CLIENT", "ID")
                self._brpop_client_id = int(connection.read_response())
            except kombu.ResponseError as exc:  # e.g. an ACL without CLIENT
                log.info("no CLIENT ID (%s): capped lanes resume on the BRPOP timeout", exc)
                self._wake_ok = False
                return None
            self._brpop_id_sock = sock
        return self._brpop_client_id

    def slot_freed(self, message: Any) -> None:
        """Called (from any thread) after a message's ack or reject: ends the pending
        BRPOP if it leaves out a lane that this message's slot counted against."""
        if message is None or self.lanes is None or self._wake_rank is None:
            return
        lane = self.lanes.lane_of(message.delivery_info)
        if lane is None:
            return
        with self._wake_lock:
            if self._wake_rank is None or lane_rank(lane) < self._wake_rank:
                return
            self._wake_rank = None  # one wake per BRPOP
            client_id = self._brpop_client_id
        kombu: Any = self
        try:
            with kombu.conn_or_acquire() as client:
                # As if the BRPOP timed out: kombu then sends the next, with this lane.
                client.client_unblock(client_id)
        except kombu.ResponseError as exc:
            log.info("no CLIENT UNBLOCK (%s): capped lanes resume on the BRPOP timeout", exc)
            self._wake_ok = False
        except kombu.connection_errors:
            log.debug("could not wake the BRPOP", exc_info=True)


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


class _SentinelChannel(_Channel, kombu_redis.SentinelChannel):
    """The lane-aware channel on the primary that the Sentinels name (reconnecting
    finds the new one after a failover)."""


class RedisSentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with the lane-aware channel."""

    Channel = _SentinelChannel


def broker_url(settings: WorkerSettings) -> str:
    """Celery's broker URL: ``redis_url``, or with Sentinels kombu's ``sentinel://`` list
    (the database from ``redis_url``)."""
    if not settings.redis_sentinels:
        return settings.redis_url
    parsed = urlsplit(settings.redis_url)
    auth = parsed.netloc.rpartition("@")[0]
    auth = f"{auth}@" if auth else ""
    db = parsed.path.lstrip("/") or "0"
    return ";".join(
        f"sentinel://{auth}{host}:{port}/{db}" for host, port in settings.sentinel_addresses()
    )


def make_celery(kind: str, settings: WorkerSettings) -> Celery:
    """Celery app whose broker is Redis and whose queues are the kind's (namespaced)
    lane queues; the default queue is the standard lane's.

    Results go to the platform's own store (``shared.transport.results``), so Celery's result
    backend is off. ``acks_late`` with ``reject_on_worker_lost`` and a visibility
    timeout above the longest task is what makes a SIGKILLed worker lose nothing.
    """
    lane_queues = settings.names.celery_queues(kind)
    app = Celery(f"nlp-{kind}", broker=broker_url(settings), set_as_current=False)
    # A class is taken as it is (a name must be an alias).
    transport: Any = RedisSentinelTransport if settings.redis_sentinels else RedisTransport
    sentinel_options: dict[str, Any] = {}
    if settings.redis_sentinels:
        sentinel_options = {
            "master_name": settings.redis_master_name,
            "sentinel_kwargs": {"socket_connect_timeout": 1.0, "socket_timeout": 2.0},
        }
    app.conf.update(
        broker_transport=transport,
        # Routing key (and exchange) named as the queue: a message's delivery_info,
        # and so a retry's destination, names its lane queue.
        task_queues=[
            Queue(queue, Exchange(queue, type="direct"), routing_key=queue)
            for queue in lane_queues.values()
        ],
        task_default_queue=lane_queues["standard"],
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
            # One Redis list per queue: lanes order the work, not kombu's priorities
            # (and the intake's LLEN of a lane queue is then its whole depth).
            "priority_steps": [0],
            LANES_OPTION: LaneFetch.options(kind, settings),
            **sentinel_options,
        },
        enable_utc=True,
    )
    ssl_options = settings.redis_ssl()
    if ssl_options:
        app.conf.broker_use_ssl = ssl_options
    return app
