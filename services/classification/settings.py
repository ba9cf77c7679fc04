"""Settings of the classification worker and its intake (environment prefix ``NLP_``)."""

from __future__ import annotations

from pydantic import Field

from shared.contracts.settings import ModelSpec, WorkerSettings

DEFAULT_MODEL = "minilm-l6-v2-int8"


class Settings(WorkerSettings):
    service_name: str = "classification"
    # Engine parameters: services.classification.engine.ZeroShotParams.
    models: dict[str, ModelSpec] = Field(
        default_factory=lambda: {DEFAULT_MODEL: ModelSpec(engine="minilm-zero-shot")}
    )
    default_model: str = DEFAULT_MODEL
