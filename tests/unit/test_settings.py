from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.classification.settings import Settings as ClassificationSettings
from services.gateway.settings import Settings as GatewaySettings
from shared.settings import WorkerSettings


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLP_KAFKA_BOOTSTRAP", "k:9092")
    monkeypatch.setenv("NLP_NAMESPACE", "ci")
    monkeypatch.setenv("NLP_LIMITS__MAX_LABELS", "7")
    monkeypatch.setenv("NLP_PORT", "6000")
    gateway = GatewaySettings()
    assert gateway.kafka_bootstrap == "k:9092"
    assert gateway.port == 6000
    assert gateway.limits.max_labels == 7
    assert gateway.names.task_topic("ner") == "ci.nlp.tasks.ner"
    assert ClassificationSettings().names.celery_queue("classification") == "ci.classification"


def test_water_marks_must_be_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLP_QUEUE_HIGH_WATER", "10")
    monkeypatch.setenv("NLP_QUEUE_LOW_WATER", "10")
    with pytest.raises(ValidationError, match="low_water"):
        WorkerSettings()


def test_bad_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLP_CONCURRENCY", "0")
    with pytest.raises(ValidationError):
        WorkerSettings()
