"""The gateway's Prometheus instruments and the interceptor that times every RPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.metrics import LATENCY_BUCKETS, new_registry

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the stubs
_CODES = {c.value[0]: c.name for c in grpc.StatusCode}


@dataclass
class GatewayMetrics:
    """RPC latency by method and status code, tasks accepted, Kafka publish latency."""

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


def _code(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    code = context.code()
    if code is not None:
        # Set by abort() (a StatusCode) or set_code(); an int when set from a raw value.
        return code.name if isinstance(code, grpc.StatusCode) else _CODES.get(code, str(code))
    if error is None:
        return "OK"
    return "CANCELLED" if isinstance(error, asyncio.CancelledError) else "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Observes every RPC's duration with its method and final status code."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        found = await continuation(handler_call_details)
        if found is None:
            return found
        # The stubs type handlers for the sync server; here they hold coroutine functions
        # and async generators, and are namedtuples (hence _replace).
        handler: Any = found
        method = handler_call_details.method
        observe = self.metrics.rpc_seconds
        if handler.unary_unary is not None or handler.stream_unary is not None:
            inner: Any = handler.unary_unary or handler.stream_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                began = time.perf_counter()
                error: BaseException | None = None
                try:
                    return await inner(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    observe.labels(method, _code(context, error)).observe(
                        time.perf_counter() - began
                    )

            wrap = "unary_unary" if handler.unary_unary is not None else "stream_unary"
            return cast(Handler, handler._replace(**{wrap: unary}))
        inner_stream: Any = handler.unary_stream or handler.stream_stream

        async def streaming(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            began = time.perf_counter()
            error: BaseException | None = None
            try:
                async for item in inner_stream(request, context):
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                observe.labels(method, _code(context, error)).observe(time.perf_counter() - began)

        wrap = "unary_stream" if handler.unary_stream is not None else "stream_stream"
        return cast(Handler, handler._replace(**{wrap: streaming}))
