"""Channels to the gateway with its credentials: an API key as ``authorization: Bearer``
metadata on every call, TLS (server verification, optionally a client certificate).

The key comes from the environment (``NLP_API_KEY``) or a file (``NLP_API_KEY_FILE``),
never from a command-line argument, which ``ps`` would show to every local user.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClientSettings(BaseSettings):
    """Where the gateway is and how to prove who we are (prefix ``NLP_``)."""

    model_config = SettingsConfigDict(env_prefix="NLP_", extra="ignore")

    target: str = "127.0.0.1:50051"
    timeout_s: float = 60.0
    api_key: SecretStr | None = Field(None, description="the API key itself")
    api_key_file: Path | None = Field(None, description="a file whose first line is the key")
    tls: bool = Field(False, description="TLS with the system's root certificates")
    ca_file: Path | None = Field(None, description="PEM CA bundle that signs the gateway's cert")
    client_cert_file: Path | None = Field(None, description="PEM client certificate (mTLS)")
    client_key_file: Path | None = Field(None, description="PEM key of the client certificate")

    def key(self) -> str | None:
        """The API key, from the file when one is named, else from ``NLP_API_KEY``."""
        if self.api_key_file is not None:
            lines = self.api_key_file.read_text().splitlines()
            key = lines[0].strip() if lines else ""
            if not key:
                raise ValueError(f"{self.api_key_file}: no key on its first line")
            return key
        return self.api_key.get_secret_value() if self.api_key else None

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials, or None for plaintext."""
        if not (self.tls or self.ca_file or self.client_cert_file):
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes() if self.ca_file else None,
            private_key=self.client_key_file.read_bytes() if self.client_key_file else None,
            certificate_chain=self.client_cert_file.read_bytes() if self.client_cert_file else None,
        )


class _BearerInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the key to every call (call credentials would need TLS; this works on both)."""

    def __init__(self, key: str) -> None:
        self._header = ("authorization", f"Bearer {key}")

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Iterator[Any]
    ) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Iterator[Any]
    ) -> Any:
        return continuation(self._details(details), requests)


def connect(settings: ClientSettings, target: str | None = None) -> grpc.Channel:
    """A channel to ``target`` (default: the settings') carrying the configured key, TLS
    when configured. Usable as a context manager."""
    address = target or settings.target
    credentials = settings.credentials()
    channel = (
        grpc.insecure_channel(address)
        if credentials is None
        else grpc.secure_channel(address, credentials)
    )
    key = settings.key()
    return channel if key is None else grpc.intercept_channel(channel, _BearerInterceptor(key))
