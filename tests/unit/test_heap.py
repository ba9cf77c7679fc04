"""The collector settings a serving process applies once it serves."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from shared.contracts.settings import ServiceSettings
from shared.observability import heap


@pytest.fixture(autouse=True)
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_raises_the_young_threshold_and_freezes_the_startup_heap() -> None:
    _, gen1, gen2 = gc.get_threshold()
    heap.settle(ServiceSettings(gc_gen0_threshold=12_345, gc_freeze=True))
    assert gc.get_threshold() == (12_345, gen1, gen2)
    assert gc.get_freeze_count() > 0


def test_zero_and_false_leave_the_collector_as_it_is() -> None:
    before = gc.get_threshold()
    heap.settle(ServiceSettings(gc_gen0_threshold=0, gc_freeze=False))
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
