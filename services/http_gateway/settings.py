"""Settings of the HTTP front door (environment prefix ``NLP_``).

It publishes and waits like the gRPC gateway, so it reads the gateway's settings (one
configuration for both front doors: deadlines, publish timeout, API keys, TLS) and adds
its own listen address.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.gateway.settings import Settings as GatewaySettings


class Settings(GatewaySettings):
    service_name: str = "http-gateway"
    http_host: str = Field("127.0.0.1", description="the HTTP front door's listen address")
    http_port: int = Field(8000, ge=1, le=65535, description="the HTTP front door's port")
    # A chat completion without stream waits for the whole text: the stream's deadline.
    sync_deadline_s: float = Field(
        600.0, gt=0, description="deadline of a completion without stream"
    )
    # OpenAI's Files and Batch APIs (docs/openai.md#batches).
    files_dir: Path = Field(
        Path("var/files"),
        description="where uploaded and produced files live (a volume every replica shares)",
    )
    max_file_bytes: int = Field(200 * 2**20, gt=0, description="largest upload (OpenAI: 200 MB)")
    max_batch_lines: int = Field(
        50_000, gt=0, description="most requests in one batch (OpenAI: 50,000)"
    )
    batch_lease_s: float = Field(
        10.0, gt=0, description="a dead front door's batches are taken over after this"
    )
    batch_chunk: int = Field(
        500, gt=0, description="batch lines submitted per step (one checkpoint each)"
    )
