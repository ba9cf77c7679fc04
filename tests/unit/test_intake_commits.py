"""When the intake commits handed-off offsets: on its interval, before a rebalance takes
partitions, and what it keeps when the broker refuses a commit."""

from __future__ import annotations

from dataclasses import dataclass

from shared.contracts.settings import WorkerSettings
from shared.runtime.intake import Intake
from tests.unit.fakes import P0, P1, FakeConsumer, FakeIntakeStore, make_intake


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


def make(
    interval_ms: int = 1000, store: FakeIntakeStore | None = None
) -> tuple[Intake, FakeConsumer, Clock]:
    consumer, clock = FakeConsumer(), Clock()
    intake = make_intake(
        WorkerSettings(commit_interval_ms=interval_ms),
        consumer=consumer,
        clock=clock,
        store=store,
    )
    intake._commit_at = clock.now + interval_ms / 1000
    return intake, consumer, clock


def test_commits_the_latest_offsets_once_the_interval_passed() -> None:
    intake, consumer, clock = make(1000)
    intake.uncommitted |= {P0: 5}
    clock.now = 0.5
    intake.commit_due()
    intake.uncommitted |= {P0: 9, P1: 3}
    assert consumer.commits == []
    clock.now = 1.0
    intake.commit_due()
    assert consumer.commits == [{P0: 9, P1: 3}]
    assert intake.uncommitted == {}
    clock.now = 1.5
    intake.uncommitted |= {P1: 4}
    intake.commit_due()  # the next interval has not passed yet
    assert consumer.commits == [{P0: 9, P1: 3}]


def test_interval_zero_commits_after_every_poll() -> None:
    intake, consumer, _ = make(0)
    for offset in (1, 2, 3):
        intake.uncommitted |= {P0: offset}
        intake.commit_due()
    assert consumer.commits == [{P0: 1}, {P0: 2}, {P0: 3}]


def test_nothing_handed_off_commits_nothing() -> None:
    intake, consumer, clock = make(1000)
    clock.now = 10.0
    intake.commit_due()
    assert consumer.commits == []


def test_revoked_partitions_are_committed_before_they_go() -> None:
    intake, consumer, _ = make(1000)
    intake.uncommitted |= {P0: 7, P1: 2}
    intake.revoked({P0})
    assert consumer.commits == [{P0: 7}]
    assert intake.uncommitted == {P1: 2}


def test_a_refused_commit_keeps_assigned_partitions_for_the_next_try() -> None:
    intake, consumer, clock = make(1000)
    intake.uncommitted |= {P0: 7, P1: 2}
    consumer.refuse = True
    consumer.assigned = {P1}  # P0 went to another member: it re-reads those records
    clock.now = 1.0
    intake.commit_due()
    assert intake.uncommitted == {P1: 2}
    consumer.refuse = False
    clock.now = 2.0
    intake.commit_due()
    assert consumer.commits == [{P1: 2}]


def test_offsets_are_committed_only_once_the_replicas_confirmed_the_hand_offs() -> None:
    store = FakeIntakeStore(marks=[("primary-a", True), ("primary-a", False), ("primary-a", True)])
    intake, consumer, _ = make(0, store)
    intake.uncommitted |= {P0: 5}
    intake.commit_due()
    assert consumer.commits == [{P0: 5}]
    intake.uncommitted |= {P0: 8}
    intake.commit_due()  # not confirmed in time: kept for the next try
    assert consumer.commits == [{P0: 5}] and intake.uncommitted == {P0: 8}
    intake.commit_due()
    assert consumer.commits == [{P0: 5}, {P0: 8}]


def test_a_new_redis_primary_rereads_from_the_committed_offsets() -> None:
    """A failover may have lost hand-offs made since the last confirmation: nothing after
    it is committed, and the partitions are read again from the committed offsets."""
    store = FakeIntakeStore(marks=[("primary-a", True), ("primary-b", True), ("primary-b", True)])
    intake, consumer, _ = make(0, store)
    intake.uncommitted |= {P0: 5}
    intake.commit_due()
    intake.uncommitted |= {P0: 9, P1: 2}
    intake.commit_due()
    assert consumer.commits == [{P0: 5}] and consumer.rewinds == 1
    assert intake.uncommitted == {} and intake.stats["rewinds"] == 1
    intake.uncommitted |= {P0: 9}  # read and handed off again
    intake.commit_due()
    assert consumer.commits == [{P0: 5}, {P0: 9}] and consumer.rewinds == 1


def test_a_failover_before_any_confirmation_rereads_at_once() -> None:
    """Hand-offs the replica never confirmed (it was cut off), then a failover: the new
    primary is noticed even while no replica confirms, and the partitions are read
    again at once, not once a replica is back."""
    store = FakeIntakeStore(marks=[("primary-a", False), ("primary-b", False)])
    intake, consumer, _ = make(0, store)
    intake._primary = "primary-a"  # learnt before the first hand-off
    intake.uncommitted |= {P0: 5}
    intake.commit_due()  # not confirmed: nothing committed
    assert consumer.commits == [] and consumer.rewinds == 0
    intake.commit_due()  # the primary changed, still with no replica
    assert consumer.commits == [] and consumer.rewinds == 1 and intake.uncommitted == {}
