"""Settings of the gateway (environment prefix ``NLP_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from shared.contracts.names import ALL_KINDS
from shared.contracts.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "gateway"
    host: str = "0.0.0.0"
    port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    sync_deadline_s: float = Field(
        30.0, gt=0, description="deadline of a synchronous RPC whose caller set none"
    )
    stream_deadline_s: float = Field(
        600.0, gt=0, description="deadline of a GenerateStream call whose caller set none"
    )
    stream_poll_ms: int = Field(
        250,
        gt=0,
        description="token streams: longest wait for new tokens before checking whether the "
        "task ended otherwise (cancelled, failed)",
    )
    task_deadline_s: float = Field(
        3600.0, gt=0, description="default start deadline of a submitted task"
    )
    max_deadline_s: float = Field(24 * 3600.0, gt=0, description="longest deadline accepted")
    wait_default_s: float = Field(30.0, gt=0, description="Tasks.Wait timeout when none given")
    wait_max_s: float = Field(300.0, gt=0)
    publish_timeout_s: float = Field(15.0, gt=0, description="Kafka acknowledgement timeout")
    idempotency_ttl_s: int | None = Field(
        None,
        gt=0,
        description="how long an idempotency key keeps its task id; unset: result_ttl_s",
    )
    dlq_max_replays: int = Field(
        3,
        ge=0,
        description="how often DeadLetters.Replay may send one task back (bounds loops)",
    )
    dlq_max_scan: int = Field(
        100_000,
        gt=0,
        description="dead letters one List or filtered Replay reads at most (the newest)",
    )
    # Measured by `make bench`: 2 ms of linger keeps produce requests (broker and intake CPU
    # per task) low enough at load; with none, classification lost ~7% of its docs/s at
    # 32-64 clients. A generation's time to first token pays the linger in full instead.
    publish_linger_ms: float = Field(
        2.0, ge=0, description="how long the Kafka producer waits to fill a batch of tasks"
    )
    # Measured by `make bench-generation`: with no linger at all, a burst of generations
    # (8 clients finishing together) went out as separate produce requests and each waited
    # for its own intake poll under the engine's load (72 vs 15 ms queued); 0.5 ms gathers
    # a burst and still saves most of the 2 ms.
    interactive_linger_ms: float = Field(
        0.5, ge=0, description="linger of the producer of interactive_kinds"
    )
    interactive_kinds: frozenset[str] = Field(
        frozenset({"generation"}),
        description="kinds published by a second producer with interactive_linger_ms: someone is "
        "waiting for their first token",
    )
    # Measured by `python -m bench.analysis --kinds classification --env NLP_EVENT_LOOP=...`:
    # uvloop cut the gateway's CPU per classification from 0.66 to 0.58 ms at saturation.
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="asyncio event loop implementation of the gateway process"
    )
    max_message_bytes: int = Field(4 * 1024 * 1024, gt=0, description="gRPC message size cap")
    batch_window: int = Field(
        2000,
        gt=0,
        description="items of one SubmitBatch stream read but not yet acknowledged (flow control)",
    )
    batch_read_count: int = Field(
        256, gt=0, description="results read from Redis at a time by StreamBatchResults"
    )
    health_interval_s: float = Field(5.0, gt=0)
    grace_s: float = Field(10.0, ge=0, description="shutdown grace for in-flight RPCs")
    # Security (services/gateway/auth.py).
    auth_mode: Literal["keys", "dev"] = Field(
        "keys",
        description="keys: every RPC but health needs an API key (or a client certificate); "
        "dev: no authentication, tenants or quotas (local stacks only)",
    )
    auth_keys_file: Path | None = Field(
        None, description="JSON file of tenants, their limits and key digests; reloaded on change"
    )
    auth_reload_s: float = Field(5.0, gt=0, description="how often the keys file is checked")
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain: serve TLS only")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle that signs client certificates (mutual TLS)"
    )
    tls_client_auth: Literal["none", "require"] = Field(
        "none",
        description="require: mutual TLS, every client presents a certificate signed by "
        "tls_client_ca_file; its common name is the tenant unless an API key says otherwise",
    )

    @field_validator("interactive_kinds")
    @classmethod
    def _known_kinds(cls, kinds: frozenset[str]) -> frozenset[str]:
        unknown = sorted(kinds - set(ALL_KINDS))
        if unknown:
            raise ValueError(f"unknown kinds {unknown}; expected some of {list(ALL_KINDS)}")
        return kinds

    @property
    def idempotency_window_s(self) -> int:
        """How long an idempotency key keeps its task id."""
        return self.idempotency_ttl_s or self.result_ttl_s

    @model_validator(mode="after")
    def _security(self) -> Settings:
        if self.auth_mode == "keys" and self.auth_keys_file is None:
            raise ValueError(
                "NLP_AUTH_MODE=keys needs NLP_AUTH_KEYS_FILE (or NLP_AUTH_MODE=dev for a "
                "local stack)"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("NLP_TLS_CERT_FILE and NLP_TLS_KEY_FILE go together")
        if self.tls_client_auth != "none" and (
            self.tls_client_ca_file is None or self.tls_cert_file is None
        ):
            raise ValueError("client certificates need TLS and NLP_TLS_CLIENT_CA_FILE")
        return self
