"""The lane-aware Celery fetch on a real Redis (its own redis-server, no local stack).

Batch messages stop at the batch cap while they are unacknowledged, an interactive
message is fetched (and started) next however many batch messages wait, a freed batch
slot resumes batch fetching at once, retries stay in their lane, and nothing is lost.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery, Task
from celery.contrib.testing.worker import start_worker
from kombu import Consumer, Message

from deploy.local.redis import serving as redis_serving
from shared.contracts.settings import WorkerSettings
from shared.transport.celery_app import make_celery

KIND = "classification"
TASK = "lanes.test.run"
# Batch cap 8 - 2 - 1 = 5 messages, standard cap (standard and batch together) 6.
CONCURRENCY, RESERVED_INTERACTIVE, RESERVED_STANDARD = 8, 2, 1
BATCH_CAP = CONCURRENCY - RESERVED_INTERACTIVE - RESERVED_STANDARD


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_serving(tmp_path_factory.mktemp("lanes-redis")) as url:
        yield url


@pytest.fixture
def settings(redis_url: str) -> Iterator[WorkerSettings]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield WorkerSettings(
        redis_url=redis_url,
        namespace=f"lanes-{uuid.uuid4().hex[:8]}",
        concurrency=CONCURRENCY,
        reserved_interactive_slots=RESERVED_INTERACTIVE,
        reserved_standard_slots=RESERVED_STANDARD,
        visibility_timeout_s=600,
    )
    client.close()


def _send(app: Celery, queue: str, n: int, tag: str) -> None:
    with app.producer_or_acquire() as producer:
        for i in range(n):
            app.send_task(TASK, kwargs={"tag": f"{tag}{i}"}, queue=queue, producer=producer)


class Held:
    """A consumer's deliveries, unacked until the test acks them."""

    def __init__(self, lane_of_queue: dict[str, str]) -> None:
        self.lane_of_queue = lane_of_queue
        self.messages: list[tuple[float, str, str, Message]] = []

    def __call__(self, body: Any, message: Message) -> None:
        lane = self.lane_of_queue[message.delivery_info["routing_key"]]
        self.messages.append((time.monotonic(), lane, body[1]["tag"], message))

    def lanes(self) -> list[str]:
        return [lane for _, lane, _, _ in self.messages]


def _drain(conn: Any, seconds: float, until: Callable[[], bool] = lambda: False) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.02)


@contextlib.contextmanager
def _consuming(settings: WorkerSettings, batch: int) -> Iterator[tuple[Any, Held, Celery]]:
    """A consumer of the kind's three lane queues with the worker's prefetch, after
    ``batch`` batch messages were queued; cancelled on exit."""
    app = make_celery(KIND, settings)
    queues = settings.names.celery_queues(KIND)
    _send(app, queues["batch"], batch, "b")
    held = Held({q: lane for lane, q in queues.items()})
    with app.connection_for_read() as conn:
        channel = conn.channel()
        declared = [q.bind(channel) for q in app.amqp.queues.values()]
        consumer = Consumer(channel, queues=declared, callbacks=[held], accept=["json"])
        consumer.qos(prefetch_count=CONCURRENCY)
        consumer.consume()
        try:
            # Batch fills its own slots, then stops while they stay unacked.
            _drain(conn, 5, lambda: len(held.messages) >= BATCH_CAP)
            _drain(conn, 0.5)
            assert held.lanes() == ["batch"] * BATCH_CAP
            yield conn, held, app
        finally:
            consumer.cancel()


def test_batch_stops_at_its_cap_and_interactive_is_fetched_next(
    settings: WorkerSettings,
) -> None:
    queues = settings.names.celery_queues(KIND)
    client = redis.Redis.from_url(settings.redis_url)
    with _consuming(settings, batch=300) as (conn, held, app):
        assert client.llen(queues["batch"]) == 300 - BATCH_CAP
        # An interactive message (and a standard one) is fetched next, at once.
        sent = time.monotonic()
        _send(app, queues["interactive"], 1, "i")
        _drain(conn, 5, lambda: len(held.messages) > BATCH_CAP)
        assert held.lanes()[BATCH_CAP:] == ["interactive"]
        assert held.messages[-1][0] - sent < 0.5
        _send(app, queues["standard"], 2, "s")
        _drain(conn, 5, lambda: len(held.messages) > BATCH_CAP + 1)
        _drain(conn, 0.5)
        # Standard and batch together hold their 6 slots: the second standard waits.
        assert held.lanes()[BATCH_CAP + 1 :] == ["standard"]
        assert client.llen(queues["standard"]) == 1
        _send(app, queues["interactive"], 1, "i-again")
        _drain(conn, 5, lambda: len(held.messages) > BATCH_CAP + 2)
        assert held.lanes()[-1] == "interactive"  # the reserved slots are interactive's
        assert client.llen(queues["batch"]) == 300 - BATCH_CAP
    client.close()


def test_a_freed_slot_resumes_its_lane_at_once_and_nothing_is_lost(
    settings: WorkerSettings,
) -> None:
    queues = settings.names.celery_queues(KIND)
    client = redis.Redis.from_url(settings.redis_url)
    with _consuming(settings, batch=300) as (conn, held, app):
        _send(app, queues["standard"], 2, "s")
        _drain(conn, 5, lambda: "standard" in held.lanes())
        _drain(conn, 0.3)
        assert held.lanes().count("standard") == 1  # standard and batch hold 6 slots
        # An acked standard message frees a slot: the waiting standard one comes next.
        next(m for _, lane, _, m in held.messages if lane == "standard").ack()
        _drain(conn, 5, lambda: held.lanes().count("standard") == 2)
        assert held.lanes().count("standard") == 2
        assert client.llen(queues["standard"]) == 0
        # An acked batch message: batch fetching resumes at once (the pending BRPOP is
        # woken rather than left to time out).
        before = len(held.messages)
        freed = time.monotonic()
        held.messages[0][3].ack()
        _drain(conn, 5, lambda: len(held.messages) > before)
        assert held.lanes()[before:] == ["batch"]
        assert held.messages[-1][0] - freed < 0.5
        _drain(conn, 0.3)
        assert len(held.messages) == before + 1  # at the cap again

        # Acking as they come, everything arrives exactly once.
        def ack_all() -> bool:
            for _, _, _, message in held.messages:
                if not message.acknowledged:
                    message.ack()
            return len(held.messages) == 300 + 2

        _drain(conn, 60, ack_all)
        ack_all()
    tags = [tag for _, _, tag, _ in held.messages]
    assert sorted(tags) == sorted([f"b{i}" for i in range(300)] + ["s0", "s1"])
    assert all(client.llen(q) == 0 for q in queues.values())
    assert client.hlen("unacked") == 0
    client.close()


class Recorder:
    """What the worker's task saw: each run's start and delivery_info routing key."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: dict[str, list[tuple[float, str]]] = {}
        self.release = threading.Event()

    def runs(self, prefix: str = "") -> int:
        with self.lock:
            return sum(len(v) for k, v in self.started.items() if k.startswith(prefix))


def _register(app: Celery, recorder: Recorder) -> None:
    @app.task(name=TASK, bind=True, max_retries=3, shared=False)
    def run(self: Task[Any, Any], /, tag: str, retry: bool = False) -> None:
        routing_key = str((self.request.delivery_info or {}).get("routing_key") or "")
        with recorder.lock:
            recorder.started.setdefault(tag, []).append((time.monotonic(), routing_key))
        if retry and self.request.retries == 0:
            raise self.retry(countdown=0)
        if tag.startswith("b"):
            assert recorder.release.wait(30)


def _ran_once(recorder: Recorder, tag: str) -> bool:
    return recorder.runs(tag) == 1


def _wait(condition: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def test_a_worker_full_of_batch_work_starts_an_interactive_task_at_once(
    settings: WorkerSettings,
) -> None:
    app = make_celery(KIND, settings)
    recorder = Recorder()
    _register(app, recorder)
    queues = settings.names.celery_queues(KIND)
    client = redis.Redis.from_url(settings.redis_url)
    _send(app, queues["batch"], 100, "b")
    with start_worker(app, pool="threads", concurrency=CONCURRENCY, perform_ping_check=False):
        assert _wait(lambda: recorder.runs("b") >= BATCH_CAP)
        time.sleep(0.5)
        assert recorder.runs("b") == BATCH_CAP  # the rest stay queued in Redis
        assert client.llen(queues["batch"]) == 100 - BATCH_CAP
        latencies = []
        for i in range(3):
            sent = time.monotonic()
            app.send_task(TASK, kwargs={"tag": f"i{i}"}, queue=queues["interactive"])
            assert _wait(functools.partial(_ran_once, recorder, f"i{i}"))
            latencies.append(recorder.started[f"i{i}"][0][0] - sent)
        assert max(latencies) < 0.5, latencies
        # A retry goes back to the lane queue its message came from.
        app.send_task(TASK, kwargs={"tag": "s-retry", "retry": True}, queue=queues["standard"])
        assert _wait(lambda: recorder.runs("s-retry") == 2)
        assert [key for _, key in recorder.started["s-retry"]] == [queues["standard"]] * 2
        recorder.release.set()
        assert _wait(lambda: recorder.runs("b") == 100, timeout=60)
        app.send_task(TASK, kwargs={"tag": "b-retry", "retry": True}, queue=queues["batch"])
        assert _wait(lambda: recorder.runs("b-retry") == 2)
        assert [key for _, key in recorder.started["b-retry"]] == [queues["batch"]] * 2
        assert _wait(lambda: client.hlen("unacked") == 0)
    assert all(recorder.runs(f"b{i}") >= 1 for i in range(100))
    assert all(client.llen(q) == 0 for q in queues.values())
    client.close()
