"""A queue per lane (our channel) or kombu's priorities: which starts interactive work
sooner in a worker full of batch work, and what it costs the batch lane.

    python -m bench.celery_lanes [--batch 3000] [--bundle-ms 200] [--probes 20]
                                 [--window-s 5] [--out PATH]

A real ``redis-server`` and a real Celery worker (threads pool, WorkerSettings'
concurrency and reserved slots), in this process. Batch tasks model bundles: each
holds a slot and runs ``bundle-ms`` on one serial engine (a lock), so the batch
lane's throughput is the engine's, as in the worker, not its slot count. Interactive
tasks record when they start. Two configurations:

    lanes      make_celery: a queue per lane, the lane-aware BRPOP (order and caps)
    lanes-timeout  the same without the CLIENT UNBLOCK wake: a freed batch slot is
               seen when the capped BRPOP times out (CAPPED_BRPOP_TIMEOUT_S)
    priority   one queue, kombu's priority_steps [0, 3, 6, 9]; interactive messages
               priority 0 (Redis: the highest), batch 9

Each: interactive probes on an idle worker; then ``batch`` batch messages queued and
the worker full; the batch lane's throughput alone over ``window-s`` and how soon a
freed batch slot gets its next batch task (refill); then interactive probes at random
gaps (up to one bundle) over the same window: each probe's send → start latency, how
many batch tasks started in between (its position), and the batch throughput
meanwhile. Prints a table; writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu import Queue

from bench.common import note, table
from deploy.local.redis import serving as redis_serving
from shared.contracts.settings import WorkerSettings
from shared.transport.celery_app import LANES_OPTION, RedisTransport, make_celery

KIND = "classification"
TASK = "bench.lanes.run"


@dataclass
class Recorder:
    """Task starts and ends as the worker's threads saw them."""

    bundle_s: float
    engine: threading.Lock = field(default_factory=threading.Lock)
    lock: threading.Lock = field(default_factory=threading.Lock)
    batch_starts: list[float] = field(default_factory=list)
    batch_ends: list[float] = field(default_factory=list)
    probes: dict[str, float] = field(default_factory=dict)
    stopping: bool = False

    def run(self, tag: str) -> None:
        started = time.monotonic()
        if tag.startswith("i"):
            with self.lock:
                self.probes[tag] = started
            return
        with self.lock:
            self.batch_starts.append(started)
        if not self.stopping:
            with self.engine:
                time.sleep(self.bundle_s)
        with self.lock:
            self.batch_ends.append(time.monotonic())

    def ended_between(self, start: float, end: float) -> int:
        with self.lock:
            return sum(start <= t < end for t in self.batch_ends)

    def started_between(self, start: float, end: float) -> int:
        with self.lock:
            return sum(start <= t < end for t in self.batch_starts)

    def refills(self, start: float, end: float) -> list[float]:
        """For each batch task that ended in [start, end): until the next one started."""
        with self.lock:
            starts = sorted(self.batch_starts)
            ends = [t for t in self.batch_ends if start <= t < end]
        return [min((s for s in starts if s >= t), default=end) - t for t in ends]


@dataclass
class Config:
    name: str
    app: Celery
    queue: Callable[[str], str]
    priority: Callable[[str], int | None]
    wake: bool = True


def _lanes(settings: WorkerSettings) -> Config:
    queues = settings.names.celery_queues(KIND)
    return Config("lanes", make_celery(KIND, settings), queues.__getitem__, lambda _: None)


def _lanes_timeout(settings: WorkerSettings) -> Config:
    config = _lanes(settings)
    config.name, config.wake = "lanes-timeout", False
    return config


def _priority(settings: WorkerSettings) -> Config:
    app = make_celery(KIND, settings)
    one = settings.names.celery_queue(KIND, "standard")
    options = dict(app.conf.broker_transport_options)
    del options[LANES_OPTION]
    options["priority_steps"] = [0, 3, 6, 9]  # kombu's default
    app.conf.update(
        task_queues=[Queue(one)], task_default_queue=one, broker_transport_options=options
    )
    return Config("priority", app, lambda _: one, lambda lane: 0 if lane == "interactive" else 9)


def _send(config: Config, lane: str, tag: str, producer: Any = None) -> None:
    config.app.send_task(
        TASK,
        kwargs={"tag": tag},
        queue=config.queue(lane),
        priority=config.priority(lane),
        producer=producer,
    )


def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not get there")
        time.sleep(0.005)


def _probe(config: Config, rec: Recorder, tag: str) -> tuple[float, int]:
    """One interactive task: send → start seconds, batch tasks started in between."""
    sent = time.monotonic()
    _send(config, "interactive", tag)
    _wait(lambda: tag in rec.probes, 30)
    return rec.probes[tag] - sent, rec.started_between(sent, rec.probes[tag])


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(config: Config, settings: WorkerSettings, args: argparse.Namespace) -> dict[str, Any]:
    rec = Recorder(args.bundle_ms / 1000)
    config.app.task(name=TASK, shared=False)(rec.run)  # shared: an earlier app's would win
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.flushdb()
    rng = random.Random(7)
    channel: Any = RedisTransport.Channel
    slot_freed = channel.slot_freed
    if not config.wake:
        channel.slot_freed = lambda self, message: None
    with start_worker(
        config.app,
        pool="threads",
        concurrency=settings.concurrency,
        perform_ping_check=False,
        shutdown_timeout=60,
    ):
        note(f"{config.name}: idle probes")
        idle = [_probe(config, rec, f"i-idle-{i}")[0] for i in range(args.probes)]
        with config.app.producer_or_acquire() as producer:
            for i in range(args.batch):
                _send(config, "batch", f"b{i}", producer)
        held = settings.concurrency if config.name == "priority" else settings.lane_slots("batch")
        _wait(lambda: len(rec.batch_starts) >= held, 30)
        note(f"{config.name}: {held} batch tasks running, {args.batch} queued")
        time.sleep(1.0)  # steady state
        start = time.monotonic()
        time.sleep(args.window_s)
        alone = rec.ended_between(start, time.monotonic()) / args.window_s
        refills = rec.refills(start, time.monotonic() - 0.5)
        loaded, positions = [], []
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < args.window_s:
            latency, position = _probe(config, rec, f"i-loaded-{i}")
            loaded.append(latency)
            positions.append(position)
            i += 1
            time.sleep(rng.uniform(0, rec.bundle_s))  # not in step with the bundles
        mixed = rec.ended_between(start, time.monotonic()) / (time.monotonic() - start)
        # Stop: what is queued goes, what runs skips the engine.
        client.delete(*[k for k in client.keys("*") if not str(k).startswith("_kombu")])
        rec.stopping = True
    channel.slot_freed = slot_freed
    client.close()
    return {
        "config": config.name,
        "idle_p50_ms": _ms(idle, 0.5),
        "idle_p95_ms": _ms(idle, 0.95),
        "loaded_p50_ms": _ms(loaded, 0.5),
        "loaded_p95_ms": _ms(loaded, 0.95),
        "loaded_max_ms": 1000 * max(loaded),
        "probes": len(loaded),
        "mean_position": statistics.fmean(positions),
        "refill_p50_ms": _ms(refills, 0.5),
        "refill_p95_ms": _ms(refills, 0.95),
        "batch_alone_per_s": alone,
        "batch_with_interactive_per_s": mixed,
    }


@contextmanager
def _redis() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-lanes-") as tmp, redis_serving(Path(tmp)) as url:
        yield url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=3000, help="batch messages queued")
    parser.add_argument("--bundle-ms", type=float, default=200, help="engine time per bundle")
    parser.add_argument("--probes", type=int, default=20, help="interactive probes when idle")
    parser.add_argument("--window-s", type=float, default=5, help="each throughput window")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    rows = []
    with _redis() as url:
        for build in (_lanes, _lanes_timeout, _priority):
            settings = WorkerSettings(redis_url=url, namespace=f"bench-{uuid.uuid4().hex[:6]}")
            rows.append(measure(build(settings), settings, args))
    headers = list(rows[0])
    print(table(headers, [[row[h] for h in headers] for row in rows]))
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}))


if __name__ == "__main__":
    main()
