"""The Celery worker process of a kind: loads its models, builds the
:class:`~shared.runtime.worker.WorkerRuntime`, registers the kind's task and runs Celery.

``python -m services.<kind>.worker`` calls :func:`serve_worker`.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from celery import Celery, Task

from shared.contracts.names import Names
from shared.contracts.settings import WorkerSettings
from shared.observability.metrics import WorkerMetrics
from shared.runtime.engines import EngineFactory, ModelRegistry
from shared.runtime.worker import WorkerRuntime
from shared.transport.bundle import decode_delivered
from shared.transport.outages import Outages


def register_task(app: Celery, runtime: WorkerRuntime) -> Task[Any, Any]:
    """Register the kind's Celery task (name from :meth:`Names.celery_task`) on ``app``."""

    @app.task(
        name=Names.celery_task(runtime.kind),
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=runtime.settings.max_retries,
    )
    def run(self: Task[Any, Any], /, **kwargs: Any) -> dict[str, int]:
        return runtime.execute(self, decode_delivered(kwargs, self.request))

    return run


def serve_worker(
    kind: str, settings: WorkerSettings, factories: Mapping[str, EngineFactory]
) -> None:
    """Entry point of a kind's Celery worker process.

    Loads every configured model once, before the thread pool starts (the threads
    share them), advertises the served models, then consumes the kind's lane queues.
    """
    from celery.signals import worker_ready, worker_shutdown

    from shared.observability import telemetry
    from shared.observability.logs import configure_logging
    from shared.observability.metrics import serve_endpoints
    from shared.observability.readiness import serving
    from shared.transport.celery_app import make_celery
    from shared.transport.kafka import make_producer
    from shared.transport.outages import redis_client, until_reachable
    from shared.transport.results import result_store

    service = f"{kind}-worker"
    configure_logging(service, settings.log_level)
    # Before the pool starts: the pool is threads; were it prefork, the children would
    # inherit the signal hooks, and the SDK re-creates its export thread after fork.
    telemetry.setup_tracing(f"nlp-{service}")
    telemetry.instrument_celery()
    telemetry.instrument_kafka_python()
    client = redis_client(settings)
    telemetry.instrument_redis(client)
    metrics = WorkerMetrics(kind)
    # Bound before the models load (a minute, for an LLM): its port is then taken, and
    # /readyz says "not yet" meanwhile.
    endpoints = serve_endpoints(settings, metrics.registry)
    outages = Outages(service)
    registry = ModelRegistry.build(kind, settings.models, settings.default_model, factories)
    # Without Redis at startup, wait for it (nothing could be served before anyway).
    until_reachable(lambda: registry.advertise(client, settings.names), outages)
    runtime = WorkerRuntime(
        kind=kind,
        settings=settings,
        store=result_store(client, settings),
        registry=registry,
        producer_factory=lambda: make_producer(settings),
        metrics=metrics,
        outages=outages,
    )
    runtime.start()
    app = make_celery(kind, settings)
    # Current: Celery's instrumentation finds the task of a retry's publish by name there.
    app.set_current()
    register_task(app, runtime)
    endpoints.alive = runtime.alive

    @worker_ready.connect(weak=False)
    def _ready(**_: Any) -> None:
        serving(settings, endpoints)

    @worker_shutdown.connect(weak=False)
    def _shutdown(**_: Any) -> None:
        runtime.close()  # flushes dead letters and published results still buffered

    app.worker_main(
        [
            "worker",
            "--queues",
            # Every lane's: the channel orders and caps the fetch by lane.
            ",".join(settings.names.celery_queues(kind).values()),
            "--pool",
            "threads",
            "--concurrency",
            str(settings.concurrency),
            "--hostname",
            f"{kind}@{socket.gethostname()}",
            "--loglevel",
            settings.log_level,
            "--without-gossip",
            "--without-mingle",
        ]
    )
