"""Lanes inside the real vLLM CPU engine (the embedded SmolLM2), without the stack.

One :class:`VllmGenerator` for the module, made small on purpose: two sequence slots
(so requests queue inside the engine) and a KV cache of five 32-token blocks (so two
long sequences cannot both fit and one is preempted). Its token streams go to a
recorder instead of Redis, in the order the engine loop writes them. Greedy sampling
of a prompt the model continues for as long as it may, so every request of a given
length writes the same text.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import pytest
from opentelemetry import trace

from nlp.v1 import common_pb2
from services.generation.engine import VllmGenerator, VllmParams
from services.generation.settings import Settings
from shared.contracts.errors import Code
from shared.contracts.settings import ModelSpec
from shared.runtime.engines import Job, TaskAborted
from shared.transport.streams import Delta, Entry
from tests.factories import greedy_request

ENDLESS = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"

# 6 blocks: vLLM keeps one back, so 5 x 32 = 160 tokens of KV cache, one model length.
PARAMS = {
    "dtype": "float32",
    "enforce_eager": True,
    "max_num_seqs": 2,
    "max_model_len": 160,
    "stream_interval": 1,  # one delta per token: the tests count tokens by deltas
    # No seat kept for interactive requests (the tests of vLLM's own priority queue);
    # seats_kept gives the generator its gate of one lower-lane seat.
    "reserved_interactive_seqs": 0,
    "cpu_kvcache_space_gib": 1,
    "engine_args": {"block_size": 32, "num_gpu_blocks_override": 6},
}


class Recorder:
    """Stands in for the generator's TokenStreamWriter: keeps every entry, in order."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, Entry]] = []

    async def append(self, task_id: str, entries: Sequence[Entry]) -> None:
        self.entries.extend((task_id, entry) for entry in entries)

    def deltas(self, task_id: str) -> list[str]:
        return [e.text for t, e in self.entries if t == task_id and isinstance(e, Delta)]

    def first_tokens(self) -> list[str]:
        """Task ids in the order their first delta was written."""
        order: list[str] = []
        for task_id, entry in self.entries:
            if isinstance(entry, Delta) and task_id not in order:
                order.append(task_id)
        return order


@pytest.fixture(scope="module")
def generator() -> Iterator[VllmGenerator]:
    # load() sets vLLM's variables in this process's environment (its engine core is
    # spawned with them); put it back so that nothing started later inherits them.
    saved = dict(os.environ)
    engine = VllmGenerator("lanes", ModelSpec(engine="vllm", params=PARAMS), Settings())
    try:
        engine.load()
        assert engine.llm.vllm_config.scheduler_config.policy == "priority"
        yield engine
    finally:
        if hasattr(engine, "llm"):
            engine.close()
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)


@pytest.fixture
def recorder(generator: VllmGenerator) -> Recorder:
    recorder = Recorder()
    generator.writer = recorder  # type: ignore[assignment]
    return recorder


@pytest.fixture
def preemptions(generator: VllmGenerator) -> Iterator[dict[str, int]]:
    """How many times vLLM preempted each request (by task id), from its outputs."""
    seen: dict[str, int] = {}
    original = generator.llm.generate

    async def spy(*args: Any, **kwargs: Any) -> Any:
        async for output in original(*args, **kwargs):
            if output.metrics is not None:
                seen[output.request_id.split(":")[0]] = output.metrics.num_preemptions
            yield output

    generator.llm.generate = spy
    yield seen
    del generator.llm.generate  # the class's method again


@pytest.fixture
def seats_kept(generator: VllmGenerator) -> Iterator[None]:
    """The lower lanes hold at most one of the two sequence slots."""
    params = VllmParams.model_validate({**PARAMS, "reserved_interactive_seqs": 1})
    generator.seats = params.lane_seats()
    yield
    generator.seats = None


def _job(task_id: str, lane: str, deadline_s: float = 120.0) -> Job:
    return Job(task_id, 1, time.time() + deadline_s, trace.INVALID_SPAN, lane=lane)


def _start(
    generator: VllmGenerator, task_id: str, lane: str, max_tokens: int, deadline_s: float = 120.0
) -> Future[Any]:
    return generator.start(greedy_request(ENDLESS, max_tokens), _job(task_id, lane, deadline_s))


def _until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def _idle(generator: VllmGenerator) -> None:
    """Nothing is left inside the engine (aborted requests included)."""
    _until(lambda: generator.llm.get_num_unfinished_requests() == 0, timeout=10)


def _aborted(future: Future[Any], status: int) -> Any:
    with pytest.raises(TaskAborted) as info:
        future.result(timeout=120)
    assert info.value.status == status
    assert info.value.output is not None
    return info.value.output


def _race(generator: VllmGenerator, recorder: Recorder, late_lane: str) -> list[str]:
    """Both slots busy (b0 ends first), b2 and b3 waiting; then ``late`` arrives in
    ``late_lane``. The order of first tokens."""
    futures = [
        _start(generator, "b0", "batch", 12),
        _start(generator, "b1", "batch", 30),
        _start(generator, "b2", "batch", 12),
        _start(generator, "b3", "batch", 12),
    ]
    _until(lambda: bool(recorder.deltas("b1")))  # b0 and b1 hold both slots
    futures.append(_start(generator, "late", late_lane, 12))
    for future in futures:
        assert future.result(timeout=120).output.completion_tokens > 0
    _idle(generator)
    return recorder.first_tokens()


def test_an_interactive_generation_takes_the_next_slot_before_queued_batch_ones(
    generator: VllmGenerator, recorder: Recorder
) -> None:
    order = _race(generator, recorder, "interactive")
    # b0's slot goes to the interactive request, although b2 and b3 waited longer.
    assert order == ["b0", "b1", "late", "b2", "b3"]


def test_in_one_lane_the_engine_serves_in_arrival_order(
    generator: VllmGenerator, recorder: Recorder
) -> None:
    # The control: the same requests, the late one in the batch lane too, waits its turn.
    assert _race(generator, recorder, "batch") == ["b0", "b1", "b2", "b3", "late"]


@pytest.mark.usefixtures("seats_kept")
def test_a_kept_slot_starts_an_interactive_generation_while_batch_ones_run_and_wait(
    generator: VllmGenerator, recorder: Recorder
) -> None:
    running = _start(generator, "running", "batch", 40)
    _until(lambda: bool(recorder.deltas("running")))
    queued = _start(generator, "queued", "batch", 8)
    cancelled = _start(generator, "cancelled", "batch", 8)
    late = _start(generator, "late", "standard", 8, deadline_s=0.5)
    # The second slot stays free: the others wait in the worker, not in the engine.
    time.sleep(0.3)
    assert generator.llm.get_num_unfinished_requests() == 1
    assert generator.seats is not None and generator.seats.waiting == 3
    assert generator.abort(
        "cancelled", TaskAborted(common_pb2.TASK_STATUS_CANCELLED, Code.CANCELLED, "cancelled")
    )
    assert _aborted(cancelled, common_pb2.TASK_STATUS_CANCELLED).text == ""
    assert _aborted(late, common_pb2.TASK_STATUS_DEADLINE_EXCEEDED).completion_tokens == 0
    interactive = _start(generator, "interactive", "interactive", 8)
    assert interactive.result(timeout=120).output.completion_tokens == 8
    # It ran beside the batch generation, which had not ended when it did.
    assert len(recorder.deltas("running")) < 40
    assert queued.result(timeout=120).output.completion_tokens == 8
    assert running.result(timeout=120).output.completion_tokens == 40
    assert recorder.first_tokens() == ["running", "interactive", "queued"]
    _idle(generator)
    assert generator.seats.taken == 0 and generator.seats.waiting == 0


def test_queued_requests_are_cancelled_and_time_out_inside_the_engine(
    generator: VllmGenerator, recorder: Recorder
) -> None:
    running = [_start(generator, "r0", "batch", 30), _start(generator, "r1", "batch", 30)]
    _until(lambda: bool(recorder.deltas("r1")))  # both slots taken
    cancelled = _start(generator, "cancelled", "batch", 30)
    # Inside the engine, waiting for a slot (not merely not begun).
    _until(lambda: generator.llm.get_num_unfinished_requests() == 3)
    late = _start(generator, "late", "batch", 100, deadline_s=0.5)
    waiting = _start(generator, "waiting", "interactive", 8)
    assert generator.abort(
        "cancelled", TaskAborted(common_pb2.TASK_STATUS_CANCELLED, Code.CANCELLED, "cancelled")
    )
    assert _aborted(cancelled, common_pb2.TASK_STATUS_CANCELLED).text == ""
    assert _aborted(late, common_pb2.TASK_STATUS_DEADLINE_EXCEEDED).completion_tokens < 100
    assert waiting.result(timeout=120).output.completion_tokens == 8
    for future in running:
        assert future.result(timeout=120).output.completion_tokens == 30
    _idle(generator)
    assert not recorder.deltas("cancelled")


def _preempted_batch(
    generator: VllmGenerator, recorder: Recorder, batch_tokens: int, interactive_tokens: int
) -> tuple[Future[Any], Future[Any]]:
    """A batch generation running, then an interactive one: both fit alone, not together,
    so the batch one (the lower lane) is preempted once the cache fills; it waits until
    the interactive one ends (its deltas stop while the other's go on)."""
    batch = _start(generator, "batch", "batch", batch_tokens)
    _until(lambda: len(recorder.deltas("batch")) >= 5)
    interactive = _start(generator, "interactive", "interactive", interactive_tokens)
    return batch, interactive


def test_a_preempted_generation_resumes_without_losing_or_repeating_text(
    generator: VllmGenerator, recorder: Recorder, preemptions: dict[str, int]
) -> None:
    batch, interactive = _preempted_batch(generator, recorder, 100, 60)
    short = interactive.result(timeout=120).output
    long = batch.result(timeout=120).output
    assert preemptions["batch"] >= 1 and preemptions["interactive"] == 0
    assert short.completion_tokens == 60 and long.completion_tokens == 100
    # Every token once, in order: what was streamed is the result, and the same prompt
    # continued further starts with the uninterrupted shorter continuation.
    assert "".join(recorder.deltas("batch")) == long.text
    assert "".join(recorder.deltas("interactive")) == short.text
    assert long.text.startswith(short.text) and len(long.text) > len(short.text)
    _idle(generator)


def test_a_preempted_generation_can_be_cancelled_while_it_waits(
    generator: VllmGenerator, recorder: Recorder
) -> None:
    batch, interactive = _preempted_batch(generator, recorder, 100, 60)
    # In step the interactive one is 5 tokens behind; ahead: the batch one is preempted.
    _until(lambda: len(recorder.deltas("interactive")) > len(recorder.deltas("batch")) + 3)
    assert generator.abort(
        "batch", TaskAborted(common_pb2.TASK_STATUS_CANCELLED, Code.CANCELLED, "cancelled")
    )
    partial = _aborted(batch, common_pb2.TASK_STATUS_CANCELLED)
    assert partial.text == "".join(recorder.deltas("batch")) and partial.text
    assert partial.completion_tokens < 100
    assert interactive.result(timeout=120).output.completion_tokens == 60
    _idle(generator)
    assert partial.text == "".join(recorder.deltas("batch"))  # nothing after the abort
