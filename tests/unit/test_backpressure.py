"""The intake's pause/resume decisions, against stand-ins for the consumer and Redis."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.intake import Intake
from shared.metrics import IntakeMetrics
from shared.settings import WorkerSettings


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

    def llen(self, _key: str) -> int:
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
