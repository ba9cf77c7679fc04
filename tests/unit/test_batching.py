"""Micro-batch formation, isolation of failures, and no cross-talk between callers."""

from __future__ import annotations

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
