"""The lane policy (weighted round robin) and how the gateway picks a task's lane."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from nlp.v1 import common_pb2
from services.gateway.auth import Tenant, TenantLimits
from services.gateway.core import lane_of
from shared.contracts.errors import InvalidRequestError
from shared.transport.lanes import WeightedLanes

WEIGHTS = {"interactive": 16, "standard": 4, "batch": 1}
INTERACTIVE, STANDARD, BATCH = (
    common_pb2.LANE_INTERACTIVE,
    common_pb2.LANE_STANDARD,
    common_pb2.LANE_BATCH,
)


def test_every_lane_gets_its_weights_share_when_all_wait() -> None:
    lanes = WeightedLanes(WEIGHTS)
    assert Counter(lanes.pick() for _ in range(21 * 10)) == {
        "interactive": 160,
        "standard": 40,
        "batch": 10,
    }


def test_the_lowest_lane_moves_within_one_round_under_a_flood() -> None:
    """Starvation-free: batch work is picked at least once every sum-of-weights picks."""
    lanes = WeightedLanes(WEIGHTS)
    picks = [lanes.pick() for _ in range(200)]
    positions = [k for k, p in enumerate(picks) if p == "batch"]
    assert positions[0] < 21
    gaps = [b - a for a, b in itertools.pairwise(positions)]
    assert gaps and max(gaps) <= 21, gaps


def test_only_waiting_lanes_are_picked_and_charged() -> None:
    lanes = WeightedLanes(WEIGHTS)
    assert lanes.pick(()) is None
    assert Counter(lanes.pick({"standard", "batch"}) for _ in range(50)) == {
        "standard": 40,
        "batch": 10,
    }
    # Interactive was never in the draw: it is not owed (or charged) anything.
    assert lanes.pick({"interactive", "batch"}) == "interactive"


def test_the_order_puts_this_turns_pick_first_then_the_rest_highest_first() -> None:
    lanes = WeightedLanes({"interactive": 1, "standard": 1, "batch": 1})
    orders = [lanes.order() for _ in range(3)]
    assert [o[0] for o in orders] == ["interactive", "standard", "batch"]
    assert orders[2] == ["batch", "interactive", "standard"]
    assert lanes.order({"batch"}) == ["batch"]


def test_weights_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        WeightedLanes({"interactive": 1, "standard": 0, "batch": 1})


def tenant(highest: str) -> Tenant:
    return Tenant("acme", TenantLimits.model_validate({"highest_lane": highest}))


def test_an_unspecified_lane_is_the_entry_points_default() -> None:
    anyone = tenant("interactive")
    assert lane_of(anyone, common_pb2.LANE_UNSPECIFIED, INTERACTIVE) == INTERACTIVE
    assert lane_of(anyone, common_pb2.LANE_UNSPECIFIED, BATCH) == BATCH
    assert lane_of(anyone, STANDARD, BATCH) == STANDARD


def test_a_bulk_only_tenant_runs_its_calls_in_its_highest_lane_and_may_ask_no_higher() -> None:
    bulk = tenant("batch")
    assert lane_of(bulk, common_pb2.LANE_UNSPECIFIED, INTERACTIVE) == BATCH
    assert lane_of(bulk, BATCH, STANDARD) == BATCH
    with pytest.raises(PermissionError, match="'batch' lane or below"):
        lane_of(bulk, STANDARD, STANDARD)
    with pytest.raises(InvalidRequestError, match="lane 7 is not a known lane"):
        lane_of(bulk, 7, STANDARD)
