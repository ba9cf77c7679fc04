"""Settings of the gateway (environment prefix ``NLP_``)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "gateway"
    host: str = "0.0.0.0"
    port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    sync_deadline_s: float = Field(
        30.0, gt=0, description="deadline of a synchronous RPC whose caller set none"
    )
    task_deadline_s: float = Field(
        3600.0, gt=0, description="default start deadline of a submitted task"
    )
    max_deadline_s: float = Field(24 * 3600.0, gt=0, description="longest deadline accepted")
    wait_default_s: float = Field(30.0, gt=0, description="Tasks.Wait timeout when none given")
    wait_max_s: float = Field(300.0, gt=0)
    publish_timeout_s: float = Field(15.0, gt=0, description="Kafka acknowledgement timeout")
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
