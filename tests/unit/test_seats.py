"""LaneSeats: the lower lanes' admission to a continuous-batching engine."""

from __future__ import annotations

import asyncio

import pytest

from shared.runtime.seats import LaneSeats


class Engine:
    """Requests that hold a seat until released, recording the order they got one."""

    def __init__(self, seats: LaneSeats) -> None:
        self.seats = seats
        self.started: list[str] = []
        self._release: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def submit(self, name: str, lane: str) -> None:
        self._release[name] = asyncio.Event()
        self.tasks[name] = asyncio.create_task(self._run(name, lane))

    async def _run(self, name: str, lane: str) -> None:
        async with self.seats.seat(lane):
            self.started.append(name)
            await self._release[name].wait()

    async def finish(self, name: str) -> None:
        self._release[name].set()
        await self.tasks[name]
        await settle()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_the_lower_lanes_hold_at_most_the_limit_and_interactive_never_waits() -> None:
    async def scenario() -> None:
        engine = Engine(LaneSeats(2))
        for name in ("b0", "b1", "b2"):
            engine.submit(name, "batch")
        await settle()
        assert engine.started == ["b0", "b1"]
        assert (engine.seats.taken, engine.seats.waiting) == (2, 1)
        engine.submit("i0", "interactive")
        engine.submit("i1", "interactive")
        await settle()
        assert engine.started == ["b0", "b1", "i0", "i1"]
        await engine.finish("i0")  # an interactive request frees no lower-lane seat
        assert engine.started == ["b0", "b1", "i0", "i1"]
        await engine.finish("b0")
        assert engine.started[-1] == "b2"
        assert (engine.seats.taken, engine.seats.waiting) == (2, 0)
        for name in ("i1", "b1", "b2"):
            await engine.finish(name)
        assert engine.seats.taken == 0

    asyncio.run(scenario())


def test_a_freed_seat_goes_to_standard_before_batch_and_each_lane_in_arrival_order() -> None:
    async def scenario() -> None:
        engine = Engine(LaneSeats(1))
        engine.submit("first", "batch")
        for name, lane in (
            ("b1", "batch"),
            ("s1", "standard"),
            ("b2", "batch"),
            ("s2", "standard"),
        ):
            engine.submit(name, lane)
        await settle()
        order = ["first"]
        for name in ("first", "s1", "s2", "b1"):
            await engine.finish(name)
            order.append(engine.started[-1])
        assert order == ["first", "s1", "s2", "b1", "b2"]

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_the_queue_and_its_seat_goes_on() -> None:
    async def scenario() -> None:
        engine = Engine(LaneSeats(1))
        engine.submit("running", "batch")
        engine.submit("cancelled", "standard")
        engine.submit("next", "batch")
        await settle()
        engine.tasks["cancelled"].cancel()
        await settle()
        assert engine.seats.waiting == 1
        await engine.finish("running")
        assert engine.started == ["running", "next"]
        await engine.finish("next")
        assert (engine.seats.taken, engine.seats.waiting) == (0, 0)

    asyncio.run(scenario())


def test_a_waiter_cancelled_as_it_is_handed_a_seat_passes_the_seat_on() -> None:
    async def scenario() -> None:
        seats = LaneSeats(1)
        holder = seats.seat("batch")
        await holder.__aenter__()
        engine = Engine(seats)
        engine.submit("handed", "batch")
        engine.submit("after", "batch")
        await settle()
        # The release hands "handed" the seat; it is cancelled before it can run.
        await holder.__aexit__(None, None, None)
        engine.tasks["handed"].cancel()
        await settle()
        assert engine.started == ["after"]
        await engine.finish("after")
        assert (seats.taken, seats.waiting) == (0, 0)

    asyncio.run(scenario())


def test_the_lower_lanes_need_a_seat() -> None:
    with pytest.raises(ValueError):
        LaneSeats(0)
