"""Settings of the ner worker and its intake (environment prefix ``NLP_``)."""

from __future__ import annotations

from pydantic import Field

from shared.contracts.settings import ModelSpec, WorkerSettings

DEFAULT_MODEL = "en-core-web-sm"


class Settings(WorkerSettings):
    service_name: str = "ner"
    # Engine parameters: services.ner.engine.SpacyNerParams.
    models: dict[str, ModelSpec] = Field(
        default_factory=lambda: {DEFAULT_MODEL: ModelSpec(engine="spacy")}
    )
    default_model: str = DEFAULT_MODEL
