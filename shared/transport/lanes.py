"""The lane policy every hop that chooses between lanes follows.

Higher lanes first, never starving a lower one: a smooth weighted round robin (nginx's)
over the lanes, weighted by ``WorkerSettings.lane_weights``. Among lanes that all have
work waiting, each gets its weight's share of the picks, spread evenly (with 16:4:1,
batch work moves once every 21 picks even under an interactive flood); a lane with
nothing waiting gives its turn to the next lane down in priority order.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from shared.contracts.names import ALL_LANES


class WeightedLanes:
    """Smooth weighted round robin over the lanes. Not thread-safe: one per chooser."""

    def __init__(self, weights: Mapping[str, int]) -> None:
        self.weights = {lane: int(weights[lane]) for lane in ALL_LANES}
        if any(w < 1 for w in self.weights.values()):
            raise ValueError("every lane's weight must be at least 1")
        self._credit = dict.fromkeys(ALL_LANES, 0)

    def pick(self, waiting: Collection[str] | None = None) -> str | None:
        """The lane to serve next among ``waiting`` (every lane when None); None when none
        waits. Picks no lane that does not wait, and charges only the lanes in the draw."""
        lanes = [lane for lane in ALL_LANES if waiting is None or lane in waiting]
        if not lanes:
            return None
        total = 0
        for lane in lanes:
            self._credit[lane] += self.weights[lane]
            total += self.weights[lane]
        # max() keeps the first of equals: ties go to the higher lane.
        chosen = max(lanes, key=lambda lane: self._credit[lane])
        self._credit[chosen] -= total
        return chosen

    def order(self, waiting: Collection[str] | None = None) -> list[str]:
        """``waiting`` lanes (every lane when None) in the order to try them: this turn's
        pick first, then the rest highest first."""
        chosen = self.pick(waiting)
        if chosen is None:
            return []
        rest = [
            lane for lane in ALL_LANES if lane != chosen and (waiting is None or lane in waiting)
        ]
        return [chosen, *rest]
