"""What the engines on vLLM's CPU build share (generation, abstractive summaries): the
process environment vLLM reads its CPU settings from, set from typed parameters."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field


class VllmCpuParams(BaseModel):
    """The CPU settings of a model on vLLM (part of its ``params`` in ``NLP_MODELS``).
    A CUDA build ignores them."""

    model_config = ConfigDict(extra="forbid")

    # vLLM reads VLLM_CPU_KVCACHE_SPACE as a whole number of GiB (and fails on "1.5").
    cpu_kvcache_space_gib: int = Field(2, gt=0, description="KV cache size on CPU, in GiB")
    cpu_threads_bind: str = Field(
        "", description="cores for the CPU engine's threads, e.g. 0-1; empty: every usable core"
    )
    # libgomp's default (300000) keeps an idle OpenMP thread spinning for long after each
    # parallel region, taking the core from vLLM's own Python threads and from the rest of
    # the stack; 0 (passive) is worse still. Measured by `make bench-generation` on 2 cores,
    # 16 streams: 375-380 tok/s through the gateway at the default, 417-424 at 5000-20000.
    cpu_omp_spin_count: int = Field(
        20000, ge=0, description="GOMP_SPINCOUNT: how long idle OpenMP threads spin (CPU)"
    )


def usable_cores() -> str:
    """The cores this process may run on, written as vLLM's thread binding takes them."""
    cores = sorted(os.sched_getaffinity(0))
    if cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(map(str, cores))


def configure_vllm_environment(params: VllmCpuParams) -> None:
    """vLLM reads these from the process environment (not from engine arguments); set
    before the engine starts, from typed settings, unless the operator set them."""
    defaults = {
        "VLLM_CPU_KVCACHE_SPACE": str(params.cpu_kvcache_space_gib),
        "VLLM_CPU_OMP_THREADS_BIND": params.cpu_threads_bind or usable_cores(),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "GOMP_SPINCOUNT": str(params.cpu_omp_spin_count),
        # The engine core runs in a child process; the worker has threads running, so the
        # child is spawned rather than forked.
        "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
