"""Micro-batch formation, isolation of failures, and no cross-talk between callers."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.runtime.batching import MicroBatcher


class Recorder:
    """A batch function that echoes its inputs and remembers the batch sizes."""

    def __init__(self, delay: float = 0.0, poison: str | None = None) -> None:
        self.sizes: list[int] = []
        self.delay = delay
        self.poison = poison
        self.lock = threading.Lock()

    def __call__(self, items: Sequence[str]) -> list[str]:
        with self.lock:
            self.sizes.append(len(items))
        if self.poison is not None and self.poison in items:
            raise ValueError(f"cannot handle {self.poison}")
        time.sleep(self.delay)
        return [f"out:{item}" for item in items]


def test_concurrent_callers_each_get_their_own_output() -> None:
    recorder = Recorder(delay=0.01)
    batcher = MicroBatcher(recorder, max_size=8, max_wait_ms=20)
    batcher.start()
    try:
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(batcher, [f"r{i}" for i in range(200)]))
    finally:
        batcher.close()
    assert [r.output for r in results] == [f"out:r{i}" for i in range(200)]
    assert max(recorder.sizes) <= 8
    assert sum(recorder.sizes) == 200
    assert max(recorder.sizes) > 1  # concurrent callers were batched together


def test_a_lone_request_waits_at_most_max_wait() -> None:
    batcher = MicroBatcher(Recorder(), max_size=64, max_wait_ms=30)
    batcher.start()
    try:
        started = time.monotonic()
        result = batcher("only")
        elapsed = time.monotonic() - started
    finally:
        batcher.close()
    assert result.output == "out:only"
    assert result.batch_size == 1
    assert elapsed < 5  # bounded by max_wait, not by max_size (generous for slow CI)


def test_one_bad_input_fails_alone() -> None:
    recorder = Recorder(poison="bad")
    batcher = MicroBatcher(recorder, max_size=16, max_wait_ms=50)
    batcher.start()
    try:
        futures = [batcher.submit(x) for x in ["a", "bad", "b", "c"]]
        outputs = []
        for future in futures:
            try:
                outputs.append(future.result(timeout=10).output)
            except ValueError as exc:
                outputs.append(str(exc))
    finally:
        batcher.close()
    assert outputs == ["out:a", "cannot handle bad", "out:b", "out:c"]


def test_wrong_output_count_is_an_error() -> None:
    batcher: MicroBatcher[str, str] = MicroBatcher(lambda items: ["x"], max_size=4, max_wait_ms=50)
    batcher.start()
    try:
        futures = [batcher.submit(x) for x in ["a", "b"]]
        # Run one by one after the failed batch: each gets exactly one output.
        assert [f.result(timeout=10).output for f in futures] == ["x", "x"]
    finally:
        batcher.close()


def test_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_size"):
        MicroBatcher(Recorder(), max_size=0, max_wait_ms=1)


# --- Lanes ---------------------------------------------------------------------------


class Gate:
    """A batch function that blocks each batch until released and records the batches
    (their inputs) and the threads that ran them."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.threads: list[str] = []
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, items: Sequence[str]) -> list[str]:
        with self.lock:
            self.batches.append(list(items))
            self.threads.append(threading.current_thread().name)
        self.started.release()
        if not items[0].startswith("i"):  # interactive requests never block
            assert self.release.wait(10)
        return [f"out:{item}" for item in items]


def test_an_interactive_request_goes_in_the_next_batch_ahead_of_a_backlog() -> None:
    gate = Gate()
    batcher = MicroBatcher(gate, max_size=4, max_wait_ms=0)
    batcher.start()
    try:
        first = batcher.submit("b-first", lane="batch")
        assert gate.started.acquire(timeout=5)  # the engine is busy with it
        backlog = [batcher.submit(f"b{i}", lane="batch") for i in range(20)]
        urgent = batcher.submit("i-urgent", lane="interactive")
        gate.release.set()
        assert urgent.result(timeout=10).output == "out:i-urgent"
        assert [f.result(timeout=10).output for f in backlog] == [f"out:b{i}" for i in range(20)]
        first.result(timeout=10)
    finally:
        batcher.close()
    # Next batch: the interactive request first, then the batch backlog in FIFO order.
    assert gate.batches[1] == ["i-urgent", "b0", "b1", "b2"]
    assert gate.batches[2] == ["b3", "b4", "b5", "b6"]


def test_remaining_places_go_to_the_highest_lanes_first() -> None:
    gate = Gate()
    batcher = MicroBatcher(gate, max_size=5, max_wait_ms=0)
    batcher.start()
    try:
        futures = [batcher.submit("b-first", lane="batch")]
        assert gate.started.acquire(timeout=5)
        futures += [batcher.submit(f"b{i}", lane="batch") for i in range(2)]
        futures += [batcher.submit(f"s{i}", lane="standard") for i in range(2)]
        futures += [batcher.submit(f"i{i}", lane="interactive") for i in range(2)]
        gate.release.set()
        for future in futures:
            future.result(timeout=10)
    finally:
        batcher.close()
    assert gate.batches[1] == ["i0", "i1", "s0", "s1", "b0"]
    assert gate.batches[2] == ["b1"]


def test_lower_lanes_move_under_a_flood_in_proportion_to_their_weights() -> None:
    gate = Gate()
    batcher = MicroBatcher(
        gate,
        max_size=1,
        max_wait_ms=0,
        lane_weights={"interactive": 6, "standard": 3, "batch": 1},
    )
    batcher.start()
    try:
        futures = [batcher.submit("b-first", lane="batch")]
        assert gate.started.acquire(timeout=5)
        # Every lane backlogged (interactive requests would not block: name them "x").
        for lane in ("interactive", "standard", "batch"):
            futures += [batcher.submit(f"x-{lane}-{i}", lane=lane) for i in range(100)]
        gate.release.set()
        for future in futures:
            future.result(timeout=30)
    finally:
        batcher.close()
    served = [batch[0].split("-")[1] for batch in gate.batches[1:]]
    # Within every window of 10 picks while all three lanes wait: 6, 3 and 1.
    for start in range(0, 100, 10):
        window = served[start : start + 10]
        assert window.count("interactive") == 6, window
        assert window.count("standard") == 3, window
        assert window.count("batch") == 1, window
    assert sorted(served) == sorted(["interactive", "standard", "batch"] * 100)


def test_interactive_runners_take_interactive_requests_only() -> None:
    gate = Gate()
    batcher = MicroBatcher(gate, max_size=8, max_wait_ms=0, runners=1, interactive_runners=1)
    batcher.start()
    try:
        blocked = batcher.submit("b-first", lane="batch")
        assert gate.started.acquire(timeout=5)
        # The one general runner is stuck in a bulk batch: more bulk work waits...
        waiting = [
            batcher.submit(f"s{i}", lane=lane) for i, lane in enumerate(["standard", "batch"])
        ]
        # ...but interactive requests run at once, on the interactive runner.
        for i in range(3):
            assert (
                batcher.submit(f"i{i}", lane="interactive").result(timeout=5).output == f"out:i{i}"
            )
        assert not any(f.done() for f in waiting)
        gate.release.set()
        blocked.result(timeout=10)
        for future in waiting:
            future.result(timeout=10)
    finally:
        batcher.close()
    for batch, thread in zip(gate.batches, gate.threads, strict=True):
        if thread.startswith("batcher-interactive-"):
            assert all(item.startswith("i") for item in batch), batch
    assert {t for b, t in zip(gate.batches, gate.threads, strict=True) if b[0].startswith("i")} == {
        "batcher-interactive-0"
    }


def test_close_runs_what_is_queued_then_stops_every_runner() -> None:
    gate = Gate()
    before = set(threading.enumerate())
    batcher = MicroBatcher(gate, max_size=2, max_wait_ms=0, runners=2, interactive_runners=2)
    batcher.start()
    assert len(set(threading.enumerate()) - before) == 4
    first = batcher.submit("b-first", lane="batch")
    assert gate.started.acquire(timeout=5)
    queued = [
        batcher.submit(f"q{i}", lane=lane) for i, lane in enumerate(["batch", "standard"] * 3)
    ]
    threading.Timer(0.2, gate.release.set).start()
    batcher.close()
    assert not any(t.is_alive() for t in set(threading.enumerate()) - before)
    assert first.result(timeout=0).output == "out:b-first"
    assert [f.result(timeout=0).output for f in queued] == [f"out:q{i}" for i in range(6)]
    late = batcher.submit("late", lane="interactive")
    with pytest.raises(RuntimeError, match="closed"):
        late.result(timeout=1)


def test_close_fails_requests_no_runner_will_run() -> None:
    batcher = MicroBatcher(Recorder(), max_size=2, max_wait_ms=0)
    future = batcher.submit("never", lane="batch")
    batcher.close()  # never started
    with pytest.raises(RuntimeError, match="closed"):
        future.result(timeout=1)


def test_max_wait_collects_from_every_lane_after_the_first() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_size=3, max_wait_ms=300)
    batcher.start()
    try:
        futures = [batcher.submit("a", lane="batch")]
        time.sleep(0.05)
        futures.append(batcher.submit("b", lane="interactive"))
        futures.append(batcher.submit("c", lane="standard"))
        assert [f.result(timeout=10).batch_size for f in futures] == [3, 3, 3]
    finally:
        batcher.close()
    assert recorder.sizes == [3]


def test_an_unknown_lane_is_refused() -> None:
    batcher = MicroBatcher(Recorder(), max_size=2, max_wait_ms=0)
    with pytest.raises(ValueError, match="lane"):
        batcher.submit("x", lane="urgent")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness")
@pytest.mark.parametrize("interactive_runners", [1, 0])
def test_bulk_runners_run_at_the_bulk_niceness_beside_an_interactive_runner(
    interactive_runners: int,
) -> None:
    niceness: dict[str, int] = {}
    lock = threading.Lock()
    release = threading.Event()

    def run(items: Sequence[str]) -> list[str]:
        with lock:
            niceness[threading.current_thread().name] = os.getpriority(
                os.PRIO_PROCESS, threading.get_native_id()
            )
        if items[0] == "b":
            release.wait(10)  # both bulk runners busy: "i" goes to the interactive one
        return list(items)

    base = os.getpriority(os.PRIO_PROCESS, 0)
    batcher = MicroBatcher(
        run,
        max_size=1,
        max_wait_ms=0,
        runners=2,
        interactive_runners=interactive_runners,
        bulk_nice=base + 5,
    )
    batcher.start()
    try:
        futures = [batcher.submit("b", lane="batch") for _ in range(2)]
        deadline = time.monotonic() + 10
        while len(niceness) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        futures += [batcher.submit("i", lane="interactive") for _ in range(interactive_runners)]
        if interactive_runners:
            futures[-1].result(timeout=10)
        release.set()
        for future in futures:
            future.result(timeout=10)
    finally:
        batcher.close()
    # Without an interactive runner the bulk runners serve interactive work: not lowered.
    bulk = base + 5 if interactive_runners else base
    expected = {"batcher-0": bulk, "batcher-1": bulk}
    if interactive_runners:
        expected["batcher-interactive-0"] = base
    assert niceness == expected
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the caller's thread is untouched
