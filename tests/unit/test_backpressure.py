"""The intake's pause/resume decisions, against stand-ins for the consumer and Redis."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from shared.contracts.settings import WorkerSettings
from shared.observability.metrics import IntakeMetrics
from shared.runtime.intake import Intake


@dataclass
class FakeConsumer:
    partitions: set[str] = field(default_factory=lambda: {"p0", "p1"})
    paused: set[str] = field(default_factory=set)

    def assignment(self) -> set[str]:
        return set(self.partitions)

    def pause(self, *tps: str) -> None:
        self.paused |= set(tps)

    def resume(self, *tps: str) -> None:
        self.paused -= set(tps)


@dataclass
class FakeRedis:
    depth: int = 0
    down: bool = False

    def llen(self, _key: str) -> int:
        if self.down:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")
        return self.depth


def make() -> tuple[Intake, FakeConsumer, FakeRedis]:
    consumer, client = FakeConsumer(), FakeRedis()
    settings = WorkerSettings(queue_high_water=10, queue_low_water=3)
    none: Any = None
    intake = Intake(
        kind="classification",
        settings=settings,
        consumer=consumer,  # type: ignore[arg-type]
        producer=none,
        celery=none,
        store=none,
        redis=client,  # type: ignore[arg-type]
        metrics=IntakeMetrics("classification"),
    )
    return intake, consumer, client


def test_pauses_at_high_water_and_resumes_at_low_water() -> None:
    intake, consumer, client = make()
    trace = []
    for depth in [0, 9, 10, 12, 5, 4, 3, 2, 11]:
        client.depth = depth
        intake.apply_backpressure()
        trace.append(bool(consumer.paused))
    # Hysteresis: paused from 10 until the depth falls to 3, paused again at 11.
    assert trace == [False, False, True, True, True, True, False, False, True]


def test_partitions_assigned_while_paused_are_paused_too() -> None:
    intake, consumer, client = make()
    client.depth = 50
    intake.apply_backpressure()
    consumer.partitions.add("p2")  # a rebalance hands us a new partition
    intake.apply_backpressure()
    assert consumer.paused == {"p0", "p1", "p2"}


def test_a_redis_outage_pauses_everything_until_it_is_back() -> None:
    """The loop's first Redis call of every round: it must not raise (the intake used to
    exit within a second of Redis going away), and nothing is fetched meanwhile."""
    intake, consumer, client = make()
    intake.apply_backpressure()
    assert not consumer.paused
    client.down = True
    for _ in range(3):
        intake.apply_backpressure()
        assert consumer.paused == {"p0", "p1"}
    assert intake.outages.down("Redis")
    client.down = False
    intake.apply_backpressure()
    assert not consumer.paused and not intake.outages.any_down


def test_back_from_an_outage_above_high_water_stays_paused() -> None:
    intake, consumer, client = make()
    client.depth = 50
    intake.apply_backpressure()
    client.down = True
    intake.apply_backpressure()
    client.down = False
    intake.apply_backpressure()
    assert consumer.paused == {"p0", "p1"}  # the queue is still full
    client.depth = 0
    intake.apply_backpressure()
    assert not consumer.paused


def test_other_redis_errors_are_not_taken_for_an_outage() -> None:
    intake, _, client = make()

    def broken(_key: str) -> int:
        raise redis.ResponseError("WRONGTYPE")

    client.llen = broken  # type: ignore[method-assign]
    with pytest.raises(redis.ResponseError):
        intake.apply_backpressure()
