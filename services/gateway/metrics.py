"""The gateway's Prometheus instruments and the interceptor that times every RPC."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.gateway.interceptors import AroundInterceptor, Ctx
from shared.observability.metrics import LATENCY_BUCKETS, new_registry

_CODES = {c.value[0]: c.name for c in grpc.StatusCode}


@dataclass
class GatewayMetrics:
    """RPC latency by method and status code, tasks accepted, Kafka publish latency, token
    streams relayed."""

    registry: CollectorRegistry = field(default_factory=new_registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.rpc_seconds = Histogram(
            "nlp_rpc_duration_seconds",
            "gRPC server latency by method and status code (errors: code != OK)",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.submitted = Counter(
            "nlp_tasks_submitted",
            "Tasks published to Kafka by the gateway (acknowledged by the broker)",
            ["kind"],
            registry=r,
        )
        self.publish_seconds = Histogram(
            "nlp_kafka_publish_seconds",
            "From produce to the broker's acks=all acknowledgement, per group of messages",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.streams_relayed = Gauge(
            "nlp_token_streams_relayed",
            "Generation token streams the gateway relays now (all followed by one Redis read)",
            registry=r,
        )


def _code(context: Ctx, error: BaseException | None) -> str:
    code = context.code()
    if code is not None:
        # Set by abort() (a StatusCode) or set_code(); an int when set from a raw value.
        return code.name if isinstance(code, grpc.StatusCode) else _CODES.get(code, str(code))
    if error is None:
        return "OK"
    return "CANCELLED" if isinstance(error, asyncio.CancelledError) else "UNKNOWN"


def metrics_interceptor(metrics: GatewayMetrics) -> AroundInterceptor:
    """Observes every RPC's duration with its method and final status code."""

    @contextlib.asynccontextmanager
    async def timed(method: str, context: Ctx) -> AsyncIterator[None]:
        began = time.perf_counter()
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            metrics.rpc_seconds.labels(method, _code(context, error)).observe(
                time.perf_counter() - began
            )

    return AroundInterceptor(timed)
