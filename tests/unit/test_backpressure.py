"""The intake's pause/resume decisions, against stand-ins for the consumer and Redis."""

from __future__ import annotations

import pytest
import redis

from shared.contracts.settings import WorkerSettings
from shared.runtime.intake import Intake
from tests.unit.fakes import P0, P1, P2, FakeConsumer, FakeRedis, make_intake


def make() -> tuple[Intake, FakeConsumer, FakeRedis]:
    consumer, client = FakeConsumer(), FakeRedis()
    settings = WorkerSettings(queue_high_water=10, queue_low_water=3)
    return make_intake(settings, consumer=consumer, client=client), consumer, client


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
    consumer.assigned.add(P2)  # a rebalance hands us a new partition
    intake.apply_backpressure()
    assert consumer.paused == {P0, P1, P2}


def test_a_redis_outage_pauses_everything_until_it_is_back() -> None:
    """The loop's first Redis call of every round: it must not raise (the intake used to
    exit within a second of Redis going away), and nothing is fetched meanwhile."""
    intake, consumer, client = make()
    intake.apply_backpressure()
    assert not consumer.paused
    client.down = True
    for _ in range(3):
        intake.apply_backpressure()
        assert consumer.paused == {P0, P1}
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
    assert consumer.paused == {P0, P1}  # the queue is still full
    client.depth = 0
    intake.apply_backpressure()
    assert not consumer.paused


def test_other_redis_errors_are_not_taken_for_an_outage() -> None:
    intake, _, client = make()
    client.error = redis.ResponseError("WRONGTYPE")
    with pytest.raises(redis.ResponseError):
        intake.apply_backpressure()
