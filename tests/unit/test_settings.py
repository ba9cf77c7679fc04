from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis.asyncio.sentinel
import redis.sentinel
from pydantic import ValidationError

from services.classification.settings import Settings as ClassificationSettings
from services.gateway.settings import Settings as GatewaySettings
from shared.contracts.settings import LaneWeights, ServiceSettings, WorkerSettings
from shared.transport.celery_app import RedisSentinelTransport, broker_url, make_celery
from shared.transport.outages import async_redis_client, redis_client


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLP_KAFKA_BOOTSTRAP", "k:9092")
    monkeypatch.setenv("NLP_NAMESPACE", "ci")
    monkeypatch.setenv("NLP_LIMITS__MAX_LABELS", "7")
    monkeypatch.setenv("NLP_PORT", "6000")
    monkeypatch.setenv("NLP_AUTH_MODE", "dev")
    gateway = GatewaySettings()
    assert gateway.kafka_bootstrap == "k:9092"
    assert gateway.port == 6000
    assert gateway.limits.max_labels == 7
    assert gateway.names.task_topic("ner", "batch") == "ci.nlp.tasks.ner.batch"
    assert (
        ClassificationSettings().names.celery_queue("classification", "interactive")
        == "ci.classification.interactive"
    )


def test_water_marks_are_per_lane_and_must_be_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLP_QUEUE_HIGH_WATER__BATCH", "6")
    monkeypatch.setenv("NLP_QUEUE_LOW_WATER__BATCH", "2")
    settings = WorkerSettings()
    assert (settings.queue_high_water.of("batch"), settings.queue_low_water.of("batch")) == (6, 2)
    assert settings.queue_high_water.of("interactive") == 200  # the other lanes keep theirs
    monkeypatch.setenv("NLP_QUEUE_LOW_WATER__BATCH", "6")
    with pytest.raises(ValidationError, match=r"queue_low_water.batch must be below"):
        WorkerSettings()


def test_lower_lanes_get_the_slots_the_higher_ones_do_not_reserve() -> None:
    settings = WorkerSettings(
        concurrency=64, reserved_interactive_slots=16, reserved_standard_slots=8
    )
    assert [settings.lane_slots(lane) for lane in ("interactive", "standard", "batch")] == [
        64,
        48,
        40,
    ]
    with pytest.raises(ValidationError, match="at least one slot"):
        WorkerSettings(concurrency=8, reserved_interactive_slots=6, reserved_standard_slots=2)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        WorkerSettings(lane_weights=LaneWeights(interactive=1, standard=1, batch=0))


def test_bad_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLP_CONCURRENCY", "0")
    with pytest.raises(ValidationError):
        WorkerSettings()


def test_bundles_may_fill_a_batch_with_fewer_threads() -> None:
    WorkerSettings(
        concurrency=2,
        handoff_max_tasks=16,
        batch_max_size=32,
        reserved_interactive_slots=0,
        reserved_standard_slots=0,
    )
    with pytest.raises(ValueError, match="handoff_max_tasks"):
        WorkerSettings(
            concurrency=1,
            handoff_max_tasks=16,
            batch_max_size=32,
            reserved_interactive_slots=0,
            reserved_standard_slots=0,
        )


def test_stack_replicas_parse_and_reject_bad_input() -> None:
    from deploy.local.stack import parse_replicas, worker_name

    assert parse_replicas("ner=2, classification=1") == {"ner": 2, "classification": 1}
    assert parse_replicas("") == {}
    for bad in ["ner", "ner=0", "ner=x", "nope=2"]:
        with pytest.raises(ValueError, match="replicas"):
            parse_replicas(bad)
    assert [worker_name("ner", i) for i in (1, 2)] == ["ner-worker", "ner-worker-2"]


def test_stack_models_files_are_read_per_kind(tmp_path: Path) -> None:
    from deploy.local.stack import main, parse_models

    file = tmp_path / "ner.json"
    file.write_text('{"mine": {"engine": "hf-token-classification", "path": "/m"}}')
    kind, models, path = parse_models(f"ner={file}")
    assert kind == "ner" and json.loads(models)["mine"]["path"] == "/m" and path == file
    (tmp_path / "bad.json").write_text("[1]")
    for bad in [
        "ner",
        f"nope={file}",
        f"ner={tmp_path / 'missing.json'}",
        f"ner={tmp_path}/bad.json",
    ]:
        with pytest.raises(ValueError, match="models"):
            parse_models(bad)
    with pytest.raises(SystemExit):  # argparse refuses it before anything starts
        main(["run", "--models", "ner=/nonexistent.json"])


def test_the_gateway_is_secured_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NLP_AUTH_MODE", raising=False)
    with pytest.raises(ValidationError, match="NLP_AUTH_KEYS_FILE"):
        GatewaySettings()
    with pytest.raises(ValidationError, match="go together"):
        GatewaySettings(auth_mode="dev", tls_cert_file="cert.pem")
    with pytest.raises(ValidationError, match="client certificates"):
        GatewaySettings(auth_mode="dev", tls_client_auth="require")


def test_transport_security_reaches_every_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLP_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("NLP_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("NLP_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("NLP_KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("NLP_KAFKA_SSL_CAFILE", "/etc/kafka/ca.pem")
    monkeypatch.setenv("NLP_REDIS_URL", "rediss://:pw@redis:6380/0")
    monkeypatch.setenv("NLP_REDIS_SSL_CA_FILE", "/etc/redis/ca.pem")
    settings = WorkerSettings()
    python = settings.kafka_python_config()
    assert python["security_protocol"] == "SASL_SSL"
    assert python["sasl_plain_password"] == "s3cret"
    assert python["ssl_cafile"] == "/etc/kafka/ca.pem"
    rdkafka = settings.librdkafka_config()
    assert rdkafka["security.protocol"] == "sasl_ssl"
    assert rdkafka["sasl.mechanisms"] == "SCRAM-SHA-512"
    assert rdkafka["ssl.ca.location"] == "/etc/kafka/ca.pem"
    assert settings.redis_ssl()["ssl_ca_certs"] == "/etc/redis/ca.pem"
    assert "s3cret" not in repr(settings)  # secrets stay out of logs
    monkeypatch.delenv("NLP_KAFKA_SECURITY_PROTOCOL")
    plain = WorkerSettings(redis_url="redis://redis:6379/0")
    assert plain.redis_ssl() == {}
    assert plain.kafka_python_config()["security_protocol"] == "PLAINTEXT"


def test_redis_sentinels_are_host_port_pairs() -> None:
    settings = ServiceSettings(redis_sentinels="10.0.0.1:26379, sentinel-b:26380")
    assert settings.sentinel_addresses() == [("10.0.0.1", 26379), ("sentinel-b", 26380)]
    assert ServiceSettings().sentinel_addresses() == []
    for bad in ("no-port", "host:", "host:99999", ":26379"):
        with pytest.raises(ValueError, match="host:port"):
            ServiceSettings(redis_sentinels=bad)


def test_with_sentinels_every_client_asks_them_for_the_primary() -> None:
    settings = WorkerSettings(
        redis_url="redis://:secret@ignored:6379/2",
        redis_sentinels="s1:26379,s2:26380",
        redis_master_name="main",
    )
    sync = redis_client(settings)
    assert isinstance(sync.connection_pool, redis.sentinel.SentinelConnectionPool)
    assert sync.connection_pool.service_name == "main"
    assert sync.connection_pool.connection_kwargs["db"] == 2
    assert sync.connection_pool.connection_kwargs["password"] == "secret"
    client = async_redis_client(settings)
    assert isinstance(client.connection_pool, redis.asyncio.sentinel.SentinelConnectionPool)
    assert broker_url(settings) == "sentinel://:secret@s1:26379/2;sentinel://:secret@s2:26380/2"
    app = make_celery("ner", settings)
    assert app.conf.broker_transport is RedisSentinelTransport
    assert app.conf.broker_transport_options["master_name"] == "main"
    plain = WorkerSettings(redis_url="redis://r:6379/0")
    assert broker_url(plain) == "redis://r:6379/0"
    assert "master_name" not in make_celery("ner", plain).conf.broker_transport_options
