"""The generation engine's configuration (no engine is started here)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry import trace
from pydantic import ValidationError

from nlp.v1 import common_pb2, generation_pb2
from services.generation.engine import (
    VllmGenerator,
    VllmParams,
    engine_args,
    warn_thread_shortfall,
)
from services.generation.settings import DEFAULT_MODEL, Settings
from shared.contracts.names import ALL_LANES
from shared.models.vllm_cpu import configure_vllm_environment
from shared.runtime.engines import Job


def test_engine_arguments_come_from_the_params() -> None:
    params = VllmParams(
        dtype="bfloat16",
        max_model_len=None,
        max_num_seqs=64,
        tensor_parallel_size=2,
        gpu_memory_utilization=0.8,
        stream_interval=2,
        engine_args={"swap_space": 0},
    )
    args = engine_args(Path("/models/llm"), params)
    assert args == {
        "model": "/models/llm",
        "scheduling_policy": "priority",
        "dtype": "bfloat16",
        "max_num_seqs": 64,
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.8,
        "enforce_eager": False,
        "stream_interval": 2,
        "swap_space": 0,
    }  # no max_model_len: the model's own
    assert engine_args(Path("m"), VllmParams())["max_model_len"] == 2048
    # An operator may still choose vLLM's first-come-first-served scheduling.
    fcfs = VllmParams(engine_args={"scheduling_policy": "fcfs"})
    assert engine_args(Path("m"), fcfs)["scheduling_policy"] == "fcfs"


def test_unknown_params_are_refused() -> None:
    with pytest.raises(ValidationError):
        VllmParams.model_validate({"max_tokenz": 10})


def test_the_lower_lanes_leave_the_reserved_sequence_slots_free() -> None:
    seats = VllmParams(max_num_seqs=32, reserved_interactive_seqs=4).lane_seats()
    assert seats is not None and seats.limit == 28
    assert VllmParams().lane_seats().limit == 30  # type: ignore[union-attr]
    # 0: no gate; vLLM's own priority queue orders every request.
    assert VllmParams(reserved_interactive_seqs=0).lane_seats() is None
    with pytest.raises(ValidationError, match="leave the lower lanes a seat"):
        VllmParams(max_num_seqs=4, reserved_interactive_seqs=4)


def test_the_environment_is_set_only_where_the_operator_did_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A copy of the environment for the test: monkeypatch's delenv records nothing for
    # an absent variable, so what the call sets would outlive the test (and reach the
    # services a later stack starts).
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "GOMP_", "HF_HUB"))
    }
    environ.pop("TRANSFORMERS_OFFLINE", None)
    environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    monkeypatch.setattr(os, "environ", environ)
    configure_vllm_environment(VllmParams(cpu_kvcache_space_gib=3, cpu_omp_spin_count=1000))
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert os.environ["GOMP_SPINCOUNT"] == "1000"
    assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"


def test_the_default_model_is_the_embedded_one_on_cpu_settings() -> None:
    settings = Settings()
    spec = settings.models[DEFAULT_MODEL]
    assert settings.default_model == DEFAULT_MODEL
    assert spec.engine == "vllm" and spec.path is None
    params = VllmParams.model_validate(spec.params)
    assert params.dtype == "float32" and params.enforce_eager


def test_the_cpu_kv_cache_is_whole_gib() -> None:
    # vLLM parses VLLM_CPU_KVCACHE_SPACE as an integer and refuses to start otherwise.
    with pytest.raises(ValidationError):
        VllmParams.model_validate({"cpu_kvcache_space_gib": 1.5})


def test_the_default_worker_has_a_thread_per_sequence_slot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings()
    params = VllmParams.model_validate(settings.models[DEFAULT_MODEL].params)
    with caplog.at_level(logging.WARNING, logger="services.generation.engine"):
        assert not warn_thread_shortfall(DEFAULT_MODEL, params, settings.concurrency)
        assert not caplog.records
        # A GPU model with more slots than the worker has threads is warned about.
        assert warn_thread_shortfall("llm", VllmParams(max_num_seqs=64), settings.concurrency)
    (record,) = caplog.records
    assert record.__dict__["max_num_seqs"] == 64
    assert record.__dict__["concurrency"] == settings.concurrency


class _CountingTokenizer:
    """Records how many threads are inside it at once (vLLM's pool deep-copies itself
    for every borrower beyond its size)."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.lock = threading.Lock()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        time.sleep(0.005)
        with self.lock:
            self.inside -= 1
        return [len(text)]


def test_celery_threads_take_turns_with_the_engine_tokenizer() -> None:
    generator = object.__new__(VllmGenerator)  # no engine: only its tokenizing part
    tokenizer = _CountingTokenizer()
    generator.tokenizer = tokenizer
    generator._tokenizing = threading.Lock()
    requests = [generation_pb2.GenerateRequest(prompt="x" * (i + 1)) for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(generator.prompt_ids, requests))
    assert ids == [[i + 1] for i in range(16)]
    assert tokenizer.most == 1


class _FakeLlm:
    """Records the priority each request is given; streams one token."""

    def __init__(self) -> None:
        self.priorities: dict[str, int] = {}

    def generate(
        self, prompt: Any, sampling: Any, *, request_id: str, priority: int = 0
    ) -> AsyncIterator[Any]:
        self.priorities[request_id] = priority
        return self._outputs()

    async def _outputs(self) -> AsyncIterator[Any]:
        completion = SimpleNamespace(text="x", token_ids=[7], finish_reason="length")
        yield SimpleNamespace(outputs=[completion])

    def get_num_unfinished_requests(self) -> int:
        return 1


class _NullWriter:
    async def append(self, task_id: str, entries: Sequence[Any]) -> None:
        return None


def test_a_requests_priority_is_its_lanes_rank() -> None:
    generator = object.__new__(VllmGenerator)  # no engine: its request path on a fake
    generator.name = "m"
    generator._info = common_pb2.ModelInfo(name="m")
    generator.llm = llm = _FakeLlm()
    generator.writer = _NullWriter()  # type: ignore[assignment]
    generator.metrics = None
    generator._running, generator._aborts = {}, {}
    generator.seats = VllmParams().lane_seats()
    generator._known, generator._known_lock = set(), threading.Lock()
    jobs = [Job(lane, 1, time.time() + 60, trace.INVALID_SPAN, lane=lane) for lane in ALL_LANES]
    jobs.append(Job("unset", 1, time.time() + 60, trace.INVALID_SPAN))

    async def run() -> None:
        generator.loop = asyncio.get_running_loop()
        for job in jobs:
            done = await generator._generate(job, [1, 2], None)
            assert done.output.text == "x" and done.output.completion_tokens == 1

    asyncio.run(run())
    # vLLM schedules lower values first; a Job without a lane is standard.
    assert llm.priorities == {"interactive:1": 0, "standard:1": 1, "batch:1": 2, "unset:1": 1}
