"""The messaging attributes of the platform's send and receive spans, from one helper."""

from __future__ import annotations

from shared.observability.telemetry import messaging_attributes


def test_only_what_is_given_is_set() -> None:
    assert messaging_attributes("kafka", "nlp.tasks.ner") == {
        "messaging.system": "kafka",
        "messaging.destination.name": "nlp.tasks.ner",
    }


def test_a_consumed_record_and_a_published_bundle() -> None:
    record = messaging_attributes("kafka", "t", partition=3, offset=42)
    assert record["messaging.destination.partition.id"] == "3"  # a string, as the spec says
    assert record["messaging.kafka.offset"] == 42
    bundle = messaging_attributes("celery", "q", message_id="m1", batch_count=5)
    assert bundle == {
        "messaging.system": "celery",
        "messaging.destination.name": "q",
        "messaging.message.id": "m1",
        "messaging.batch.message_count": 5,
    }
