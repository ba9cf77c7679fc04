"""Settings of the summarization worker and its intake (environment prefix ``NLP_``)."""

from __future__ import annotations

from pydantic import Field

from shared.contracts.settings import ModelSpec, WorkerSettings

DEFAULT_MODEL = "minilm-textrank"


class Settings(WorkerSettings):
    service_name: str = "summarization"
    # Engine parameters: services.summarization.engine.ExtractiveParams.
    models: dict[str, ModelSpec] = Field(
        default_factory=lambda: {DEFAULT_MODEL: ModelSpec(engine="extractive-minilm")}
    )
    default_model: str = DEFAULT_MODEL
