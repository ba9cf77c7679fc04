"""Gateway process: ``python -m services.gateway``."""

from __future__ import annotations

import asyncio
import signal

from services.gateway.metrics import GatewayMetrics
from services.gateway.server import serve
from services.gateway.settings import Settings
from shared.observability import telemetry
from shared.observability.logs import configure_logging
from shared.observability.metrics import serve_endpoints
from shared.observability.readiness import serving
from shared.transport.kafka import make_async_producer
from shared.transport.outages import Outages, async_redis_client


async def main(settings: Settings) -> None:
    configure_logging("gateway", settings.log_level)
    telemetry.setup_tracing("nlp-gateway")
    telemetry.instrument_grpc_server()
    metrics = GatewayMetrics()
    endpoints = serve_endpoints(settings, metrics.registry)
    outages = Outages("gateway")
    producer = make_async_producer(
        settings, settings.publish_linger_ms, outages=outages, timeout_s=settings.publish_timeout_s
    )
    interactive = (
        make_async_producer(
            settings,
            settings.interactive_linger_ms,
            f"{settings.service_name}-interactive",
            outages=outages,
            timeout_s=settings.publish_timeout_s,
        )
        if settings.interactive_kinds
        else None
    )
    # Fetch metadata now so that the first request does not pay for it. Without Kafka,
    # the gateway serves anyway (UNAVAILABLE, NOT_SERVING) until the broker is back.
    for each in (producer, interactive):
        if each is not None:
            await asyncio.to_thread(each.probe, 10.0)
    client = async_redis_client(settings)
    telemetry.instrument_redis(client)
    stop, started = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = asyncio.create_task(
        serve(
            settings,
            producer,
            client,
            started=started,
            stop=stop,
            metrics=metrics,
            interactive_producer=interactive,
            outages=outages,
        )
    )
    await asyncio.wait([server, asyncio.create_task(started.wait())], return_when="FIRST_COMPLETED")
    if started.is_set():
        serving(settings, endpoints)
    try:
        await server
    finally:
        await client.aclose()
        producer.close(timeout=10)
        if interactive is not None:
            interactive.close(timeout=10)


if __name__ == "__main__":
    settings = Settings()
    if settings.event_loop == "uvloop":
        import uvloop

        uvloop.run(main(settings))
    else:
        asyncio.run(main(settings))
