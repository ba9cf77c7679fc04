"""The intake's pause/resume decisions per lane, against stand-ins for the consumer and
Redis."""

from __future__ import annotations

import pytest
import redis

from shared.contracts.names import Names
from shared.contracts.settings import HighWater, LowWater, WorkerSettings
from shared.runtime.intake import Intake
from tests.unit.fakes import I0, P0, P1, P2, FakeConsumer, FakeRedis, make_intake

QUEUES = Names().celery_queues("classification")


def make() -> tuple[Intake, FakeConsumer, FakeRedis]:
    consumer, client = FakeConsumer(assigned={P0, P1, I0}), FakeRedis()
    settings = WorkerSettings(
        queue_high_water=HighWater(interactive=100, standard=50, batch=10),
        queue_low_water=LowWater(interactive=20, standard=10, batch=3),
    )
    return make_intake(settings, consumer=consumer, client=client), consumer, client


def test_a_lane_pauses_at_its_high_water_and_resumes_at_its_low_water() -> None:
    intake, consumer, client = make()
    trace = []
    for depth in [0, 9, 10, 12, 5, 4, 3, 2, 11]:
        client.depths[QUEUES["batch"]] = depth
        intake.apply_backpressure()
        trace.append(bool(consumer.paused))
    # Hysteresis: paused from 10 until the depth falls to 3, paused again at 11.
    assert trace == [False, False, True, True, True, True, False, False, True]


def test_a_full_batch_queue_holds_back_only_the_batch_topic() -> None:
    """Interactive records keep flowing while the bulk backlog waits in Kafka."""
    intake, consumer, client = make()
    client.depths[QUEUES["batch"]] = 500
    intake.apply_backpressure()
    assert consumer.paused == {P0, P1}
    assert intake.paused == {"batch"}
    client.depths[QUEUES["interactive"]] = 100
    intake.apply_backpressure()
    assert consumer.paused == {P0, P1, I0}
    client.depths[QUEUES["interactive"]] = 0
    intake.apply_backpressure()
    assert consumer.paused == {P0, P1}


def test_each_lane_has_its_own_water_marks() -> None:
    intake, consumer, client = make()
    client.depth = 60  # every queue: above standard's and batch's high water, not interactive's
    intake.apply_backpressure()
    assert intake.paused == {"standard", "batch"}
    assert I0 not in consumer.paused


def test_partitions_assigned_while_paused_are_paused_too() -> None:
    intake, consumer, client = make()
    client.depths[QUEUES["batch"]] = 50
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
        assert consumer.paused == {P0, P1, I0}
    assert intake.outages.down("Redis")
    client.down = False
    intake.apply_backpressure()
    assert not consumer.paused and not intake.outages.any_down


def test_back_from_an_outage_above_high_water_stays_paused() -> None:
    intake, consumer, client = make()
    client.depths[QUEUES["batch"]] = 50
    intake.apply_backpressure()
    client.down = True
    intake.apply_backpressure()
    client.down = False
    intake.apply_backpressure()
    assert consumer.paused == {P0, P1}  # the batch queue is still full; interactive resumed
    client.depths[QUEUES["batch"]] = 0
    intake.apply_backpressure()
    assert not consumer.paused


def test_other_redis_errors_are_not_taken_for_an_outage() -> None:
    intake, _, client = make()
    client.error = redis.ResponseError("WRONGTYPE")
    with pytest.raises(redis.ResponseError):
        intake.apply_backpressure()
