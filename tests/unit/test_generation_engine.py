"""The generation engine's configuration (no engine is started here)."""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from nlp.v1 import generation_pb2
from services.generation.engine import (
    VllmGenerator,
    VllmParams,
    configure_vllm_environment,
    engine_args,
    warn_thread_shortfall,
)
from services.generation.settings import DEFAULT_MODEL, Settings


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
        "dtype": "bfloat16",
        "max_num_seqs": 64,
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.8,
        "enforce_eager": False,
        "stream_interval": 2,
        "swap_space": 0,
    }  # no max_model_len: the model's own
    assert engine_args(Path("m"), VllmParams())["max_model_len"] == 2048


def test_unknown_params_are_refused() -> None:
    with pytest.raises(ValidationError):
        VllmParams.model_validate({"max_tokenz": 10})


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
