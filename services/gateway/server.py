"""Wiring the gateway's ``grpc.aio`` server: its servicers, interceptors, health and
reflection, and TLS.

What the services do lives elsewhere: the publishing core in
:mod:`services.gateway.core`, the synchronous capabilities (Classify, Recognize,
Summarize, Generate, Models) in :mod:`services.gateway.capabilities`, the Tasks service in
:mod:`services.gateway.tasks` and its batch RPCs in :mod:`services.gateway.batches`, the
operators' DeadLetters service in :mod:`services.gateway.deadletters`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from nlp.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    deadletters_pb2,
    deadletters_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    ner_pb2,
    ner_pb2_grpc,
    summarization_pb2,
    summarization_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
)
from services.gateway.auth import Authenticator, KeyStore, development_interceptor
from services.gateway.capabilities import (
    ClassificationService,
    GenerationService,
    ModelsService,
    NerService,
    SummarizationService,
)
from services.gateway.core import Gateway
from services.gateway.deadletters import DeadLettersService
from services.gateway.interceptors import DecodeGuard
from services.gateway.metrics import GatewayMetrics, metrics_interceptor
from services.gateway.settings import Settings
from services.gateway.tasks import TasksService
from shared.transport.kafka import AsyncProducer
from shared.transport.outages import Outages

log = logging.getLogger(__name__)

SERVICE_NAMES = [
    classification_pb2.DESCRIPTOR.services_by_name["Classification"].full_name,
    ner_pb2.DESCRIPTOR.services_by_name["Ner"].full_name,
    summarization_pb2.DESCRIPTOR.services_by_name["Summarization"].full_name,
    generation_pb2.DESCRIPTOR.services_by_name["Generation"].full_name,
    tasks_pb2.DESCRIPTOR.services_by_name["Tasks"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["Models"].full_name,
    deadletters_pb2.DESCRIPTOR.services_by_name["DeadLetters"].full_name,
]


async def serve(
    settings: Settings,
    producer: AsyncProducer,
    client: aioredis.Redis,
    started: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    metrics: GatewayMetrics | None = None,
    interactive_producer: AsyncProducer | None = None,
    outages: Outages | None = None,
) -> None:
    """Run the gateway until ``stop`` is set (or forever). Tasks of
    ``settings.interactive_kinds`` go through ``interactive_producer`` when given;
    ``outages`` is told of each Kafka or Redis outage (and logs it once)."""
    metrics = metrics or GatewayMetrics()
    gateway = Gateway(settings, producer, client, metrics, interactive_producer, outages)
    await gateway.start()
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]
    interceptors: list[grpc.aio.ServerInterceptor] = [metrics_interceptor(metrics)]
    if settings.auth_mode == "keys":
        assert settings.auth_keys_file is not None  # the settings validate it
        keys = KeyStore(settings.auth_keys_file, settings.auth_reload_s)
        authenticator = Authenticator(
            keys, gateway.quotas, client_certs=settings.tls_client_auth != "none"
        )
        interceptors.append(authenticator.interceptor())
    else:
        interceptors.append(development_interceptor())
        log.warning(
            "AUTHENTICATION DISABLED (NLP_AUTH_MODE=dev): every caller is trusted, tasks of "
            "all tenants are visible to all, no quotas. Never expose this gateway."
        )
    # After authentication and decoding: a caller learns of an outage only once it may call.
    interceptors += [DecodeGuard(), gateway.deps.interceptor()]
    server = grpc.aio.server(options=options, interceptors=interceptors)
    classification_pb2_grpc.add_ClassificationServicer_to_server(
        ClassificationService(gateway), server
    )
    ner_pb2_grpc.add_NerServicer_to_server(NerService(gateway), server)
    summarization_pb2_grpc.add_SummarizationServicer_to_server(
        SummarizationService(gateway), server
    )
    generation_pb2_grpc.add_GenerationServicer_to_server(GenerationService(gateway), server)
    tasks_pb2_grpc.add_TasksServicer_to_server(TasksService(gateway), server)
    models_pb2_grpc.add_ModelsServicer_to_server(ModelsService(gateway), server)
    deadletters_pb2_grpc.add_DeadLettersServicer_to_server(DeadLettersService(gateway), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    address = f"{settings.host}:{settings.port}"
    credentials = server_credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    await server.start()
    health_task = asyncio.create_task(
        gateway.deps.health_loop(health, client, SERVICE_NAMES, settings.health_interval_s)
    )
    log.info("gateway serving", extra={"address": f"{settings.host}:{port}"})
    if started is not None:
        started.set()
    try:
        if stop is None:
            await server.wait_for_termination()
        else:
            await stop.wait()
    finally:
        await health.enter_graceful_shutdown()
        await server.stop(settings.grace_s)
        health_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await health_task
        await gateway.stop()


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS for the listener (only TLS then), with client certificates when configured."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=ca if settings.tls_client_auth == "require" else None,
        require_client_auth=settings.tls_client_auth == "require",
    )
