"""The worker-side task runtime shared by every kind.

A kind supplies its engines (:mod:`shared.runtime.engines`); the runtime does everything
around them: skip tasks that already have a result (cancelled, or a redelivery),
end expired ones as DEADLINE_EXCEEDED, record RUNNING, run the request in a
micro-batch of its model, retry with backoff, store the terminal result, publish it
when asked and dead-letter a copy of tasks that keep failing.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, Task
from google.protobuf.message import Message
from kafka import KafkaProducer
from opentelemetry import trace

from nlp.v1 import common_pb2, tasks_pb2
from nlp.v1.common_pb2 import ModelInfo
from shared.contracts.envelope import (
    AnyRequest,
    deadline_exceeded,
    decode_b64,
    encode_b64,
    error_result,
    expired,
    request_of,
    seconds,
    timestamp,
)
from shared.contracts.errors import Code, InvalidRequestError, code_name
from shared.contracts.names import (
    CELERY_HEADER_TRACE,
    CELERY_KWARG_ENVELOPES,
    CELERY_KWARG_HANDED_AT,
    Names,
)
from shared.contracts.settings import WorkerSettings
from shared.observability.metrics import WorkerMetrics
from shared.observability.telemetry import (
    ATTR_BATCH_ID,
    ATTR_BATCH_SIZE,
    ATTR_KIND,
    ATTR_MODEL_NAME,
    ATTR_MODEL_VERSION,
    ATTR_STATUS,
    ATTR_TASK_ID,
    attached,
    context_of,
    housekeeping,
    links_to,
    tracer,
)
from shared.runtime.batching import Batched, BatchRun, MicroBatcher
from shared.runtime.engines import EngineFactory, Job, ModelRegistry, StreamingEngine, TaskAborted
from shared.transport.kafka import dead_letter_headers, publish_results, task_headers
from shared.transport.outages import REDIS, Outages
from shared.transport.results import ResultStore

log = logging.getLogger(__name__)


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class WorkerRuntime:
    """Runs one task of ``kind`` on the registry's engines with the platform's guarantees."""

    kind: str
    settings: WorkerSettings
    store: ResultStore
    registry: ModelRegistry
    producer_factory: Callable[[], KafkaProducer]
    metrics: WorkerMetrics
    worker_id: str = field(default_factory=worker_identity)
    outages: Outages = field(default_factory=lambda: Outages("worker"))
    _producer: KafkaProducer | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    batchers: dict[str, MicroBatcher[AnyRequest, Message]] = field(init=False, repr=False)
    batch_sizes: Counter[int] = field(default_factory=Counter, init=False, repr=False)
    _active: set[str] = field(default_factory=set, init=False, repr=False)
    # Separate from _lock: building the producer can take seconds; starting tasks must not wait.
    _active_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def __post_init__(self) -> None:
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        self.streaming = {
            name: engine
            for name, engine in self.registry.engines.items()
            if isinstance(engine, StreamingEngine)
        }
        for engine in self.streaming.values():
            engine.bind(self.metrics)
        if self.streaming:
            threading.Thread(target=self._watch_cancels, name="cancels", daemon=True).start()
        self.batchers = {
            name: MicroBatcher(
                engine.run_batch,
                self.settings.batch_max_size,
                self.settings.batch_max_wait_ms,
                name=name,
                on_batch=self._batch_counter(name),
                runners=self.settings.batch_runners,
                span_attributes={
                    ATTR_KIND: self.kind,
                    ATTR_MODEL_NAME: name,
                    ATTR_MODEL_VERSION: engine.info.version,
                },
            )
            for name, engine in self.registry.engines.items()
            if not isinstance(engine, StreamingEngine)
        }

    def _batch_counter(self, model: str) -> Callable[[BatchRun], None]:
        def count(run: BatchRun) -> None:
            self.batch_sizes[run.size] += 1
            self.metrics.batch(model, run.size, run.seconds, run.tokens_in, run.tokens_out)

        return count

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            with self._active_lock:
                running = list(self._active)
            try:
                with housekeeping():
                    self.store.heartbeat(self.kind, running)
            except Exception as exc:  # Redis away: the next beat tries again
                if not self.outages.failed(exc):
                    log.warning("heartbeat failed", extra={"error": repr(exc)})
                continue
            self.outages.back(REDIS)

    def _watch_cancels(self) -> None:
        """Abort running streamed tasks that got a terminal result elsewhere (a cancel).

        Every terminal result is announced on the done channel; the ids of tasks still
        running here can only be ones that someone else finished: Tasks.Cancel, or a
        gateway whose client went away.
        """
        cancelled = TaskAborted(
            common_pb2.TASK_STATUS_CANCELLED, Code.CANCELLED, "cancelled while generating"
        )
        while not self._stop.is_set():
            pubsub = self.store.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                with housekeeping():
                    pubsub.subscribe(self.settings.names.done_channel)
                    while not self._stop.is_set():
                        message = pubsub.get_message(timeout=1.0)
                        if message is None or message.get("type") != "message":
                            continue
                        task_id = bytes(message["data"]).partition(b"\0")[0].decode()
                        with self._active_lock:
                            if task_id not in self._active:
                                continue
                        for engine in self.streaming.values():
                            if engine.abort(task_id, cancelled):
                                log.info("aborting cancelled task", extra={"task_id": task_id})
            except Exception as exc:  # Redis away: subscribe again
                if not self.outages.failed(exc):
                    log.warning("cancel subscription lost", extra={"error": repr(exc)})
                self._stop.wait(1.0)
            finally:
                pubsub.close()

    def alive(self) -> bool:
        """Every streaming engine still works (liveness: a dead engine needs a restart)."""
        return all(engine.alive() for engine in self.streaming.values())

    @property
    def producer(self) -> KafkaProducer:
        # Built on first use: most workers never dead-letter or publish.
        with self._lock:
            if self._producer is None:
                self._producer = self.producer_factory()
            return self._producer

    def close(self) -> None:
        self._stop.set()
        for batcher in self.batchers.values():
            batcher.close()
        for engine in self.streaming.values():
            engine.close()
        if self._producer is not None:
            self._producer.close(timeout=10)
        log.info("worker runtime closed", extra={"batch_sizes": dict(self.batch_sizes)})

    def execute(
        self,
        task: Task[Any, Any],
        envelopes_b64: Sequence[str],
        handed_at: float,
        trace_contexts: Sequence[Mapping[str, str]] = (),
    ) -> dict[str, int]:
        """Run one delivery of a bundle of tasks; returns how many ended in each status.

        Every task of the bundle goes to its model's micro-batcher at once, and each
        result is stored as soon as its batch is done. Tasks whose run raised are sent
        again together, as one Celery retry of this message carrying only them.

        Each task gets a ``run <kind>`` span in its own trace (the context its
        ``nlp_trace`` entry carries), linked to the Celery message's run span.
        """
        started = time.time()
        attempt = int(task.request.retries) + 1
        outcome: Counter[str] = Counter()
        live, late, contexts, spans = self._open(
            envelopes_b64, trace_contexts, started, attempt, outcome
        )
        try:
            self._finish(late, handed_at, started, outcome, spans)
            flags = self.store.start(live, attempt)
            runnable = [e for e, ok in zip(live, flags, strict=True) if ok]
            for envelope, ok in zip(live, flags, strict=True):
                if not ok:  # already finished or cancelled
                    spans.pop(envelope.task_id, trace.INVALID_SPAN).end()
            if len(runnable) < len(live):
                outcome["SKIPPED"] += len(live) - len(runnable)
                log.info(
                    "tasks already finished; skipped", extra={"count": len(live) - len(runnable)}
                )
            ids = {e.task_id for e in runnable}
            with self._active_lock:
                self._active |= ids
            try:
                failed = self._run(task, runnable, attempt, handed_at, started, outcome, spans)
            finally:
                with self._active_lock:
                    self._active -= ids
        finally:
            for span in spans.values():  # retried, or an error escaped
                span.end()
        if failed:
            error = failed[0][1]
            countdown = self.settings.retry_backoff_s * 2 ** int(task.request.retries)
            log.warning(
                "tasks failed; retrying",
                extra={
                    "task_ids": [e.task_id for e, _ in failed],
                    "attempt": attempt,
                    "error": repr(error),
                },
            )
            self.metrics.retries.labels(self.kind).inc(len(failed))
            # Celery's stubs type headers as str -> str; ours carry one context per task.
            headers: dict[str, Any] = {
                CELERY_HEADER_TRACE: [dict(contexts.get(e.task_id, {})) for e, _ in failed]
            }
            raise task.retry(
                kwargs={
                    CELERY_KWARG_ENVELOPES: [encode_b64(e) for e, _ in failed],
                    CELERY_KWARG_HANDED_AT: handed_at,
                },
                headers=headers,
                exc=error,
                countdown=countdown,
            )
        return dict(outcome)

    def _open(
        self,
        envelopes_b64: Sequence[str],
        trace_contexts: Sequence[Mapping[str, str]],
        started: float,
        attempt: int,
        outcome: Counter[str],
    ) -> tuple[
        list[tasks_pb2.TaskEnvelope],
        list[tuple[tasks_pb2.TaskEnvelope, tasks_pb2.TaskResult]],
        dict[str, Mapping[str, str]],
        dict[str, trace.Span],
    ]:
        """Decode a bundle: the live tasks, the expired ones (with their results), each
        task's trace context and its started ``run`` span."""
        live: list[tasks_pb2.TaskEnvelope] = []
        late: list[tuple[tasks_pb2.TaskEnvelope, tasks_pb2.TaskResult]] = []
        contexts: dict[str, Mapping[str, str]] = {}
        spans: dict[str, trace.Span] = {}
        message_link = links_to([trace.get_current_span()])
        for i, raw in enumerate(envelopes_b64):
            try:
                envelope = decode_b64(raw)
            except Exception as exc:  # the intake validated it: a corrupted Celery message
                log.error("undecodable envelope in Celery message", extra={"error": str(exc)})
                self._dead_letter_raw(raw, f"undecodable envelope in worker: {exc}")
                outcome["DEAD_LETTER"] += 1
                continue
            carrier = trace_contexts[i] if i < len(trace_contexts) else {}
            contexts[envelope.task_id] = carrier
            spans[envelope.task_id] = tracer.start_span(
                f"run {self.kind}",
                context=context_of(carrier),
                links=message_link,
                attributes={
                    ATTR_TASK_ID: envelope.task_id,
                    ATTR_KIND: self.kind,
                    ATTR_BATCH_ID: envelope.batch_id,
                    "nlp.attempt": attempt,
                },
            )
            if expired(envelope, started):
                late.append((envelope, deadline_exceeded(envelope, "worker")))
            else:
                live.append(envelope)
        return live, late, contexts, spans

    def _run(
        self,
        task: Task[Any, Any],
        envelopes: Sequence[tasks_pb2.TaskEnvelope],
        attempt: int,
        handed_at: float,
        started: float,
        outcome: Counter[str],
        spans: dict[str, trace.Span],
    ) -> list[tuple[tasks_pb2.TaskEnvelope, Exception]]:
        """Run the tasks on their models and store each result as its batch ends; returns
        the tasks to retry (their spans ended as errors)."""
        retry_left = task.request.retries < self.settings.max_retries
        running: dict[Future[Batched[Message]], tuple[tasks_pb2.TaskEnvelope, ModelInfo]] = {}
        rejected: list[tuple[tasks_pb2.TaskEnvelope, tasks_pb2.TaskResult]] = []
        for envelope in envelopes:
            request = request_of(envelope)
            assert request is not None
            span = spans.get(envelope.task_id, trace.INVALID_SPAN)
            try:
                model_name, engine = self.registry.resolve(request.model)
            except InvalidRequestError as exc:
                result = error_result(
                    envelope, common_pb2.TASK_STATUS_FAILED, Code.INVALID_ARGUMENT, str(exc)
                )
                result.attempt = attempt
                rejected.append((envelope, result))
                continue
            span.set_attributes(
                {ATTR_MODEL_NAME: model_name, ATTR_MODEL_VERSION: engine.info.version}
            )
            if isinstance(engine, StreamingEngine):
                job = Job(envelope.task_id, attempt, seconds(envelope.deadline), span)
                future = engine.start(request, job)
            else:
                future = self.batchers[model_name].submit(request, span)
            running[future] = (envelope, engine.info)
        self._finish(rejected, handed_at, started, outcome, spans)
        failed: list[tuple[tasks_pb2.TaskEnvelope, Exception]] = []
        pending: set[Future[Batched[Message]]] = set(running)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            finished: list[tuple[tasks_pb2.TaskEnvelope, tasks_pb2.TaskResult]] = []
            for future in done:
                envelope, info = running[future]
                span = spans.get(envelope.task_id, trace.INVALID_SPAN)
                error = future.exception()
                if isinstance(error, Exception) and retry_left and not _final(error):
                    span.record_exception(error)
                    span.set_status(trace.StatusCode.ERROR, f"retrying: {type(error).__name__}")
                    failed.append((envelope, error))
                    continue
                result = self._result(envelope, info, future, attempt, span)
                result.attempt = attempt
                finished.append((envelope, result))
            self._finish(finished, handed_at, started, outcome, spans)
        return failed

    def _result(
        self,
        envelope: tasks_pb2.TaskEnvelope,
        info: ModelInfo,
        future: Future[Batched[Message]],
        attempt: int,
        span: trace.Span,
    ) -> tasks_pb2.TaskResult:
        """The terminal result of a task whose run ended (and is not retried)."""
        error = future.exception()
        if error is None:
            batched = future.result()
            result = tasks_pb2.TaskResult(
                task_id=envelope.task_id,
                kind=envelope.kind,
                status=common_pb2.TASK_STATUS_SUCCEEDED,
                model=info,
                correlation_id=envelope.reply.correlation_id,
                batch_size=batched.batch_size,
                batch_id=envelope.batch_id,
                tenant=envelope.tenant,
            )
            result.timings.batched_ms = batched.batched_s * 1000
            result.timings.inference_ms = batched.inference_s * 1000
            span.set_attribute(ATTR_BATCH_SIZE, batched.batch_size)
            getattr(result, self.kind).CopyFrom(batched.output)
            return result
        if isinstance(error, TaskAborted):  # cancelled or past its deadline
            result = error_result(envelope, error.status, error.code, error.message)
            result.model.CopyFrom(info)
            if error.output is not None:
                getattr(result, self.kind).CopyFrom(error.output)
            return result
        if isinstance(error, InvalidRequestError):  # the engine refused this input
            return error_result(
                envelope, common_pb2.TASK_STATUS_FAILED, Code.INVALID_ARGUMENT, str(error)
            )
        with attached(trace.set_span_in_context(span)):
            log.error(
                "task failed after retries",
                extra={"task_id": envelope.task_id, "error": repr(error)},
            )
            result = error_result(
                envelope,
                common_pb2.TASK_STATUS_FAILED,
                Code.INTERNAL,
                f"failed after {attempt} attempts: {type(error).__name__}: {error}",
                retryable=True,
            )
            self._dead_letter_envelope(envelope, result.error.message)
        result.dead_lettered = True
        return result

    def _finish(
        self,
        finished: Sequence[tuple[tasks_pb2.TaskEnvelope, tasks_pb2.TaskResult]],
        handed_at: float,
        started: float,
        outcome: Counter[str],
        spans: dict[str, trace.Span],
    ) -> None:
        """Store terminal results (one round trip) and publish those that ask for it; ends
        their spans, each with a ``store result`` child around that round trip."""
        if not finished:
            return
        now = time.time()
        for envelope, result in finished:
            created = seconds(envelope.created_at)
            result.worker = self.worker_id
            result.timings.queued_ms = max(0.0, (handed_at - created) * 1000)
            result.timings.waited_ms = max(0.0, (started - handed_at) * 1000)
            result.timings.ran_ms = (now - started) * 1000
            result.timings.finished_at.CopyFrom(timestamp(now))
        task_spans = [spans.pop(r.task_id, trace.INVALID_SPAN) for _, r in finished]
        store_spans = [
            tracer.start_span("store result", context=trace.set_span_in_context(span))
            for span in task_spans
        ]
        # The group's Redis and Kafka calls go under the first task's span.
        with trace.use_span(store_spans[0], end_on_exit=False):
            publish = [
                result
                for envelope, result in finished
                if envelope.reply.publish_result or self.settings.publish_results
            ]
            if publish:  # the producer is made on first use
                publish_results(self.producer, self.settings.names.results_topic, publish)
            stored = self.store.finish_many([result for _, result in finished])
        for span in store_spans:
            span.end()
        for (_, result), ok, span in zip(finished, stored, task_spans, strict=True):
            status = common_pb2.TaskStatus.Name(result.status).removeprefix("TASK_STATUS_")
            outcome[status] += 1
            span.set_attribute(ATTR_STATUS, status)
            if result.HasField("error"):
                span.set_status(trace.StatusCode.ERROR, result.error.message[:200])
            span.end()
            if not ok:
                log.info("task already had a result; kept it", extra={"task_id": result.task_id})
                continue
            t = result.timings
            stages = {"queued": t.queued_ms, "waited": t.waited_ms, "ran": t.ran_ms}
            if t.inference_ms:
                stages |= {"batched": t.batched_ms, "inference": t.inference_ms}
            code = code_name(result.error.code) if result.HasField("error") else None
            self.metrics.finished(status, code, stages)

    def _dead_letter_envelope(self, envelope: tasks_pb2.TaskEnvelope, reason: str) -> None:
        headers = dead_letter_headers(
            reason, "worker", self.settings.names.celery_queue(self.kind), -1, -1
        )
        headers += task_headers(envelope.task_id, self.kind)
        self.metrics.dead_letters.labels(self.kind, "worker").inc()
        self.producer.send(
            self.settings.names.dead_letter_topic,
            value=envelope.SerializeToString(),
            key=envelope.task_id.encode(),
            headers=headers,
        ).get(timeout=30)

    def _dead_letter_raw(self, envelope_b64: str, reason: str) -> None:
        try:
            raw = base64.b64decode(envelope_b64)
        except Exception:
            raw = str(envelope_b64).encode("utf-8", "replace")
        self.metrics.dead_letters.labels(self.kind, "worker").inc()
        self.producer.send(
            self.settings.names.dead_letter_topic,
            value=raw,
            headers=dead_letter_headers(
                reason, "worker", self.settings.names.celery_queue(self.kind), -1, -1
            ),
        ).get(timeout=30)


def _final(error: BaseException) -> bool:
    """Outcomes that a retry would not change."""
    return isinstance(error, (TaskAborted, InvalidRequestError))


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
        return runtime.execute(
            self,
            kwargs[CELERY_KWARG_ENVELOPES],
            float(kwargs[CELERY_KWARG_HANDED_AT]),
            getattr(self.request, CELERY_HEADER_TRACE, None) or (),
        )

    return run


def serve_worker(
    kind: str, settings: WorkerSettings, factories: Mapping[str, EngineFactory]
) -> None:
    """Entry point of a kind's Celery worker process.

    Loads every configured model once, before the thread pool starts (the threads
    share them), advertises the served models, then consumes the kind's queue.
    """
    from celery.signals import worker_ready, worker_shutdown

    from shared.observability import telemetry
    from shared.observability.logs import configure_logging
    from shared.observability.metrics import serve_endpoints
    from shared.observability.readiness import serving
    from shared.transport.celery_app import make_celery
    from shared.transport.kafka import make_producer
    from shared.transport.outages import redis_client, until_reachable

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
    outages = Outages(service)
    registry = ModelRegistry.build(kind, settings.models, settings.default_model, factories)
    # Without Redis at startup, wait for it (nothing could be served before anyway).
    until_reachable(lambda: registry.advertise(client, settings.names), outages)
    runtime = WorkerRuntime(
        kind=kind,
        settings=settings,
        store=ResultStore(client, settings.names, settings.result_ttl_s),
        registry=registry,
        producer_factory=lambda: make_producer(settings),
        metrics=metrics,
        outages=outages,
    )
    app = make_celery(kind, settings)
    # Current: Celery's instrumentation finds the task of a retry's publish by name there.
    app.set_current()
    register_task(app, runtime)
    endpoints = serve_endpoints(settings, metrics.registry)
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
            settings.names.celery_queue(kind),
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
