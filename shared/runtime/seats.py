"""Seats of a continuous-batching engine kept for interactive work.

An engine such as vLLM runs at most ``max_num_seqs`` sequences at once and does not
preempt a running sequence for a waiting one of higher priority while its KV cache has
room: once bulk generations hold every seat, an interactive request waits for one of
them to finish (seconds), however high its priority. :class:`LaneSeats` sits in front
of the engine and lets the lower lanes (standard and batch) hold at most ``limit`` seats
together, so an interactive request always finds one free and starts at the engine's
next step. Lower-lane requests over the limit wait here, standard ones before batch
ones, each lane in arrival order; a waiting request that is cancelled leaves the queue.

Runs on one asyncio loop (the engine's); not thread-safe.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from shared.contracts.names import lane_rank

INTERACTIVE_RANK = lane_rank("interactive")


class LaneSeats:
    """Admission of lower-lane requests to an engine: at most ``limit`` at once."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the lower lanes need at least one seat")
        self.limit = limit
        self.taken = 0
        # (lane rank, arrival, future): the next seat goes to the smallest.
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        """Requests waiting here for a seat (cancelled ones excluded)."""
        return sum(1 for _, _, future in self._waiting if not future.done())

    @asynccontextmanager
    async def seat(self, lane: str) -> AsyncIterator[None]:
        """Hold a seat for the block (interactive requests never wait here)."""
        rank = lane_rank(lane)
        if rank <= INTERACTIVE_RANK:
            yield
            return
        await self._acquire(rank)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, rank: int) -> None:
        if self.taken < self.limit and not self.waiting:
            self.taken += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (rank, next(self._arrivals), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # handed a seat as it was cancelled: pass it on
            raise

    def _release(self) -> None:
        # A freed seat goes straight to the first live waiter (``taken`` stays).
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)
                return
        self.taken -= 1
