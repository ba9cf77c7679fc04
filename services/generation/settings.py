"""Settings of the generation worker and its intake (environment prefix ``NLP_``)."""

from __future__ import annotations

from pydantic import Field

from shared.contracts.settings import ModelSpec, WorkerSettings

DEFAULT_MODEL = "smollm2-135m-instruct"


class Settings(WorkerSettings):
    service_name: str = "generation"
    # Engine parameters: services.generation.engine.VllmParams. The default is the
    # embedded SmolLM2 on vLLM's CPU build: float32 (CPUs without AVX512 have no fast
    # bf16), no compilation (it would double the start for a 135M model).
    models: dict[str, ModelSpec] = Field(
        default_factory=lambda: {
            DEFAULT_MODEL: ModelSpec(
                engine="vllm", params={"dtype": "float32", "enforce_eager": True}
            )
        }
    )
    default_model: str = DEFAULT_MODEL
    # A Celery message holds its thread until its longest generation ends, and tasks
    # arriving one at a time travel one per message: with fewer threads than the
    # engine's sequence slots (max_num_seqs, 32 by default) the slots cannot all fill.
    # 16 streams through the gateway with 8 threads: some tasks waited for a thread
    # (inference began 105 ms after the call on average, p50 33 ms); with 32: 35 ms.
    concurrency: int = Field(
        32, gt=0, description="Celery messages (task bundles) one worker process runs at once"
    )
    handoff_max_tasks: int = Field(
        8, gt=0, description="most tasks of one poll the intake puts in one Celery message"
    )
    # A quarter of the threads kept for interactive streams, an eighth more for submitted
    # tasks: bulk generations still fill 20 threads x 8 tasks, beyond max_num_seqs.
    reserved_interactive_slots: int = Field(
        8, ge=0, description="slots of concurrency that standard and batch messages never take"
    )
    reserved_standard_slots: int = Field(
        4, ge=0, description="further slots that batch messages never take (kept for standard)"
    )
    batch_max_size: int = Field(1, gt=0, description="unused: vLLM batches continuously")
