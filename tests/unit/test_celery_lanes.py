"""The lane-aware Celery fetch: queues declared, BRPOP key order, lane caps, wakes."""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

from shared.contracts.names import ALL_LANES
from shared.contracts.settings import WorkerSettings
from shared.transport.celery_app import (
    CAPPED_BRPOP_TIMEOUT_S,
    LANES_OPTION,
    LaneFetch,
    RedisTransport,
    make_celery,
)

SETTINGS = WorkerSettings(namespace="t", concurrency=64)  # reserved: 16 interactive, 8 standard
QUEUES = SETTINGS.names.celery_queues("ner")
OTHER = "celery-own-queue"


def _fetch(settings: WorkerSettings = SETTINGS) -> LaneFetch:
    return LaneFetch.from_options(LaneFetch.options("ner", settings))


def _held(interactive: int = 0, standard: int = 0, batch: int = 0) -> dict[str, int]:
    return {"interactive": interactive, "standard": standard, "batch": batch}


def test_the_app_declares_every_lane_queue_with_standard_as_default() -> None:
    app = make_celery("ner", SETTINGS)
    declared = {q.name: q for q in app.conf.task_queues}
    assert list(declared) == list(QUEUES.values())
    for name, queue in declared.items():
        # delivery_info then names the lane queue, for the caps and for retries.
        assert queue.exchange.name == name
        assert queue.routing_key == name
    assert app.conf.task_default_queue == QUEUES["standard"]
    options = app.conf.broker_transport_options
    assert options["priority_steps"] == [0]  # one Redis list per queue
    assert LaneFetch.from_options(options[LANES_OPTION]).queues == QUEUES
    assert app.conf.broker_transport is RedisTransport


def test_first_keys_follow_the_lane_weights_and_the_rest_go_highest_first() -> None:
    fetch = _fetch()
    active = list(QUEUES.values())
    firsts: Counter[str] = Counter()
    for _ in range(21 * 5):
        plan = fetch.plan(active, _held(), prefetch_count=64)
        assert plan.capped == []
        first = fetch.lane_of_queue[plan.queues[0]]
        firsts[first] += 1
        rest = [q for q in active if q != plan.queues[0]]
        assert plan.queues == [plan.queues[0], *rest]
    assert firsts == {"interactive": 80, "standard": 20, "batch": 5}


def test_batch_is_left_out_at_its_cap_and_the_reserved_slots_stay_open() -> None:
    fetch = _fetch()
    active = list(QUEUES.values())
    assert SETTINGS.lane_slots("batch") == 40
    assert QUEUES["batch"] in fetch.plan(active, _held(batch=39), 64).queues
    plan = fetch.plan(active, _held(batch=40), 64)
    assert plan.capped == ["batch"]
    assert set(plan.queues) == {QUEUES["interactive"], QUEUES["standard"]}
    # Standard: capped once standard and batch together hold 48 (64 - 16).
    assert fetch.plan(active, _held(standard=7, batch=40), 64).capped == ["batch"]
    plan = fetch.plan(active, _held(standard=8, batch=40), 64)
    assert plan.capped == ["standard", "batch"]
    assert plan.queues == [QUEUES["interactive"]]
    # Interactive messages count against no lower lane's cap.
    plan = fetch.plan(active, _held(interactive=20, batch=10), 64)
    assert plan.capped == []
    # Interactive: open up to the whole prefetch.
    plan = fetch.plan(active, _held(interactive=15, standard=48), 64)
    assert plan.capped == ["standard", "batch"]  # batch may not take interactive's slots
    assert plan.queues == [QUEUES["interactive"]]
    assert fetch.plan(active, _held(interactive=16, standard=48), 64).queues == []


def test_a_standard_message_may_take_a_batch_slot_left_free() -> None:
    plan = _fetch().plan(list(QUEUES.values()), _held(standard=40, batch=5), 64)
    assert plan.capped == []  # 45 < 48: standard still open, and batch (5 < 40) too
    plan = _fetch().plan(list(QUEUES.values()), _held(standard=43, batch=5), 64)
    # 48: the rest is interactive's, for batch too (though 5 < its own 40).
    assert plan.capped == ["standard", "batch"]


def test_caps_grow_with_what_celery_adds_to_the_prefetch() -> None:
    fetch = _fetch()
    # Celery raises the prefetch count by one for each ETA message it holds.
    assert fetch.caps(64) == {"interactive": 64, "standard": 48, "batch": 40}
    assert fetch.caps(67) == {"interactive": 67, "standard": 51, "batch": 43}
    assert fetch.caps(0) == fetch.caps(64)  # no prefetch limit: the settings' slots
    assert QUEUES["batch"] in fetch.plan(list(QUEUES.values()), _held(batch=42), 67).queues


def test_queues_of_no_lane_are_asked_last_and_never_capped() -> None:
    fetch = _fetch()
    active = [OTHER, *QUEUES.values()]
    plan = fetch.plan(active, _held(batch=40, standard=8), 64)
    assert plan.queues == [QUEUES["interactive"], OTHER]
    # A worker consuming only some lane queues asks only for those.
    plan = fetch.plan([QUEUES["batch"]], _held(), 64)
    assert plan.queues == [QUEUES["batch"]]


def test_the_lane_of_a_delivery_comes_from_its_routing_key_or_exchange() -> None:
    fetch = _fetch()
    assert fetch.lane_of({"exchange": "", "routing_key": QUEUES["batch"]}) == "batch"
    assert fetch.lane_of({"exchange": QUEUES["standard"], "routing_key": "x"}) == "standard"
    assert fetch.lane_of({"exchange": "", "routing_key": OTHER}) is None
    assert fetch.lane_of({}) is None
    assert fetch.lane_of(None) is None


# --- The channel, without Redis --------------------------------------------------------


def _message(lane: str | None) -> SimpleNamespace:
    key = QUEUES[lane] if lane else OTHER
    return SimpleNamespace(delivery_info={"exchange": "", "routing_key": key})


class _Unblocks:
    def __init__(self) -> None:
        self.ids: list[int] = []

    @contextmanager
    def client(self) -> Any:
        yield SimpleNamespace(client_unblock=self.ids.append)


def _channel(delivered: dict[str, Any], dirty: set[str]) -> tuple[Any, _Unblocks]:
    cls: Any = RedisTransport.Channel
    channel = cls.__new__(cls)
    channel.lanes = _fetch()
    channel._qos = SimpleNamespace(_delivered=delivered, _dirty=dirty)
    channel._wake_lock = threading.Lock()
    channel._wake_rank = None
    channel._wake_ok = True
    channel._brpop_client_id = 7
    unblocks = _Unblocks()
    channel.conn_or_acquire = unblocks.client
    return channel, unblocks


def test_unacked_messages_are_counted_by_lane_without_the_acked_ones() -> None:
    delivered = {f"b{i}": _message("batch") for i in range(5)}
    delivered |= {"s": _message("standard"), "i": _message("interactive"), "o": _message(None)}
    channel, _ = _channel(delivered, dirty={"b0", "b1"})
    assert channel.unacked_by_lane() == _held(interactive=1, standard=1, batch=3)


def test_an_ack_that_frees_a_capped_lane_wakes_the_pending_brpop_once() -> None:
    channel, unblocks = _channel({}, set())
    channel._wake_rank = ALL_LANES.index("standard")  # BRPOP without standard (and batch)
    channel.slot_freed(_message("interactive"))  # counts against no standard slot
    channel.slot_freed(_message(None))
    assert unblocks.ids == []
    channel.slot_freed(_message("batch"))
    channel.slot_freed(_message("standard"))  # the pending BRPOP is already woken
    assert unblocks.ids == [7]
    assert channel._wake_rank is None


def test_the_capped_timeout_is_short_but_not_below_redis_resolution() -> None:
    # Redis (hz 10) ends blocked clients' timeouts on a 100 ms cron: shorter buys nothing.
    assert CAPPED_BRPOP_TIMEOUT_S == 0.1
    assert _fetch().capped_timeout_s == CAPPED_BRPOP_TIMEOUT_S
