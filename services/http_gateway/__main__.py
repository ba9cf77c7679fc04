"""HTTP front door process: ``python -m services.http_gateway``."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Callable

import uvicorn
from grpc_health.v1._async import HealthServicer

from services.gateway.auth import DEV_TENANT, Authenticator, KeyStore, Tenant
from services.gateway.core import Gateway
from services.gateway.metrics import GatewayMetrics
from services.http_gateway.app import FrontDoor
from services.http_gateway.batches import BatchRunner, BatchStore
from services.http_gateway.files import FileStore
from services.http_gateway.settings import Settings
from shared.observability import telemetry
from shared.observability.logs import configure_logging
from shared.observability.metrics import serve_endpoints
from shared.observability.readiness import serving
from shared.transport.kafka import make_async_producer
from shared.transport.outages import Outages, async_redis_client

log = logging.getLogger(__name__)


async def main(settings: Settings) -> None:
    configure_logging("http-gateway", settings.log_level)
    telemetry.setup_tracing("nlp-http-gateway")
    metrics = GatewayMetrics()
    endpoints = serve_endpoints(settings, metrics.registry)
    outages = Outages("http-gateway")
    # Everything it publishes is waited for by someone: the interactive linger.
    producer = make_async_producer(
        settings,
        settings.interactive_linger_ms,
        outages=outages,
        timeout_s=settings.publish_timeout_s,
    )
    await asyncio.to_thread(producer.probe, 10.0)
    client = async_redis_client(settings)
    telemetry.instrument_redis(client)
    gateway = Gateway(settings, producer, client, metrics, None, outages)
    await gateway.start()
    authenticator = None
    tenants: Callable[[str], Tenant | None] = lambda name: (  # noqa: E731
        DEV_TENANT if name == DEV_TENANT.name else None
    )
    if settings.auth_mode == "keys":
        assert settings.auth_keys_file is not None  # the settings validate it
        keys = KeyStore(settings.auth_keys_file, settings.auth_reload_s)
        authenticator = Authenticator(keys, gateway.quotas, client_certs=False)
        tenants = keys.tenant
    else:
        log.warning(
            "AUTHENTICATION DISABLED (NLP_AUTH_MODE=dev): every caller is trusted. "
            "Never expose this front door."
        )
    runner = BatchRunner(
        gateway,
        FileStore(client, settings.names, settings.files_dir),
        BatchStore(client, settings.names),
        tenants,
        lease_s=settings.batch_lease_s,
        chunk=settings.batch_chunk,
        max_lines=settings.max_batch_lines,
        known_tenants_only=authenticator is None,
    )
    # Uploads (up to NLP_MAX_FILE_BYTES) spool while they are parsed: next to where they
    # land, not in a small /tmp.
    spool = settings.files_dir / ".spool"
    spool.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(spool)
    config = uvicorn.Config(
        FrontDoor(gateway, authenticator, runner).app(),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=int(settings.grace_s),
        ssl_certfile=settings.tls_cert_file,
        ssl_keyfile=settings.tls_key_file,
    )
    server = uvicorn.Server(config)
    serve = asyncio.create_task(server.serve())
    # Probes Kafka and Redis while either is away, so that requests are served again
    # as soon as it is back (the statuses it sets are the gRPC gateway's; /health reads
    # the same knowledge).
    health = asyncio.create_task(
        gateway.deps.health_loop(HealthServicer(), client, [], settings.health_interval_s)
    )
    # uvicorn has no "started" event to wait on.
    while not server.started and not serve.done():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    if server.started:
        log.info(
            "http front door serving",
            extra={"address": f"{settings.http_host}:{settings.http_port}"},
        )
        serving(settings, endpoints)
    batches = asyncio.create_task(runner.run())
    try:
        await serve
    finally:
        batches.cancel()
        await asyncio.gather(batches, return_exceptions=True)
        health.cancel()
        await gateway.stop()
        await client.aclose()
        producer.close(timeout=10)


if __name__ == "__main__":
    settings = Settings()
    if settings.event_loop == "uvloop":
        import uvloop

        uvloop.run(main(settings))
    else:
        asyncio.run(main(settings))
