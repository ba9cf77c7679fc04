"""Prometheus metrics of the intake and the Celery worker (every kind), and the HTTP
listener every process has.

Each process builds its instruments in its own registry and passes them to the code
that records; the listener on ``NLP_METRICS_PORT`` serves them at ``/metrics`` (plus the
process's CPU and memory), ``/healthz`` (liveness: the process answers) and ``/readyz``
(readiness: 503 until the process says it serves). The gateway's instruments are in
``services/gateway/metrics.py``.
All names start with ``nlp_``; label values are bounded (kinds, stages, statuses,
error codes, model names, partitions), never ids.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    make_wsgi_app,
)

from shared.contracts.names import ALL_LANES
from shared.contracts.settings import ServiceSettings

log = logging.getLogger(__name__)

# Seconds, from a fast cache hit to a long generation.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# Stages of a task, as in TaskResult.timings.
STAGES = ("queued", "waited", "batched", "inference", "ran")


def new_registry() -> CollectorRegistry:
    """A registry with the process collector (CPU seconds, resident memory, open fds)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


class Endpoints:
    """The process's HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.ready = threading.Event()
        self.port: int | None = None
        self._metrics = make_wsgi_app(registry)
        # /healthz fails when this says so (an engine that died cannot recover in-process).
        self.alive: Callable[[], bool] = lambda: True

    def mark_ready(self) -> None:
        """From now on ``/readyz`` answers 200 (models loaded, consuming or serving)."""
        self.ready.set()

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            if self.alive():
                return _plain(start_response, "200 OK", b"ok\n")
            return _plain(start_response, "503 Service Unavailable", b"engine failed\n")
        if path == "/readyz":
            if self.ready.is_set():
                return _plain(start_response, "200 OK", b"ready\n")
            return _plain(start_response, "503 Service Unavailable", b"starting\n")
        if path == "/metrics":
            return cast(Iterable[bytes], self._metrics(environ, start_response))
        return _plain(start_response, "404 Not Found", b"/metrics, /healthz or /readyz\n")


def _plain(start_response: Callable[..., Any], status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes and scrapes every few seconds would flood the logs."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve_endpoints(settings: ServiceSettings, registry: CollectorRegistry) -> Endpoints:
    """Serve :class:`Endpoints` on ``metrics_host:metrics_port`` from a daemon thread (none
    when the port is 0; readiness is still tracked)."""
    endpoints = Endpoints(registry)
    if settings.metrics_port:
        server = make_server(
            settings.metrics_host,
            settings.metrics_port,
            endpoints.app,
            server_class=_Server,
            handler_class=_QuietHandler,
        )
        endpoints.port = int(server.server_port)
        threading.Thread(target=server.serve_forever, name="http-endpoints", daemon=True).start()
        log.info(
            "metrics and health served",
            extra={"address": f"{settings.metrics_host}:{endpoints.port}"},
        )
    return endpoints


@dataclass
class IntakeMetrics:
    """What the intake of ``kind`` records."""

    kind: str
    registry: CollectorRegistry = field(default_factory=new_registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.records = Counter(
            "nlp_intake_records",
            "Kafka records the intake processed, by lane and outcome",
            ["kind", "lane", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "nlp_dead_letters",
            "Messages sent to the dead-letter topic, by the stage that sent them",
            ["kind", "stage"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "nlp_kafka_consumer_lag",
            "Records of an assigned partition not yet consumed by the kind's group",
            ["kind", "lane", "partition"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "nlp_celery_queue_depth",
            "Messages (task bundles) waiting in a lane's Celery queue of the kind",
            ["kind", "lane"],
            registry=r,
        )
        self.paused = Gauge(
            "nlp_intake_paused",
            "1 while the intake holds a lane's topic back because its Celery queue is full",
            ["kind", "lane"],
            registry=r,
        )
        self.handoff_size = Histogram(
            "nlp_handoff_bundle_size",
            "Tasks per Celery message",
            ["kind", "lane"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        for lane in ALL_LANES:
            self.queue_depth.labels(self.kind, lane)
            self.paused.labels(self.kind, lane)
        self._lag_series: set[tuple[str, str]] = set()

    def outcome(self, outcome: str, count: int = 1, lane: str = "") -> None:
        """Records that ended in ``outcome``; ``lane`` empty for records of no lane (not
        decodable)."""
        self.records.labels(self.kind, lane, outcome).inc(count)

    def dead_lettered(self, stage: str) -> None:
        self.dead_letters.labels(self.kind, stage).inc()

    def lag(self, lags: dict[tuple[str, int], int]) -> None:
        """Lag of each assigned partition by (lane, partition); partitions no longer
        assigned are dropped."""
        series = {(lane, str(partition)): value for (lane, partition), value in lags.items()}
        for (lane, partition), value in series.items():
            self.consumer_lag.labels(self.kind, lane, partition).set(value)
        for lane, partition in self._lag_series - series.keys():
            self.consumer_lag.remove(self.kind, lane, partition)
        self._lag_series = set(series)


@dataclass
class WorkerMetrics:
    """What the Celery worker of ``kind`` records."""

    kind: str
    registry: CollectorRegistry = field(default_factory=new_registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.stage_seconds = Histogram(
            "nlp_task_stage_seconds",
            "Time a task spent in each stage: queued (accepted to hand-off: Kafka and intake), "
            "waited (in the Celery queue), batched (waiting for its micro-batch), inference "
            "(its batch's model run), ran (start of execution to result); by lane",
            ["kind", "lane", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        for lane in ALL_LANES:  # every series from the start, not from its first task
            for stage in STAGES:
                self.stage_seconds.labels(self.kind, lane, stage)
        self.tasks = Counter(
            "nlp_tasks",
            "Tasks that reached a terminal status here",
            ["kind", "lane", "status"],
            registry=r,
        )
        self.errors = Counter(
            "nlp_task_errors",
            "Tasks that ended with an error, by gRPC code name",
            ["kind", "code"],
            registry=r,
        )
        self.retries = Counter(
            "nlp_task_retries", "Tasks sent back to Celery for a retry", ["kind"], registry=r
        )
        self.dead_letters = Counter(
            "nlp_dead_letters",
            "Messages sent to the dead-letter topic, by the stage that sent them",
            ["kind", "stage"],
            registry=r,
        )
        self.batch_size = Histogram(
            "nlp_batch_size",
            "Requests per micro-batch (one model run)",
            ["kind", "model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "nlp_inference_seconds",
            "Duration of one micro-batch's model run",
            ["kind", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "nlp_tokens",
            "Tokens the models read (input) and wrote (output)",
            ["kind", "model", "direction"],
            registry=r,
        )
        self.first_token_seconds = Histogram(
            "nlp_time_to_first_token_seconds",
            "Generation: from the engine taking a request to its first text",
            ["kind", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def first_token(self, model: str, seconds: float) -> None:
        """Generation: from the engine taking a request to its first text."""
        self.first_token_seconds.labels(self.kind, model).observe(seconds)

    def batch(self, model: str, size: int, seconds: float, tokens_in: int, tokens_out: int) -> None:
        self.batch_size.labels(self.kind, model).observe(size)
        self.inference_seconds.labels(self.kind, model).observe(seconds)
        if tokens_in:
            self.tokens.labels(self.kind, model, "input").inc(tokens_in)
        if tokens_out:
            self.tokens.labels(self.kind, model, "output").inc(tokens_out)

    def finished(
        self, lane: str, status: str, code: str | None, stages_ms: dict[str, float]
    ) -> None:
        """One terminal result: its lane, status, error code (if any) and stage times."""
        self.tasks.labels(self.kind, lane, status).inc()
        if code is not None:
            self.errors.labels(self.kind, code).inc()
        for stage, ms in stages_ms.items():
            self.stage_seconds.labels(self.kind, lane, stage).observe(ms / 1000)
