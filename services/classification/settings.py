"""Settings of the classification worker and its intake (environment prefix ``NLP_``)."""

from __future__ import annotations

from pydantic import Field

from shared.contracts.settings import ModelSpec, WorkerSettings

DEFAULT_MODEL = "minilm-l6-v2-int8"
SENTIMENT_MODEL = "sentiment"


class Settings(WorkerSettings):
    service_name: str = "classification"
    # Engine parameters: services.classification.engine.ZeroShotParams and
    # services.classification.sentiment.VaderParams.
    models: dict[str, ModelSpec] = Field(
        default_factory=lambda: {
            DEFAULT_MODEL: ModelSpec(engine="minilm-zero-shot"),
            SENTIMENT_MODEL: ModelSpec(engine="vader-sentiment"),
        }
    )
    default_model: str = DEFAULT_MODEL
