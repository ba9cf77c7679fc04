"""Typed settings read from the environment (prefix ``NLP_``).

Every service has one ``Settings`` class built on :class:`ServiceSettings`;
nested models use ``__`` as delimiter, e.g. ``NLP_LIMITS__MAX_LABELS=32``.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.contracts.names import ALL_LANES, Names


class Limits(BaseModel):
    """Input limits enforced by the gateway and again by the intake."""

    max_text_bytes: int = Field(512 * 1024, gt=0, description="UTF-8 size of any text input")
    max_labels: int = Field(64, gt=0)
    max_label_chars: int = Field(200, gt=0)
    max_description_chars: int = Field(1000, gt=0)
    max_ner_labels: int = Field(64, gt=0)
    max_chat_messages: int = Field(256, gt=0)
    max_stop_sequences: int = Field(16, gt=0)
    max_choices: int = Field(64, gt=0, description="strings a generation's choice picks from")
    max_new_tokens: int = Field(4096, gt=0)
    max_model_name_chars: int = Field(128, gt=0)


class PerLane(BaseModel):
    """One value per lane (``NLP_<SETTING>__BATCH=8`` sets the batch lane's and leaves the
    others at their defaults, which each setting's subclass gives)."""

    model_config = {"frozen": True}

    interactive: int = Field(ge=0)
    standard: int = Field(ge=0)
    batch: int = Field(ge=0)

    def of(self, lane: str) -> int:
        value: int = getattr(self, lane)
        return value


# Per lane: a lower lane's backlog waits in Kafka, not in Redis, where it would be in a
# failover's way and could not be re-ordered. Batch: 16 messages of up to
# handoff_max_tasks each keep a worker's batch slots fed between two polls.
class HighWater(PerLane):
    interactive: int = Field(200, ge=1)
    standard: int = Field(64, ge=1)
    batch: int = Field(16, ge=1)


class LowWater(PerLane):
    interactive: int = Field(50, ge=0)
    standard: int = Field(16, ge=0)
    batch: int = Field(4, ge=0)


# Smooth weighted round robin between lanes that all have work waiting, at the Celery
# fetch and at each micro-batch's first place: a lower lane always moves.
class LaneWeights(PerLane):
    interactive: int = Field(16, ge=1)
    standard: int = Field(4, ge=1)
    batch: int = Field(1, ge=1)


class ModelSpec(BaseModel):
    """One configured model: ``NLP_MODELS='{"name": {"engine": "...", "path": "..."}}'``."""

    engine: str = Field(description="engine implementation, e.g. spacy or minilm-zero-shot")
    path: Path | None = Field(None, description="local weights; None: the packaged default")
    params: dict[str, Any] = Field(default_factory=dict, description="engine parameters")


class ServiceSettings(BaseSettings):
    """What every process of the platform needs to know."""

    model_config = SettingsConfigDict(
        env_prefix="NLP_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    service_name: str = "nlp"
    namespace: str = Field("", description="prefix for every topic, queue and key")
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap brokers (host:port, comma-separated)"
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis (with Sentinels: only its database, user and password count)",
    )
    redis_sentinels: str = Field(
        "",
        description="Redis Sentinels (host:port, comma-separated): Redis is then the primary "
        "they name, followed through failovers",
    )
    redis_master_name: str = Field("nlp", description="the Sentinels' name of the primary")
    # Redis replicates asynchronously: a write the primary acknowledged can be lost in a
    # failover. The writes that must survive one wait for this many replicas (WAIT).
    redis_wait_replicas: int = Field(
        0, ge=0, description="replicas that must confirm the writes that must survive a failover"
    )
    redis_wait_timeout_ms: int = Field(
        500, gt=0, description="how long such a write waits for its replicas"
    )
    result_ttl_s: int = Field(24 * 3600, gt=0, description="how long results stay in Redis")
    limits: Limits = Limits()
    log_level: str = "INFO"
    metrics_host: str = Field("0.0.0.0", description="address of the Prometheus /metrics listener")
    metrics_port: int = Field(
        9464, ge=0, le=65535, description="port of the Prometheus /metrics listener; 0: none"
    )
    ready_file: Path | None = Field(
        None, description="touched once the process serves; the local stack waits on it"
    )
    # Garbage collection (shared/observability/heap.py). With Python's defaults, the gateway spent
    # ~1 s of CPU in collections over ~8,000 classifications: ~20 % of its CPU per task.
    gc_gen0_threshold: int = Field(
        20_000,
        ge=0,
        description="allocations between young garbage collections; 0: Python's default (700)",
    )
    gc_freeze: bool = Field(
        True,
        description="once serving, leave what startup allocated (models, modules) out of "
        "garbage collections",
    )

    # Transport security to Kafka and Redis (the local stack runs plaintext on loopback).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: Path | None = Field(None, description="PEM CA bundle of the brokers")
    kafka_ssl_certfile: Path | None = Field(None, description="PEM client certificate (mTLS)")
    kafka_ssl_keyfile: Path | None = Field(None, description="PEM key of kafka_ssl_certfile")
    redis_ssl_ca_file: Path | None = Field(
        None, description="PEM CA bundle for a rediss:// URL (a password goes in the URL)"
    )
    redis_ssl_cert_file: Path | None = None
    redis_ssl_key_file: Path | None = None

    @property
    def names(self) -> Names:
        return Names(self.namespace)

    def kafka_python_config(self) -> dict[str, Any]:
        """Connection settings for kafka-python clients (producer, consumer, admin)."""
        config: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap.split(","),
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol.startswith("SASL"):
            config |= {
                "sasl_mechanism": self.kafka_sasl_mechanism,
                "sasl_plain_username": self.kafka_sasl_username,
                "sasl_plain_password": self.kafka_sasl_password.get_secret_value(),
            }
        for key, path in (
            ("ssl_cafile", self.kafka_ssl_cafile),
            ("ssl_certfile", self.kafka_ssl_certfile),
            ("ssl_keyfile", self.kafka_ssl_keyfile),
        ):
            if path is not None:
                config[key] = str(path)
        return config

    def librdkafka_config(self) -> dict[str, Any]:
        """The same for confluent-kafka (librdkafka property names)."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol.lower(),
        }
        if self.kafka_security_protocol.startswith("SASL"):
            config |= {
                "sasl.mechanisms": self.kafka_sasl_mechanism,
                "sasl.username": self.kafka_sasl_username,
                "sasl.password": self.kafka_sasl_password.get_secret_value(),
            }
        for key, path in (
            ("ssl.ca.location", self.kafka_ssl_cafile),
            ("ssl.certificate.location", self.kafka_ssl_certfile),
            ("ssl.key.location", self.kafka_ssl_keyfile),
        ):
            if path is not None:
                config[key] = str(path)
        return config

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels(cls, value: str) -> str:
        for item in filter(None, (part.strip() for part in value.split(","))):
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"a Sentinel is host:port, not {item!r}")
        return value

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``redis_sentinels`` as (host, port) pairs (none: a plain Redis)."""
        out = []
        for item in self.redis_sentinels.split(","):
            host, _, port = item.strip().rpartition(":")
            if item.strip():
                out.append((host, int(port)))
        return out

    def redis_ssl(self) -> dict[str, Any]:
        """TLS options for redis-py (and kombu's broker_use_ssl) with a rediss:// URL."""
        if not self.redis_url.startswith("rediss://"):
            return {}
        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        for key, path in (
            ("ssl_ca_certs", self.redis_ssl_ca_file),
            ("ssl_certfile", self.redis_ssl_cert_file),
            ("ssl_keyfile", self.redis_ssl_key_file),
        ):
            if path is not None:
                options[key] = str(path)
        return options


class WorkerSettings(ServiceSettings):
    """Settings shared by the intake and the Celery worker of one kind."""

    # Intake
    poll_timeout_ms: int = Field(500, gt=0)
    poll_max_records: int = Field(100, gt=0)
    queue_high_water: HighWater = Field(
        default_factory=HighWater,
        description="pause a lane's topic above this depth of its Celery queue (in messages)",
    )
    queue_low_water: LowWater = Field(
        default_factory=LowWater,
        description="resume a lane's topic below this depth of its Celery queue (in messages)",
    )
    # Each commit cost the broker ~1 ms of CPU (an append to __consumer_offsets): at one
    # per poll, ~0.1 ms per task at saturation. A crash re-reads at most this much, and a
    # re-read task that already has its result is skipped.
    commit_interval_ms: int = Field(
        1000,
        ge=0,
        description="how often the intake commits the offsets of handed-off records "
        "(and on rebalance and stop); 0: after every poll",
    )
    # As many as a micro-batch holds (batch_max_size): one message then fills one batch,
    # and Celery's per-message cost is paid half as often. Measured by `python -m
    # bench.analysis --kinds classification`: 16 -> 32 took worker CPU per task from 6.89
    # to 6.67 ms at saturation in one run (a repeat: 6.9-7.0, within this VM's noise); 64
    # split bundles across batches (mean batch 23 of 32) and lost 8 % of the docs/s.
    handoff_max_tasks: int = Field(
        32, gt=0, description="most tasks of one poll the intake puts in one Celery message"
    )
    # Celery worker
    models: dict[str, ModelSpec] = Field(
        default_factory=dict, description="served models by name (each kind has defaults)"
    )
    default_model: str = Field("", description="model for requests that name none")
    concurrency: int = Field(
        64, gt=0, description="Celery messages (task bundles) one worker process runs at once"
    )
    # Capacity kept for higher lanes: a worker full of bulk bundles still takes the next
    # interactive message at once (shared/transport/lanes.py).
    reserved_interactive_slots: int = Field(
        16, ge=0, description="slots of concurrency that standard and batch messages never take"
    )
    reserved_standard_slots: int = Field(
        8, ge=0, description="further slots that batch messages never take (kept for standard)"
    )
    lane_weights: LaneWeights = Field(
        default_factory=LaneWeights,
        description="relative share of each lane when every lane has work waiting",
    )
    # 32 and 0 ms: the best of 16/32 and 0/5/20 ms measured by `make bench` on 2 cores
    # (under load the backlog fills batches anyway; a wait only adds latency).
    batch_max_size: int = Field(32, gt=0, description="most tasks in one micro-batch")
    batch_max_wait_ms: float = Field(
        0.0, ge=0, description="how long a micro-batch waits for more tasks after its first"
    )
    batch_runners: int = Field(
        2, gt=0, description="batches of one model running at once (a long one blocks no other)"
    )
    interactive_runners: int = Field(
        1,
        ge=0,
        description="further batch runners per model that take interactive tasks only "
        "(an interactive task never waits for a running bulk batch)",
    )
    # The bulk runners' model calls take the cores the interactive path needs (its
    # runner, Celery's threads, the gateway and intake): on 2 cores, interactive
    # Classify under a bulk batch took 55 ms at 0 against 33 ms at 10 (29.5 ms idle).
    bulk_runner_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="scheduling niceness (Linux) of the batch_runners threads while "
        "interactive_runners > 0; 0: the same as every thread",
    )
    visibility_timeout_s: int = Field(
        3600,
        gt=0,
        description="Celery's own redelivery of unacked tasks: a backstop above the longest task",
    )
    heartbeat_s: float = Field(5.0, gt=0, description="how often workers mark running tasks alive")
    redeliver_after_s: float = Field(
        30.0, gt=0, description="a task silent this long after hand-off is sent again"
    )
    sweep_interval_s: float = Field(
        5.0, gt=0, description="how often the intake looks for tasks lost by dead workers"
    )
    max_retries: int = Field(3, ge=0)
    retry_backoff_s: float = Field(1.0, ge=0)
    publish_results: bool = Field(
        False, description="produce every result to the results topic, not only when asked"
    )

    def lane_slots(self, lane: str) -> int:
        """The most Celery messages of ``lane`` one worker runs (or holds) at once."""
        if lane == "interactive":
            return self.concurrency
        if lane == "standard":
            return self.concurrency - self.reserved_interactive_slots
        return self.concurrency - self.reserved_interactive_slots - self.reserved_standard_slots

    @model_validator(mode="after")
    def _consistent(self) -> WorkerSettings:
        for lane in ALL_LANES:
            if self.queue_low_water.of(lane) >= self.queue_high_water.of(lane):
                raise ValueError(f"queue_low_water.{lane} must be below queue_high_water.{lane}")
        if self.reserved_interactive_slots + self.reserved_standard_slots >= self.concurrency:
            raise ValueError(
                "reserved_interactive_slots + reserved_standard_slots must leave batch work "
                "at least one slot of concurrency"
            )
        if self.concurrency * self.handoff_max_tasks < self.batch_max_size:
            raise ValueError(
                "concurrency * handoff_max_tasks must be at least batch_max_size to fill a batch"
            )
        if self.redeliver_after_s <= 2 * self.heartbeat_s:
            raise ValueError("redeliver_after_s must exceed two heartbeats")
        if self.models and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not in models")
        return self
